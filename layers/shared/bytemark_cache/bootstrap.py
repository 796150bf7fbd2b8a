"""build_services(): the one composition root. Each function calls it once per execution environment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bytemark_cache.config import Settings
from bytemark_cache.errors import ConfigError
from bytemark_cache.ports import BackfillRunStore, CacheStore, Clock, PassSource, TokenStore, UpdateQueue
from bytemark_cache.services import TicketCacheService


@dataclass(frozen=True)
class Services:
    """Everything a handler needs: the settings, the use cases and the cache store (for reads/logs)."""

    settings: Settings
    tickets: TicketCacheService
    cache: CacheStore
    queue: UpdateQueue | None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, with secrets from Secrets Manager when *_SECRET_ARN is set."""
    source = dict(os.environ if env is None else env)
    source.update(_secret_settings(source))
    return Settings.from_env(source)


def _secret_settings(env: Mapping[str, str]) -> dict[str, str]:
    """MONGODB_SECRET_ARN → MONGODB_URI; MYSQL_SECRET_ARN → MYSQL_* (RDS secret JSON shape)."""
    resolved: dict[str, str] = {}
    problems: list[str] = []
    mongo_arn = env.get("MONGODB_SECRET_ARN", "").strip()
    mysql_arn = env.get("MYSQL_SECRET_ARN", "").strip()
    if mongo_arn:
        value = _get_secret(mongo_arn, problems, "MONGODB_SECRET_ARN")
        if isinstance(value, dict):
            uri = value.get("uri") or value.get("MONGODB_URI")
            if isinstance(uri, str):
                resolved["MONGODB_URI"] = uri
            else:
                problems.append("MONGODB_SECRET_ARN: secret JSON has no 'uri'")
        elif isinstance(value, str):
            resolved["MONGODB_URI"] = value
    if mysql_arn:
        value = _get_secret(mysql_arn, problems, "MYSQL_SECRET_ARN")
        if isinstance(value, dict):
            for key, name in (
                ("host", "MYSQL_HOST"),
                ("port", "MYSQL_PORT"),
                ("username", "MYSQL_USER"),
                ("password", "MYSQL_PASSWORD"),
                ("dbname", "MYSQL_DATABASE"),
            ):
                if value.get(key) not in (None, ""):
                    resolved[name] = str(value[key])
        elif value is not None:
            problems.append(
                "MYSQL_SECRET_ARN: secret must be JSON with username/password (host, port, dbname)"
            )
    if problems:
        raise ConfigError(problems)
    return resolved


def _get_secret(arn: str, problems: list[str], name: str) -> Any:
    # Imported here: a cold start without secrets never pays for the Powertools parameters module.
    from aws_lambda_powertools.utilities import parameters

    try:
        raw: Any = parameters.get_secret(arn, max_age=300)
    except Exception as exc:  # noqa: BLE001 — any failure to read a secret is a configuration problem
        problems.append(f"{name}: cannot read the secret ({type(exc).__name__})")
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_services(
    settings: Settings | None = None,
    *,
    tokens: TokenStore | None = None,
    source: PassSource | None = None,
    cache: CacheStore | None = None,
    queue: UpdateQueue | None = None,
    clock: Clock | None = None,
    runs: BackfillRunStore | None = None,
) -> Services:
    """Wire every adapter from ``settings``; any keyword replaces one adapter (tests, the CLI)."""
    settings = settings if settings is not None else load_settings()
    if clock is None:
        from bytemark_cache.adapters.clock import SystemClock

        clock = SystemClock()
    if tokens is None:
        from bytemark_cache.adapters.mysql_tokens import MySqlTokenStore

        tokens = MySqlTokenStore(
            settings.mysql_host,
            settings.mysql_port,
            settings.mysql_user,
            settings.mysql_password,
            settings.mysql_database,
        )
    if source is None:
        from bytemark_cache.adapters.bytemark_http import BytemarkHttpSource

        source = BytemarkHttpSource(
            settings.bytemark_api_url,
            timeout_seconds=settings.bytemark_timeout_seconds,
            page_size=settings.bytemark_page_size,
            max_pages=settings.bytemark_max_pages,
            max_retries=settings.bytemark_max_retries,
        )
    if cache is None or runs is None:
        from bytemark_cache.adapters.mongo_runs import MongoBackfillRunStore
        from bytemark_cache.adapters.mongo_store import MongoCacheStore, connect

        database = connect(settings.mongodb_uri, settings.mongodb_database)
        if cache is None:
            mongo_store = MongoCacheStore(
                database, settings.cache_collection, settings.log_collection, settings.lease_collection
            )
            mongo_store.ensure_indexes()
            cache = mongo_store
        if runs is None:
            runs = MongoBackfillRunStore(database, settings.backfill_run_collection)
    if queue is None and settings.update_queue_url:
        from bytemark_cache.adapters.sqs_queue import SqsUpdateQueue

        queue = SqsUpdateQueue(settings.update_queue_url, endpoint_url=settings.aws_endpoint_url)
    tickets = TicketCacheService(
        tokens=tokens,
        source=source,
        cache=cache,
        queue=queue,
        clock=clock,
        ttl_seconds=settings.cache_ttl_seconds,
        passes4_limit=settings.passes4_limit,
        lease_seconds=settings.sync_lease_seconds,
        wait_seconds=settings.sync_wait_seconds,
        runs=runs,
    )
    return Services(settings=settings, tickets=tickets, cache=cache, queue=queue)
