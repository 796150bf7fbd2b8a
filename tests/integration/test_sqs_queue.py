"""SqsUpdateQueue on a real SQS endpoint (moto's server locally): batching, per-entry retries, failures."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from bytemark_cache.adapters.sqs_queue import SqsUpdateQueue
from bytemark_cache.domain.model import UpdateMessage
from bytemark_cache.errors import StoreError
from tests.integration.conftest import QueuePair

pytestmark = pytest.mark.integration


def messages(count: int) -> list[UpdateMessage]:
    """``count`` distinct update messages."""
    return [
        UpdateMessage(user_id=1000 + index, reason="backfill" if index % 2 else "purchase", pass_uuid=None)
        for index in range(count)
    ]


def receive_all(
    client: Any, queue_url: str, expected: int, deadline_seconds: float = 10.0
) -> list[dict[str, Any]]:
    """Every body on the queue: polls until ``expected`` arrived (or a deadline), then once for extras."""
    bodies: list[dict[str, Any]] = []
    deadline = time.monotonic() + deadline_seconds
    while len(bodies) < expected and time.monotonic() < deadline:
        response = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        bodies += [json.loads(message["Body"]) for message in response.get("Messages", [])]
    extra = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    bodies += [json.loads(message["Body"]) for message in extra.get("Messages", [])]
    return bodies


def record_batches(client: Any) -> list[list[str]]:
    """Entry ids of every SendMessageBatch call the client makes from now on."""
    calls: list[list[str]] = []

    def remember(params: dict[str, Any], **_: Any) -> None:
        calls.append([entry["Id"] for entry in params["Entries"]])

    client.meta.events.register("before-parameter-build.sqs.SendMessageBatch", remember)
    return calls


def reject_entries(client: Any, entry_ids: set[str], *, times: int) -> None:
    """Make the server reject each of these entries the first ``times`` times it is sent.

    The entry gets an out-of-range DelaySeconds (SQS allows 0..900), which fails that entry alone.
    """
    rejections = Counter({entry_id: times for entry_id in entry_ids})

    def corrupt(params: dict[str, Any], **_: Any) -> None:
        for entry in params["Entries"]:
            if rejections[entry["Id"]] > 0:
                rejections[entry["Id"]] -= 1
                entry["DelaySeconds"] = 1800

    client.meta.events.register("before-parameter-build.sqs.SendMessageBatch", corrupt)


def no_sleep(_seconds: float) -> None:
    """Backoff without waiting (the retry count, not the wall clock, is under test)."""


def test_25_messages_go_in_three_batches_and_arrive_exactly_once(
    sqs_client: Any, update_queue: QueuePair
) -> None:
    sender = SqsUpdateQueue(update_queue.url, client=sqs_client)
    batches = record_batches(sqs_client)
    sent = messages(25)

    sender.enqueue(sent)

    assert [len(batch) for batch in batches] == [10, 10, 5]
    assert len({entry_id for batch in batches for entry_id in batch}) == 25
    received = receive_all(sqs_client, update_queue.url, 25)
    assert Counter(json.dumps(body, sort_keys=True) for body in received) == Counter(
        json.dumps(message.to_body(), sort_keys=True) for message in sent
    )


def test_body_is_the_spec_message(sqs_client: Any, update_queue: QueuePair) -> None:
    SqsUpdateQueue(update_queue.url, client=sqs_client).enqueue(
        [UpdateMessage(42, "purchase", "p-1"), UpdateMessage(43, "manual")]
    )

    received = receive_all(sqs_client, update_queue.url, 2)
    assert sorted(received, key=lambda body: body["user_id"]) == [
        {"user_id": 42, "reason": "purchase", "pass_uuid": "p-1"},
        {"user_id": 43, "reason": "manual"},
    ]


def test_only_failed_entries_are_sent_again(sqs_client: Any, update_queue: QueuePair) -> None:
    sender = SqsUpdateQueue(update_queue.url, client=sqs_client, sleep=no_sleep)
    reject_entries(sqs_client, {"m3", "m7", "m12"}, times=1)
    batches = record_batches(sqs_client)
    sent = messages(15)

    sender.enqueue(sent)

    # The first batch's call rejected m3 and m7, so they went again alone; m12's batch likewise.
    assert batches == [[f"m{i}" for i in range(10)], ["m3", "m7"], [f"m{i}" for i in range(10, 15)], ["m12"]]
    received = receive_all(sqs_client, update_queue.url, 15)
    assert sorted(body["user_id"] for body in received) == [message.user_id for message in sent]


def test_entries_that_never_go_are_counted_in_the_error(sqs_client: Any, update_queue: QueuePair) -> None:
    sender = SqsUpdateQueue(update_queue.url, client=sqs_client, max_attempts=3, sleep=no_sleep)
    reject_entries(sqs_client, {"m1", "m4"}, times=100)
    batches = record_batches(sqs_client)

    with pytest.raises(StoreError, match=r"^2 of 6 update messages were not sent") as caught:
        sender.enqueue(messages(6))

    assert batches == [[f"m{i}" for i in range(6)], ["m1", "m4"], ["m1", "m4"]]
    assert "DelaySeconds" in str(caught.value)
    received = receive_all(sqs_client, update_queue.url, 4)
    assert sorted(body["user_id"] for body in received) == [1000, 1002, 1003, 1005]


def test_a_missing_queue_is_a_store_error_naming_every_message(
    sqs_client: Any, update_queue: QueuePair
) -> None:
    missing = update_queue.url.rsplit("/", 1)[0] + "/btc-no-such-queue"
    sender = SqsUpdateQueue(missing, client=sqs_client, max_attempts=2, sleep=no_sleep)

    with pytest.raises(StoreError, match=r"^12 of 12 update messages were not sent"):
        sender.enqueue(messages(12))


def test_client_is_built_lazily_from_endpoint_and_region(
    update_queue: QueuePair, sqs_client: Any, local_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # In Lambda the credentials come from the execution role; here from the local dummy settings.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, local_env[name])
    sender = SqsUpdateQueue(
        update_queue.url, endpoint_url=local_env["AWS_ENDPOINT_URL"], region=local_env["AWS_DEFAULT_REGION"]
    )
    sender.enqueue(messages(3))

    assert len(receive_all(sqs_client, update_queue.url, 3)) == 3


def test_nothing_to_send_makes_no_call(sqs_client: Any, update_queue: QueuePair) -> None:
    batches = record_batches(sqs_client)

    SqsUpdateQueue(update_queue.url, client=sqs_client).enqueue([])

    assert batches == []
