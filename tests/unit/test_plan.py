"""plan_sync / apply_plan end to end: the sync decision (contract §6), fixed scenarios and seeded random ones.

Ported from the tests of the old ``domain/sync.py`` (``test_sync_plan.py``): every behaviour assertion is
kept; the shape assertions follow the new plan (``updated`` is ``(index, {field: value})``, removals and
builds are rewrites, appends go at ``stored_length`` on, log entries carry an ``entry_id``).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Mapping
from typing import Any

import pytest

from bytemark_cache.domain import passes as passes_module
from bytemark_cache.domain import plan as plan_module
from bytemark_cache.domain.document import StoredCache, read_cache
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.model import REVISION_FIELD, CacheDocument, FetchedPasses, Pass, SyncPlan
from bytemark_cache.domain.plan import apply_plan, element_key, plan_sync, prepare_fresh
from bytemark_cache.errors import UpstreamError

USER = 42
T0 = 1_718_425_800
LIMIT = 200
WRITE_ID = "w"


def make_pass(uuid: str, day: int, status: str = "USABLE", **extra: Any) -> Pass:
    """A Bytemark-like pass created on June ``day`` 2024 (parsed from JSON text, like a real fetch)."""
    pass_ = {
        "uuid": uuid,
        "status": status,
        "first_use": None,
        "expiration": None,
        "label_name": "Local Single Ride",
        "time_created": f"2024-06-{day:02d}T10:00:00.000Z",
        "time_modified": f"2024-06-{day:02d}T10:00:00.000Z",
        "order_item": {"price": 250, "sale_price": 2.5},
        **extra,
    }
    parsed: Pass = json.loads(json.dumps(pass_))
    return parsed


def fetch(current: list[Pass], expired: list[Pass] | None = None) -> FetchedPasses:
    """A fresh fetch: every pass re-parsed, as a new HTTP answer would be."""
    return FetchedPasses(
        current=[json.loads(json.dumps(p)) for p in current],
        expired=[json.loads(json.dumps(p)) for p in expired or []],
    )


def stored_of(document: CacheDocument | None, now: int) -> StoredCache | None:
    """The document as the service reads it (None: no document)."""
    if document is None:
        return None
    stored = read_cache([document], USER, now)
    assert stored is not None, "the test document is not the user's"
    return stored


def plan_for(
    document: CacheDocument | None, fetched: FetchedPasses, now: int, limit: int = LIMIT
) -> SyncPlan:
    """The plan a sync of ``document`` against ``fetched`` makes."""
    return plan_sync(
        USER, stored_of(document, now), prepare_fresh(fetched), now, history_limit=limit, write_id=WRITE_ID
    )


def build(current: list[Pass], expired: list[Pass] | None = None, limit: int = LIMIT) -> CacheDocument:
    """The document a first sync writes (with the ``_id`` MongoDB gives it)."""
    document = apply_plan(None, plan_for(None, fetch(current, expired), T0, limit))
    document["_id"] = "oid-1"
    return document


def sync(
    old: CacheDocument, fetched: FetchedPasses, now: int, limit: int = LIMIT
) -> tuple[SyncPlan, CacheDocument]:
    """Plan and apply one sync; the applied arrays are always the plan's final ones."""
    plan = plan_for(old, fetched, now, limit)
    applied = apply_plan(old, plan)
    assert applied["passes"] == plan.passes.final
    assert applied["passes4"] == plan.history.final
    return plan, applied


def is_noop(plan: SyncPlan) -> bool:
    """The plan changes no element (only top-level fields such as the timestamp are set)."""
    return not (plan.creates or plan.passes.changed or plan.history.changed or plan.log)


def uuids(array: list[Any]) -> list[str]:
    return [element["pass_uuid"] for element in array]


def log_view(plan: SyncPlan) -> list[tuple[str, str, str]]:
    return [(entry.action, entry.list, entry.uuid) for entry in plan.log]


# --- build ---------------------------------------------------------------------------------------


