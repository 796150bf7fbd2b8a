"""The update queue on Amazon SQS: sending (``SqsUpdateQueue``) and redelivery (``SqsRedelivery``).

Messages go out in ``SendMessageBatch`` calls of at most 10; entries SQS reports as failed (and whole
calls that failed) are sent again a bounded number of times with jittered exponential backoff. A message
the consumer could not process comes back after a growing delay (``ChangeMessageVisibility``) or, when it
can never succeed, goes to the dead-letter queue at once. boto3 clients are created on first use, so a
test's endpoint or moto mock is in place by then.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from bytemark_cache.domain.backoff import backoff_delay
from bytemark_cache.domain.model import UpdateMessage
from bytemark_cache.errors import StoreError

logger = logging.getLogger(__name__)

BATCH_SIZE: Final = 10
"""SQS's limit of entries per SendMessageBatch."""


class SqsUpdateQueue:
    """UpdateQueue on SQS: batched sends, failed entries retried, a StoreError naming what never went."""

    def __init__(
        self,
        queue_url: str,
        *,
        client: Any | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = 3,
        backoff_seconds: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._queue_url = queue_url
        self._sqs = LazySqsClient(client, endpoint_url, region)
        self._max_attempts = max_attempts
        self._backoff_seconds = backoff_seconds
        self._sleep = sleep
        self._rng = random.Random()

    def enqueue(self, messages: Sequence[UpdateMessage]) -> None:
        """Send every message (batches of 10, failures retried); StoreError names how many never went."""
        # Entry ids are unique across the call, so a failure report maps back to its message.
        entries = [
            (f"m{index}", json.dumps(message.to_body(), separators=(",", ":")))
            for index, message in enumerate(messages)
        ]
        unsent = 0
        last_error = ""
        for start in range(0, len(entries), BATCH_SIZE):
            left, error = self._send_batch(entries[start : start + BATCH_SIZE])
            unsent += left
            last_error = error or last_error
        if unsent:
            raise StoreError(
                f"{unsent} of {len(entries)} update messages were not sent to SQS (last error: {last_error})"
            )

    def _send_batch(self, batch: list[tuple[str, str]]) -> tuple[int, str]:
        """Send one batch, retrying what failed; returns how many never went and the last error seen."""
        pending = batch
        last_error = ""
        for attempt in range(1, self._max_attempts + 1):
            try:
                # Fresh request dicts each time: botocore hooks may alter what they are given.
                response = self._sqs.get().send_message_batch(
                    QueueUrl=self._queue_url,
                    Entries=[{"Id": entry_id, "MessageBody": body} for entry_id, body in pending],
                )
            except Exception as exc:  # noqa: BLE001 - boto3 raises ClientError, BotoCoreError and more
                last_error = _describe(exc)
                failed_ids = {entry_id for entry_id, _ in pending}
            else:
                failures = response.get("Failed") or []
                failed_ids = {failure["Id"] for failure in failures}
                if failures:
                    last_error = f"{failures[-1].get('Code', 'unknown')}: {failures[-1].get('Message', '')}"
            pending = [entry for entry in pending if entry[0] in failed_ids]
            if not pending:
                return 0, last_error
            if attempt < self._max_attempts:
                logger.warning(
                    "SQS entries failed, retrying: failed=%d attempt=%d error=%s",
                    len(pending),
                    attempt,
                    last_error,
                    extra={"failed": len(pending), "attempt": attempt},
                )
                # Full jitter keeps many concurrent senders from retrying in lock-step.
                self._sleep(backoff_delay(attempt - 1, base=self._backoff_seconds, cap=5.0, rng=self._rng))
        return len(pending), last_error


class SqsRedelivery:
    """Redelivery on SQS: a later visibility for transient failures, the DLQ at once for permanent ones."""

    def __init__(
        self,
        queue_url: str,
        dead_letter_queue_url: str | None,
        *,
        client: Any | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        self._queue_url = queue_url
        self._dead_letter_queue_url = dead_letter_queue_url
        self._sqs = LazySqsClient(client, endpoint_url, region)

    def retry_later(self, receipt_handle: str, delay_seconds: int) -> None:
        """Hide the message for ``delay_seconds`` more; StoreError when SQS refused."""
        try:
            self._sqs.get().change_message_visibility(
                QueueUrl=self._queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=delay_seconds
            )
        except Exception as exc:
            raise StoreError(f"SQS ChangeMessageVisibility failed: {_describe(exc)}") from exc

    def dead_letter(self, body: str, reason: str, message_id: str) -> None:
        """Send the body to the DLQ with why and which message it was; StoreError when that failed."""
        if not self._dead_letter_queue_url:
            raise StoreError("no dead-letter queue configured (UPDATE_DLQ_URL)")
        try:
            self._sqs.get().send_message(
                QueueUrl=self._dead_letter_queue_url,
                MessageBody=body,
                MessageAttributes={
                    "failure_reason": {"DataType": "String", "StringValue": reason[:1000] or "unknown"},
                    "original_message_id": {"DataType": "String", "StringValue": message_id or "unknown"},
                },
            )
        except Exception as exc:
            raise StoreError(f"SQS send to the dead-letter queue failed: {_describe(exc)}") from exc


class LazySqsClient:
    """One boto3 SQS client, created on first use (after a test's endpoint or moto mock is in place, and
    off the cold-start path: boto3 costs import time), with short timeouts."""

    def __init__(self, client: Any | None, endpoint_url: str | None, region: str | None) -> None:
        self._client = client
        self._endpoint_url = endpoint_url
        self._region = region

    def get(self) -> Any:
        """The client."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=3, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}
            )
            self._client = boto3.client(
                "sqs", endpoint_url=self._endpoint_url, region_name=self._region, config=config
            )
        return self._client


def _describe(exc: Exception) -> str:
    """Error code and message of a boto3 exception (SQS errors hold no secrets), or its type."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', '')}"
    return f"{type(exc).__name__}: {exc}"
