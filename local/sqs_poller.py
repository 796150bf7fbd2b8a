"""Feeds an SQS queue (moto locally) to a function with Lambda's event-source-mapping semantics.

Gather up to ``batch_size`` messages for at most ``batching_window_seconds`` (the template's BatchSize and
MaximumBatchingWindowInSeconds), invoke with an SQS event, delete the records that did not fail
(``ReportBatchItemFailures``) and touch nothing else, as Lambda does:

- a failed record is left exactly as the handler left it: user_updates sets its own redelivery delay
  (``ChangeMessageVisibility``) for a transient failure and sends a permanent one to the DLQ itself, so the
  poller never changes a message's visibility after the invocation;
- a function error (crash, timeout) leaves the whole batch, which comes back after the receive visibility
  timeout (``visibility_timeout``: short locally, see local/stack.py);
- the queue's redrive policy (moto) moves a message to the DLQ once it was received ``maxReceiveCount`` times.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("local.sqs_poller")


@dataclass
class PollStats:
    """What the poller did so far (the demo prints it)."""

    batches: int = 0
    succeeded: int = 0
    failed: int = 0
    function_errors: int = 0
    failure_ids: list[str] = field(default_factory=list)


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The Lambda SQS event for received messages."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "messageAttributes": message.get("MessageAttributes", {}),
                "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message["Body"].encode()).hexdigest(),  # noqa: S324
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for message in messages
        ]
    }


class SqsPoller:
    """One polling loop over one queue for one function."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        invoke: Callable[[dict[str, Any]], Any],
        *,
        batch_size: int = 10,
        batching_window_seconds: float = 0,
        visibility_timeout: int = 2,
        wait_seconds: int = 1,
    ) -> None:
        if not 1 <= batch_size <= 10_000:
            raise ValueError(f"batch_size {batch_size} is outside 1..10000")
        self._sqs = sqs
        self._queue_url = queue_url
        self._invoke = invoke
        self._batch_size = batch_size
        self._batching_window = max(0.0, float(batching_window_seconds))
        # The receive visibility only matters when the whole batch fails (a function error): then the batch
        # comes back after it. Locally that is a couple of seconds instead of the deployed queue's 6 minutes;
        # it must outlast the batching window, or the first messages would reappear while the batch fills.
        self._visibility_timeout = max(int(visibility_timeout), int(self._batching_window) + 1)
        self._wait_seconds = wait_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-poller", daemon=True)
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
        self._queue_arn = attributes["QueueArn"]
        self._region = self._queue_arn.split(":")[3]
        self.stats = PollStats()

    def start(self) -> None:
        """Poll in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Finish the current batch and stop."""
        self._stop.set()
        self._thread.join(timeout=self._wait_seconds + 30)

    def _receive(self, limit: int, wait_seconds: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=min(10, limit),  # SQS's most per call
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=self._visibility_timeout,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        return messages

    def receive_batch(self) -> list[dict[str, Any]]:
        """One batch: wait for a first message, then fill up to ``batch_size`` within the batching window."""
        received = self._receive(self._batch_size, self._wait_seconds)
        if not received:
            return []
        window_ends = time.monotonic() + self._batching_window
        while len(received) < self._batch_size and time.monotonic() < window_ends:
            more = self._receive(self._batch_size - len(received), 0)
            if more:
                received.extend(more)
            elif self._stop.wait(min(0.05, max(0.0, window_ends - time.monotonic()))):
                break
        return received

    def poll_once(self) -> int:
        """Receive one batch and process it; the number of messages received."""
        received = self.receive_batch()
        if not received:
            return 0
        self.stats.batches += 1
        try:
            answer = self._invoke(sqs_event(received, self._queue_arn, self._region))
        except Exception as exc:  # noqa: BLE001 — any function error leaves the batch for redelivery
            self.stats.function_errors += 1
            log.warning("user_updates failed for the whole batch: %s", exc)
            return len(received)
        failed = {item["itemIdentifier"] for item in (answer or {}).get("batchItemFailures", [])}
        done = [message for message in received if message["MessageId"] not in failed]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self._queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        self.stats.succeeded += len(done)
        self.stats.failed += len(failed)
        self.stats.failure_ids.extend(sorted(failed))
        return len(received)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 — keep polling through a moto hiccup, but say so
                log.error("polling failed: %s", exc)
                self._stop.wait(1)
