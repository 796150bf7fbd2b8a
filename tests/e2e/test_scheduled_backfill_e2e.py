"""scheduled_backfill end to end: the ``events/schedule_*.json`` inputs through the built function.

The back-fill of these tests has stores of its own, emptied before each test: a throw-away MySQL database
(so "every user with a token" is exactly the users the test seeds), cache and change-log collections (so
"every due user" and "every old entry" are exactly the test's), an SQS queue (read back to see who was
enqueued, and how often) and a run-progress collection (so run ids of other tests cannot make a run look
finished). One warm emulator serves the module; a test that needs other settings gets its own.
The continuation test runs the local Lambda Invoke API front (``local/gateway.py``) that the function's
boto3 client reaches through ``AWS_ENDPOINT_URL_LAMBDA``.
"""

from __future__ import annotations

import ast
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from emulator import FunctionError, free_port
from gateway import LocalLambdaApi

from bytemark_cache.domain.freshness import FAILED_SYNC_RETRY_SECONDS

from .lambda_emulator import (
    Accounts,
    E2eStores,
    EmulatorPool,
    TokenTable,
    load_event,
    take_messages,
    unique_name,
)

pytestmark = pytest.mark.e2e

FUNCTION = "ScheduledBackfillFunction"


class Backfill:
    """The back-fill's own token table, collections and queue, and emulators that use them."""

    def __init__(self, pool: EmulatorPool, stores: E2eStores) -> None:
        self._pool = pool
        self._stores = stores
        self.tokens = TokenTable(stores.settings, unique_name("btc_test_e2e_bf_"))
        self.queue_url: str = stores.sqs.create_queue(QueueName=unique_name("btc-e2e-backfill-"))["QueueUrl"]
        self.run_collection = unique_name("BackfillRuns_")
        database = stores.mongo.client[stores.mongo.name]
        self.runs = database[self.run_collection]
        self.cache = database[unique_name("BytemarkTicketsCache_")]
        self.log = database[unique_name("BytemarkTicketsLog_")]
        self._pools: list[EmulatorPool] = []
        self._default: EmulatorPool | None = None

    def empty(self) -> None:
        """Remove every token row, cache document, log entry, run record and queued message."""
        self.tokens.clear()
        for collection in (self.cache, self.log, self.runs):
            collection.delete_many({})
        take_messages(self._stores.sqs, self.queue_url, lambda _message: True)

    def functions(
        self, settings: Mapping[str, str] | None = None, *, timeout_seconds: int | None = None
    ) -> EmulatorPool:
        """Emulators wired to this back-fill's table, collections and queue (plus ``settings``), for one
        test (``close_test_functions`` stops them)."""
        derived = self._wired(settings or {}, timeout_seconds)
        self._pools.append(derived)
        return derived

    def _wired(self, settings: Mapping[str, str], timeout_seconds: int | None = None) -> EmulatorPool:
        return self._pool.derive(
            {
                "MYSQL_DATABASE": self.tokens.database,
                "UPDATE_QUEUE_URL": self.queue_url,
                "BACKFILL_RUN_COLLECTION": self.run_collection,
                "CACHE_COLLECTION": self.cache.name,
                "LOG_COLLECTION": self.log.name,
                **settings,
            },
            timeouts=None if timeout_seconds is None else {FUNCTION: timeout_seconds},
        )

    def run(self, event: dict[str, Any]) -> dict[str, Any]:
        """Invoke the back-fill with ``event`` (default wiring, warm across tests) and return its summary."""
        if self._default is None:
            self._default = self._wired({})
        return self._default.invoke(FUNCTION, event)

    def insert_cache(self, user_id: int | str, timestamp: int, **fields: Any) -> None:
        """A minimal contract §4 cache document (no passes) synced at ``timestamp``, plus ``fields``."""
        self.cache.insert_one(
            {"user_id": user_id, "timestamp": timestamp, "passes": [], "passes4": [], **fields}
        )

    def next_sync_at(self, user_id: int | str) -> Any:
        """The stored ``next_sync_at`` of the user's document (None when it has none)."""
        document = self.cache.find_one({"user_id": user_id})
        assert document is not None, user_id
        return document.get("next_sync_at")

    def enqueued(self) -> Counter[int]:
        """How often each user id is on this back-fill's queue, taken off it (every message must be a
        back-fill one)."""
        counts: Counter[int] = Counter()
        for message in take_messages(self._stores.sqs, self.queue_url, lambda _message: True):
            body = json.loads(message["Body"])
            assert body["reason"] == "backfill", body
            assert set(body) <= {"user_id", "reason", "pass_uuid"}, body
            counts[int(body["user_id"])] += 1
        return counts

    def recorded_runs(self) -> int:
        """How many run-progress records the function has written."""
        return self.runs.count_documents({})

    def close_test_functions(self) -> None:
        """Stop the emulators ``functions`` started."""
        pools, self._pools = self._pools, []
        for derived in pools:
            derived.close()

    def close(self) -> None:
        """Stop every emulator and remove the table's database, the queue and the collections."""
        self.close_test_functions()
        if self._default is not None:
            self._default.close()
        self.tokens.drop_database()
        self.tokens.close()
        self._stores.sqs.delete_queue(QueueUrl=self.queue_url)
        database = self._stores.mongo.client[self._stores.mongo.name]
        for collection in (self.run_collection, self.cache.name, self.log.name):
            database.drop_collection(collection)


