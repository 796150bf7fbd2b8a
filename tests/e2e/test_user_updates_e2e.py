"""user_updates end to end: the ``events/sqs_*.json`` batches through the built function, on real servers.

The answers are checked against SQS's partial-batch contract (``batchItemFailures`` names exactly the
records to retry) and against MongoDB and the Bytemark simulator. The last test runs the local poller
(``local/sqs_poller.py``) over the real update queue on moto, so the DLQ redrive is SQS's own.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from sqs_poller import SqsPoller

from bytemark_simulator import SimulatorServer

from .lambda_emulator import Account, Accounts, E2eStores, EmulatorPool, load_event

pytestmark = pytest.mark.e2e

FUNCTION = "UserUpdatesFunction"
REASONS = ("purchase", "activation", "backfill", "manual")


def is_well_formed(body: str) -> bool:
    """SPEC §7: a JSON object with a positive integer ``user_id``, a known ``reason``, maybe a pass_uuid."""
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

    assert failed_ids(pool, for_user("sqs_purchase.json", account.user_id)) == []

    document = stores.mongo.document(account.user_id)
    new = element(document, bought["uuid"])
    assert new["payload"] == bought
    assert new["status"] == "USABLE"
    assert document is not None
    assert document["timestamp"] >= built["timestamp"]
    # The other passes are untouched: same hash, same element timestamp.
    before = {item["pass_uuid"]: item for item in built["passes"]}
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

    assert failed_ids(pool, for_user("sqs_purchase.json", account.user_id)) == []

    assert upstream_requests(simulator, account.user_id) > asked, "the sync must have been attempted"
    assert stores.mongo.document(account.user_id) == built


# -- batches ------------------------------------------------------------------------------------------


def test_the_mixed_batch_reports_exactly_its_malformed_records(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    event = load_event("sqs_mixed_batch.json")
    # Every user the file names becomes a real user of this test, so a malformed record that a lax
    # parser accepted would sync someone and go unreported: the test would see it.
    users: dict[int, Account] = {}
    for record in event["Records"]:
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
    malformed = [record["messageId"] for record in event["Records"] if not is_well_formed(record["body"])]
    well_formed = [record for record in event["Records"] if is_well_formed(record["body"])]
    assert malformed
    assert well_formed

    failures = failed_ids(pool, event)

    assert sorted(failures) == sorted(malformed)
    synced = {json.loads(record["body"])["user_id"] for record in well_formed}
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


def test_a_batch_whose_every_record_fails_reports_every_record(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    first, second = accounts.new(), accounts.new()
    for account in (first, second):
        simulator.admin.set_fault("http_503", user_id=account.user_id)
    event = batch(update_body(first.user_id), update_body(second.user_id, "backfill"), '{"user_id": 0}')

    failures = failed_ids(pool, event)

    assert sorted(failures) == sorted(record["messageId"] for record in event["Records"])
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


# -- the queue, the poller and the DLQ ---------------------------------------------------------------


def test_a_malformed_message_reaches_the_dlq_after_max_receives_while_a_valid_one_is_synced(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    sqs, queues = stores.sqs, stores.queues
    account = accounts.new(current=2, expired=1)
    malformed_body = json.dumps({"user_id": f"not-a-user-{uuid.uuid4().hex}", "reason": "purchase"})
    malformed_id = sqs.send_message(QueueUrl=queues.url, MessageBody=malformed_body)["MessageId"]
    valid_id = sqs.send_message(QueueUrl=queues.url, MessageBody=update_body(account.user_id))["MessageId"]
    emulator = pool.emulator(FUNCTION)
    deliveries: Counter[str] = Counter()

    def invoke(event: dict[str, Any]) -> Any:
        deliveries.update(record["messageId"] for record in event["Records"])
        return emulator.invoke(event)

    poller = SqsPoller(sqs, queues.url, invoke, visibility_timeout=1, wait_seconds=1)
    dead: dict[str, Any] | None = None
    deadline = time.monotonic() + 60 + 5 * queues.max_receive_count
    while dead is None:
        assert time.monotonic() < deadline, (
            f"not in the DLQ in time; deliveries {dict(deliveries)}, poller {poller.stats}"
        )
        poller.poll_once()
        dead = _take_from_dlq(sqs, queues.dlq_url, malformed_id)

    assert dead["Body"] == malformed_body
    assert deliveries[malformed_id] == queues.max_receive_count
    assert poller.stats.failure_ids.count(malformed_id) == queues.max_receive_count
    # The valid message was deleted on success: never redelivered although its visibility timeout
    # passed several times while the malformed one was retried.
    assert deliveries[valid_id] == 1
    assert valid_id not in poller.stats.failure_ids
    assert stores.mongo.document(account.user_id) is not None
    assert upstream_requests(simulator, account.user_id) > 0


def _take_from_dlq(sqs: Any, dlq_url: str, message_id: str) -> dict[str, Any] | None:
    """Remove and return the DLQ message ``message_id`` if it is there; other messages are left visible."""
    held: list[dict[str, Any]] = []
    found: dict[str, Any] | None = None
    try:
        # Read past whatever else the shared DLQ holds: each message is held briefly so it is seen once.
        while found is None:
            messages = sqs.receive_message(
                QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
            ).get("Messages", [])
            if not messages:
                break
            for message in messages:
                if message["MessageId"] == message_id:
                    sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
                    found = message
                else:
                    held.append(message)
    finally:
        for message in held:
            sqs.change_message_visibility(
                QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
    return found
