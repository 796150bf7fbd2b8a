"""user_updates: SQS batch → sync each user at once (SPEC §7), reporting exactly the records that failed."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from bytemark_cache.bootstrap import Services, build_services
from bytemark_cache.domain.messages import parse_update_message
from bytemark_cache.errors import InvalidInput, NoBytemarkAccount, TokenRevoked

logger = Logger()
# Namespace from POWERTOOLS_METRICS_NAMESPACE (set in template Globals); the default keeps local runs valid.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "BytemarkTicketCache"))

MAX_CONCURRENT_SYNCS = 4
"""Records of one batch synced at once; bounded so Bytemark's rate limit and MySQL see a small burst."""

_services: Services | None = None


class ConcurrentBatchProcessor(BatchProcessor):
    """BatchProcessor that runs the records of a batch on a bounded thread pool.

    Success/failure bookkeeping stays Powertools' own (list appends are atomic), so the report is exact.
    """

    def process(self) -> list[tuple[Any, ...]]:
        with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_SYNCS, thread_name_prefix="sync") as pool:
            return list(pool.map(self._process_record, self.records))


# Every record failing is still a partial answer: report each failure instead of raising for the batch.
processor = ConcurrentBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def _get_services() -> Services:
    global _services
    if _services is None:
        _services = build_services()
    return _services


def sync_record(record: SQSRecord, services: Services) -> str:
    """Sync the user named by one message; what is worth retrying raises, the rest is acknowledged."""
    try:
        message = parse_update_message(record.body)
    except InvalidInput as exc:
        metrics.add_metric(name="MalformedMessage", unit=MetricUnit.Count, value=1)
        logger.error("malformed update message", message_id=record.message_id, reason=str(exc))
        raise
    log_keys: dict[str, object] = {
        "message_id": record.message_id,
        "user_id": message.user_id,
        "reason": message.reason,
    }
    if message.reason == "activation" and message.pass_uuid:
        marked = services.tickets.mark_activation(message.user_id, message.pass_uuid)
        logger.info("activation marked", extra={**log_keys, "marked": marked})
    try:
        result = services.tickets.sync(message.user_id)
    except (TokenRevoked, NoBytemarkAccount) as exc:
        return _acknowledge(exc, log_keys)
    except Exception as exc:
        # Reported for retry (then the DLQ): say why, or on-call sees only a failure count.
        logger.warning("sync failed; will be retried", extra={**log_keys, "error": type(exc).__name__})
        raise
    metrics.add_metric(name="UsersSynced", unit=MetricUnit.Count, value=1)
    if result.changed_passes:
        metrics.add_metric(name="ChangedPasses", unit=MetricUnit.Count, value=result.changed_passes)
    logger.info("user synced", extra={**log_keys, "source": result.source, "changed": result.changed_passes})
    return result.source


def _acknowledge(exc: TokenRevoked | NoBytemarkAccount, log_keys: dict[str, object]) -> str:
    """Failures retrying cannot fix: acknowledge the message, keep the cache, count and log them."""
    if isinstance(exc, TokenRevoked):
        metrics.add_metric(name="TokenRevoked", unit=MetricUnit.Count, value=1)
        logger.warning("bytemark token revoked; message acknowledged", extra=log_keys)
        return "token_revoked"
    metrics.add_metric(name="NoBytemarkAccount", unit=MetricUnit.Count, value=1)
    logger.warning("user has no Bytemark account; message acknowledged", extra=log_keys)
    return "no_bytemark_account"


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(
    event: dict[str, Any], context: LambdaContext, services: Services | None = None
) -> PartialItemFailureResponse:
    """Entry point; ``services`` lets tests pass their own."""
    resolved = services or _get_services()
    response = process_partial_response(
        event=event,
        record_handler=lambda record: sync_record(record, resolved),
        processor=processor,
        context=context,
    )
    failures = response.get("batchItemFailures", [])
    if failures:
        logger.warning(
            "batch finished with failures", failed=len(failures), total=len(event.get("Records", []))
        )
    return response