@pytest.fixture(scope="module")
def backfill_stores(pool: EmulatorPool, stores: E2eStores) -> Iterator[Backfill]:
    """The back-fill's own stores and warm emulator for this module, removed afterwards."""
    own = Backfill(pool, stores)
    try:
        yield own
    finally:
        own.close()


@pytest.fixture
def backfill(backfill_stores: Backfill) -> Iterator[Backfill]:
    """The back-fill with empty stores (whatever an earlier test left is gone)."""
    backfill_stores.empty()
    try:
        yield backfill_stores
    finally:
        backfill_stores.close_test_functions()


def safety_margin_seconds(pool: EmulatorPool) -> int:
    """``SAFETY_MARGIN_MS`` of the built handler, in whole seconds (rounded up)."""
    source = (pool.built(FUNCTION).code_dir / "app.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "SAFETY_MARGIN_MS" for target in node.targets
        ):
            return math.ceil(int(ast.literal_eval(node.value)) / 1000)
    raise AssertionError("the built scheduled_backfill/app.py defines no SAFETY_MARGIN_MS")


# -- the modes -------------------------------------------------------------------------------------------


def test_missing_mode_enqueues_exactly_the_users_with_a_token_and_no_cache(
    backfill: Backfill, accounts: Accounts, stores: E2eStores
) -> None:
    no_cache, cached, null_token, empty_token, also_no_cache = (accounts.new_id() for _ in range(5))
    backfill.tokens.put_many(
        [
            (no_cache, "tok-a"),
            (cached, "tok-b"),
            (null_token, None),
            (empty_token, ""),
            (also_no_cache, "tok-e"),
        ]
    )
    backfill.insert_cache(cached, int(time.time()) - 10 * 86400)

    summary = backfill.run(load_event("schedule_missing.json"))

    assert summary["enqueued"] == 2, summary
    assert summary["scanned"] == 3, summary
    assert summary["cursor"] is None, summary
    assert backfill.enqueued() == Counter({no_cache: 1, also_no_cache: 1})


def test_stale_mode_enqueues_exactly_the_users_whose_cache_is_ttl_old(
    backfill: Backfill, accounts: Accounts, stores: E2eStores
) -> None:
    ttl = stores.mongo.settings.cache_ttl_seconds
    now = int(time.time())
    fresh, just_fresh, at_ttl, long_stale, no_cache, stale_without_token = (
        accounts.new_id() for _ in range(6)
    )
    backfill.tokens.put_many(
        [(user_id, f"tok-{user_id}") for user_id in (fresh, just_fresh, at_ttl, long_stale, no_cache)]
        + [(stale_without_token, None)]
    )
    for user_id, age in (
        (fresh, 60),
        (just_fresh, ttl - 60),
        (at_ttl, ttl),
        (long_stale, 30 * 86400),
        (stale_without_token, 30 * 86400),
    ):
        backfill.insert_cache(user_id, now - age)

    summary = backfill.run(load_event("schedule_stale.json"))

    assert summary["enqueued"] == 2, summary
    assert summary["scanned"] == 5, summary
    assert summary["cursor"] is None, summary
    assert backfill.enqueued() == Counter({at_ttl: 1, long_stale: 1})


