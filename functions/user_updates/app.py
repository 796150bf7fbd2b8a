"""user_updates: SQS batch → sync each named user at once (contract §7), reporting exactly what failed.

Each failure is classified once (``transient`` on the project's errors):
- a revoked token or no Bytemark account: acknowledged and counted (retrying cannot help, the cache stays);
- permanent (a malformed message, an answer that breaks the contract): sent to the dead-letter queue at
  once, with the reason, and acknowledged;
- transient (an outage of Bytemark, MongoDB or MySQL): reported as a batch item failure and hidden for a
  growing delay per receive (``redelivery_delay``), so a message outlives an outage of hours.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from bytemark_cache.bootstrap import LazyServices, Services
from bytemark_cache.domain.backoff import redelivery_delay
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.messages import parse_update_message
from bytemark_cache.errors import (
    BytemarkCacheError,
    InvalidInput,
    NoBytemarkAccount,
    StoreError,
    TokenRevoked,
)
from bytemark_cache.logs import observability

logger, metrics = observability()
SERVICES = LazyServices()

MAX_CONCURRENT_SYNCS = 4
"""Records of one batch synced at once; bounded so Bytemark's rate limit and MySQL see a small burst."""

SAFETY_MARGIN_SECONDS = 5.0
"""The batch's syncs end this long before the function's timeout, so the failures are still reported."""

_rng = random.Random()


class ConcurrentBatchProcessor(BatchProcessor):
    """BatchProcessor that runs the records of a batch on a bounded thread pool.

    Success/failure bookkeeping stays Powertools' own (list appends are atomic), so the report is exact.
    """

    def process(self) -> list[tuple[Any, ...]]:
        with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_SYNCS, thread_name_prefix="sync") as pool:
            return list(pool.map(self._process_record, self.records))


# Every record failing is still a partial answer: report each failure instead of raising for the batch.
processor = ConcurrentBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def sync_record(record: SQSRecord, services: Services, deadline: Deadline) -> str:
    """Sync the user one message names; a transient failure raises (retried later), the rest is settled."""
    logger.thread_safe_clear_keys()
    logger.thread_safe_append_keys(message_id=record.message_id)
    try:
        message = parse_update_message(record.body)
    except InvalidInput as exc:
        return _dead_letter(record, services, f"malformed message: {exc}")
    logger.thread_safe_append_keys(user_id=message.user_id, reason=message.reason)
    try:
        activation = message.reason == "activation" and message.pass_uuid
        if activation and services.tickets.mark_activation(
            message.user_id, message.pass_uuid or "", deadline=deadline
        ):
            metrics.add_metric(name="ActivationsMarked", unit=MetricUnit.Count, value=1)
        result = services.tickets.sync(message.user_id, deadline=deadline, reason=message.reason)
    except TokenRevoked:
        metrics.add_metric(name="BytemarkTokenRevoked", unit=MetricUnit.Count, value=1)
        logger.warning("bytemark token revoked; message acknowledged, cache kept")
        return "token_revoked"
    except NoBytemarkAccount:
        metrics.add_metric(name="NoBytemarkAccount", unit=MetricUnit.Count, value=1)
        logger.warning("user has no Bytemark account; message acknowledged")
        return "no_bytemark_account"
    except BytemarkCacheError as exc:
        if not exc.transient:
            return _dead_letter(record, services, f"{type(exc).__name__}: {exc}")
        _retry_later(record, services, exc)
        raise
    except Exception as exc:
        # Unexpected: logged with its trace, and retried like an outage (the DLQ catches a persistent one).
        logger.exception("sync failed unexpectedly; will be retried")
        _retry_later(record, services, exc)
        raise
    metrics.add_metric(name="UsersSynced", unit=MetricUnit.Count, value=1)
    if result.changed_passes:
        metrics.add_metric(name="ChangedPasses", unit=MetricUnit.Count, value=result.changed_passes)
    logger.info("user synced", source=result.source, changed=result.changed_passes)
    return result.source


def _retry_later(record: SQSRecord, services: Services, exc: BaseException) -> None:
    """Hide the message for the next step of the redelivery schedule (SQS's own timeout if that fails)."""
    receive_count = _receive_count(record)
    settings = services.settings
    delay = redelivery_delay(
        receive_count, _rng, base=settings.redelivery_base_seconds, cap=settings.redelivery_cap_seconds
    )
    metrics.add_metric(name="MessagesRetried", unit=MetricUnit.Count, value=1)
    logger.warning(
        "sync failed; will be retried",
        error=type(exc).__name__,
        receive_count=receive_count,
        delay_seconds=delay,
    )
    if services.redelivery is None:
        return
    try:
        services.redelivery.retry_later(record.receipt_handle, delay)
    except StoreError as error:
        logger.warning("retry delay not set; the queue's visibility timeout applies", error=str(error))


def _dead_letter(record: SQSRecord, services: Services, reason: str) -> str:
    """Send a message that can never succeed to the DLQ at once; if that fails, it is retried instead."""
    logger.error("message can never succeed; sent to the dead-letter queue", reason=reason[:300])
    if services.redelivery is None:
        raise StoreError("no dead-letter queue to send a permanent failure to")
    services.redelivery.dead_letter(record.body, reason, record.message_id)
    metrics.add_metric(name="MessagesDeadLettered", unit=MetricUnit.Count, value=1)
    return "dead_lettered"


def _receive_count(record: SQSRecord) -> int:
    try:
        return max(1, int(record.attributes.approximate_receive_count))
    except (KeyError, TypeError, ValueError):
        return 1


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(
    event: Any, context: LambdaContext, services: Services | None = None
) -> PartialItemFailureResponse:
    """Entry point; ``services`` lets tests pass their own."""
    records = event.get("Records") if isinstance(event, dict) else None
    # Published by every invocation (an empty batch too), so no invocation flushes empty metrics.
    metrics.add_metric(name="MessagesReceived", unit=MetricUnit.Count, value=len(records or []))
    if not isinstance(records, list):
        logger.error("not an SQS event; nothing to process", event_type=type(event).__name__)
        return {"batchItemFailures": []}
    try:
        resolved = services or SERVICES.get()
    except BytemarkCacheError as exc:
        # The whole batch comes back after the queue's visibility timeout (and ends in the DLQ if this lasts).
        logger.error(
            "services unavailable; the batch will be retried", error=type(exc).__name__, reason=str(exc)[:300]
        )
        raise
    now = resolved.tickets.now()
    deadline = Deadline.after(now, context.get_remaining_time_in_millis() / 1000 - SAFETY_MARGIN_SECONDS)
    requests_before = resolved.source.requests_sent
    # A record without a message id can be neither synced nor reported (SQS never sends one): set aside.
    addressable = [
        r for r in records if isinstance(r, dict) and isinstance(r.get("messageId"), str) and r["messageId"]
    ]
    if len(addressable) < len(records):
        logger.error("records without a message id ignored", ignored=len(records) - len(addressable))
    if not addressable:
        return {"batchItemFailures": []}  # Powertools refuses an empty batch
    response = process_partial_response(
        event={**event, "Records": addressable},
        record_handler=lambda record: sync_record(record, resolved, deadline),
        processor=processor,
        context=context,
    )
    sent = resolved.source.requests_sent - requests_before
    if sent:
        metrics.add_metric(name="BytemarkRequests", unit=MetricUnit.Count, value=sent)
    failures = response.get("batchItemFailures", [])
    if failures:
        logger.warning(
            "batch finished with failures", failed=len(failures), total=len(event.get("Records", []))
        )
    return response