def test_fresh_build_sorts_v1_and_puts_expired_in_history() -> None:
    v1 = [make_pass("c", 3), make_pass("a", 1), make_pass("gone", 2, status="EXPIRED"), make_pass("b", 2)]
    v4 = [make_pass("x2", 5, status="EXPIRED"), make_pass("x1", 4, status="EXPIRED")]
    fetched = fetch(v1, v4)
    plan = plan_sync(USER, None, prepare_fresh(fetched), T0, history_limit=LIMIT, write_id=WRITE_ID)

    assert plan.creates
    assert plan.guard is None
    assert plan.revision == 1
    assert plan.fields == {"timestamp": T0}
    assert uuids(plan.passes.final) == ["a", "b", "c"]
    assert uuids(plan.history.final) == ["gone", "x1", "x2"]
    # A build writes whole arrays: nothing is positional.
    for changes in plan.lists():
        assert changes.rewrite
        assert changes.updated == []
        assert changes.appended == []
    assert sorted(log_view(plan)) == sorted(
        [("created", "passes", u) for u in "abc"] + [("created", "passes4", u) for u in ["gone", "x1", "x2"]]
    )
    assert all(entry.previous_hash is None and entry.timestamp == T0 for entry in plan.log)
    assert all(entry.user_id == USER for entry in plan.log)
    assert [entry.entry_id for entry in plan.log] == [f"{USER}:1:{WRITE_ID}:{n}" for n in range(6)]
    assert plan.changed_passes == 6
    by_uuid = {p["uuid"]: p for p in [*fetched.current, *fetched.expired]}
    for element in plan.passes.final + plan.history.final:
        assert element["payload"] is by_uuid[element["pass_uuid"]]
        assert element["payload_hash"] == payload_hash(element["payload"])
        assert element["timestamp"] == T0
        assert element["free_ticket_status"] == 0
        assert element["status"] == element["payload"]["status"]
        assert list(element) == [
            "pass_uuid",
            "timestamp",
            "status",
            "free_ticket_status",
            "payload",
            "payload_hash",
        ]
    document = apply_plan(None, plan)
    # Field order is MongoDB's business; the set of fields is the contract.
    assert set(document) == {"user_id", "timestamp", "passes", "passes4", REVISION_FIELD}
    assert document["user_id"] == USER
    assert document["timestamp"] == T0
    assert document[REVISION_FIELD] == 1


def test_empty_account_builds_an_empty_document() -> None:
    plan = plan_for(None, fetch([], []), T0)
    assert plan.creates
    assert plan.log == []
    assert plan.changed_passes == 0
    assert not is_noop(plan)  # a build always writes the document
    assert apply_plan(None, plan) == {
        "user_id": USER,
        "timestamp": T0,
        "passes": [],
        "passes4": [],
        REVISION_FIELD: 1,
    }


# --- sync ----------------------------------------------------------------------------------------


def test_no_op_sync_changes_nothing_but_the_timestamp() -> None:
    v1 = [make_pass("a", 1), make_pass("b", 2)]
    v4 = [make_pass("x", 1, status="EXPIRED")]
    old = build(v1, v4)
    plan, applied = sync(old, fetch(v1, v4), T0 + 60)
    assert is_noop(plan)
    assert plan.changed_passes == 0
    assert plan.log == []
    assert plan.revision == 2
    assert plan.guard is not None
    assert plan.guard.document_id == "oid-1"
    assert plan.guard.fields == {REVISION_FIELD: 1, "timestamp": T0}
    assert plan.guard.missing == ()
    assert plan.fields == {"timestamp": T0 + 60}
    assert applied["passes"] == old["passes"]
    assert applied["passes4"] == old["passes4"]
    assert all(element["timestamp"] == T0 for element in applied["passes"] + applied["passes4"])
    assert applied["timestamp"] == T0 + 60
    assert applied[REVISION_FIELD] == 2


