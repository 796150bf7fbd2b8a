"""MongoCacheStore on the real server (FerretDB locally): incremental writes, concurrency, leases, size."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import bson
import pytest
from bson import ObjectId
from pymongo.database import Database

from bytemark_cache.adapters.mongo_store import MongoCacheStore, connect
from bytemark_cache.domain.model import (
    REVISION_FIELD,
    Element,
    FetchedPasses,
    ListChanges,
    ListName,
    LogEntry,
    SyncPlan,
)
from bytemark_cache.domain.sync import apply_plan, plan_sync
from bytemark_cache.errors import ConcurrentModification, StoreError

if TYPE_CHECKING:
    from tests.integration.conftest import CommandRecorder

pytestmark = pytest.mark.integration

USER = 4242
T0 = 1_718_400_000


# -- builders -------------------------------------------------------------------------------------


def make_pass(uuid: str, status: str = "USABLE", *, version: int = 0, filler: int = 1500) -> dict[str, Any]:
    """A Bytemark-like pass of roughly ``filler`` bytes."""
    return {
        "uuid": uuid,
        "status": status,
        "first_use": None,
        "expiration": None,
        "label_name": "Local Single Ride",
        "time_created": "2024-06-01T10:00:00.000Z",
        "time_modified": f"2024-06-01T10:00:{version:02d}.000Z",
        "order_item": {"price": 250, "currency": "USD", "version": version},
        "barcode": "x" * filler,
    }


def make_element(
    uuid: str, status: str = "USABLE", *, version: int = 0, ts: int = T0, filler: int = 1500
) -> Element:
    """A cache element wrapping ``make_pass``."""
    payload = make_pass(uuid, status, version=version, filler=filler)
    return {
        "pass_uuid": uuid,
        "timestamp": ts,
        "status": status,
        "free_ticket_status": 0,
        "payload": payload,
        "payload_hash": hashlib.md5(json.dumps(payload).encode()).hexdigest(),
    }


def changed(element: Element, *, status: str = "USING", ts: int = T0 + 60) -> Element:
    """``element`` after a sync saw a new version of its pass (unknown fields kept)."""
    version = int(element["payload"]["order_item"]["version"]) + 1
    fresh = make_element(element["pass_uuid"], status, version=version, ts=ts)
    return {**element, **{name: fresh[name] for name in ("status", "payload", "payload_hash", "timestamp")}}


def log_entry(
    uuid: str, action: str = "updated", ts: int = T0 + 60, list_: ListName = "passes", user: int = USER
) -> LogEntry:
    """A change-log entry for ``uuid``."""
    return LogEntry(user, ts, uuid, "USING", action, list_, "new-hash", "old-hash")  # type: ignore[arg-type]


def unchanged(name: ListName, final: list[Element]) -> ListChanges:
    """An array the plan leaves alone."""
    return ListChanges(name=name, final=final)


def create_plan(passes: list[Element], passes4: list[Element] | None = None, *, user: int = USER) -> SyncPlan:
    """A build: every element logged as created."""
    passes4 = passes4 or []
    log = [log_entry(e["pass_uuid"], "created", T0, "passes", user) for e in passes]
    log += [log_entry(e["pass_uuid"], "created", T0, "passes4", user) for e in passes4]
    return SyncPlan(
        user_id=user,
        timestamp=T0,
        base_revision=None,
        passes=ListChanges(name="passes", final=passes, appended=list(passes)),
        passes4=ListChanges(name="passes4", final=passes4, appended=list(passes4)),
        log=log,
    )


def revision_of(document: dict[str, Any]) -> int:
    """The revision a plan computed from ``document`` carries."""
    return int(document.get(REVISION_FIELD, 0))


def raw(store_db: Database[dict[str, Any]], collection: str, user: int = USER) -> dict[str, Any]:
    """The stored document exactly as it is (with ``_id``)."""
    document = store_db[collection].find_one({"user_id": user})
    assert document is not None
    return document


# -- create ---------------------------------------------------------------------------------------


def test_create_inserts_document_at_revision_one_and_logs_each_pass(
    mongo_cache_store: MongoCacheStore,
) -> None:
    passes = [make_element(f"p{i}") for i in range(3)]
    passes4 = [make_element("old-1", "EXPIRED")]

    mongo_cache_store.apply(create_plan(passes, passes4))

    document = mongo_cache_store.load(USER)
    assert document == {
        "user_id": USER,
        "timestamp": T0,
        "passes": passes,
        "passes4": passes4,
        REVISION_FIELD: 1,
    }
    log = mongo_cache_store.read_log(USER, 10)
    assert sorted((entry["uuid"], entry["action"], entry["list"]) for entry in log) == [
        ("old-1", "created", "passes4"),
        ("p0", "created", "passes"),
        ("p1", "created", "passes"),
        ("p2", "created", "passes"),
    ]


def test_create_over_an_existing_document_is_a_concurrent_modification(
    mongo_cache_store: MongoCacheStore,
) -> None:
    mongo_cache_store.apply(create_plan([make_element("first")]))

    with pytest.raises(ConcurrentModification):
        mongo_cache_store.apply(create_plan([make_element("second")]))

    document = mongo_cache_store.load(USER)
    assert document is not None
    assert [e["pass_uuid"] for e in document["passes"]] == ["first"]
    assert [entry["uuid"] for entry in mongo_cache_store.read_log(USER, 10)] == ["first"]


# -- what a sync sends ----------------------------------------------------------------------------


def test_noop_sync_sends_one_small_update_and_no_log(
    mongo_cache_store: MongoCacheStore,
    monitored_cache_store: MongoCacheStore,
    command_recorder: CommandRecorder,
    collection_names: tuple[str, str, str],
) -> None:
    passes = [make_element(f"p{i}") for i in range(100)]
    mongo_cache_store.apply(create_plan(passes))
    before = mongo_cache_store.load(USER)
    assert before is not None
    command_recorder.clear()

    monitored_cache_store.apply(
        SyncPlan(
            USER, T0 + 3600, revision_of(before), unchanged("passes", passes), unchanged("passes4", []), []
        )
    )

    sent = command_recorder.named("update", "insert", "delete", "findAndModify", "find")
    cache_name, _log_name, lease_name = collection_names
    # Claim the revision, update the cache document, release the claim; nothing for the log.
    assert [(name, command[name]) for name, command, _ in sent] == [
        ("insert", lease_name),
        ("update", cache_name),
        ("delete", lease_name),
    ]
    _, command, update_size = sent[1]
    assert len(command["updates"]) == 1
    assert command["updates"][0]["u"] == {"$set": {"timestamp": T0 + 3600}, "$inc": {REVISION_FIELD: 1}}
    assert update_size < 400
    total = sum(size for _, _, size in sent)
    after = mongo_cache_store.load(USER)
    assert after is not None
    assert after["timestamp"] == T0 + 3600
    assert after[REVISION_FIELD] == before[REVISION_FIELD] + 1
    assert after["passes"] == passes
    assert len(mongo_cache_store.read_log(USER, 200)) == 100  # the build's entries only
    print(
        f"\n[measure] no-op sync, 100 passes: {len(sent)} commands, update {update_size} B, total {total} B"
    )


def test_one_changed_pass_among_100_sends_only_that_elements_fields(
    mongo_cache_store: MongoCacheStore,
    monitored_cache_store: MongoCacheStore,
    command_recorder: CommandRecorder,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    passes = [make_element(f"p{i}") for i in range(100)]
    mongo_cache_store.apply(create_plan(passes))
    document_size = len(bson.encode(raw(mongo_db, collection_names[0])))
    new_element = changed(passes[57])
    final = [*passes[:57], new_element, *passes[58:]]
    command_recorder.clear()

    monitored_cache_store.apply(
        SyncPlan(
            USER,
            T0 + 60,
            1,
            ListChanges("passes", final, updated=[(57, new_element)]),
            unchanged("passes4", []),
            [log_entry("p57")],
        )
    )

    sent = command_recorder.named("update", "insert", "delete", "findAndModify", "find")
    cache_name, log_name, lease_name = collection_names
    assert [(name, command[name]) for name, command, _ in sent] == [
        ("insert", lease_name),
        ("update", cache_name),
        ("delete", lease_name),
        ("insert", log_name),
    ]
    _, update_command, update_size = sent[1]
    (statement,) = update_command["updates"]
    assert set(statement["u"]["$set"]) == {
        "passes.57.status",
        "passes.57.payload",
        "passes.57.payload_hash",
        "passes.57.timestamp",
        "timestamp",
    }
    assert update_size < document_size / 50
    _, insert_command, insert_size = sent[3]
    total = sum(size for _, _, size in sent)
    assert len(insert_command["documents"]) == 1
    assert mongo_cache_store.load(USER) == {
        "user_id": USER,
        "timestamp": T0 + 60,
        "passes": final,
        "passes4": [],
        REVISION_FIELD: 2,
    }
    print(
        f"\n[measure] one changed pass of 100 (document {document_size} B): {len(sent)} commands, "
        f"update {update_size} B, log insert {insert_size} B, total {total} B"
    )


# -- the apply order ------------------------------------------------------------------------------


def test_updated_removed_and_appended_in_both_arrays_at_once(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    passes = [make_element(f"p{i}", filler=100) for i in range(6)]
    passes4 = [make_element(f"h{i}", "EXPIRED", filler=100) for i in range(4)]
    mongo_cache_store.apply(create_plan(passes, passes4))
    stored_before = raw(mongo_db, collection_names[0])
    p1, p4 = changed(passes[1]), changed(passes[4], status="USES_GONE")
    h3 = changed(passes4[3], status="EXPIRED")
    new_pass, new_history = make_element("p-new", filler=100), make_element("h-new", "EXPIRED", filler=100)
    final_passes = [passes[0], p1, passes[3], p4, new_pass]
    final_passes4 = [passes4[1], passes4[2], h3, make_element("p2", "EXPIRED", filler=100), new_history]
    log = [log_entry("p1"), log_entry("p4"), log_entry("p2", "removed"), log_entry("p5", "removed")]
    log += [log_entry("p-new", "created"), log_entry("h0", "removed", list_="passes4")]

    mongo_cache_store.apply(
        SyncPlan(
            USER,
            T0 + 60,
            1,
            ListChanges(
                "passes", final_passes, updated=[(1, p1), (4, p4)], removed=["p2", "p5"], appended=[new_pass]
            ),
            ListChanges(
                "passes4",
                final_passes4,
                updated=[(3, h3)],
                removed=["h0"],
                appended=[final_passes4[3], new_history],
            ),
            log,
        )
    )

    stored = raw(mongo_db, collection_names[0])
    assert stored["passes"] == final_passes
    assert stored["passes4"] == final_passes4
    assert stored["timestamp"] == T0 + 60
    assert stored["_id"] == stored_before["_id"]
    assert stored[REVISION_FIELD] == 2  # one apply, one revision, however many statements
    assert "sync_pending" not in stored
    assert Counter(entry["action"] for entry in mongo_cache_store.read_log(USER, 100)) == {
        "created": 11,
        "updated": 2,
        "removed": 3,
    }


def test_removing_every_element_and_removing_unknown_uuids(mongo_cache_store: MongoCacheStore) -> None:
    passes = [make_element(f"p{i}", filler=50) for i in range(3)]
    mongo_cache_store.apply(create_plan(passes))

    mongo_cache_store.apply(
        SyncPlan(
            USER,
            T0 + 60,
            1,
            ListChanges("passes", [], removed=["p0", "p1", "p2", "never-stored"]),
            unchanged("passes4", []),
            [],
        )
    )

    document = mongo_cache_store.load(USER)
    assert document is not None
    assert document["passes"] == []


def test_rewrite_replaces_the_whole_array(mongo_cache_store: MongoCacheStore) -> None:
    passes = [make_element(f"p{i}", filler=50) for i in range(4)]
    mongo_cache_store.apply(create_plan(passes))
    reordered = [passes[3], changed(passes[0]), passes[2], make_element("p-new", filler=50)]

    mongo_cache_store.apply(
        SyncPlan(
            USER, T0 + 60, 1, ListChanges("passes", reordered, rewrite=True), unchanged("passes4", []), []
        )
    )

    document = mongo_cache_store.load(USER)
    assert document is not None
    assert document["passes"] == reordered


def test_passes4_bound_drops_the_oldest_history(mongo_cache_store: MongoCacheStore) -> None:
    history = [make_element(f"h{i}", "EXPIRED", filler=50) for i in range(5)]
    mongo_cache_store.apply(create_plan([], history))
    arrivals = [make_element("h5", "EXPIRED", filler=50), make_element("h6", "EXPIRED", filler=50)]
    bounded = [*history[2:], *arrivals]

    mongo_cache_store.apply(
        SyncPlan(
            USER,
            T0 + 60,
            1,
            unchanged("passes", []),
            ListChanges("passes4", bounded, removed=["h0", "h1"], appended=arrivals),
            [log_entry("h5", "created", list_="passes4"), log_entry("h6", "created", list_="passes4")],
        )
    )

    document = mongo_cache_store.load(USER)
    assert document is not None
    assert [e["pass_uuid"] for e in document["passes4"]] == ["h2", "h3", "h4", "h5", "h6"]


def test_unknown_fields_of_older_writers_survive_a_sync(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    element_ids = [ObjectId() for _ in range(4)]
    passes = [{"_id": element_ids[i], **make_element(f"p{i}", filler=50)} for i in range(4)]
    history = [{"_id": ObjectId(), **make_element("h0", "EXPIRED", filler=50)}]
    passes_log = [{"uuid": "p0", "when": "2023-01-01"}]
    # A document the Node service wrote: no revision, Mongoose's __v, its passesLog, element _ids.
    mongo_db[collection_names[0]].insert_one(
        {
            "user_id": USER,
            "timestamp": T0,
            "passes": passes,
            "passes4": history,
            "passesLog": passes_log,
            "__v": 7,
        }
    )
    loaded = mongo_cache_store.load(USER)
    assert loaded is not None
    assert revision_of(loaded) == 0
    p2 = changed(loaded["passes"][2])
    final = [loaded["passes"][0], p2, loaded["passes"][3], make_element("p-new", filler=50)]

    mongo_cache_store.apply(
        SyncPlan(
            USER,
            T0 + 60,
            0,
            ListChanges("passes", final, updated=[(2, p2)], removed=["p1"], appended=[final[-1]]),
            ListChanges("passes4", [make_element("h-new", "EXPIRED", filler=50)], rewrite=True),
            [log_entry("p2")],
        )
    )

    stored = raw(mongo_db, collection_names[0])
    assert stored["passesLog"] == passes_log
    assert stored["__v"] == 7
    assert [e.get("_id") for e in stored["passes"]] == [element_ids[0], element_ids[2], element_ids[3], None]
    assert stored["passes"][1]["status"] == "USING"
    assert stored["passes"] == final
    assert stored[REVISION_FIELD] == 1


# -- agreement with the domain ---------------------------------------------------------------------


def bytemark_pass(uuid: str, day: int, status: str = "USABLE", modified: int = 0) -> dict[str, Any]:
    """A pass as Bytemark sends it, created on June ``day``."""
    return {
        "uuid": uuid,
        "status": status,
        "first_use": None,
        "expiration": None,
        "label_name": "Local Single Ride",
        "time_created": f"2024-06-{day:02d}T10:00:00.000Z",
        "time_modified": f"2024-06-{day:02d}T10:{modified:02d}:00Z",
        "product_uuid": "prod-1",
        "order_item": {"price": 2.5, "cents": 250},
        "barcode": f"{uuid}-" + "b" * 300,
    }


def test_every_kind_of_sync_stores_what_the_domain_says(mongo_cache_store: MongoCacheStore) -> None:
    current = {uuid: bytemark_pass(uuid, day) for uuid, day in [("p1", 1), ("p2", 2), ("p4", 4), ("p5", 5)]}
    expired = {uuid: bytemark_pass(uuid, day, "EXPIRED") for uuid, day in [("h1", 1), ("h2", 2)]}
    now = T0

    def sync_and_compare() -> SyncPlan:
        nonlocal now
        now += 60
        old = mongo_cache_store.load(USER)
        plan = plan_sync(
            USER,
            old,
            FetchedPasses(list(current.values()), list(expired.values())),
            now,
            passes4_limit=4,
        )
        mongo_cache_store.apply(plan)
        assert mongo_cache_store.load(USER) == apply_plan(old, plan)
        return plan

    assert sync_and_compare().creates  # build
    assert not sync_and_compare().log  # nothing changed at Bytemark
    current["p2"] = bytemark_pass("p2", 2, "USING", modified=5)  # changed
    del current["p4"]  # gone
    current["p6"] = bytemark_pass("p6", 6)  # new
    expired["p5"] = bytemark_pass("p5", 5, "EXPIRED", modified=9)  # moved to history
    del current["p5"]
    plan = sync_and_compare()
    assert plan.passes.updated
    assert plan.passes.removed
    assert plan.passes.appended
    assert not plan.passes.rewrite
    for day in range(7, 11):  # history beyond the bound of 4: the oldest go
        expired[f"h{day}"] = bytemark_pass(f"h{day}", day, "EXPIRED")
    plan = sync_and_compare()
    assert plan.passes4.removed
    current["p0"] = bytemark_pass("p0", 1)  # older than kept passes: the order needs a rewrite
    current["p0"]["time_created"] = "2024-05-31T00:00:00Z"
    assert sync_and_compare().passes.rewrite
    stored = mongo_cache_store.load(USER)
    assert stored is not None
    assert [e["pass_uuid"] for e in stored["passes"]] == ["p0", "p1", "p2", "p6"]
    assert [e["pass_uuid"] for e in stored["passes4"]] == ["h7", "h8", "h9", "h10"]


def test_a_node_document_syncs_as_the_domain_says(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    fresh = [bytemark_pass("p1", 1), bytemark_pass("p2", 2, "USING", modified=3), bytemark_pass("p3", 3)]
    stale = [bytemark_pass("p1", 1), bytemark_pass("p2", 2), bytemark_pass("p9", 9)]
    built = plan_sync(USER, None, FetchedPasses(stale, []), T0, passes4_limit=10)
    node_document = {
        "user_id": USER,
        "timestamp": T0,
        "passes": [{"_id": ObjectId(), **element} for element in built.passes.final],
        "passes4": [],
        "passesLog": [{"note": "kept"}],
        "__v": 3,
    }
    mongo_db[collection_names[0]].insert_one(node_document)
    old = mongo_cache_store.load(USER)

    plan = plan_sync(USER, old, FetchedPasses(fresh, []), T0 + 60, passes4_limit=10)
    mongo_cache_store.apply(plan)

    stored = mongo_cache_store.load(USER)
    assert stored == apply_plan(old, plan)
    assert stored is not None
    assert stored["passesLog"] == [{"note": "kept"}]
    assert [element.get("_id") is not None for element in stored["passes"]] == [True, True, False]


# -- optimistic concurrency -----------------------------------------------------------------------


def test_stale_revision_raises_and_writes_nothing(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    passes = [make_element(f"p{i}", filler=50) for i in range(3)]
    mongo_cache_store.apply(create_plan(passes))
    mongo_cache_store.apply(
        SyncPlan(USER, T0 + 1, 1, unchanged("passes", passes), unchanged("passes4", []), [])
    )
    before = raw(mongo_db, collection_names[0])
    log_before = mongo_cache_store.read_log(USER, 100)
    p0 = changed(passes[0])

    with pytest.raises(ConcurrentModification):
        mongo_cache_store.apply(
            SyncPlan(
                USER,
                T0 + 60,
                1,  # computed from revision 1, but the document is at 2 now
                ListChanges(
                    "passes",
                    [p0, passes[2], make_element("p-new")],
                    updated=[(0, p0)],
                    removed=["p1"],
                    appended=[make_element("p-new")],
                ),
                unchanged("passes4", []),
                [log_entry("p0")],
            )
        )

    assert raw(mongo_db, collection_names[0]) == before
    assert mongo_cache_store.read_log(USER, 100) == log_before


def test_base_revision_zero_does_not_match_a_document_that_has_a_revision(
    mongo_cache_store: MongoCacheStore,
) -> None:
    mongo_cache_store.apply(create_plan([make_element("p0", filler=50)]))

    with pytest.raises(ConcurrentModification):
        mongo_cache_store.apply(
            SyncPlan(USER, T0 + 1, 0, unchanged("passes", []), unchanged("passes4", []), [])
        )


def test_updating_a_missing_document_is_a_concurrent_modification(mongo_cache_store: MongoCacheStore) -> None:
    with pytest.raises(ConcurrentModification):
        mongo_cache_store.apply(SyncPlan(USER, T0, 3, unchanged("passes", []), unchanged("passes4", []), []))
    assert mongo_cache_store.load(USER) is None


@pytest.mark.parametrize("round_", range(8))
def test_two_writers_from_the_same_base_exactly_one_wins(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
    round_: int,
) -> None:
    passes = [make_element(f"p{i}", filler=200) for i in range(10)]
    mongo_cache_store.apply(create_plan(passes))
    base = mongo_cache_store.load(USER)
    assert base is not None

    def plan_of(writer: str, updated_index: int, removed_index: int) -> SyncPlan:
        # Three statements each (positional sets, pull, push): the chain is what must not interleave.
        element = changed(passes[updated_index], status=f"USING-{writer}")
        appended = make_element(f"new-{writer}", filler=200)
        final = [element if i == updated_index else e for i, e in enumerate(passes) if i != removed_index] + [
            appended
        ]
        return SyncPlan(
            USER,
            T0 + 60,
            revision_of(base),
            ListChanges(
                "passes",
                final,
                updated=[(updated_index, element)],
                removed=[passes[removed_index]["pass_uuid"]],
                appended=[appended],
            ),
            unchanged("passes4", []),
            [log_entry(f"new-{writer}", "created")],
        )

    plans = {"a": plan_of("a", 1, 3), "b": plan_of("b", 2, 4)}
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def write(writer: str) -> None:
        barrier.wait()
        try:
            mongo_cache_store.apply(plans[writer])
            outcomes[writer] = "won"
        except ConcurrentModification:
            outcomes[writer] = "lost"

    threads = [threading.Thread(target=write, args=(writer,)) for writer in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes.values()) == ["lost", "won"]
    winner = next(writer for writer, outcome in outcomes.items() if outcome == "won")
    stored = raw(mongo_db, collection_names[0])
    assert stored["passes"] == plans[winner].passes.final
    assert "sync_pending" not in stored
    assert {entry["uuid"] for entry in mongo_cache_store.read_log(USER, 100)} - {
        e["pass_uuid"] for e in passes
    } == {f"new-{winner}"}


def test_a_claim_left_by_a_dead_writer_blocks_until_it_expires(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    mongo_cache_store.apply(create_plan([make_element("p0", filler=50)]))
    leases = mongo_db[collection_names[2]]
    noop = SyncPlan(USER, T0 + 60, 1, unchanged("passes", []), unchanged("passes4", []), [])
    leases.insert_one({"_id": f"revision:{USER}:1", "user_id": USER, "owner": "dead", "expires_at": 4e9})

    with pytest.raises(ConcurrentModification):
        mongo_cache_store.apply(noop)  # a live claim: someone is writing revision 1

    leases.update_one({"_id": f"revision:{USER}:1"}, {"$set": {"expires_at": 1.0}})
    mongo_cache_store.apply(noop)  # the claim expired: taken over

    document = mongo_cache_store.load(USER)
    assert document is not None
    assert document[REVISION_FIELD] == 2
    assert leases.count_documents({}) == 0  # claims are released after the write


def test_a_failed_writer_releases_its_claim(mongo_cache_store: MongoCacheStore) -> None:
    mongo_cache_store.apply(create_plan([make_element("p0", filler=50)]))
    noop = SyncPlan(USER, T0 + 60, 1, unchanged("passes", []), unchanged("passes4", []), [])
    mongo_cache_store.apply(noop)

    with pytest.raises(ConcurrentModification):
        mongo_cache_store.apply(noop)  # revision 1 is gone

    mongo_cache_store.apply(
        SyncPlan(USER, T0 + 120, 2, unchanged("passes", []), unchanged("passes4", []), [])
    )
    document = mongo_cache_store.load(USER)
    assert document is not None
    assert document["timestamp"] == T0 + 120


def race(*actions: Callable[[], object]) -> list[object]:
    """Run ``actions`` in threads released at the same instant; each one's result or exception."""
    barrier = threading.Barrier(len(actions))
    outcomes: list[object] = [None] * len(actions)

    def run(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = actions[index]()
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


@pytest.mark.parametrize("round_", range(6))
def test_mark_pass_status_and_a_sync_never_lose_each_others_write(
    mongo_cache_store: MongoCacheStore, round_: int
) -> None:
    passes = [make_element(f"p{i}", filler=200) for i in range(5)]
    mongo_cache_store.apply(create_plan(passes))
    p1 = changed(passes[1], status="EXPIRING")
    plan = SyncPlan(
        USER,
        T0 + 60,
        1,
        ListChanges("passes", [passes[0], p1, *passes[3:]], updated=[(1, p1)], removed=["p2"]),
        unchanged("passes4", []),
        [],
    )

    synced, marked = race(
        lambda: mongo_cache_store.apply(plan), lambda: mongo_cache_store.mark_pass_status(USER, "p3", "USING")
    )

    assert marked is True  # it re-reads and retries past a sync, so it lands
    document = mongo_cache_store.load(USER)
    assert document is not None
    statuses = {element["pass_uuid"]: element["status"] for element in document["passes"]}
    if synced is None:  # the sync won (it ran first, the mark re-read after it)
        assert statuses == {"p0": "USABLE", "p1": "EXPIRING", "p3": "USING", "p4": "USABLE"}
        assert document[REVISION_FIELD] == 3
    else:  # the mark went first: the sync, computed before it, must not overwrite it
        assert isinstance(synced, ConcurrentModification)
        assert statuses == {"p0": "USABLE", "p1": "USABLE", "p2": "USABLE", "p3": "USING", "p4": "USABLE"}
        assert document[REVISION_FIELD] == 2


# -- the size guard -------------------------------------------------------------------------------


def test_size_guard_trims_the_oldest_passes4_and_warns(
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = 60_000
    store = MongoCacheStore(mongo_db, *collection_names, max_document_bytes=limit)
    store.ensure_indexes()
    passes = [make_element(f"p{i}", filler=1000) for i in range(5)]
    history = [make_element(f"h{i:02d}", "EXPIRED", filler=1000) for i in range(20)]
    store.apply(create_plan(passes, history))
    assert not [r for r in caplog.records if "trimmed" in r.getMessage()]
    arrivals = [make_element(f"h{i:02d}", "EXPIRED", filler=1000) for i in range(20, 60)]

    with caplog.at_level(logging.WARNING, logger="bytemark_cache.adapters.mongo_store"):
        store.apply(
            SyncPlan(
                USER,
                T0 + 60,
                1,
                unchanged("passes", passes),
                ListChanges("passes4", history + arrivals, appended=arrivals),
                [log_entry(e["pass_uuid"], "created", list_="passes4") for e in arrivals],
            )
        )

    stored = raw(mongo_db, collection_names[0])
    size = len(bson.encode(stored))
    assert size <= limit
    kept = [e["pass_uuid"] for e in stored["passes4"]]
    assert kept == [f"h{i:02d}" for i in range(60 - len(kept), 60)]  # the newest, in order
    assert 0 < len(kept) < 60
    assert stored["passes"] == passes
    warnings = [r for r in caplog.records if "passes4 trimmed" in r.getMessage()]
    assert len(warnings) == 1
    assert f"trimmed={60 - len(kept)}" in warnings[0].getMessage()
    assert "barcode" not in warnings[0].getMessage()
    print(
        f"\n[measure] size guard: limit {limit}, stored {size} bytes, kept {len(kept)} of 60 history passes"
    )


# -- reads, status, log ---------------------------------------------------------------------------


def test_cache_timestamps_is_one_projected_query(
    mongo_cache_store: MongoCacheStore,
    monitored_cache_store: MongoCacheStore,
    command_recorder: CommandRecorder,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    for user in (1, 2, 3):
        mongo_cache_store.apply(create_plan([make_element("p", filler=3000)], user=user))
    mongo_db[collection_names[0]].insert_one({"user_id": 4, "timestamp": float(T0 - 5), "passes": []})
    command_recorder.clear()

    found = monitored_cache_store.cache_timestamps([1, 3, 4, 99])

    assert found == {1: T0, 3: T0, 4: T0 - 5}
    (query,) = command_recorder.named("find")
    assert query[1]["filter"] == {"user_id": {"$in": [1, 3, 4, 99]}}
    assert query[1]["projection"] == {"_id": 0, "user_id": 1, "timestamp": 1}
    assert monitored_cache_store.cache_timestamps([]) == {}
    assert len(command_recorder.named("find")) == 1


def test_mark_pass_status_sets_only_that_status(mongo_cache_store: MongoCacheStore) -> None:
    passes = [make_element(f"p{i}", filler=50) for i in range(4)]
    history = [make_element("h0", "EXPIRED", filler=50)]
    mongo_cache_store.apply(create_plan(passes, history))

    assert mongo_cache_store.mark_pass_status(USER, "p2", "USING") is True

    document = mongo_cache_store.load(USER)
    assert document is not None
    expected = [dict(e) for e in passes]
    expected[2]["status"] = "USING"
    assert document["passes"] == expected
    assert document["passes4"] == history
    assert document[REVISION_FIELD] == 2
    assert mongo_cache_store.mark_pass_status(USER, "missing", "USING") is False
    assert mongo_cache_store.mark_pass_status(USER, "h0", "USING") is False  # only `passes` is looked at
    assert mongo_cache_store.mark_pass_status(USER + 1, "p2", "USING") is False


def test_read_log_is_newest_first_limited_and_without_id(mongo_cache_store: MongoCacheStore) -> None:
    mongo_cache_store.apply(create_plan([], user=USER))
    mongo_cache_store.apply(create_plan([make_element("other", filler=10)], user=USER + 1))
    log = [log_entry("a", ts=T0 + 100), log_entry("b", ts=T0 + 100), log_entry("c", ts=T0 + 101)]
    log += [log_entry("d", ts=T0 + 99)]
    mongo_cache_store.apply(
        SyncPlan(USER, T0 + 101, 1, unchanged("passes", []), unchanged("passes4", []), log)
    )

    entries = mongo_cache_store.read_log(USER, 3)

    assert [entry["uuid"] for entry in entries] == ["c", "b", "a"]
    assert entries[0] == {**log[2].to_document()}
    assert all("_id" not in entry for entry in entries)
    assert [entry["uuid"] for entry in mongo_cache_store.read_log(USER, 10)] == ["c", "b", "a", "d"]
    assert mongo_cache_store.read_log(USER, 0) == []


# -- leases ---------------------------------------------------------------------------------------


def test_lease_acquire_contend_expire_release(mongo_cache_store: MongoCacheStore) -> None:
    assert mongo_cache_store.acquire_lease(USER, "a", now=100.0, ttl_seconds=30) is True
    assert mongo_cache_store.acquire_lease(USER, "b", now=110.0, ttl_seconds=30) is False
    assert mongo_cache_store.acquire_lease(USER, "a", now=120.0, ttl_seconds=30) is True  # renewal: until 150
    assert mongo_cache_store.acquire_lease(USER, "b", now=149.0, ttl_seconds=30) is False
    assert mongo_cache_store.acquire_lease(USER + 1, "b", now=149.0, ttl_seconds=30) is True  # another user's
    assert (
        mongo_cache_store.acquire_lease(USER, "b", now=150.0, ttl_seconds=30) is True
    )  # expired: taken over

    mongo_cache_store.release_lease(USER, "a")  # not a's any more: no effect
    assert mongo_cache_store.acquire_lease(USER, "a", now=151.0, ttl_seconds=30) is False
    mongo_cache_store.release_lease(USER, "b")
    assert mongo_cache_store.acquire_lease(USER, "a", now=152.0, ttl_seconds=30) is True


def test_concurrent_lease_acquisition_has_exactly_one_winner(mongo_cache_store: MongoCacheStore) -> None:
    contenders = 6
    barrier = threading.Barrier(contenders)
    results: dict[str, bool] = {}

    def contend(owner: str) -> None:
        barrier.wait()
        results[owner] = mongo_cache_store.acquire_lease(USER, owner, now=1000.0, ttl_seconds=30)

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(results) == contenders
    assert sum(results.values()) == 1


def test_throttle_claims_a_slot_once_per_interval(mongo_cache_store: MongoCacheStore) -> None:
    assert mongo_cache_store.throttle("forced-sync:1", now=1000.0, interval_seconds=60) == 0.0
    assert mongo_cache_store.throttle("forced-sync:1", now=1010.0, interval_seconds=60) == pytest.approx(50.0)
    assert mongo_cache_store.throttle("forced-sync:2", now=1010.0, interval_seconds=60) == 0.0  # another key
    assert (
        mongo_cache_store.throttle("forced-sync:1", now=1060.0, interval_seconds=60) == 0.0
    )  # freed: claimed
    assert mongo_cache_store.throttle("forced-sync:1", now=1061.0, interval_seconds=60) == pytest.approx(59.0)
    # Slots do not disturb the user's lease, kept in the same collection.
    assert mongo_cache_store.acquire_lease(1, "a", now=1061.0, ttl_seconds=30) is True


# -- errors ---------------------------------------------------------------------------------------


def test_unreachable_server_raises_store_error_without_the_password() -> None:
    database = connect("mongodb://btc:s3cret-pw@127.0.0.1:9/?authSource=admin", "cache", timeout_ms=300)
    store = MongoCacheStore(database, "c", "l", "s")
    try:
        with pytest.raises(StoreError) as caught:
            store.load(USER)
    finally:
        database.client.close()
    assert "s3cret-pw" not in str(caught.value)
    assert not isinstance(caught.value, ConcurrentModification)


def test_ensure_indexes_makes_user_id_unique_and_indexes_the_log(
    mongo_cache_store: MongoCacheStore,
    mongo_db: Database[dict[str, Any]],
    collection_names: tuple[str, str, str],
) -> None:
    mongo_cache_store.ensure_indexes()  # idempotent

    cache_indexes = mongo_db[collection_names[0]].index_information()
    log_indexes = mongo_db[collection_names[1]].index_information()
    assert any(spec["key"] == [("user_id", 1)] and spec.get("unique") for spec in cache_indexes.values())
    assert any(spec["key"] == [("user_id", 1), ("timestamp", 1)] for spec in log_indexes.values())
