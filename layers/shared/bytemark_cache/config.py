"""Settings.from_env(): every configuration problem reported at once (contract §8)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bytemark_cache.errors import ConfigError

T = TypeVar("T")

_SECRET_NAMES = frozenset({"MONGODB_URI", "MYSQL_PASSWORD"})
"""Settings whose values are never echoed in error messages."""


@dataclass(frozen=True)
class Settings:
    """Everything the composition root needs. Secrets are resolved before this is built."""

    mongodb_uri: str
    mongodb_database: str
    cache_collection: str
    log_collection: str
    claim_collection: str
    backfill_run_collection: str
    mysql_host: str
    mysql_port: int
    mysql_user: str
    mysql_password: str
    mysql_database: str
    bytemark_api_url: str
    bytemark_timeout_seconds: float
    bytemark_page_size: int
    bytemark_max_pages: int
    bytemark_max_retries: int
    cache_ttl_seconds: int
    update_queue_url: str | None
    update_dlq_url: str | None
    identity_claim: str
    change_log_retention_days: int
    redelivery_base_seconds: float
    redelivery_cap_seconds: float
    agency_timezone: str
    passes4_limit: int
    day_pass_label: str
    sync_claim_seconds: float
    sync_wait_seconds: float
    forced_sync_interval_seconds: float
    aws_endpoint_url: str | None

    def __repr__(self) -> str:
        # Never print secrets (the MongoDB URI may embed a password).
        return f"Settings(database={self.mongodb_database!r}, bytemark={self.bytemark_api_url!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the environment; raise ConfigError naming every problem."""
        source = os.environ if env is None else env
        problems: list[str] = []

        def read(name: str, parse: Callable[[str], T], default: T | None = None) -> T:
            raw = source.get(name, "").strip()
            if not raw:
                if default is None:
                    problems.append(f"{name} is required")
                    return None  # type: ignore[return-value]
                return default
            try:
                return parse(raw)
            except ValueError as exc:
                shown = "***" if name in _SECRET_NAMES else raw
                problems.append(f"{name}={shown} is invalid: {exc}")
                return None  # type: ignore[return-value]

        def optional(name: str) -> str | None:
            return source.get(name, "").strip() or None

        settings = cls(
            mongodb_uri=read("MONGODB_URI", _mongo_uri),
            mongodb_database=read("MONGODB_DATABASE", _name, "cache"),
            cache_collection=read("CACHE_COLLECTION", _name, "BytemarkTicketsCache"),
            log_collection=read("LOG_COLLECTION", _name, "BytemarkTicketsLog"),
            claim_collection=read("CLAIM_COLLECTION", _name, "BytemarkSyncClaims"),
            backfill_run_collection=read("BACKFILL_RUN_COLLECTION", _name, "BytemarkBackfillRuns"),
            mysql_host=read("MYSQL_HOST", _name),
            mysql_port=read("MYSQL_PORT", _int_between(1, 65535), 3306),
            mysql_user=read("MYSQL_USER", _name),
            mysql_password=source.get("MYSQL_PASSWORD", ""),
            mysql_database=read("MYSQL_DATABASE", _name, "portal"),
            bytemark_api_url=read("BYTEMARK_API_URL", _http_url),
            bytemark_timeout_seconds=read("BYTEMARK_TIMEOUT_SECONDS", _positive_float(60.0), 10.0),
            bytemark_page_size=read("BYTEMARK_PAGE_SIZE", _int_between(1, 500), 100),
            bytemark_max_pages=read("BYTEMARK_MAX_PAGES", _int_between(1, 1000), 50),
            bytemark_max_retries=read("BYTEMARK_MAX_RETRIES", _int_between(0, 10), 3),
            cache_ttl_seconds=read("CACHE_TTL_SECONDS", _int_between(0, 30 * 86400), 3600),
            update_queue_url=optional("UPDATE_QUEUE_URL"),
            update_dlq_url=optional("UPDATE_DLQ_URL"),
            identity_claim=read("IDENTITY_CLAIM", _claim_name, "custom:user_id"),
            change_log_retention_days=read("CHANGE_LOG_RETENTION_DAYS", _int_between(1, 36500), 400),
            redelivery_base_seconds=read("REDELIVERY_BASE_SECONDS", _positive_float(3600.0), 60.0),
            redelivery_cap_seconds=read("REDELIVERY_CAP_SECONDS", _positive_float(43200.0), 7200.0),
            agency_timezone=read("AGENCY_TIMEZONE", _timezone, "America/Chicago"),
            passes4_limit=read("PASSES4_LIMIT", _int_between(1, 5000), 200),
            day_pass_label=read("DAY_PASS_LABEL", _name, "Day Pass"),
            sync_claim_seconds=read("SYNC_CLAIM_SECONDS", _positive_float(900.0), 120.0),
            sync_wait_seconds=read("SYNC_WAIT_SECONDS", _positive_float(60.0), 5.0),
            forced_sync_interval_seconds=read("FORCED_SYNC_INTERVAL_SECONDS", _positive_float(3600.0), 10.0),
            aws_endpoint_url=optional("AWS_ENDPOINT_URL"),
        )
        if problems:
            raise ConfigError(problems)
        return settings


def _name(raw: str) -> str:
    return raw


def _claim_name(raw: str) -> str:
    # Cognito claim names: letters, digits and ":_-." (custom attributes are "custom:<name>").
    if len(raw) > 64 or not all(char.isascii() and (char.isalnum() or char in ":_-.") for char in raw):
        raise ValueError("must be a claim name such as custom:user_id")
    return raw


def _mongo_uri(raw: str) -> str:
    if not raw.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError("must start with mongodb:// or mongodb+srv://")
    return raw


def _http_url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http(s) URL")
    return raw.rstrip("/")


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _positive_float(maximum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not 0 < value <= maximum:
            raise ValueError(f"must be > 0 and <= {maximum}")
        return value

    return parse


def _timezone(raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("unknown time zone") from exc
    return raw