def test_activation_updates_one_element_in_place_and_logs_once() -> None:
    v1 = [make_pass("a", 1), make_pass("b", 2), make_pass("c", 3)]
    old = build(v1)
    old["passes"][1]["_id"] = "legacy-id"
    old["passes"][1]["free_ticket_status"] = 1
    activated = make_pass("b", 2, status="USING", first_use="2024-06-15T12:00:00Z")
    plan, applied = sync(old, fetch([v1[0], activated, v1[2]]), T0 + 100)

    # Only the wrapper fields a sync replaces are written, at the element's stored index.
    assert plan.passes.updated == [
        (
            1,
            {
                "status": "USING",
                "payload": activated,
                "payload_hash": payload_hash(activated),
                "timestamp": T0 + 100,
            },
        )
    ]
    assert not plan.passes.appended
    assert not plan.passes.rewrite
    assert not plan.history.changed
    assert len(plan.log) == 1
    assert plan.changed_passes == 1
    entry = plan.log[0]
    assert (entry.action, entry.list, entry.uuid, entry.status) == ("updated", "passes", "b", "USING")
    assert entry.previous_hash == old["passes"][1]["payload_hash"]
    assert entry.payload_hash == payload_hash(activated)
    assert entry.entry_id == f"{USER}:2:{WRITE_ID}:0"
    assert applied["passes"][0] is old["passes"][0]
    assert applied["passes"][0]["timestamp"] == T0
    element = applied["passes"][1]
    assert element["_id"] == "legacy-id"
    assert element["free_ticket_status"] == 1
    assert element["status"] == "USING"
    assert element["timestamp"] == T0 + 100


def test_new_purchase_is_appended() -> None:
    v1 = [make_pass("a", 1), make_pass("b", 2)]
    old = build(v1)
    plan, applied = sync(old, fetch([*v1, make_pass("new", 9)]), T0 + 5)
    assert uuids(plan.passes.appended) == ["new"]
    assert plan.passes.stored_length == 2
    assert not plan.passes.rewrite
    assert not plan.passes.updated
    assert log_view(plan) == [("created", "passes", "new")]
    assert uuids(applied["passes"]) == ["a", "b", "new"]
    assert applied["passes"][2]["timestamp"] == T0 + 5


def test_new_pass_older_than_existing_ones_rewrites_in_order() -> None:
    v1 = [make_pass("a", 1), make_pass("c", 3)]
    old = build(v1)
    plan, applied = sync(old, fetch([*v1, make_pass("b", 2)]), T0 + 5)
    assert plan.passes.rewrite
    assert uuids(plan.passes.final) == ["a", "b", "c"] == uuids(applied["passes"])
    assert log_view(plan) == [("created", "passes", "b")]


def test_pass_moving_from_v1_to_v4_is_removed_then_created_once() -> None:
    v1 = [make_pass("a", 1), make_pass("b", 2)]
    old = build(v1, [make_pass("x", 1, status="EXPIRED")])
    expired_b = make_pass("b", 2, status="EXPIRED")
    plan, applied = sync(old, fetch([v1[0]], [make_pass("x", 1, status="EXPIRED"), expired_b]), T0 + 7)

    assert plan.passes.rewrite  # a removal rewrites the array
    assert log_view(plan) == [("removed", "passes", "b"), ("created", "passes4", "b")]
    removed_entry, created_entry = plan.log
    assert removed_entry.payload_hash is None
    assert removed_entry.previous_hash == old["passes"][1]["payload_hash"]
    assert removed_entry.status == "USABLE"
    assert created_entry.status == "EXPIRED"
    assert created_entry.payload_hash == payload_hash(expired_b)
    assert created_entry.previous_hash is None
    assert uuids(applied["passes"]) == ["a"]
    assert uuids(applied["passes4"]).count("b") == 1
    # The history grows by an append: x is older than b.
    assert not plan.history.rewrite
    assert uuids(plan.history.appended) == ["b"]

    # The next sync sees it in history only: nothing more happens.
    again, _ = sync(applied, fetch([v1[0]], [make_pass("x", 1, status="EXPIRED"), expired_b]), T0 + 8)
    assert is_noop(again)


def test_pass_in_both_lists_of_one_fetch_is_kept_once_as_its_v4_copy() -> None:
    in_v1 = make_pass("p", 2, status="USING", first_use="2024-06-02T11:00:00Z")
    in_v4 = make_pass("p", 2, status="EXPIRED", first_use="2024-06-02T11:00:00Z")
    fetched = fetch([make_pass("a", 1), in_v1], [in_v4])
    plan = plan_sync(USER, None, prepare_fresh(fetched), T0, history_limit=LIMIT, write_id=WRITE_ID)
    assert uuids(plan.passes.final) == ["a"]
    assert uuids(plan.history.final) == ["p"]
    assert plan.history.final[0]["payload"] is fetched.expired[0]
    assert plan.history.final[0]["status"] == "EXPIRED"
    assert sorted(log_view(plan)) == [("created", "passes", "a"), ("created", "passes4", "p")]


