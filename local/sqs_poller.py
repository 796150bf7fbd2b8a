"""Feeds an SQS queue (moto locally) to a function with Lambda's event-source-mapping semantics.

Receive up to ``batch_size`` messages, invoke with an SQS event, delete the records that did not fail
(``ReportBatchItemFailures``), leave the failures to reappear after the visibility timeout; the queue's
redrive policy moves a message to the DLQ after ``maxReceiveCount`` receives. A function error leaves the
whole batch, as Lambda does.
"""

from __future__ import annotations

import hashlib
import logging
import threading
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
        visibility_timeout: int = 2,
        wait_seconds: int = 1,
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._invoke = invoke
        self._batch_size = batch_size
        # Locally failures come back after a couple of seconds instead of the deployed queue's timeout.
        self._visibility_timeout = visibility_timeout
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

    def poll_once(self) -> int:
        """Receive one batch and process it; the number of messages received."""
        received = self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=self._batch_size,
            WaitTimeSeconds=self._wait_seconds,
            VisibilityTimeout=self._visibility_timeout,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
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
