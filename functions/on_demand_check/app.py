"""on_demand_check: API Gateway (REST, proxy) → the caller's tickets. GET /tickets, POST /tickets/sync.

Thin (docs/contract.md §7): the caller is who the authorizer vouched for, the deadline comes from the
Lambda context, the answer from one use case, and every failure is answered from one table (ANSWERS).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from bytemark_cache.bootstrap import LazyServices, Services
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.identity import caller_id
from bytemark_cache.domain.views import body_etag, tickets_body
from bytemark_cache.errors import (
    BytemarkCacheError,
    ConfigError,
    InvalidInput,
    NoBytemarkAccount,
    RateLimited,
    StoreError,
    SyncInProgress,
    TokenRevoked,
    UpstreamError,
)
from bytemark_cache.logs import observability
from bytemark_cache.services import CheckResult

logger, metrics = observability()
app = APIGatewayRestResolver()
SERVICES = LazyServices()

API_GATEWAY_LIMIT_SECONDS = 29.0
"""API Gateway gives up on the integration after 29 s, whatever the function's timeout."""

SAFETY_MARGIN_SECONDS = 1.5
"""Left after the deadline to serve the cache (one MongoDB read at most) and send the answer."""

SOURCE_METRICS = {
    "cache": "TicketsFromCache",
    "refresh_queued": "TicketsRefreshQueued",
    "synced": "TicketsSynced",
    "built": "TicketsBuilt",
    "shared": "TicketsFromSharedSync",
    "stale": "TicketsServedStale",
}
"""How each answer with tickets came to be, as the metric that counts it."""


class Unauthenticated(BytemarkCacheError):
    """The request carries no usable identity from the authorizer."""


class NotAnApiEvent(InvalidInput):
    """The event is not an API Gateway REST proxy request."""


@dataclass(frozen=True)
class Answer:
    """How one kind of failure is answered: status, error code, message, metric, Retry-After, log level.

    ``retry_after`` is the default; an error that carries its own ``retry_after`` (429, Bytemark's 503)
    overrides it.
    """

    status: int
    code: str
    message: str
    metric: str | None = None
    retry_after: float | None = None
    log: Literal["none", "warning", "error", "exception"] = "none"


ANSWERS: dict[type[BaseException], Answer] = {
    Unauthenticated: Answer(
        401, "unauthenticated", "no caller identity from the authorizer", "UnauthenticatedRequests"
    ),
    NotAnApiEvent: Answer(
        400, "invalid_event", "not an API Gateway proxy request", "InvalidEvent", log="warning"
    ),
    NoBytemarkAccount: Answer(
        404, "no_bytemark_account", "this user has no linked Bytemark account", "NoBytemarkAccount"
    ),
    RateLimited: Answer(429, "rate_limited", "a sync was requested moments ago", "ForcedSyncRateLimited", 10),
    TokenRevoked: Answer(
        409,
        "bytemark_token_revoked",
        "the Bytemark account link expired; sign in to Bytemark again",
        "BytemarkTokenRevoked",
    ),
    UpstreamError: Answer(
        503, "upstream_unavailable", "tickets are unavailable right now", "UpstreamFailure", 30, "warning"
    ),
    SyncInProgress: Answer(503, "sync_in_progress", "tickets are being loaded", "SyncInProgress", 2),
    StoreError: Answer(
        503, "cache_unavailable", "tickets are unavailable right now", "StoreUnavailable", 5, "error"
    ),
    ConfigError: Answer(500, "misconfigured", "the service is misconfigured", "Misconfigured", None, "error"),
    Exception: Answer(
        500, "internal_error", "something went wrong; it has been logged", "InternalErrors", None, "exception"
    ),
}
"""Every failure the API answers, by error type (the most specific entry of the error's classes wins)."""


def answer_parts(exc: BaseException) -> tuple[int, dict[str, str], str]:
    """Status, headers and JSON body for ``exc`` from ANSWERS; counts and logs it as the table says."""
    answer = next(ANSWERS[kind] for kind in type(exc).__mro__ if kind in ANSWERS)
    if answer.metric is not None:
        metrics.add_metric(name=answer.metric, unit=MetricUnit.Count, value=1)
    if answer.log == "exception":
        logger.exception("request failed", error=type(exc).__name__)
    elif answer.log != "none":
        getattr(logger, answer.log)("request failed", error=type(exc).__name__, reason=str(exc)[:300])
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    retry_after = getattr(exc, "retry_after", None) or answer.retry_after
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return answer.status, headers, json.dumps({"error": answer.code, "message": answer.message})