def test_expired_status_in_v1_goes_to_history() -> None:
    old = build([make_pass("a", 1), make_pass("b", 2)])
    plan, applied = sync(old, fetch([make_pass("a", 1), make_pass("b", 2, status="EXPIRED")]), T0 + 1)
    assert uuids(applied["passes"]) == ["a"]
    assert uuids(applied["passes4"]) == ["b"]
    assert log_view(plan) == [("removed", "passes", "b"), ("created", "passes4", "b")]


def test_duplicate_uuids_in_a_fetch_keep_the_latest_modified() -> None:
    early = make_pass("d", 2, status="USABLE", time_modified="2024-06-02T10:00:00Z")
    late = make_pass("d", 2, status="USING", time_modified="2024-06-02T11:00:00.000Z")
    for order in ([early, late], [late, early]):
        plan = plan_for(None, fetch([make_pass("a", 1), *order]), T0)
        assert uuids(plan.passes.final) == ["a", "d"]
        assert plan.passes.final[1]["status"] == "USING"
        assert len(plan.log) == 2


def test_duplicate_elements_in_the_stored_array_are_collapsed_by_a_rewrite() -> None:
    old = build([make_pass("a", 1), make_pass("b", 2)])
    old["passes"].append(copy.deepcopy(old["passes"][0]))
    plan, applied = sync(old, fetch([make_pass("a", 1), make_pass("b", 2)]), T0 + 1)
    assert plan.passes.rewrite
    assert plan.log == []
    assert uuids(applied["passes"]) == ["a", "b"]
    assert is_noop(sync(applied, fetch([make_pass("a", 1), make_pass("b", 2)]), T0 + 2)[0])


def test_duplicate_elements_keep_the_first_copy() -> None:
    old = build([make_pass("a", 1)])
    first = old["passes"][0]
    first["_id"] = "first"
    later = {**copy.deepcopy(first), "_id": "later", "payload_hash": "stale"}
    old["passes"].append(later)
    plan, applied = sync(old, fetch([make_pass("a", 1)]), T0 + 1)
    assert [element["_id"] for element in applied["passes"]] == ["first"]
    assert plan.log == []  # the first copy's hash matches: the copy going is no change at Bytemark


def test_account_emptied_at_bytemark_removes_current_and_keeps_history() -> None:
    old = build([make_pass("a", 1)], [make_pass("x", 1, status="EXPIRED")])
    plan, applied = sync(old, fetch([], []), T0 + 1)
    assert log_view(plan) == [("removed", "passes", "a")]
    assert applied["passes"] == []
    assert uuids(applied["passes4"]) == ["x"]
    assert not plan.history.changed


def test_stored_payload_is_never_rehashed() -> None:
    # Only the stored payload_hash is compared: a payload read back from MongoDB (doubles, altered
    # key order) must not make an unchanged pass look changed.
    old = build([make_pass("a", 1)])
    old["passes"][0]["payload"] = {"order_item": {"price": 250.0}, "uuid": "a"}
    plan, _ = sync(old, fetch([make_pass("a", 1)]), T0 + 1)
    assert is_noop(plan)


def test_each_fresh_pass_is_hashed_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[str] = []

    def counting_hash(pass_: Pass) -> str:
        hashed.append(pass_["uuid"])
        return payload_hash(pass_)

    old = build([make_pass("a", 1), make_pass("b", 2)], [make_pass("x", 1, status="EXPIRED")])
    stored = stored_of(old, T0 + 1)
    monkeypatch.setattr(plan_module, "payload_hash", counting_hash)
    monkeypatch.setattr(passes_module, "compute_payload_hash", counting_hash)
    v1 = [make_pass("a", 1), make_pass("b", 2, status="USING"), make_pass("c", 3), make_pass("x", 1)]
    v4 = [make_pass("x", 1, status="EXPIRED"), make_pass("y", 2, status="EXPIRED")]
    fresh = prepare_fresh(fetch(v1, v4))
    assert sorted(hashed) == ["a", "b", "c", "x", "y"]
    hashed.clear()
    plan_sync(USER, stored, fresh, T0 + 1, history_limit=LIMIT, write_id=WRITE_ID)
    assert hashed == []  # the planner uses prepare_fresh's hashes


