"""user_updates end to end: the ``events/sqs_*.json`` batches through the built function, on real servers.

The answers are checked against SQS's partial-batch contract (``batchItemFailures`` names exactly the
records to retry: the transient failures) and against MongoDB, the Bytemark simulator and the update
queue's DLQ: a malformed message or a permanent failure is sent there by the function itself, at once,
with its ``failure_reason``, and acknowledged. A transient failure is reported and hidden for a growing
delay (``ChangeMessageVisibility``), which needs the record's real receipt handle: the tests that look at
it take their records from a real queue on moto; elsewhere the event files' made-up handles only make the
function log that the delay was not set. The last tests run the local poller (``local/sqs_poller.py``)
over a real queue, so the redelivery delays and the DLQ redrive are SQS's own.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqs_poller import SqsPoller, sqs_event

from bytemark_cache.domain.freshness import REVOKED_RECHECK_SECONDS
from bytemark_simulator import SimulatorServer

from .lambda_emulator import (
    Account,
    Accounts,
    E2eStores,
    EmulatorPool,
    UpdateQueues,
    built_template_settings,
    create_update_queues,
    delete_update_queues,
    load_event,
    message_attribute,
    take_messages,
)

pytestmark = pytest.mark.e2e

FUNCTION = "UserUpdatesFunction"
REASONS = ("purchase", "activation", "backfill", "manual", "refresh")
RETRIED = "sync failed; will be retried"
"""The function's log message for a transient failure (with ``delay_seconds`` and ``receive_count``)."""
DELAY_NOT_SET = "retry delay not set; the queue's visibility timeout applies"


def is_well_formed(body: str) -> bool:
    """Contract §7: a JSON object with a positive integer ``user_id``, a known ``reason``, maybe a
    ``pass_uuid``; other fields are ignored."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    user_id = data.get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        return False
    if data.get("reason") not in REASONS:
        return False
    pass_uuid = data.get("pass_uuid")
    return pass_uuid is None or (isinstance(pass_uuid, str) and bool(pass_uuid.strip()))


def update_body(user_id: int, reason: str = "purchase", pass_uuid: str | None = None) -> str:
    """An update-queue message body as the purchase flow sends it."""
    body: dict[str, Any] = {"user_id": user_id, "reason": reason}
    if pass_uuid is not None:
        body["pass_uuid"] = pass_uuid
    return json.dumps(body)


def batch(*bodies: str) -> dict[str, Any]:
    """An SQS event shaped like ``events/sqs_purchase.json`` with one record per body (fresh message ids)."""
    template = load_event("sqs_purchase.json")["Records"][0]
    records = []
    for body in bodies:
        record = copy.deepcopy(template)
        record["messageId"] = str(uuid.uuid4())
        record["body"] = body
        records.append(record)
    return {"Records": records}


def for_user(name: str, user_id: int, **fields: Any) -> dict[str, Any]:
    """``events/<name>`` with every record's body addressed to ``user_id`` (and ``fields`` replaced)."""
    event = load_event(name)
    for record in event["Records"]:
        body = json.loads(record["body"])
        body.update(user_id=user_id, **fields)
        record["body"] = json.dumps(body)
    return event


def failed_ids(pool: EmulatorPool, event: dict[str, Any]) -> list[str]:
    """Invoke with ``event``; the message ids of ``batchItemFailures`` (the function must not raise)."""
    answer = pool.invoke(FUNCTION, event)
    if answer.get("batchItemFailures"):
        # Shown with a failing test: the function's log says why each record failed.
        print(pool.emulator(FUNCTION).log_tail(80))
    assert set(answer) == {"batchItemFailures"}, answer
    ids = [str(item["itemIdentifier"]) for item in answer["batchItemFailures"]]
    assert len(ids) == len(set(ids)), f"a failure reported twice: {ids}"
    return ids


