"""on_demand_check: API Gateway (REST) → the caller's tickets. GET /tickets, POST /tickets/sync (SPEC §7)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from bytemark_cache.bootstrap import Services, build_services
from bytemark_cache.domain.views import body_etag, tickets_body
from bytemark_cache.errors import (
    ConfigError,
    NoBytemarkAccount,
    RateLimited,
    StoreError,
    SyncInProgress,
    TokenRevoked,
    UpstreamError,
)
from bytemark_cache.services import CheckResult

logger = Logger()
# Namespace from POWERTOOLS_METRICS_NAMESPACE (set in template Globals); the default keeps local runs valid.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "BytemarkTicketCache"))
app = APIGatewayRestResolver()

_services: Services | None = None


class Unauthenticated(Exception):
    """The request carries no usable identity from the authorizer."""


def _get_services() -> Services:
    # Built once per execution environment, on first use (not at import, so a bad config is a clean 500).
    global _services
    if _services is None:
        _services = build_services()
    return _services


def _caller_id() -> int:
    """The authenticated user: the authorizer's claims.sub (JWT/Cognito) or user_id (Lambda authorizer)."""
    authorizer = app.current_event.request_context.authorizer
    claims = authorizer.claims or {}
    raw = claims.get("sub") or authorizer.get("user_id")
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    if isinstance(raw, str) and raw.isdigit() and int(raw) > 0:
        return int(raw)
    raise Unauthenticated


def _error(status: int, code: str, message: str, retry_after: float | None = None) -> Response[str]:
    headers = {"Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return Response(
        status_code=status,
        content_type="application/json",
        body=json.dumps({"error": code, "message": message}),
        headers=headers,
    )


def _tickets_response(result: CheckResult, started: float) -> Response[str]:
    services: Services = app.context["services"]
    settings = services.settings
    metrics.add_metric(name=f"Cache_{result.source}", unit=MetricUnit.Count, value=1)
    if result.called_upstream:
        metrics.add_metric(name="UpstreamCalls", unit=MetricUnit.Count, value=1)
        elapsed_ms = (time.perf_counter() - started) * 1000
        metrics.add_metric(name="SyncLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    if result.changed_passes:
        metrics.add_metric(name="ChangedPasses", unit=MetricUnit.Count, value=result.changed_passes)
    body = tickets_body(
        result.document,
        now=services.tickets.now(),
        stale=result.stale,
        day_pass_label=settings.day_pass_label,
        timezone=settings.agency_timezone,
    )
    if result.upstream_error is not None:
        body["upstream_error"] = (
            "token_revoked" if isinstance(result.upstream_error, TokenRevoked) else "unavailable"
        )
    etag = body_etag(body)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if etag in _if_none_match():
        return Response(status_code=304, headers=headers, body="")
    return Response(status_code=200, content_type="application/json", body=json.dumps(body), headers=headers)


def _if_none_match() -> set[str]:
    raw = (
        app.current_event.headers.get("If-None-Match") or app.current_event.headers.get("if-none-match") or ""
    )
    return {tag.strip() for tag in raw.split(",") if tag.strip()}


@app.get("/tickets")
def get_tickets() -> Response[str]:
    """The caller's tickets: served from the cache within the TTL, else synced first."""
    return _answer_caller(lambda services, user_id: services.tickets.check_with_ttl(user_id))


@app.post("/tickets/sync")
def sync_tickets() -> Response[str]:
    """A forced sync of the caller's tickets, rate-limited per user."""
    return _answer_caller(
        lambda services, user_id: services.tickets.forced_check(
            user_id, services.settings.forced_sync_interval_seconds
        )
    )


def _answer_caller(check: Callable[[Services, int], CheckResult]) -> Response[str]:
    """Run ``check`` for the authenticated caller and answer with its tickets (timed for the metrics)."""
    user_id = _caller_id()
    logger.append_keys(user_id=user_id)
    started = time.perf_counter()
    return _tickets_response(check(app.context["services"], user_id), started)


@app.exception_handler(Unauthenticated)
def _unauthenticated(_exc: Unauthenticated) -> Response[str]:
    metrics.add_metric(name="Unauthenticated", unit=MetricUnit.Count, value=1)
    return _error(401, "unauthenticated", "no caller identity from the authorizer")


@app.exception_handler(NoBytemarkAccount)
def _no_account(_exc: NoBytemarkAccount) -> Response[str]:
    metrics.add_metric(name="NoBytemarkAccount", unit=MetricUnit.Count, value=1)
    return _error(404, "no_bytemark_account", "this user has no linked Bytemark account")


@app.exception_handler(RateLimited)
def _rate_limited(exc: RateLimited) -> Response[str]:
    metrics.add_metric(name="SyncRateLimited", unit=MetricUnit.Count, value=1)
    return _error(429, "rate_limited", "a sync was requested moments ago", exc.retry_after)


@app.exception_handler(TokenRevoked)
def _token_revoked(_exc: TokenRevoked) -> Response[str]:
    metrics.add_metric(name="TokenRevoked", unit=MetricUnit.Count, value=1)
    return _error(
        409, "bytemark_token_revoked", "the Bytemark account link expired; sign in to Bytemark again"
    )


@app.exception_handler(UpstreamError)
def _upstream(exc: UpstreamError) -> Response[str]:
    metrics.add_metric(name="UpstreamFailure", unit=MetricUnit.Count, value=1)
    logger.warning("bytemark unavailable and no cache", error=str(exc))
    return _error(503, "upstream_unavailable", "tickets are unavailable right now", exc.retry_after or 30)


@app.exception_handler(SyncInProgress)
def _in_progress(_exc: SyncInProgress) -> Response[str]:
    return _error(503, "sync_in_progress", "tickets are being loaded", 2)


@app.exception_handler(StoreError)
def _store(exc: StoreError) -> Response[str]:
    logger.exception("cache store failed")
    return _error(503, "cache_unavailable", "tickets are unavailable right now", 5)


@app.exception_handler(ConfigError)
def _config(exc: ConfigError) -> Response[str]:
    logger.error("invalid configuration", problems=exc.problems)
    return _error(500, "misconfigured", "the service is misconfigured")


@app.exception_handler(Exception)
def _unexpected(_exc: Exception) -> Response[str]:
    logger.exception("unexpected failure")
    return _error(500, "internal_error", "something went wrong; it has been logged")


@app.not_found
def _not_found(_exc: Exception) -> Response[str]:
    metrics.add_metric(name="RouteNotFound", unit=MetricUnit.Count, value=1)
    return _error(404, "not_found", "no such route")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics
def lambda_handler(
    event: dict[str, Any], context: LambdaContext, services: Services | None = None
) -> dict[str, Any]:
    """Entry point; ``services`` lets tests pass their own (fakes or a configured stack)."""
    try:
        app.append_context(services=services or _get_services())
    except ConfigError as exc:
        logger.error("invalid configuration", problems=exc.problems)
        return _plain_error(500, "misconfigured", "the service is misconfigured")
    except StoreError:
        logger.exception("cache store unreachable at start")
        return _plain_error(503, "cache_unavailable", "tickets are unavailable right now", retry_after=5)
    return app.resolve(event, context)


def _plain_error(status: int, code: str, message: str, retry_after: int | None = None) -> dict[str, Any]:
    """An API Gateway proxy answer for failures before the resolver runs."""
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return {"statusCode": status, "headers": headers, "body": json.dumps({"error": code, "message": message})}