def test_pass_current_again_leaves_history() -> None:
    old = build([make_pass("a", 1)], [make_pass("x", 1, status="EXPIRED")])
    plan, applied = sync(old, fetch([make_pass("a", 1), make_pass("x", 1)], []), T0 + 1)
    assert uuids(applied["passes"]) == ["a", "x"]
    assert applied["passes4"] == []
    assert sorted(log_view(plan)) == [("created", "passes", "x"), ("removed", "passes4", "x")]


# --- passes4 bound -------------------------------------------------------------------------------


def test_passes4_grows_incrementally_and_stays_bounded_over_many_syncs() -> None:
    limit = 5
    document = build([], [], limit=limit)
    all_expired: list[Pass] = []
    for round_number in range(1, 13):
        # Bytemark's v4 list only shows the last few expired passes; older history must survive.
        new = [make_pass(f"e{round_number}-{k}", round_number, status="EXPIRED") for k in range(2)]
        all_expired += new
        before = set(uuids(document["passes4"]))
        plan, document = sync(document, fetch([], all_expired[-3:]), T0 + round_number, limit)
        stored = uuids(document["passes4"])
        assert len(stored) <= limit
        newest = sorted(all_expired, key=lambda p: (p["time_created"], p["uuid"]))[-limit:]
        assert stored == [p["uuid"] for p in newest]
        assert {entry.action for entry in plan.log} <= {"created"}
        assert sorted(entry.uuid for entry in plan.log) == sorted(p["uuid"] for p in new)
        trimmed = before - set(stored)
        assert not trimmed & {entry.uuid for entry in plan.log}
        # Five fit; from then on every round's two new passes push out the two oldest.
        assert len(trimmed) == max(0, min(2, 2 * round_number - limit))
        # Appends while nothing goes; a trim rewrites the array.
        assert plan.history.rewrite == bool(trimmed)
        if not trimmed:
            assert uuids(plan.history.appended) == [p["uuid"] for p in new]


def test_new_history_older_than_the_window_is_not_added_or_logged() -> None:
    history = [make_pass(f"h{day}", day + 10, status="EXPIRED") for day in range(3)]
    old = build([], history, limit=3)
    plan, applied = sync(old, fetch([], [*history, make_pass("ancient", 1, status="EXPIRED")]), T0 + 1, 3)
    assert is_noop(plan)
    assert uuids(applied["passes4"]) == ["h0", "h1", "h2"]


def test_build_with_more_history_than_the_limit_keeps_the_newest() -> None:
    history = [make_pass(f"h{day:02d}", day, status="EXPIRED") for day in range(1, 11)]
    plan = plan_for(None, fetch([], list(reversed(history))), T0, limit=4)
    assert uuids(plan.history.final) == ["h07", "h08", "h09", "h10"]
    assert sorted(entry.uuid for entry in plan.log) == ["h07", "h08", "h09", "h10"]


# --- unknown and malformed stored data ------------------------------------------------------------


def test_unknown_fields_are_preserved() -> None:
    old = build(
        [make_pass("a", 1), make_pass("b", 2), make_pass("c", 3)], [make_pass("x", 1, status="EXPIRED")]
    )
    old["passesLog"] = [{"legacy": True}]
    old["__v"] = 7
    for number, element in enumerate(old["passes"] + old["passes4"]):
        element["_id"] = f"oid-{number}"
        element["legacy_flag"] = number
    changed = make_pass("a", 1, status="USING", first_use="2024-06-15T12:00:00Z")
    # Update a, remove c, add an older pass (rewrite), expire b into history.
    fetched = fetch(
        [changed, make_pass("early", 0)], [make_pass("x", 1, status="EXPIRED"), make_pass("b", 2, "EXPIRED")]
    )
    plan, applied = sync(old, fetched, T0 + 9)
    assert plan.passes.rewrite
    assert applied["passesLog"] == [{"legacy": True}]
    assert applied["__v"] == 7
    assert applied["_id"] == "oid-1"
    element_a = next(e for e in applied["passes"] if e["pass_uuid"] == "a")
    assert element_a["_id"] == "oid-0"
    assert element_a["legacy_flag"] == 0
    assert element_a["status"] == "USING"
    element_x = next(e for e in applied["passes4"] if e["pass_uuid"] == "x")
    assert element_x["_id"] == "oid-3"
    assert element_x["legacy_flag"] == 3


