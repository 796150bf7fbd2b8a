"""MongoCacheStore on the real server (FerretDB locally): one statement per write, claims, the pending log.

Plans come from the domain (``plan_sync`` on what ``load`` returned), as in the service; what lands in
MongoDB must be exactly ``apply_plan``'s document, sent as one command.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from pymongo.database import Database

from bytemark_cache.adapters.mongo_indexes import REQUIRED_INDEXES, check_indexes, ensure_indexes
from bytemark_cache.adapters.mongo_store import MongoCacheStore, connect
from bytemark_cache.domain.document import read_cache
from bytemark_cache.domain.model import (
    NEXT_SYNC_FIELD,
    PENDING_LOG_FIELD,
    REVISION_FIELD,
    FetchedPasses,
    SyncPlan,
)
from bytemark_cache.domain.plan import apply_plan, plan_status, plan_sync, prepare_fresh
from bytemark_cache.errors import ConcurrentModification, StoreError, UnstorableDocument

if TYPE_CHECKING:
    from tests.integration.conftest import CommandRecorder

pytestmark = pytest.mark.integration

USER = 4242
T0 = 1_718_400_000


def make_pass(
    uuid: str, status: str = "USABLE", *, version: int = 0, day: int = 1, filler: int = 1500
) -> dict[str, Any]:
    """A Bytemark-like pass of roughly ``filler`` bytes."""
    return {
        "uuid": uuid,
        "status": status,
        "first_use": None,
        "expiration": None,
        "label_name": "Local Single Ride",
        "time_created": f"2024-06-{day:02d}T10:00:00.000Z",
        "time_modified": f"2024-06-01T10:00:{version:02d}.000Z",
        "order_item": {"price": 250, "currency": "USD", "version": version},
        "barcode": "x" * filler,
    }


def plan(
    store: MongoCacheStore,
    current: list[dict[str, Any]],
    expired: list[dict[str, Any]] | None = None,
    *,
    now: int = T0,
    limit: int = 50,
) -> SyncPlan:
    """The plan the service would make for ``USER`` from what is stored now."""
    stored = read_cache(store.load(USER), USER, now)
    fresh = prepare_fresh(FetchedPasses(current=current, expired=expired or []))
    return plan_sync(USER, stored, fresh, now, history_limit=limit, write_id=f"w{now}")


def stored(store: MongoCacheStore) -> dict[str, Any]:
    documents = store.load(USER)
    assert len(documents) == 1
    return documents[0]


def write_and_check(store: MongoCacheStore, sync: SyncPlan) -> dict[str, Any]:
    """Write ``sync`` and assert the stored document is exactly the domain's."""
    before = store.load(USER)
    store.write(sync)
    after = stored(store)
    expected = apply_plan(before[0] if before else None, sync)
    internal = ("_id", PENDING_LOG_FIELD)
    assert {k: v for k, v in after.items() if k not in internal} == {
        k: v for k, v in expected.items() if k not in internal
    }
    return after


# -- writes ----------------------------------------------------------------------------------------


