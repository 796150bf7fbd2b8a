"""scheduled_backfill: EventBridge schedule → enqueue users with no (or a stale) cache (SPEC §7).

A run that nears the Lambda time limit records its cursor and hands it on to a fresh invocation, so a
million users finish across invocations; EventBridge's retries of one run resume it instead of repeating it.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from bytemark_cache.bootstrap import Services, build_services
from bytemark_cache.domain.messages import parse_backfill_request
from bytemark_cache.errors import InvalidInput
from bytemark_cache.ports import Continuation

logger = Logger()
# Namespace from POWERTOOLS_METRICS_NAMESPACE (set in template Globals); the default keeps local runs valid.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "BytemarkTicketCache"))

SAFETY_MARGIN_MS = 30_000
"""Stop scanning when less than this is left: one page (MySQL + MongoDB + SQS) must still fit."""

_services: Services | None = None


def _get_services() -> Services:
    global _services
    if _services is None:
        _services = build_services()
    return _services


def _lambda_continuation(context: LambdaContext) -> Continuation:
    from bytemark_cache.adapters.lambda_continuation import LambdaContinuation

    return LambdaContinuation(context.invoked_function_arn)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(
    event: dict[str, Any],
    context: LambdaContext,
    services: Services | None = None,
    continuation: Continuation | None = None,
) -> dict[str, Any]:
    """Entry point; ``services`` and ``continuation`` let tests pass their own."""
    try:
        request = parse_backfill_request(event)
    except InvalidInput as exc:
        # Retrying bad input cannot help: answer (no exception, so no EventBridge retry) and log loudly.
        metrics.add_metric(name="InvalidBackfillInput", unit=MetricUnit.Count, value=1)
        logger.error("invalid back-fill input", reason=str(exc))
        return {"error": "invalid_input", "message": str(exc)}
    logger.append_keys(mode=request.mode, run_id=request.run_id)
    resolved = services or _get_services()
    result = resolved.tickets.backfill_run(
        request, should_stop=lambda: context.get_remaining_time_in_millis() < SAFETY_MARGIN_MS
    )
    summary = result.to_dict()
    if result.cursor is not None:
        (continuation or _lambda_continuation(context)).continue_backfill(
            {"mode": result.mode, "cursor": result.cursor, "run_id": result.run_id}
        )
        summary["continued"] = True
    metrics.add_metric(name="BackfillScanned", unit=MetricUnit.Count, value=result.scanned)
    metrics.add_metric(name="BackfillEnqueued", unit=MetricUnit.Count, value=result.enqueued)
    logger.info("back-fill invocation done", extra=summary)
    return summary