def test_malformed_stored_elements_are_kept_verbatim() -> None:
    old = build([make_pass("a", 1), make_pass("c", 3)], [make_pass("x", 1, status="EXPIRED")])
    junk = [{"no_uuid": True}, "a string", {"pass_uuid": None, "payload": {}}, {"pass_uuid": ""}]
    old["passes"].insert(1, junk[0])
    old["passes"].append(junk[1])
    old["passes4"] += junk[2:]
    # A rewrite (older new pass) and a trim (limit 1) must not lose them either.
    fetched = fetch(
        [make_pass("a", 1), make_pass("b", 2), make_pass("c", 3)], [make_pass("y", 5, status="EXPIRED")]
    )
    plan, applied = sync(old, fetched, T0 + 1, limit=1)
    assert plan.passes.rewrite
    assert plan.history.rewrite
    assert junk[0] in applied["passes"]
    assert junk[1] in applied["passes"]
    assert junk[2] in applied["passes4"]
    assert junk[3] in applied["passes4"]
    # A rewrite puts them first, in their stored order.
    assert applied["passes"][:2] == junk[:2]
    assert applied["passes4"][:2] == junk[2:]
    assert [e["pass_uuid"] for e in applied["passes"] if isinstance(e, dict) and "pass_uuid" in e] == [
        "a",
        "b",
        "c",
    ]
    assert [e.get("pass_uuid") for e in applied["passes4"]].count("y") == 1
    # x was trimmed by the bound: gone, and not logged.
    assert "x" not in [e.get("pass_uuid") for e in applied["passes4"]]
    assert all(entry.uuid != "x" for entry in plan.log)


def test_document_written_by_node_without_revision_or_passes4() -> None:
    node_doc: CacheDocument = build([make_pass("a", 1)])
    del node_doc[REVISION_FIELD]
    del node_doc["passes4"]
    node_doc["__v"] = 0
    plan, applied = sync(node_doc, fetch([make_pass("a", 1)], [make_pass("x", 1, status="EXPIRED")]), T0 + 1)
    assert plan.revision == 1
    assert plan.guard is not None
    assert plan.guard.missing == (REVISION_FIELD,)
    assert plan.guard.fields == {"timestamp": T0}
    assert applied[REVISION_FIELD] == 1
    assert applied["__v"] == 0
    assert uuids(applied["passes4"]) == ["x"]
    # A missing array cannot be appended to by index (MongoDB would make an object): written whole.
    assert plan.history.rewrite
    assert not plan.passes.changed


def test_stored_array_that_is_not_an_array_is_rewritten() -> None:
    broken: CacheDocument = {"user_id": USER, "timestamp": 1, "passes": None, "passes4": {"bad": 1}}
    plan, applied = sync(broken, fetch([make_pass("a", 1)]), T0)
    assert plan.passes.rewrite
    assert plan.history.rewrite
    assert uuids(applied["passes"]) == ["a"]
    assert applied["passes4"] == []


def test_stored_element_without_hash_is_updated() -> None:
    old = build([make_pass("a", 1)])
    del old["passes"][0]["payload_hash"]
    plan, applied = sync(old, fetch([make_pass("a", 1)]), T0 + 1)
    assert log_view(plan) == [("updated", "passes", "a")]
    assert plan.log[0].previous_hash is None
    # A missing hash alone needs no rewrite: the element is updated in place.
    assert not plan.passes.rewrite
    assert [index for index, _ in plan.passes.updated] == [0]
    assert applied["passes"][0]["payload_hash"] == payload_hash(make_pass("a", 1))


