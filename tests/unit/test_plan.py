"""plan_sync / apply_plan: the sync decision (SPEC §6) on fixed scenarios and on seeded random ones."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from bytemark_cache.domain import sync as sync_module
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.model import REVISION_FIELD, CacheDocument, FetchedPasses, SyncPlan
from bytemark_cache.domain.sync import (
    apply_plan,
    changed_count,
    element_key,
    is_noop,
    plan_sync,
    split_fresh,
)
from bytemark_cache.errors import UpstreamError

USER = 42
T0 = 1_718_425_800
LIMIT = 200


def make_pass(uuid: str, day: int, status: str = "USABLE", **extra: Any) -> dict[str, Any]:
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
    parsed: dict[str, Any] = json.loads(json.dumps(pass_))
    return parsed


def fetch(current: list[dict[str, Any]], expired: list[dict[str, Any]] | None = None) -> FetchedPasses:
    """A fresh fetch: every pass re-parsed, as a new HTTP answer would be."""
    return FetchedPasses(
        current=[json.loads(json.dumps(p)) for p in current],
        expired=[json.loads(json.dumps(p)) for p in expired or []],
    )


def uuids(array: list[Any]) -> list[str]:
    return [element["pass_uuid"] for element in array]


def build(current: list[dict[str, Any]], expired: list[dict[str, Any]] | None = None) -> CacheDocument:
    plan = plan_sync(USER, None, fetch(current, expired), T0, passes4_limit=LIMIT)
    return apply_plan(None, plan)


def sync(
    old: CacheDocument, fetched: FetchedPasses, now: int, limit: int = LIMIT
) -> tuple[SyncPlan, CacheDocument]:
    plan = plan_sync(USER, old, fetched, now, passes4_limit=limit)
    applied = apply_plan(old, plan)
    assert applied["passes"] == plan.passes.final
    assert applied["passes4"] == plan.passes4.final
    return plan, applied


def log_view(plan: SyncPlan) -> list[tuple[str, str, str]]:
    return [(entry.action, entry.list, entry.uuid) for entry in plan.log]


# --- build ---------------------------------------------------------------------------------------


def test_fresh_build_sorts_v1_and_puts_expired_in_history() -> None:
    v1 = [make_pass("c", 3), make_pass("a", 1), make_pass("gone", 2, status="EXPIRED"), make_pass("b", 2)]
    v4 = [make_pass("x2", 5, status="EXPIRED"), make_pass("x1", 4, status="EXPIRED")]
    fetched = fetch(v1, v4)
    plan = plan_sync(USER, None, fetched, T0, passes4_limit=LIMIT)

    assert plan.creates
    assert plan.base_revision is None
    assert plan.timestamp == T0
    assert uuids(plan.passes.final) == ["a", "b", "c"]
    assert uuids(plan.passes4.final) == ["gone", "x1", "x2"]
    assert plan.passes.appended == plan.passes.final
    assert plan.passes4.appended == plan.passes4.final
    assert not plan.passes.rewrite
    assert not plan.passes.updated
    assert not plan.passes.removed
    assert sorted(log_view(plan)) == sorted(
        [("created", "passes", u) for u in "abc"] + [("created", "passes4", u) for u in ["gone", "x1", "x2"]]
    )
    assert all(entry.previous_hash is None and entry.timestamp == T0 for entry in plan.log)
    by_uuid = {p["uuid"]: p for p in [*fetched.current, *fetched.expired]}
    for element in plan.passes.final + plan.passes4.final:
        assert element["payload"] is by_uuid[element["pass_uuid"]]
        assert element["payload_hash"] == payload_hash(element["payload"])
        assert element["timestamp"] == T0
        assert element["free_ticket_status"] == 0
    document = apply_plan(None, plan)
    assert list(document) == ["user_id", "timestamp", "passes", "passes4", REVISION_FIELD]
    assert document["user_id"] == USER
    assert document[REVISION_FIELD] == 1


def test_empty_account_builds_an_empty_document() -> None:
    plan = plan_sync(USER, None, fetch([], []), T0, passes4_limit=LIMIT)
    assert plan.creates
    assert plan.log == []
    assert changed_count(plan) == 0
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
    assert changed_count(plan) == 0
    assert plan.log == []
    assert plan.base_revision == 1
    assert plan.timestamp == T0 + 60
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

    assert [index for index, _ in plan.passes.updated] == [1]
    _, element = plan.passes.updated[0]
    assert element["status"] == "USING"
    assert element["timestamp"] == T0 + 100
    assert element["_id"] == "legacy-id"
    assert element["free_ticket_status"] == 1
    assert element["payload_hash"] == payload_hash(activated)
    assert not plan.passes.removed
    assert not plan.passes.appended
    assert not plan.passes.rewrite
    assert not plan.passes4.changed
    assert len(plan.log) == 1
    assert changed_count(plan) == 1
    entry = plan.log[0]
    assert (entry.action, entry.list, entry.uuid, entry.status) == ("updated", "passes", "b", "USING")
    assert entry.previous_hash == old["passes"][1]["payload_hash"]
    assert entry.payload_hash == element["payload_hash"]
    assert applied["passes"][0] is old["passes"][0]
    assert applied["passes"][0]["timestamp"] == T0
    assert applied["passes"][1]["_id"] == "legacy-id"


def test_new_purchase_is_appended() -> None:
    v1 = [make_pass("a", 1), make_pass("b", 2)]
    old = build(v1)
    plan, applied = sync(old, fetch([*v1, make_pass("new", 9)]), T0 + 5)
    assert uuids(plan.passes.appended) == ["new"]
    assert not plan.passes.rewrite
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

    assert plan.passes.removed == ["b"]
    assert log_view(plan) == [("removed", "passes", "b"), ("created", "passes4", "b")]
    removed_entry, created_entry = plan.log
    assert removed_entry.payload_hash is None
    assert removed_entry.previous_hash == old["passes"][1]["payload_hash"]
    assert removed_entry.status == "USABLE"
    assert created_entry.status == "EXPIRED"
    assert created_entry.payload_hash == payload_hash(expired_b)
    assert uuids(applied["passes"]) == ["a"]
    assert uuids(applied["passes4"]).count("b") == 1

    # The next sync sees it in history only: nothing more happens.
    again, _ = sync(applied, fetch([v1[0]], [make_pass("x", 1, status="EXPIRED"), expired_b]), T0 + 8)
    assert is_noop(again)


def test_pass_in_both_lists_of_one_fetch_is_kept_once_as_its_v4_copy() -> None:
    in_v1 = make_pass("p", 2, status="USING", first_use="2024-06-02T11:00:00Z")
    in_v4 = make_pass("p", 2, status="EXPIRED", first_use="2024-06-02T11:00:00Z")
    fetched = fetch([make_pass("a", 1), in_v1], [in_v4])
    plan = plan_sync(USER, None, fetched, T0, passes4_limit=LIMIT)
    assert uuids(plan.passes.final) == ["a"]
    assert uuids(plan.passes4.final) == ["p"]
    assert plan.passes4.final[0]["payload"] is fetched.expired[0]
    assert plan.passes4.final[0]["status"] == "EXPIRED"
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
        plan = plan_sync(USER, None, fetch([make_pass("a", 1), *order]), T0, passes4_limit=LIMIT)
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


def test_account_emptied_at_bytemark_removes_current_and_keeps_history() -> None:
    old = build([make_pass("a", 1)], [make_pass("x", 1, status="EXPIRED")])
    plan, applied = sync(old, fetch([], []), T0 + 1)
    assert log_view(plan) == [("removed", "passes", "a")]
    assert applied["passes"] == []
    assert uuids(applied["passes4"]) == ["x"]


def test_stored_payload_is_never_rehashed() -> None:
    # Only the stored payload_hash is compared: a payload read back from MongoDB (doubles, altered
    # key order) must not make an unchanged pass look changed.
    old = build([make_pass("a", 1)])
    old["passes"][0]["payload"] = {"order_item": {"price": 250.0}, "uuid": "a"}
    plan, _ = sync(old, fetch([make_pass("a", 1)]), T0 + 1)
    assert is_noop(plan)


def test_each_fresh_pass_is_hashed_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[str] = []

    def counting_hash(pass_: dict[str, Any]) -> str:
        hashed.append(pass_["uuid"])
        return payload_hash(pass_)

    old = build([make_pass("a", 1), make_pass("b", 2)], [make_pass("x", 1, status="EXPIRED")])
    monkeypatch.setattr(sync_module, "payload_hash", counting_hash)
    v1 = [make_pass("a", 1), make_pass("b", 2, status="USING"), make_pass("c", 3), make_pass("x", 1)]
    v4 = [make_pass("x", 1, status="EXPIRED"), make_pass("y", 2, status="EXPIRED")]
    plan_sync(USER, old, fetch(v1, v4), T0 + 1, passes4_limit=LIMIT)
    assert sorted(hashed) == ["a", "b", "c", "x", "y"]


def test_pass_current_again_leaves_history() -> None:
    old = build([make_pass("a", 1)], [make_pass("x", 1, status="EXPIRED")])
    plan, applied = sync(old, fetch([make_pass("a", 1), make_pass("x", 1)], []), T0 + 1)
    assert uuids(applied["passes"]) == ["a", "x"]
    assert applied["passes4"] == []
    assert sorted(log_view(plan)) == [("created", "passes", "x"), ("removed", "passes4", "x")]


# --- passes4 bound -------------------------------------------------------------------------------


def test_passes4_grows_incrementally_and_stays_bounded_over_many_syncs() -> None:
    limit = 5
    document = apply_plan(None, plan_sync(USER, None, fetch([], []), T0, passes4_limit=limit))
    all_expired: list[dict[str, Any]] = []
    for round_number in range(1, 13):
        # Bytemark's v4 list only shows the last few expired passes; older history must survive.
        new = [make_pass(f"e{round_number}-{k}", round_number, status="EXPIRED") for k in range(2)]
        all_expired += new
        plan, document = sync(document, fetch([], all_expired[-3:]), T0 + round_number, limit)
        stored = uuids(document["passes4"])
        assert len(stored) <= limit
        newest = sorted(all_expired, key=lambda p: (p["time_created"], p["uuid"]))[-limit:]
        assert stored == [p["uuid"] for p in newest]
        assert {entry.action for entry in plan.log} <= {"created"}
        assert sorted(entry.uuid for entry in plan.log) == sorted(p["uuid"] for p in new)
        trimmed = set(plan.passes4.removed)
        assert not trimmed & {entry.uuid for entry in plan.log}
        # Five fit; from then on every round's two new passes push out the two oldest.
        assert len(trimmed) == max(0, min(2, 2 * round_number - limit))


def test_new_history_older_than_the_window_is_not_added_or_logged() -> None:
    history = [make_pass(f"h{day}", day + 10, status="EXPIRED") for day in range(3)]
    old = apply_plan(None, plan_sync(USER, None, fetch([], history), T0, passes4_limit=3))
    plan, applied = sync(old, fetch([], [*history, make_pass("ancient", 1, status="EXPIRED")]), T0 + 1, 3)
    assert is_noop(plan)
    assert uuids(applied["passes4"]) == ["h0", "h1", "h2"]


def test_build_with_more_history_than_the_limit_keeps_the_newest() -> None:
    history = [make_pass(f"h{day:02d}", day, status="EXPIRED") for day in range(1, 11)]
    plan = plan_sync(USER, None, fetch([], list(reversed(history))), T0, passes4_limit=4)
    assert uuids(plan.passes4.final) == ["h07", "h08", "h09", "h10"]
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
    element_a = next(e for e in applied["passes"] if e["pass_uuid"] == "a")
    assert element_a["_id"] == "oid-0"
    assert element_a["legacy_flag"] == 0
    assert element_a["status"] == "USING"
    element_x = next(e for e in applied["passes4"] if e["pass_uuid"] == "x")
    assert element_x["_id"] == "oid-3"


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
    assert junk[0] in applied["passes"]
    assert junk[1] in applied["passes"]
    assert junk[2] in applied["passes4"]
    assert junk[3] in applied["passes4"]
    assert [e["pass_uuid"] for e in applied["passes"] if isinstance(e, dict) and "pass_uuid" in e] == [
        "a",
        "b",
        "c",
    ]
    assert [e.get("pass_uuid") for e in applied["passes4"]].count("y") == 1
    assert plan.passes4.removed == ["x"]
    assert all(entry.uuid != "x" for entry in plan.log)


def test_document_written_by_node_without_revision_or_passes4() -> None:
    node_doc: CacheDocument = build([make_pass("a", 1)])
    del node_doc[REVISION_FIELD]
    del node_doc["passes4"]
    node_doc["__v"] = 0
    plan, applied = sync(node_doc, fetch([make_pass("a", 1)], [make_pass("x", 1, status="EXPIRED")]), T0 + 1)
    assert plan.base_revision == 0
    assert applied[REVISION_FIELD] == 1
    assert applied["__v"] == 0
    assert uuids(applied["passes4"]) == ["x"]
    assert not plan.passes4.rewrite


def test_stored_array_that_is_not_an_array_is_rewritten() -> None:
    broken: CacheDocument = {"user_id": USER, "timestamp": 1, "passes": None, "passes4": {"bad": 1}}
    plan, applied = sync(broken, fetch([make_pass("a", 1)]), T0)
    assert plan.passes.rewrite
    assert plan.passes4.rewrite
    assert uuids(applied["passes"]) == ["a"]
    assert applied["passes4"] == []


def test_stored_element_without_hash_is_updated() -> None:
    old = build([make_pass("a", 1)])
    del old["passes"][0]["payload_hash"]
    plan, _ = sync(old, fetch([make_pass("a", 1)]), T0 + 1)
    assert log_view(plan) == [("updated", "passes", "a")]
    assert plan.log[0].previous_hash is None


# --- argument checks -----------------------------------------------------------------------------


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="passes4_limit"):
        plan_sync(USER, None, fetch([]), T0, passes4_limit=0)
    with pytest.raises(UpstreamError):
        plan_sync(USER, None, FetchedPasses(current=[{"status": "USABLE"}], expired=[]), T0, passes4_limit=1)
    create = plan_sync(USER, None, fetch([]), T0, passes4_limit=1)
    with pytest.raises(ValueError, match="creates"):
        apply_plan({"user_id": USER}, create)
    update = plan_sync(USER, {"user_id": USER, "passes": [], "passes4": []}, fetch([]), T0, passes4_limit=1)
    with pytest.raises(ValueError, match="updates"):
        apply_plan(None, update)


def test_plan_does_not_mutate_its_inputs() -> None:
    old = build([make_pass("a", 1), make_pass("b", 2)], [make_pass("x", 1, status="EXPIRED")])
    fetched = fetch(
        [make_pass("a", 1, status="USING"), make_pass("c", 0)], [make_pass("b", 2, status="EXPIRED")]
    )
    old_copy, fetched_copy = copy.deepcopy(old), copy.deepcopy(fetched)
    plan = plan_sync(USER, old, fetched, T0 + 1, passes4_limit=2)
    apply_plan(old, plan)
    assert old == old_copy
    assert fetched == fetched_copy


# --- seeded random properties ----------------------------------------------------------------------


def _random_pass(rng: random.Random, uuid: str, statuses: list[str]) -> dict[str, Any]:
    created_choices = [f"2024-06-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z", None, "garbage"]
    created = rng.choices(created_choices, weights=[8, 1, 1])[0]
    modified = f"2024-06-{rng.randint(1, 28):02d}T10:00:{rng.randint(0, 59):02d}.000Z"
    pass_ = {
        "uuid": uuid,
        "status": rng.choice(statuses),
        "time_created": created,
        "time_modified": modified,
        "label_name": rng.choice(["Local Day Pass", "Local Single Ride"]),
        "n": rng.choice([1, 2.0, 2.5, 1e-7, "x"]),
    }
    return pass_


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


def _well_formed(array: list[Any]) -> list[dict[str, Any]]:
    return [
        e for e in array if isinstance(e, dict) and isinstance(e.get("pass_uuid"), str) and e["pass_uuid"]
    ]


def _malformed(array: Any) -> list[Any]:
    if not isinstance(array, list):
        return []
    return [
        e
        for e in array
        if not (isinstance(e, dict) and isinstance(e.get("pass_uuid"), str) and e["pass_uuid"])
    ]


def test_random_plans_apply_to_their_final_arrays_and_keep_every_invariant() -> None:
    rng = random.Random(1718425800)
    rewrites = {"passes": 0, "passes4": 0}
    incremental = 0
    for iteration in range(400):
        universe = [f"u{n:02d}" for n in range(rng.randint(1, 24))]
        limit = rng.randint(1, 12)
        old: CacheDocument | None = None
        if rng.random() < 0.85:
            seed_plan = plan_sync(USER, None, _random_fetch(rng, universe), T0, passes4_limit=limit)
            old = apply_plan(None, seed_plan)
            _mutate_stored(rng, old)
        fetched = _random_fetch(rng, universe)
        old_snapshot = copy.deepcopy(old)
        now = T0 + 100 + iteration

        plan = plan_sync(USER, old, fetched, now, passes4_limit=limit)
        applied = apply_plan(old, plan)
        context = f"iteration {iteration}"

        # The store's rules reproduce the plan's final arrays, and the inputs are untouched.
        assert applied["passes"] == plan.passes.final, context
        assert applied["passes4"] == plan.passes4.final, context
        assert old == old_snapshot, context
        for changes in (plan.passes, plan.passes4):
            rewrites[changes.name] += changes.rewrite
            incremental += bool(changes.updated or changes.removed) and not changes.rewrite

        fresh = split_fresh(fetched)
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
                assert element["payload"] is pass_ or element["payload_hash"] == payload_hash(pass_), context
                assert element["payload_hash"] == payload_hash(pass_), context
        # Malformed stored elements survive.
        if old is not None:
            for name in ("passes", "passes4"):
                assert _malformed(old.get(name)) == _malformed(applied[name]), context

        # The log tells the story: created = appended, updated = updated, removed = removed minus trims.
        for changes in (plan.passes, plan.passes4):
            logged = [entry for entry in plan.log if entry.list == changes.name]
            assert sorted(e.uuid for e in logged if e.action == "created") == sorted(uuids(changes.appended))
            assert sorted(e.uuid for e in logged if e.action == "updated") == sorted(
                element["pass_uuid"] for _, element in changes.updated
            )
            removed_logged = {e.uuid for e in logged if e.action == "removed"}
            assert removed_logged <= set(changes.removed), context
            if changes.name == "passes":
                assert removed_logged == set(changes.removed), context
        assert changed_count(plan) == len(plan.log)

        # Syncing the same answer again writes nothing.
        refetched = fetch(fetched.current, fetched.expired)
        second = plan_sync(USER, applied, refetched, now + 1, passes4_limit=limit)
        assert is_noop(second), (context, second)
    # The generator really exercised both apply modes.
    assert rewrites["passes"] > 20, rewrites
    assert rewrites["passes4"] > 20, rewrites
    assert incremental > 50, incremental