def test_invalid_input_answers_an_error_summary_and_enqueues_nothing(
    backfill: Backfill, accounts: Accounts
) -> None:
    user_id = accounts.new_id()
    backfill.tokens.put(user_id, "tok-x")
    event = load_event("schedule_invalid.json")

    summary = backfill.run(event)

    assert summary["error"] == "invalid_input", summary
    assert summary["message"], summary
    assert "enqueued" not in summary or summary["enqueued"] == 0
    assert backfill.enqueued() == Counter()
    assert backfill.recorded_runs() == 0


def test_a_rerun_of_the_same_run_id_enqueues_nobody_twice(
    backfill: Backfill, accounts: Accounts, stores: E2eStores
) -> None:
    ttl = stores.mongo.settings.cache_ttl_seconds
    stale, also_stale = accounts.new_id(), accounts.new_id()
    backfill.tokens.put_many([(stale, "tok-s"), (also_stale, "tok-t")])
    for user_id in (stale, also_stale):
        backfill.insert_cache(user_id, int(time.time()) - ttl - 60)
    event = load_event("schedule_stale.json")
    assert event.get("run_id"), "schedule_stale.json names its run"

    first = backfill.run(event)
    # EventBridge retries the same input; the users are still stale (nobody drained the queue).
    again = backfill.run(event)

    assert first["enqueued"] == 2, first
    assert again["cursor"] is None, again
    assert backfill.enqueued() == Counter({stale: 1, also_stale: 1})


def test_due_mode_enqueues_exactly_the_due_users_and_holds_them(
    backfill: Backfill, accounts: Accounts
) -> None:
    now = int(time.time())
    long_due, just_due, node_document, stored_as_text, later, tomorrow = (accounts.new_id() for _ in range(6))
    backfill.insert_cache(long_due, now - 86400, next_sync_at=now - 3600)
    backfill.insert_cache(just_due, now - 3600, next_sync_at=now - 5)
    backfill.insert_cache(node_document, now - 600)  # written by the Node service: no next_sync_at, so due
    backfill.insert_cache(str(stored_as_text), now - 7200, next_sync_at=now - 60)  # a legacy text user_id
    backfill.insert_cache(later, now - 60, next_sync_at=now + 600)
    backfill.insert_cache(tomorrow, now - 60, next_sync_at=now + 86400)
    due = [long_due, just_due, node_document, stored_as_text]
    event = load_event("schedule_due.json")

    summary = backfill.run(event)

    assert summary["mode"] == "due", summary
    assert summary["enqueued"] == len(due), summary
    assert summary["scanned"] == len(due), summary
    assert summary["cursor"] is None, summary
    assert backfill.enqueued() == Counter(dict.fromkeys(due, 1))
    # Each taken user is held until its queued sync had time to land (and is due again if it failed).
    held_until = now + FAILED_SYNC_RETRY_SECONDS
    for user_id in (long_due, just_due, node_document, str(stored_as_text)):
        assert held_until <= backfill.next_sync_at(user_id) <= held_until + 60, user_id
    assert backfill.next_sync_at(later) == now + 600
    assert backfill.next_sync_at(tomorrow) == now + 86400

    # The next firing (a new run) finds nobody due: the held users are not enqueued twice.
    event["run_id"] = f"{event['run_id']}+5min"
    again = backfill.run(event)
    assert again["enqueued"] == 0, again
    assert backfill.enqueued() == Counter()


def test_prune_mode_deletes_exactly_the_change_log_entries_older_than_the_retention(
    backfill: Backfill, accounts: Accounts, pool: EmulatorPool
) -> None:
    retention_days = int(pool.environment(FUNCTION)["CHANGE_LOG_RETENTION_DAYS"])
    now = int(time.time())
    user_id = accounts.new_id()
    ages_days = {
        "ancient": 3 * retention_days,
        "old": retention_days + 1,
        "kept": retention_days - 1,
        "new": 0,
    }
    backfill.log.insert_many(
        [
            {
                "_id": f"e2e:{user_id}:{name}",
                "user_id": user_id,
                "timestamp": now - days * 86400,
                "uuid": f"pass-{name}",
                "status": "USABLE",
                "action": "created",
                "list": "passes",
                "payload_hash": "0" * 32,
                "previous_hash": None,
            }
            for name, days in ages_days.items()
        ]
    )

    summary = backfill.run(load_event("schedule_prune.json"))

    assert summary["mode"] == "prune", summary
    assert summary["pruned"] == 2, summary
    assert summary["cursor"] is None, summary
    assert sorted(entry["_id"] for entry in backfill.log.find({})) == [
        f"e2e:{user_id}:kept",
        f"e2e:{user_id}:new",
    ]
    assert backfill.enqueued() == Counter()