# --- argument checks -----------------------------------------------------------------------------


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="history limit"):
        plan_for(None, fetch([]), T0, limit=0)
    with pytest.raises(UpstreamError) as raised:
        prepare_fresh(FetchedPasses(current=[{"status": "USABLE"}], expired=[]))
    assert not raised.value.transient
    create = plan_for(None, fetch([]), T0, limit=1)
    with pytest.raises(ValueError, match="creates"):
        apply_plan({"user_id": USER}, create)
    update = plan_for({"user_id": USER, "timestamp": T0, "passes": [], "passes4": []}, fetch([]), T0, limit=1)
    with pytest.raises(ValueError, match="updates"):
        apply_plan(None, update)


def test_plan_does_not_mutate_its_inputs() -> None:
    old = build([make_pass("a", 1), make_pass("b", 2)], [make_pass("x", 1, status="EXPIRED")])
    fetched = fetch(
        [make_pass("a", 1, status="USING"), make_pass("c", 0)], [make_pass("b", 2, status="EXPIRED")]
    )
    old_copy, fetched_copy = copy.deepcopy(old), copy.deepcopy(fetched)
    plan = plan_for(old, fetched, T0 + 1, limit=2)
    apply_plan(old, plan)
    assert old == old_copy
    assert fetched == fetched_copy


# --- seeded random properties ----------------------------------------------------------------------


def _random_pass(rng: random.Random, uuid: str, statuses: list[str]) -> Pass:
    created_choices = [f"2024-06-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z", None, "garbage"]
    created = rng.choices(created_choices, weights=[8, 1, 1])[0]
    modified = f"2024-06-{rng.randint(1, 28):02d}T10:00:{rng.randint(0, 59):02d}.000Z"
    return {
        "uuid": uuid,
        "status": rng.choice(statuses),
        "time_created": created,
        "time_modified": modified,
        "label_name": rng.choice(["Local Day Pass", "Local Single Ride"]),
        "n": rng.choice([1, 2.0, 2.5, 1e-7, "x"]),
    }