def test_create_inserts_revision_one_and_logs_each_pass(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    document = write_and_check(
        mongo_cache_store,
        plan(mongo_cache_store, [make_pass("a"), make_pass("b", day=2)], [make_pass("x", "EXPIRED")]),
    )

    assert document[REVISION_FIELD] == 1
    assert [element["pass_uuid"] for element in document["passes"]] == ["a", "b"]
    log = list(mongo_db[collection_names[1]].find({"user_id": USER}))
    assert sorted((entry["uuid"], entry["action"]) for entry in log) == [
        ("a", "created"),
        ("b", "created"),
        ("x", "created"),
    ]


def test_create_over_an_existing_document_is_a_concurrent_modification(
    mongo_cache_store: MongoCacheStore,
) -> None:
    first = plan(mongo_cache_store, [make_pass("a")])
    second = plan(mongo_cache_store, [make_pass("b")])
    mongo_cache_store.write(first)

    with pytest.raises(ConcurrentModification):
        mongo_cache_store.write(second)
    assert [e["pass_uuid"] for e in stored(mongo_cache_store)["passes"]] == ["a"]


def test_noop_and_one_change_send_one_small_update(
    mongo_cache_store: MongoCacheStore,
    monitored_cache_store: MongoCacheStore,
    command_recorder: CommandRecorder,
) -> None:
    passes = [make_pass(f"p{index:03d}", day=1 + index % 28) for index in range(100)]
    mongo_cache_store.write(plan(mongo_cache_store, passes))
    size = len(str(stored(mongo_cache_store)))

    # The write after a write that logged checks its last entry (a point read), and sends nothing again.
    after_build = plan(monitored_cache_store, passes, now=T0 + 30)
    command_recorder.clear()
    monitored_cache_store.write(after_build)
    assert [name for name, _, _ in command_recorder.named("find", "update", "insert", "delete")] == [
        "find",
        "update",
        "delete",
    ]
    command_recorder.clear()
    monitored_cache_store.write(plan(monitored_cache_store, passes, now=T0 + 60))
    noop = command_recorder.named("update", "insert", "delete")
    passes[7] = make_pass("p007", "USING", version=1, day=8)
    command_recorder.clear()
    monitored_cache_store.write(plan(monitored_cache_store, passes, now=T0 + 120))
    one = command_recorder.named("update", "insert", "delete")

    assert [name for name, _, _ in noop] == ["update", "delete"]  # the write, then the older claims
    assert noop[0][2] < 600
    assert [name for name, _, _ in one] == ["update", "insert", "delete"]  # + the log entry
    assert one[0][2] < 6000 < size
    update = one[0][1]["updates"][0]["u"]
    index = [e["pass_uuid"] for e in stored(mongo_cache_store)["passes"]].index("p007")
    assert {key for key in update["$set"] if key.startswith("passes")} == {
        f"passes.{index}.{field}" for field in ("status", "payload", "payload_hash", "timestamp")
    }


def test_updates_appends_and_removals_in_one_statement_match_the_domain(
    mongo_cache_store: MongoCacheStore,
) -> None:
    mongo_cache_store.write(
        plan(
            mongo_cache_store,
            [make_pass("a"), make_pass("b", day=2), make_pass("c", day=3)],
            [make_pass("x", "EXPIRED")],
        )
    )

    # In place: b changed, d and e appended (newer than everything stored).
    in_place = plan(
        mongo_cache_store,
        [
            make_pass("a"),
            make_pass("b", version=1, day=2),
            make_pass("c", day=3),
            make_pass("d", day=4),
            make_pass("e", day=5),
        ],
        [make_pass("x", "EXPIRED")],
        now=T0 + 10,
    )
    assert not in_place.passes.rewrite
    write_and_check(mongo_cache_store, in_place)

    # A removal (c moved to history) rewrites the array; history gains c.
    moved = plan(
        mongo_cache_store,
        [make_pass("a"), make_pass("b", version=1, day=2), make_pass("d", day=4), make_pass("e", day=5)],
        [make_pass("x", "EXPIRED"), make_pass("c", "EXPIRED", day=3)],
        now=T0 + 20,
    )
    assert moved.passes.rewrite
    document = write_and_check(mongo_cache_store, moved)
    assert [e["pass_uuid"] for e in document["passes"]] == ["a", "b", "d", "e"]
    assert [e["pass_uuid"] for e in document["passes4"]] == ["c", "x"] or [
        e["pass_uuid"] for e in document["passes4"]
    ] == ["x", "c"]


def test_history_bound_keeps_the_newest(mongo_cache_store: MongoCacheStore) -> None:
    history = [make_pass(f"h{day:02d}", "EXPIRED", day=day) for day in range(1, 11)]
    document = write_and_check(mongo_cache_store, plan(mongo_cache_store, [], history, limit=4))

    assert [e["pass_uuid"] for e in document["passes4"]] == ["h07", "h08", "h09", "h10"]


def test_unknown_fields_of_older_writers_survive(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    mongo_db[collection_names[0]].insert_one(
        {
            "user_id": USER,
            "timestamp": T0 - 60,
            "__v": 3,
            "passesLog": [{"note": "kept"}],
            "passes": [
                {
                    "pass_uuid": "a",
                    "timestamp": T0 - 60,
                    "status": "USABLE",
                    "free_ticket_status": 0,
                    "payload": make_pass("a"),
                    "payload_hash": "old",
                    "_id": "element-id",
                }
            ],
            "passes4": [],
        }
    )

    document = write_and_check(mongo_cache_store, plan(mongo_cache_store, [make_pass("a", version=2)]))

    assert (document["__v"], document["passesLog"]) == (3, [{"note": "kept"}])
    assert document["passes"][0]["_id"] == "element-id"
    assert document["passes"][0]["payload_hash"] != "old"


def test_a_write_computed_from_an_older_state_writes_nothing(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    mongo_cache_store.write(plan(mongo_cache_store, [make_pass("a")]))
    late = plan(mongo_cache_store, [make_pass("a"), make_pass("late", day=2)], now=T0 + 10)
    mongo_cache_store.write(plan(mongo_cache_store, [make_pass("a"), make_pass("won", day=3)], now=T0 + 20))
    before = stored(mongo_cache_store)

    with pytest.raises(ConcurrentModification):
        mongo_cache_store.write(late)

    assert stored(mongo_cache_store) == before
    # A writer outside the protocol (the Node service) rewrites the timestamp only: the guard sees it too.
    behind_node = plan(mongo_cache_store, [make_pass("a")], now=T0 + 30)
    mongo_db[collection_names[0]].update_one({"user_id": USER}, {"$set": {"timestamp": T0 + 25}})
    with pytest.raises(ConcurrentModification):
        mongo_cache_store.write(behind_node)


def test_the_pending_log_survives_a_failure_between_the_document_and_the_log(
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
    mongo_cache_store: MongoCacheStore,
) -> None:
    class LogInsertFails(MongoCacheStore):
        """The real store, with the log insert failing exactly once, right after the document write."""

        failed = False

        def _flush_log(self, entries: list[dict[str, Any]], *, ordered: bool) -> None:
            if not self.failed and any(entry["uuid"] == "c" for entry in entries):
                self.failed = True
                raise StoreError("injected: the log insert failed")
            super()._flush_log(entries, ordered=ordered)

    store = LogInsertFails(mongo_db, *collection_names)
    store.write(plan(store, [make_pass("a"), make_pass("b", day=2)]))
    with pytest.raises(StoreError, match="injected"):
        store.write(plan(store, [make_pass("a"), make_pass("c", day=3)], now=T0 + 10))

    document = stored(store)
    assert [e["pass_uuid"] for e in document["passes"]] == ["a", "c"]  # the document write happened...
    assert sorted(entry["uuid"] for entry in document[PENDING_LOG_FIELD]) == ["b", "c"]  # ...its log waits
    log = mongo_db[collection_names[1]]
    assert log.count_documents({"uuid": "c"}) == 0

    store.write(plan(store, [make_pass("a"), make_pass("c", day=3)], now=T0 + 20))  # a no-op sync

    assert log.count_documents({"uuid": "c", "action": "created"}) == 1
    assert log.count_documents({"uuid": "b", "action": "removed"}) == 1
    assert PENDING_LOG_FIELD not in stored(store)
    assert log.count_documents({}) == 4  # a, b created; b removed; c created — nothing twice


def test_a_document_mongodb_refuses_is_refused_whole(mongo_cache_store: MongoCacheStore) -> None:
    mongo_cache_store.write(plan(mongo_cache_store, [make_pass("a")]))
    before = stored(mongo_cache_store)
    sync = plan(mongo_cache_store, [make_pass("a"), make_pass("b", day=2)], now=T0 + 10)
    # Forged past the domain's checks: a NUL key reaches the driver in the middle of the update.
    bad = sync.passes.appended[0]["payload"]
    bad["bad\x00key"] = 1

    with pytest.raises(UnstorableDocument):
        mongo_cache_store.write(sync)

    assert stored(mongo_cache_store) == before


def test_mark_status_touches_only_that_status(mongo_cache_store: MongoCacheStore) -> None:
    mongo_cache_store.write(plan(mongo_cache_store, [make_pass("a"), make_pass("b", day=2)]))
    before = read_cache(mongo_cache_store.load(USER), USER, T0)
    assert before is not None
    mark = plan_status(before, "b", "USING", write_id="m", now=T0)
    assert mark is not None

    document = write_and_check(mongo_cache_store, mark)

    assert document["passes"][1]["status"] == "USING"
    assert document["passes"][1]["payload"] == before.document["passes"][1]["payload"]
    assert document["timestamp"] == before.document["timestamp"]


# -- claims ----------------------------------------------------------------------------------------


def test_claims_one_holder_per_revision_generations_and_release(mongo_cache_store: MongoCacheStore) -> None:
    store = mongo_cache_store
    assert store.claim(USER, 3, "a", T0, 30)
    assert store.claim(USER, 3, "a", T0, 30)  # re-entrant
    assert not store.claim(USER, 3, "b", T0 + 10, 30)
    assert store.claim(USER, 4, "b", T0 + 10, 30)  # another revision is another claim
    # a's claim expires (a died): b takes over with the next generation; c then finds b's.
    assert store.claim(USER, 3, "b", T0 + 31, 30)
    assert not store.claim(USER, 3, "c", T0 + 32, 30)
    store.release(USER, 3, "b")
    assert store.claim(USER, 3, "c", T0 + 33, 30)


def test_concurrent_claims_have_exactly_one_winner(
    local_env: dict[str, str],
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
    mongo_cache_store: MongoCacheStore,
) -> None:
    stores = [
        MongoCacheStore(connect(local_env["MONGODB_URI"], mongo_db.name), *collection_names) for _ in range(8)
    ]
    start = threading.Barrier(len(stores))
    results: Counter[bool] = Counter()

    def contend(store: MongoCacheStore, owner: str) -> None:
        start.wait(10)
        results[store.claim(USER, 9, owner, T0, 30)] += 1

    threads = [threading.Thread(target=contend, args=(store, f"o{n}")) for n, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert results == Counter({True: 1, False: len(stores) - 1})


def test_a_write_forgets_the_claims_of_older_revisions(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    claims = mongo_db[collection_names[2]]
    for revision, now in ((0, T0), (1, T0 + 10), (2, T0 + 20)):
        assert mongo_cache_store.claim(USER, revision, f"o{revision}", now, 30)
        mongo_cache_store.write(plan(mongo_cache_store, [make_pass("a", version=revision)], now=now))

    assert sorted(claim["revision"] for claim in claims.find({"user_id": USER})) == [2]


# -- the back-fill's queries, the log, throttles, indexes -------------------------------------------


def test_take_due_holds_the_oldest_due_and_counts(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    cache = mongo_db[collection_names[0]]
    cache.insert_many(
        [
            {"user_id": 1, NEXT_SYNC_FIELD: T0 - 50},
            {"user_id": 2, NEXT_SYNC_FIELD: T0 + 50},
            {"user_id": "3", NEXT_SYNC_FIELD: T0 - 10},
            {"user_id": 4},  # a Node document: due
            {"user_id": 5, NEXT_SYNC_FIELD: T0},
        ]
    )

    assert mongo_cache_store.count_due(T0) == 4
    first = mongo_cache_store.take_due(T0, 2, T0 + 900)
    rest = mongo_cache_store.take_due(T0, 10, T0 + 900)

    assert sorted(first + rest) == [1, 3, 4, 5]
    assert not set(first) & set(rest)
    assert mongo_cache_store.take_due(T0, 10, T0 + 900) == []
    assert cache.find_one({"user_id": 2})[NEXT_SYNC_FIELD] == T0 + 50  # type: ignore[index]


def test_cache_timestamps_reads_numeric_and_string_ids(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    mongo_db[collection_names[0]].insert_many(
        [{"user_id": 1, "timestamp": T0}, {"user_id": "2", "timestamp": T0 * 1000}]
    )

    assert mongo_cache_store.cache_timestamps([1, 2, 3]) == {1: T0, 2: T0 * 1000}


def test_read_and_prune_the_log(mongo_cache_store: MongoCacheStore) -> None:
    mongo_cache_store.write(plan(mongo_cache_store, [make_pass("a")], now=T0))
    mongo_cache_store.write(plan(mongo_cache_store, [make_pass("a"), make_pass("b", day=2)], now=T0 + 100))

    newest = mongo_cache_store.read_log(USER, 1)
    assert [(entry["uuid"], entry["timestamp"]) for entry in newest] == [("b", T0 + 100)]
    assert "_id" not in newest[0]
    assert mongo_cache_store.prune_log(T0 + 50, 10) == 1
    assert [entry["uuid"] for entry in mongo_cache_store.read_log(USER, 10)] == ["b"]


def test_throttle_claims_a_slot_once_per_interval(mongo_cache_store: MongoCacheStore) -> None:
    assert mongo_cache_store.throttle("k", T0, 10) == 0
    assert mongo_cache_store.throttle("k", T0 + 4, 10) == pytest.approx(6)
    assert mongo_cache_store.throttle("k", T0 + 10, 10) == 0


def test_unreachable_server_raises_store_error_without_the_password() -> None:
    store = MongoCacheStore(
        connect("mongodb://app:hunter2@127.0.0.1:1/", "cache", timeout_ms=200), "c", "l", "k"
    )

    with pytest.raises(StoreError) as raised:
        store.load(USER)
    assert "hunter2" not in str(raised.value)


def test_indexes_are_created_by_the_deploy_step_and_foreign_names_count(
    mongo_db: Database[dict[str, Any]], collection_names: tuple[str, str, str]
) -> None:
    cache, log, claims = collection_names
    roles = {"cache": cache, "log": log, "claims": claims}
    mongo_db[cache].create_index([("user_id", 1)], unique=True, name="nodeUserIdIdx")

    before = {finding.spec.name: finding.status for finding in check_indexes(mongo_db, roles)}
    created = {finding.spec.name: finding.status for finding in ensure_indexes(mongo_db, roles)}
    again = {finding.spec.name: finding.status for finding in ensure_indexes(mongo_db, roles)}

    assert before["user_id_unique"] == "present"
    assert {name for name, status in before.items() if status == "missing"} == {
        spec.name for spec in REQUIRED_INDEXES
    } - {"user_id_unique"}
    assert created["user_id_unique"] == "present"
    assert set(again.values()) == {"present"}
    assert "nodeUserIdIdx" in mongo_db[cache].index_information()