@app.exception_handler(Exception)
def _answer_failure(exc: Exception) -> Response[str]:
    status, headers, body = answer_parts(exc)
    return Response(status_code=status, body=body, headers=headers)


@app.not_found
def _not_found(_exc: Exception) -> Response[str]:
    metrics.add_metric(name="RouteNotFound", unit=MetricUnit.Count, value=1)
    return Response(
        status_code=404,
        content_type="application/json",
        body=json.dumps({"error": "not_found", "message": "no such route"}),
        headers={"Cache-Control": "no-store"},
    )


@app.get("/tickets")
def get_tickets() -> Response[str]:
    """The caller's tickets: from the cache when fresh enough, else synced first or refreshed behind."""
    return _answer_caller(
        lambda services, user_id, deadline: services.tickets.check_with_ttl(user_id, deadline=deadline)
    )


@app.post("/tickets/sync")
def sync_tickets() -> Response[str]:
    """A forced sync of the caller's tickets, rate-limited per user."""
    return _answer_caller(
        lambda services, user_id, deadline: services.tickets.forced_check(
            user_id, deadline=deadline, min_interval_seconds=services.settings.forced_sync_interval_seconds
        )
    )


def _answer_caller(check: Callable[[Services, int, Deadline], CheckResult]) -> Response[str]:
    """Run ``check`` for the authenticated caller before the deadline and answer with the tickets."""
    services: Services = app.context.get("services") or SERVICES.get()
    authorizer = (app.current_event.raw_event.get("requestContext") or {}).get("authorizer")
    user_id = caller_id(authorizer, services.settings.identity_claim)
    if user_id is None:
        raise Unauthenticated
    logger.append_keys(user_id=user_id)
    now = services.tickets.now()
    remaining = app.lambda_context.get_remaining_time_in_millis() / 1000
    budget = min(remaining, API_GATEWAY_LIMIT_SECONDS) - SAFETY_MARGIN_SECONDS
    requests_before = _bytemark_requests(services)
    result = check(services, user_id, Deadline.after(now, budget))
    metrics.add_metric(name=SOURCE_METRICS[result.source], unit=MetricUnit.Count, value=1)
    sent = _bytemark_requests(services) - requests_before
    if sent:
        metrics.add_metric(name="BytemarkRequests", unit=MetricUnit.Count, value=sent)
    if result.called_upstream:
        elapsed_ms = (services.tickets.now() - now) * 1000
        metrics.add_metric(name="SyncLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    if result.changed_passes:
        metrics.add_metric(name="ChangedPasses", unit=MetricUnit.Count, value=result.changed_passes)
    return _tickets_response(services, result)


def _tickets_response(services: Services, result: CheckResult) -> Response[str]:
    settings = services.settings
    body = tickets_body(
        result.cache,
        now=services.tickets.now(),
        stale=result.stale,
        refreshing=result.source == "refresh_queued",
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
    headers = app.current_event.headers or {}
    raw = headers.get("If-None-Match") or headers.get("if-none-match") or ""
    return {tag.strip() for tag in raw.split(",") if tag.strip()}


def _bytemark_requests(services: Services) -> int:
    return services.source.requests_sent


def is_proxy_event(event: object) -> bool:
    """True when ``event`` has the shape of an API Gateway REST proxy request."""
    if not isinstance(event, dict):
        return False
    return (
        isinstance(event.get("httpMethod"), str)
        and isinstance(event.get("path"), str)
        and isinstance(event.get("requestContext"), dict)
        and isinstance(event.get("headers") or {}, dict)
        and isinstance(event.get("multiValueHeaders") or {}, dict)
        and isinstance(event.get("queryStringParameters") or {}, dict)
        and isinstance(event.get("body") or "", str)
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics
def lambda_handler(event: Any, context: LambdaContext, services: Services | None = None) -> dict[str, Any]:
    """Entry point; ``services`` lets tests pass their own (fakes or a configured stack)."""
    if not is_proxy_event(event):
        status, headers, body = answer_parts(NotAnApiEvent("not an API Gateway proxy request"))
        return {"statusCode": status, "headers": headers, "body": body}
    app.append_context(services=services)
    try:
        return app.resolve(event, context)
    except Exception as exc:  # noqa: BLE001 - route failures are answered inside; this is the event itself
        status, headers, body = answer_parts(NotAnApiEvent(f"unusable event ({type(exc).__name__})"))
        return {"statusCode": status, "headers": headers, "body": body}