def _random_fetch(rng: random.Random, universe: list[str]) -> FetchedPasses:
    current = [
        _random_pass(rng, uuid, ["USABLE", "USING", "USES_GONE", "EXPIRED"])
        for uuid in rng.sample(universe, rng.randint(0, len(universe) // 2))
    ]
    expired = [
        _random_pass(rng, uuid, ["EXPIRED"])
        for uuid in rng.sample(universe, rng.randint(0, len(universe) // 2))
    ]
    if current and rng.random() < 0.3:
        current.append(dict(current[0], time_modified="2024-06-29T00:00:00Z", status="USING"))
    if expired and rng.random() < 0.3:
        expired.insert(0, dict(expired[-1], extra="duplicate"))
    rng.shuffle(current)
    return fetch(current, expired)


def _mutate_stored(rng: random.Random, document: CacheDocument) -> None:
    """Change the stored document like older writers did (extra fields, junk, copies, another order)."""
    if rng.random() < 0.3:
        document["passesLog"] = [{"old": 1}]
        document["__v"] = rng.randint(0, 9)
    for element in document["passes"] + document["passes4"]:
        if rng.random() < 0.3:
            element["_id"] = f"oid-{rng.random()}"
        if rng.random() < 0.05:
            element["payload_hash"] = "stale"
    for name in ("passes", "passes4"):
        if rng.random() < 0.15:
            document[name].insert(rng.randint(0, len(document[name])), {"malformed": rng.random()})
        if document[name] and rng.random() < 0.1:
            document[name].append(copy.deepcopy(rng.choice(document[name])))
    if rng.random() < 0.1:
        rng.shuffle(document["passes"])
    if rng.random() < 0.1:
        del document[REVISION_FIELD]
    if rng.random() < 0.05:
        del document["passes4"]


def _is_well_formed(element: object) -> bool:
    return (
        isinstance(element, Mapping)
        and isinstance(element.get("pass_uuid"), str)
        and bool(element["pass_uuid"])
    )


def _well_formed(array: Any) -> list[dict[str, Any]]:
    return [e for e in array if _is_well_formed(e)] if isinstance(array, list) else []


def _first_copies(array: Any) -> dict[str, dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for element in _well_formed(array):
        first.setdefault(element["pass_uuid"], element)
    return first


def _malformed(array: Any) -> list[Any]:
    return [e for e in array if not _is_well_formed(e)] if isinstance(array, list) else []


def test_random_plans_apply_to_their_final_arrays_and_keep_every_invariant() -> None:
    rng = random.Random(1718425800)
    rewrites = {"passes": 0, "passes4": 0}
    incremental = 0
    for iteration in range(400):
        universe = [f"u{n:02d}" for n in range(rng.randint(1, 24))]
        limit = rng.randint(1, 12)
        old: CacheDocument | None = None
        if rng.random() < 0.85:
            old = apply_plan(None, plan_for(None, _random_fetch(rng, universe), T0, limit))
            _mutate_stored(rng, old)
        fetched = _random_fetch(rng, universe)
        old_snapshot = copy.deepcopy(old)
        now = T0 + 100 + iteration

        plan = plan_for(old, fetched, now, limit)
        applied = apply_plan(old, plan)
        context = f"iteration {iteration}"

        # The store's rules reproduce the plan's final arrays, and the inputs are untouched.
        assert applied["passes"] == plan.passes.final, context
        assert applied["passes4"] == plan.history.final, context
        assert old == old_snapshot, context
        for changes in plan.lists():
            rewrites[changes.name] += changes.rewrite
            incremental += bool(changes.updated or changes.appended) and not changes.rewrite

        fresh = prepare_fresh(fetched)
        fresh_passes = {p["uuid"]: p for p in [*fresh.current, *fresh.history]}
        passes, history = _well_formed(applied["passes"]), _well_formed(applied["passes4"])
        # passes mirrors the current v1 passes exactly, each once.
        assert sorted(uuids(passes)) == sorted(p["uuid"] for p in fresh.current), context
        assert passes == sorted(passes, key=element_key), context
        assert history == sorted(history, key=element_key), context
        # History: bounded, never overlapping passes, newest kept.
        assert len(history) <= limit, context
        assert len(set(uuids(history))) == len(history), context
        assert not set(uuids(passes)) & set(uuids(history)), context
        dropped_history = [p for p in fresh.history if p["uuid"] not in set(uuids(history))]
        if dropped_history and history:
            oldest_kept = min(element_key(e) for e in history)
            assert all(
                element_key({"pass_uuid": p["uuid"], "payload": p}) < oldest_kept for p in dropped_history
            )
        # Every element of a fresh pass carries exactly that pass and its hash.
        for element in passes + history:
            pass_ = fresh_passes.get(element["pass_uuid"])
            if pass_ is not None:
                assert element["payload_hash"] == payload_hash(pass_), context
        # Malformed stored elements survive.
        if old is not None:
            for name in ("passes", "passes4"):
                assert _malformed(old.get(name)) == _malformed(applied[name]), context

        # The log tells the story: created = new uuids, updated = changed hashes, removed = gone (history:
        # only what is current again; what the bound trims is not logged).
        stored_lists = {
            name: _first_copies(old.get(name)) if old is not None else {} for name in ("passes", "passes4")
        }
        current_uuids = {p["uuid"] for p in fresh.current}
        for changes in plan.lists():
            logged = [entry for entry in plan.log if entry.list == changes.name]
            before = stored_lists[changes.name]
            after = set(uuids(_well_formed(changes.final)))
            assert sorted(e.uuid for e in logged if e.action == "created") == sorted(after - set(before))
            assert sorted(e.uuid for e in logged if e.action == "updated") == sorted(
                uuid
                for uuid in after & set(before)
                if before[uuid].get("payload_hash")
                != fresh.hashes.get(uuid, before[uuid].get("payload_hash"))
            ), context
            removed_logged = {e.uuid for e in logged if e.action == "removed"}
            if changes.name == "passes":
                assert removed_logged == set(before) - after, context
            else:
                assert removed_logged == set(before) & current_uuids, context
        assert plan.changed_passes == len(plan.log)
        assert len({entry.entry_id for entry in plan.log}) == len(plan.log)

        # Syncing the same answer again writes nothing.
        refetched = fetch(fetched.current, fetched.expired)
        second = plan_for(applied, refetched, now + 1, limit)
        assert is_noop(second), (context, second)
    # The generator really exercised both apply modes.
    assert rewrites["passes"] > 20, rewrites
    assert rewrites["passes4"] > 20, rewrites
    assert incremental > 50, incremental
