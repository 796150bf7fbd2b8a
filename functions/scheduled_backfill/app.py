"""scheduled_backfill: EventBridge Scheduler → the back-fill (contract §7): due, missing, stale, prune.

A run that nears the Lambda time limit records its cursor and hands it on to a fresh invocation, so a
million users finish across invocations; EventBridge's retries of one run resume it instead of repeating
it. Bad input is answered (never retried); a transient failure raises, so EventBridge retries the run.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from bytemark_cache.bootstrap import LazyServices, Services
from bytemark_cache.domain.messages import parse_backfill_request
from bytemark_cache.errors import BytemarkCacheError, ConfigError, InvalidInput
from bytemark_cache.logs import observability
from bytemark_cache.ports import Continuation

logger, metrics = observability()
SERVICES = LazyServices()

SAFETY_MARGIN_MS = 30_000
"""Stop scanning when less than this is left: one page (MySQL + MongoDB + SQS) must still fit."""


class BackfillFailed(Exception):
    """A transient failure: raised so EventBridge retries the run (which resumes from its progress)."""


def _lambda_continuation(context: LambdaContext) -> Continuation:
    from bytemark_cache.adapters.lambda_continuation import LambdaContinuation

    return LambdaContinuation(context.invoked_function_arn)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(
    event: Any,
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
    try:
        resolved = services or SERVICES.get()
        if resolved.backfill is None:
            raise ConfigError(["UPDATE_QUEUE_URL is required by the back-fill"])
        result = resolved.backfill.run(
            request, should_stop=lambda: context.get_remaining_time_in_millis() < SAFETY_MARGIN_MS
        )
        summary = result.to_dict()
        if result.cursor is not None:
            (continuation or _lambda_continuation(context)).continue_backfill(
                {"mode": result.mode, "cursor": result.cursor, "run_id": result.run_id}
            )
            summary["continued"] = True
    except BytemarkCacheError as exc:
        metrics.add_metric(name="BackfillScanned", unit=MetricUnit.Count, value=0)
        if not exc.transient:
            logger.error("back-fill cannot run", error=type(exc).__name__, reason=str(exc)[:300])
            return {"error": "failed", "message": str(exc)}
        logger.warning(
            "back-fill failed; EventBridge retries the run", error=type(exc).__name__, reason=str(exc)[:300]
        )
        raise BackfillFailed(f"{type(exc).__name__}: the run resumes on retry") from None
    # Published by every run, 0 included: the heartbeat alarm breaches when it goes missing.
    metrics.add_metric(name="BackfillScanned", unit=MetricUnit.Count, value=result.scanned)
    metrics.add_metric(name="BackfillEnqueued", unit=MetricUnit.Count, value=result.enqueued)
    if request.mode == "prune":
        metrics.add_metric(name="ChangeLogPruned", unit=MetricUnit.Count, value=result.pruned)
    logger.info("back-fill invocation done", extra=summary)
    return summary
