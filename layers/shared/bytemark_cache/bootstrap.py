"""The one composition root: ``build_services()``, and ``LazyServices``, which each handler holds.

Every adapter is built here from ``Settings``; any keyword replaces one (tests, the CLI). Handlers build
once per execution environment, on first use (not at import), inside the request: a configuration or
store failure at start is then answered like any other failure of that request.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bytemark_cache.config import Settings
from bytemark_cache.domain.freshness import FreshnessPolicy
from bytemark_cache.errors import BytemarkCacheError, ConfigError
from bytemark_cache.ports import (
    BackfillRunStore,
    CacheStore,
    Clock,
    PassSource,
    Redelivery,
    TokenStore,
    UpdateQueue,
)
from bytemark_cache.services import BackfillService, TicketCacheService

if TYPE_CHECKING:
    from bytemark_cache.adapters.mongo_indexes import Role
    from bytemark_cache.adapters.mysql_tokens import MySqlTokenStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """Everything a handler needs. ``backfill`` and ``redelivery`` exist only with an update queue."""

    settings: Settings
    tickets: TicketCacheService
    backfill: BackfillService | None
    cache: CacheStore
    source: PassSource
    queue: UpdateQueue | None
    redelivery: Redelivery | None


class LazyServices:
    """The services of one execution environment, built on first ``get()`` (thread-safe) and kept."""

    def __init__(self, factory: Callable[[], Services] | None = None) -> None:
        self._factory = factory or build_services
        self._services: Services | None = None
        self._lock = threading.Lock()

    def get(self) -> Services:
        """The services, building them the first time (a failure is raised, and retried next time)."""
        if self._services is None:
            with self._lock:
                if self._services is None:
                    self._services = self._factory()
        return self._services


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, with secrets from Secrets Manager when *_SECRET_ARN is set."""
    source = dict(os.environ if env is None else env)
    source.update(_secret_settings(source))
    return Settings.from_env(source)


def build_services(
    settings: Settings | None = None,
    *,
    tokens: TokenStore | None = None,
    source: PassSource | None = None,
    cache: CacheStore | None = None,
    queue: UpdateQueue | None = None,
    redelivery: Redelivery | None = None,
    clock: Clock | None = None,
    runs: BackfillRunStore | None = None,
    check_indexes: bool = True,
) -> Services:
    """Wire every adapter from ``settings``; any keyword replaces one adapter (tests, the CLI)."""
    settings = settings if settings is not None else load_settings()
    if clock is None:
        from bytemark_cache.adapters.clock import SystemClock

        clock = SystemClock()
    if tokens is None:
        tokens = mysql_token_store(settings)
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
            cache = MongoCacheStore(
                database, settings.cache_collection, settings.log_collection, settings.claim_collection
            )
            if check_indexes:
                _warn_about_indexes(database, settings)
        if runs is None:
            runs = MongoBackfillRunStore(database, settings.backfill_run_collection)
    if settings.update_queue_url:
        from bytemark_cache.adapters.sqs_queue import SqsRedelivery, SqsUpdateQueue

        if queue is None:
            queue = SqsUpdateQueue(settings.update_queue_url, endpoint_url=settings.aws_endpoint_url)
        if redelivery is None:
            redelivery = SqsRedelivery(
                settings.update_queue_url, settings.update_dlq_url, endpoint_url=settings.aws_endpoint_url
            )
    policy = FreshnessPolicy(
        ttl_seconds=settings.cache_ttl_seconds,
        day_pass_label=settings.day_pass_label,
        timezone=settings.agency_timezone,
    )
    tickets = TicketCacheService(
        tokens, source, cache, queue, clock, policy,
        history_limit=settings.passes4_limit,
        claim_seconds=settings.sync_claim_seconds,
        wait_seconds=settings.sync_wait_seconds,
    )  # fmt: skip
    retention = settings.change_log_retention_days * 86400
    backfill = None
    if queue is not None:
        backfill = BackfillService(tokens, cache, queue, runs, clock, settings.cache_ttl_seconds, retention)
    return Services(
        settings=settings,
        tickets=tickets,
        backfill=backfill,
        cache=cache,
        source=source,
        queue=queue,
        redelivery=redelivery,
    )


def mysql_token_store(settings: Settings) -> MySqlTokenStore:
    """The MySQL ``bytemark_tokens`` store of these settings."""
    from bytemark_cache.adapters.mysql_tokens import MySqlTokenStore

    return MySqlTokenStore(
        settings.mysql_host,
        settings.mysql_port,
        settings.mysql_user,
        settings.mysql_password,
        settings.mysql_database,
    )


def indexed_collections(settings: Settings) -> dict[Role, str]:
    """The collections whose indexes the service needs (``mongo_indexes.REQUIRED_INDEXES``), by role."""
    return {
        "cache": settings.cache_collection,
        "log": settings.log_collection,
        "claims": settings.claim_collection,
    }


def _warn_about_indexes(database: Any, settings: Settings) -> None:
    """Log each required index that is missing: a warning for the operator, never a failed request."""
    from bytemark_cache.adapters.mongo_indexes import check_indexes

    try:
        findings = check_indexes(database, indexed_collections(settings))
    except BytemarkCacheError as exc:
        logger.warning("indexes not checked", extra={"error": str(exc)})
        return
    for finding in findings:
        if finding.status != "present":
            logger.warning(
                "a required MongoDB index is missing; run `bytemark-cache ensure-indexes`",
                extra={
                    "collection": finding.collection,
                    "index": finding.spec.name,
                    "status": finding.status,
                    "detail": finding.detail,
                },
            )


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