def test_a_transient_failure_raises_so_eventbridge_retries_the_run(
    backfill: Backfill, accounts: Accounts
) -> None:
    user_id = accounts.new_id()
    backfill.tokens.put(user_id, "tok-x")
    # MySQL unreachable: nothing listens on this port (it was free a moment ago).
    unreachable = backfill.functions({"MYSQL_PORT": str(free_port())})
    event = load_event("schedule_missing.json")

    with pytest.raises(FunctionError) as failed:
        unreachable.invoke(FUNCTION, event)

    assert failed.value.error_type == "BackfillFailed", failed.value
    assert backfill.enqueued() == Counter()
    # Once MySQL answers again, EventBridge's retry of the same input does the work.
    summary = backfill.run(event)
    assert summary["enqueued"] == 1, summary
    assert backfill.enqueued() == Counter({user_id: 1})


# -- resuming near the time limit ---------------------------------------------------------------------


def test_a_run_near_the_time_limit_hands_its_cursor_on_until_every_user_is_enqueued_once(
    backfill: Backfill, accounts: Accounts, stores: E2eStores, pool: EmulatorPool
) -> None:
    # Twelve users, some with a cache (not due) and some without a token (not scanned). Kept small:
    # moto reads a queue of thousands slowly; resuming mid-list from a cursor has its own test below.
    users = [accounts.new_id() for _ in range(12)]
    cached = set(users[::4])
    without_token = set(users[1::5])
    backfill.tokens.put_many(
        [(user_id, None if user_id in without_token else f"tok-{user_id}") for user_id in users]
    )
    for user_id in cached:
        backfill.insert_cache(user_id, int(time.time()))
    due = [user_id for user_id in users if user_id not in cached and user_id not in without_token]

    results: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    finished = threading.Event()
    functions: EmulatorPool | None = None

    def forward(event: dict[str, Any]) -> Any:
        # Lambda's asynchronous invoke of the same function, i.e. the same emulator.
        assert functions is not None
        try:
            result = functions.invoke(FUNCTION, event)
        except BaseException as exc:
            failures.append(exc)
            finished.set()
            raise
        results.append(result)
        if result.get("cursor") is None:
            finished.set()
        return result

    lambda_api = LocalLambdaApi({FUNCTION: forward}, port=0)
    lambda_api.start()
    try:
        # A timeout equal to the safety margin: after each page the remaining time is below it.
        functions = backfill.functions(
            {"AWS_ENDPOINT_URL_LAMBDA": lambda_api.url}, timeout_seconds=safety_margin_seconds(pool)
        )
        first = functions.invoke(FUNCTION, load_event("schedule_missing.json"))
        assert first.get("continued") is True, first
        assert isinstance(first["cursor"], int), first
        assert finished.wait(timeout=120), f"the continuation chain did not finish: {results}"
    finally:
        lambda_api.stop()

    assert failures == [], failures
    requests = [payload for name, payload in lambda_api.invocations]
    assert [name for name, _payload in lambda_api.invocations] == [FUNCTION] * len(requests)
    assert len(requests) == len(results)
    # The last invocation finished the run, so it handed nothing on.
    for previous, request in zip([first, *results[:-1]], requests, strict=True):
        # Each continuation carries the cursor (and run) the previous invocation stopped at.
        assert request == {"mode": "missing", "cursor": previous["cursor"], "run_id": first["run_id"]}
    cursors = [request["cursor"] for request in requests]
    assert cursors == sorted(set(cursors)), f"cursors must only move forward: {cursors}"
    assert set(cursors) <= set(users)
    assert results[-1]["cursor"] is None
    assert results[-1]["enqueued"] == len(due), results[-1]
    assert backfill.enqueued() == Counter(dict.fromkeys(due, 1))


def test_a_run_resumed_from_a_cursor_enqueues_only_the_users_after_it(
    backfill: Backfill, accounts: Accounts
) -> None:
    users = [accounts.new_id() for _ in range(6)]
    backfill.tokens.put_many([(user_id, f"tok-{user_id}") for user_id in users])
    event = load_event("schedule_missing.json")
    event["cursor"] = users[2]

    summary = backfill.run(event)

    assert summary["cursor"] is None, summary
    assert summary["scanned"] == 3, summary
    assert backfill.enqueued() == Counter(dict.fromkeys(users[3:], 1))