def take_dead_letters(sqs: Any, dlq_url: str, message_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The DLQ messages the function sent for ``message_ids`` (its ``original_message_id`` attribute),
    taken off the DLQ, by original message id; other messages are left where they are."""

    def sent_for_ours(message: dict[str, Any]) -> bool:
        return message_attribute(message, "original_message_id") in message_ids

    taken = take_messages(sqs, dlq_url, sent_for_ours)
    by_id = {str(message_attribute(message, "original_message_id")): message for message in taken}
    assert len(by_id) == len(taken), "a message was dead-lettered twice"
    return by_id


def upstream_requests(simulator: SimulatorServer, user_id: int) -> int:
    """How many Bytemark API requests the simulator has seen for ``user_id``."""
    counts = simulator.admin.request_counts()["by_user"].get(str(user_id), {})
    return sum(int(value) for value in counts.values())


def element(document: dict[str, Any] | None, pass_uuid: str) -> dict[str, Any]:
    """The ``passes`` element of ``pass_uuid`` in a cache document."""
    assert document is not None
    found: list[dict[str, Any]] = [item for item in document["passes"] if item["pass_uuid"] == pass_uuid]
    assert len(found) == 1, (pass_uuid, [item["pass_uuid"] for item in document["passes"]])
    return found[0]


def build(pool: EmulatorPool, stores: E2eStores, account: Account) -> dict[str, Any]:
    """Build the user's cache with a purchase message; returns the document."""
    assert failed_ids(pool, for_user("sqs_purchase.json", account.user_id)) == []
    document = stores.mongo.document(account.user_id)
    assert document is not None
    return document


# -- one record per trigger ---------------------------------------------------------------------------


def test_a_purchase_message_puts_the_new_pass_in_mongodb(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new(current=2, expired=1)
    built = build(pool, stores, account)
    bought = simulator.admin.purchase(account.user_id, "Local Single Ride")
    assert bought["uuid"] not in [item["pass_uuid"] for item in built["passes"]]
    before_sync = int(time.time())

    assert failed_ids(pool, for_user("sqs_purchase.json", account.user_id)) == []

    document = stores.mongo.document(account.user_id)
    new = element(document, bought["uuid"])
    assert new["payload"] == bought
    assert new["status"] == "USABLE"
    assert document is not None
    assert document["timestamp"] >= built["timestamp"]
    # Every sync plans the next one; a purchase makes the rider active.
    assert before_sync <= document["active_at"] <= int(time.time())
    assert document["timestamp"] < document["next_sync_at"] <= document["timestamp"] + 86400
    # The other passes are untouched: all still there (beside the new one), same hash, same element timestamp.
    before = {item["pass_uuid"]: item for item in built["passes"]}
    assert before, "the built cache held no pass to compare"
    assert {item["pass_uuid"] for item in document["passes"]} == set(before) | {bought["uuid"]}
    for item in document["passes"]:
        if item["pass_uuid"] in before:
            assert item["payload_hash"] == before[item["pass_uuid"]]["payload_hash"]
            assert item["timestamp"] == before[item["pass_uuid"]]["timestamp"]
    logged = [entry for entry in stores.mongo.log_entries(account.user_id) if entry["uuid"] == bought["uuid"]]
    assert [entry["action"] for entry in logged] == ["created"]


def test_an_activation_shows_the_pass_in_use_before_bytemark_confirms_it(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new(current=1, expired=1)
    bought = simulator.admin.purchase(account.user_id, "Local Day Pass")
    before = element(build(pool, stores, account), bought["uuid"])
    assert before["status"] == "USABLE"

    activation = for_user("sqs_activation.json", account.user_id, pass_uuid=bought["uuid"])
    assert json.loads(activation["Records"][0]["body"])["reason"] == "activation"
    assert failed_ids(pool, activation) == []

    # Bytemark still says USABLE: the element shows USING, its payload and hash are Bytemark's as before.
    marked = element(stores.mongo.document(account.user_id), bought["uuid"])
    assert marked["status"] == "USING"
    assert marked["payload_hash"] == before["payload_hash"]
    assert marked["payload"] == before["payload"]

    # Once Bytemark has the activation, the next activation sync takes its payload.
    activated = simulator.admin.activate(account.user_id, bought["uuid"])
    assert failed_ids(pool, activation) == []
    confirmed = element(stores.mongo.document(account.user_id), bought["uuid"])
    assert confirmed["status"] == "USING"
    assert confirmed["payload"] == activated
    assert confirmed["payload_hash"] != before["payload_hash"]


def test_a_revoked_token_is_acknowledged_and_the_cache_kept(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new()
    built = build(pool, stores, account)
    simulator.admin.revoke(account.user_id)
    asked = upstream_requests(simulator, account.user_id)
    event = for_user("sqs_purchase.json", account.user_id)
    event["Records"][0]["messageId"] = str(uuid.uuid4())  # to look for on the DLQ

    assert failed_ids(pool, event) == []

    assert upstream_requests(simulator, account.user_id) > asked, "the sync must have been attempted"
    # The cache is kept as it was; only its next background sync moved a day ahead.
    document = stores.mongo.document(account.user_id)
    assert document is not None
    postponed = document.pop("next_sync_at")
    assert abs(postponed - (int(time.time()) + REVOKED_RECHECK_SECONDS)) <= 60, postponed
    assert document == {key: value for key, value in built.items() if key != "next_sync_at"}
    # Acknowledged, not dead-lettered: a replaced token makes the next sync work.
    assert take_dead_letters(stores.sqs, stores.queues.dlq_url, [event["Records"][0]["messageId"]]) == {}


# -- batches ------------------------------------------------------------------------------------------


def test_the_mixed_batch_dead_letters_its_malformed_records_and_syncs_the_rest(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    event = load_event("sqs_mixed_batch.json")
    # A record a newer producer sends, with fields this version does not know: they are ignored.
    extended = copy.deepcopy(event["Records"][0])
    extended["body"] = json.dumps(
        {"user_id": 45, "reason": "purchase", "source": "web", "sent_at": "2026-12-01T20:00:00Z"}
    )
    event["Records"].append(extended)
    # Every user the file names becomes a real user of this test, so a malformed record that a lax
    # parser accepted would sync someone: the test would see it. Fresh message ids find the dead letters.
    users: dict[int, Account] = {}
    for record in event["Records"]:
        record["messageId"] = str(uuid.uuid4())
        try:
            body = json.loads(record["body"])
        except ValueError:
            continue
        if isinstance(body, dict) and str(body.get("user_id", "")).isdigit():
            named = int(body["user_id"])
            if named not in users:
                users[named] = accounts.new(current=1, expired=0)
            account = users[named]
            body["user_id"] = str(account.user_id) if isinstance(body["user_id"], str) else account.user_id
            record["body"] = json.dumps(body)
    malformed = {
        record["messageId"]: record for record in event["Records"] if not is_well_formed(record["body"])
    }
    well_formed = [record for record in event["Records"] if is_well_formed(record["body"])]
    assert malformed
    assert well_formed

    failures = failed_ids(pool, event)

    # A malformed record can never succeed: it is on the DLQ with the reason, and acknowledged.
    assert failures == []
    dead = take_dead_letters(stores.sqs, stores.queues.dlq_url, list(malformed))
    assert sorted(dead) == sorted(malformed)
    for message_id, letter in dead.items():
        assert letter["Body"] == malformed[message_id]["body"]
        reason = message_attribute(letter, "failure_reason")
        assert reason is not None
        assert reason.startswith("malformed message: "), reason
    synced = {json.loads(record["body"])["user_id"] for record in well_formed}
    assert users[45].user_id in synced
    for user_id in synced:
        assert stores.mongo.document(user_id) is not None, f"user {user_id} was not synced"
    for account in users.values():
        if account.user_id not in synced:
            assert upstream_requests(simulator, account.user_id) == 0
            assert stores.mongo.document(account.user_id) is None


def test_a_bytemark_outage_for_one_user_fails_only_that_record(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    down, up = accounts.new(), accounts.new()
    simulator.admin.set_fault("http_503", user_id=down.user_id)
    event = batch(update_body(down.user_id), update_body(up.user_id, "manual"))
    down_id, _up_id = (record["messageId"] for record in event["Records"])

    assert failed_ids(pool, event) == [down_id]

    assert stores.mongo.document(down.user_id) is None
    assert stores.mongo.document(up.user_id) is not None
    assert upstream_requests(simulator, down.user_id) > 0
    # Transient: retried later (the delay is logged; the made-up handle cannot carry it), never dead-lettered.
    [retried] = [record for record in pool.log_records(FUNCTION, RETRIED) if record["message_id"] == down_id]
    assert retried["receive_count"] == 1
    assert take_dead_letters(stores.sqs, stores.queues.dlq_url, [down_id]) == {}


def test_a_batch_whose_every_record_fails_reports_the_transient_ones_and_dead_letters_the_rest(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    first, second = accounts.new(), accounts.new()
    for account in (first, second):
        simulator.admin.set_fault("http_503", user_id=account.user_id)
    event = batch(update_body(first.user_id), update_body(second.user_id, "backfill"), '{"user_id": 0}')
    first_id, second_id, malformed_id = (record["messageId"] for record in event["Records"])

    failures = failed_ids(pool, event)

    assert sorted(failures) == sorted([first_id, second_id])
    dead = take_dead_letters(stores.sqs, stores.queues.dlq_url, [first_id, second_id, malformed_id])
    assert list(dead) == [malformed_id]
    assert dead[malformed_id]["Body"] == '{"user_id": 0}'
    assert stores.mongo.document(first.user_id) is None
    assert stores.mongo.document(second.user_id) is None


def test_full_batches_of_distinct_users_sync_every_user_into_its_own_cache(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    # The records of a batch are synced concurrently: every one must still read its own user's token
    # and land in its own user's cache. Several full batches (SQS's maximum of 10) give races a chance.
    for _round in range(3):
        users = [accounts.new(current=1, expired=1) for _ in range(10)]
        event = batch(*(update_body(user.user_id) for user in users))

        assert failed_ids(pool, event) == []

        for user in users:
            document = stores.mongo.document(user.user_id)
            assert document is not None, f"user {user.user_id} was acknowledged but not synced"
            current, expired = (simulator.admin.passes(user.user_id)[name] for name in ("current", "expired"))
            assert sorted(item["pass_uuid"] for item in document["passes"]) == sorted(
                item["uuid"] for item in current if item["status"] != "EXPIRED"
            ), f"user {user.user_id}'s cache holds passes that are not theirs"
            assert sorted(item["pass_uuid"] for item in document["passes4"]) == sorted(
                item["uuid"] for item in expired
            )


# -- real queues: redelivery delays and the DLQ ---------------------------------------------------------


@pytest.fixture
def own_queues(pool: EmulatorPool, stores: E2eStores) -> Iterator[Callable[[int], UpdateQueues]]:
    """Makes update queues (each with its DLQ, the template's visibility) for one test; deleted afterwards."""
    made: list[UpdateQueues] = []
    source = built_template_settings(pool.build_dir).sqs_sources[FUNCTION]

    def make(max_receive_count: int) -> UpdateQueues:
        queues = create_update_queues(
            stores.sqs,
            "btc-e2e-uu-",
            max_receive_count=max_receive_count,
            visibility_timeout_seconds=source.visibility_timeout_seconds,
        )
        made.append(queues)
        return queues

    try:
        yield make
    finally:
        for queues in made:
            delete_update_queues(stores.sqs, queues)


def on_queues(pool: EmulatorPool, queues: UpdateQueues, **settings: str) -> EmulatorPool:
    """Emulators whose update queue and DLQ are ``queues`` (plus ``settings``); close them."""
    return pool.derive({"UPDATE_QUEUE_URL": queues.url, "UPDATE_DLQ_URL": queues.dlq_url, **settings})


def receive(sqs: Any, url: str, *, visibility_timeout: int) -> list[dict[str, Any]]:
    """What a consumer receiving now gets (at most 10 messages, no waiting), with every attribute."""
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=0,
        VisibilityTimeout=visibility_timeout,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    return messages


def rate_limit_for_an_hour(simulator: SimulatorServer, user_id: int) -> None:
    """Bytemark answers 429 with Retry-After of an hour: a transient failure that fails at once (no wait
    is worth it inside an invocation), so these tests spend no time in the client's retries."""
    simulator.admin.set_fault("rate_limit", user_id=user_id, retry_after=3600)


def queue_arn(sqs: Any, url: str) -> str:
    """The queue's ARN (the ``eventSourceARN`` of its records)."""
    arn: str = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return arn


def retry_delay(functions: EmulatorPool, message_id: str, receive_count: int) -> int:
    """The redelivery delay the function logged for ``message_id``'s ``receive_count``-th receive."""
    logged = [
        record
        for record in functions.log_records(FUNCTION, RETRIED)
        if record["message_id"] == message_id and record["receive_count"] == receive_count
    ]
    assert len(logged) == 1, logged
    assert not [r for r in functions.log_records(FUNCTION, DELAY_NOT_SET) if r["message_id"] == message_id]
    return int(logged[0]["delay_seconds"])


def test_a_transient_failure_hides_its_message_for_the_redelivery_delay_which_grows(
    pool: EmulatorPool,
    simulator: SimulatorServer,
    accounts: Accounts,
    stores: E2eStores,
    own_queues: Callable[[int], UpdateQueues],
) -> None:
    sqs = stores.sqs
    queues = own_queues(built_template_settings(pool.build_dir).sqs_sources[FUNCTION].max_receive_count or 10)
    # The template's rule with a shorter base (as the local stack's LOCAL_REDELIVERY_BASE_SECONDS does),
    # so the message's return can be watched: the first delay is 2..3 s, the second 3..6 s.
    base = 3
    functions = on_queues(pool, queues, REDELIVERY_BASE_SECONDS=str(base), REDELIVERY_CAP_SECONDS="60")
    account = accounts.new()
    rate_limit_for_an_hour(simulator, account.user_id)
    message_id = sqs.send_message(QueueUrl=queues.url, MessageBody=update_body(account.user_id))["MessageId"]
    try:
        # Received as Lambda's poller would, but held far longer (2 minutes) than the delay to come.
        [message] = receive(sqs, queues.url, visibility_timeout=120)
        assert message["Attributes"]["ApproximateReceiveCount"] == "1"
        arn = queue_arn(sqs, queues.url)

        assert failed_ids(functions, sqs_event([message], arn, "us-east-1")) == [message_id]
        answered = time.monotonic()

        # Not visible again right away ...
        assert receive(sqs, queues.url, visibility_timeout=120) == []
        delay = retry_delay(functions, message_id, 1)
        assert base / 2 <= delay <= base, delay
        # ... but back after about the function's delay, long before the 2 minutes it was received for.
        again: list[dict[str, Any]] = []
        while not again and time.monotonic() < answered + 30:
            time.sleep(0.2)
            again = receive(sqs, queues.url, visibility_timeout=120)
        back_after = time.monotonic() - answered
        [redelivered] = again
        assert redelivered["MessageId"] == message_id
        assert redelivered["Attributes"]["ApproximateReceiveCount"] == "2"
        assert delay - 1 <= back_after <= delay + 2, (delay, back_after)

        # The second failure of the same message waits longer (the doubled ceiling, with equal jitter).
        assert failed_ids(functions, sqs_event([redelivered], arn, "us-east-1")) == [message_id]
        assert receive(sqs, queues.url, visibility_timeout=120) == []
        assert base <= retry_delay(functions, message_id, 2) <= 2 * base
        assert receive(sqs, queues.dlq_url, visibility_timeout=0) == [], (
            "a transient failure is never dead-lettered"
        )
    finally:
        functions.close()


def test_through_a_real_queue_malformed_is_dead_lettered_at_once_and_transient_is_redriven_by_sqs(
    pool: EmulatorPool,
    simulator: SimulatorServer,
    accounts: Accounts,
    stores: E2eStores,
    own_queues: Callable[[int], UpdateQueues],
) -> None:
    sqs = stores.sqs
    queues = own_queues(2)  # the template's redrive, after 2 receives instead of 10
    # Redelivery after 1 s; the poller's own receive visibility (30 s) would be far longer: a transient
    # message can only come back in time if the function shortened it.
    functions = on_queues(pool, queues, REDELIVERY_BASE_SECONDS="1", REDELIVERY_CAP_SECONDS="1")
    account, down = accounts.new(current=2, expired=1), accounts.new()
    rate_limit_for_an_hour(simulator, down.user_id)
    malformed_body = json.dumps({"user_id": f"not-a-user-{uuid.uuid4().hex}", "reason": "purchase"})
    sent = {
        "malformed": sqs.send_message(QueueUrl=queues.url, MessageBody=malformed_body)["MessageId"],
        "valid": sqs.send_message(QueueUrl=queues.url, MessageBody=update_body(account.user_id))["MessageId"],
        "transient": sqs.send_message(QueueUrl=queues.url, MessageBody=update_body(down.user_id))[
            "MessageId"
        ],
    }
    deliveries: Counter[str] = Counter()

    def invoke(event: dict[str, Any]) -> Any:
        deliveries.update(record["messageId"] for record in event["Records"])
        return functions.invoke(FUNCTION, event)

    poller = SqsPoller(sqs, queues.url, invoke, visibility_timeout=30, wait_seconds=1)
    redriven: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    try:
        while not redriven:
            assert time.monotonic() < deadline, (
                f"not redriven in time; deliveries {dict(deliveries)}, poller {poller.stats}"
            )
            poller.poll_once()
            redriven = take_messages(sqs, queues.dlq_url, lambda m: m["MessageId"] == sent["transient"])
    finally:
        functions.close()

    # The malformed message: delivered once, acknowledged, and on the DLQ with the function's reason.
    assert deliveries[sent["malformed"]] == 1
    assert sent["malformed"] not in poller.stats.failure_ids
    dead = take_dead_letters(sqs, queues.dlq_url, [sent["malformed"]])
    assert dead[sent["malformed"]]["Body"] == malformed_body
    assert (message_attribute(dead[sent["malformed"]], "failure_reason") or "").startswith(
        "malformed message: "
    )
    # The valid message was synced and deleted: never delivered again.
    assert deliveries[sent["valid"]] == 1
    assert sent["valid"] not in poller.stats.failure_ids
    assert stores.mongo.document(account.user_id) is not None
    # The transient one was reported each time, came back after the function's delay, and SQS's redrive
    # moved it to the DLQ after maxReceiveCount receives, as it was (no reason: SQS, not the function).
    assert deliveries[sent["transient"]] == queues.max_receive_count
    assert poller.stats.failure_ids.count(sent["transient"]) == queues.max_receive_count
    [moved] = redriven
    assert moved["Body"] == update_body(down.user_id)
    assert message_attribute(moved, "failure_reason") is None
    assert stores.mongo.document(down.user_id) is None
    assert receive(sqs, queues.url, visibility_timeout=0) == []
