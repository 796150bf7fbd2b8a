"""The planner's steps one by one (``prepare_fresh``, ``match``, ``decide``, ``bound``, ``order``,
``log_entries``, ``fit_document``, ``plan_status`` and what ``plan_sync`` adds): each test names one rule
and fails when that rule breaks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from bson import Int64

from bytemark_cache.domain import plan as plan_module
from bytemark_cache.domain.bounds import HISTORY_TRIM_RATIO, MAX_DOCUMENT_BYTES, bson_document_size
from bytemark_cache.domain.document import MUTABLE_ELEMENT_FIELDS, element_uuid
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.model import (
    CURRENT,
    HISTORY,
    PENDING_LOG_FIELD,
    REVISION_FIELD,
    CacheDocument,
    Element,
    FetchedPasses,
    LogEntry,
    Pass,
)
from bytemark_cache.domain.passes import wrap_pass
from bytemark_cache.domain.plan import (
    UNCONFIRMED_MARK_SECONDS,
    Decision,
    apply_plan,
    bound,
    decide,
    fit_document,
    log_entries,
    match,
    order,
    plan_status,
    plan_sync,
    prepare_fresh,
    written_size,
)
from bytemark_cache.errors import UpstreamError
from tests.unit.test_plan import T0, USER, build, fetch, make_pass, stored_of

NOW = T0 + 60


def element(pass_: Pass, **fields: Any) -> Element:
    """The element a sync at T0 wrote for ``pass_``, with ``fields`` changed."""
    return {**wrap_pass(pass_, T0), **fields}


def hashes_of(*passes: Pass) -> dict[str, str]:
    return {pass_["uuid"]: payload_hash(pass_) for pass_ in passes}


def kinds(decisions: list[Decision]) -> list[tuple[str, Any]]:
    """(kind, uuid-or-stored-value) per decision."""
    return [
        (d.kind, d.element.get("pass_uuid", d.element) if isinstance(d.element, dict) else d.element)
        for d in decisions
    ]


def never(_uuid: str) -> bool:
    return False


def always(_uuid: str) -> bool:
    return True


# --- 0. prepare_fresh ------------------------------------------------------------------------------


def test_prepare_fresh_sorts_both_lists_oldest_first_and_hashes_every_pass_once() -> None:
    v1 = [make_pass("c", 3), make_pass("a", 1), make_pass("no-time", 9, time_created=None), make_pass("b", 2)]
    v4 = [make_pass("y", 5, status="EXPIRED"), make_pass("x", 4, status="EXPIRED")]
    fresh = prepare_fresh(fetch(v1, v4))
    assert [p["uuid"] for p in fresh.current] == ["no-time", "a", "b", "c"]  # no time sorts first
    assert [p["uuid"] for p in fresh.history] == ["x", "y"]
    assert fresh.hashes == {p["uuid"]: payload_hash(p) for p in [*v1, *v4]}


def test_prepare_fresh_equal_times_order_by_uuid() -> None:
    fresh = prepare_fresh(fetch([make_pass("b", 1), make_pass("a", 1), make_pass("c", 1)]))
    assert [p["uuid"] for p in fresh.current] == ["a", "b", "c"]


def test_prepare_fresh_puts_v4_and_expired_v1_passes_in_history() -> None:
    fresh = prepare_fresh(
        fetch([make_pass("a", 1), make_pass("gone", 2, status="EXPIRED")], [make_pass("x", 3, "EXPIRED")])
    )
    assert [p["uuid"] for p in fresh.current] == ["a"]
    assert [p["uuid"] for p in fresh.history] == ["gone", "x"]


def test_prepare_fresh_v4_pass_with_a_live_status_is_still_history() -> None:
    fresh = prepare_fresh(fetch([], [make_pass("odd", 1, status="USABLE")]))
    assert fresh.current == []
    assert [p["status"] for p in fresh.history] == ["USABLE"]


def test_prepare_fresh_uuid_in_both_lists_is_its_v4_copy() -> None:
    in_v1 = make_pass("p", 1, status="USING")
    in_v4 = make_pass("p", 1, status="EXPIRED")
    fresh = prepare_fresh(FetchedPasses([in_v1], [in_v4]))
    assert fresh.current == []
    assert fresh.history == [in_v4]
    assert fresh.hashes == {"p": payload_hash(in_v4)}


def test_prepare_fresh_collapses_duplicates_to_the_latest_modified() -> None:
    early = make_pass("d", 1, time_modified="2024-06-01T10:00:00Z", n=1)
    late = make_pass("d", 1, time_modified="2024-06-01T11:00:00Z", n=2)
    for current in ([early, late], [late, early]):
        fresh = prepare_fresh(FetchedPasses(current, []))
        assert fresh.current == [late]
    history = prepare_fresh(FetchedPasses([], [late, early])).history
    assert history == [late]


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        {"status": "USABLE"},
        {"uuid": "", "status": "USABLE"},
        {"uuid": 5, "status": "USABLE"},
        {"uuid": "u"},
        {"uuid": "u", "status": ""},
        {"uuid": "u", "status": None},
    ],
)
@pytest.mark.parametrize("in_list", ["current", "expired"])
def test_prepare_fresh_refuses_an_invalid_pass_permanently(bad: object, in_list: str) -> None:
    lists: dict[str, list[Any]] = {"current": [], "expired": []}
    lists[in_list] = [make_pass("ok", 1), bad]
    with pytest.raises(UpstreamError) as raised:
        prepare_fresh(FetchedPasses(**lists))
    assert not raised.value.transient


@pytest.mark.parametrize("in_list", ["current", "expired"])
def test_prepare_fresh_refuses_more_passes_than_the_bound(in_list: str) -> None:
    one = make_pass("same", 1, status="EXPIRED")
    at_bound = {"current": [], "expired": [], in_list: [one] * plan_module.MAX_PASSES_PER_LIST}
    assert len(prepare_fresh(FetchedPasses(**at_bound)).history) == 1
    over = {"current": [], "expired": [], in_list: [one] * (plan_module.MAX_PASSES_PER_LIST + 1)}
    with pytest.raises(UpstreamError, match="more than") as raised:
        prepare_fresh(FetchedPasses(**over))
    assert not raised.value.transient


@pytest.mark.parametrize(
    "extra",
    [
        {"bad.key": 1},
        {"$bad": 1},
        {"nul\x00key": 1},
        {"big": 2**63},
        {"text": "lone \ud800 surrogate"},
        {"nested": [{"$where": 1}]},
    ],
)
def test_prepare_fresh_refuses_a_pass_mongodb_cannot_store(extra: dict[str, Any]) -> None:
    bad = {"uuid": "bad", "status": "USABLE", **extra}
    for fetched in (FetchedPasses([bad], []), FetchedPasses([], [dict(bad, status="EXPIRED")])):
        with pytest.raises(UpstreamError, match="'bad' cannot be stored") as raised:
            prepare_fresh(fetched)
        assert not raised.value.transient


def test_prepare_fresh_checks_only_payloads_not_already_stored() -> None:
    # A payload stored under the same uuid and hash was storable when written: not walked again. The
    # pass here could not be stored, so a skipped check is visible as no refusal.
    unstorable = {"uuid": "p", "status": "USABLE", "bad.key": 1}
    stored_hash = payload_hash(unstorable)
    assert prepare_fresh(FetchedPasses([unstorable], []), {"p": stored_hash}).hashes == {"p": stored_hash}
    for stored_hashes in ({"p": "0" * 32}, {"other": stored_hash}, None):
        with pytest.raises(UpstreamError, match="'p' cannot be stored"):
            prepare_fresh(FetchedPasses([unstorable], []), stored_hashes)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"level": 0}
    for _ in range(depth):
        value = {"level": value}
    return value


@pytest.mark.parametrize("stored_hashes", [None, {"deep": "0" * 32}])
def test_prepare_fresh_refuses_a_pass_nested_deeper_than_the_stack(
    stored_hashes: dict[str, str] | None,
) -> None:
    # Hashing meets the pass before the storability check does; a nesting the simulator's hostile
    # variant sends (500 levels) must be the same permanent refusal, not a RecursionError (a 500).
    deep = {"uuid": "deep", "status": "USABLE", "nested": _nested(500)}
    with pytest.raises(UpstreamError, match="'deep' cannot be stored") as raised:
        prepare_fresh(FetchedPasses([deep], []), stored_hashes)
    assert not raised.value.transient


def test_prepare_fresh_does_not_check_a_copy_that_is_not_kept() -> None:
    # The v1 copy of a uuid in v4 is never stored, so what it holds cannot refuse the answer.
    unstorable_v1_copy = {"uuid": "p", "status": "USING", "bad.key": 1}
    fresh = prepare_fresh(FetchedPasses([unstorable_v1_copy], [make_pass("p", 1, status="EXPIRED")]))
    assert [p["uuid"] for p in fresh.history] == ["p"]


# --- 1. match --------------------------------------------------------------------------------------


def test_match_pairs_by_pass_uuid_legacy_uuid_key_and_payload_uuid() -> None:
    a, b, c = make_pass("a", 1), make_pass("b", 2), make_pass("c", 3)
    legacy_b = {key: value for key, value in element(b).items() if key != "pass_uuid"} | {"uuid": "b"}
    payload_only_c = {key: value for key, value in element(c).items() if key != "pass_uuid"}
    stored = [element(a), legacy_b, payload_only_c]
    matching = match(stored, [c, a, b], NOW)
    assert matching.fresh_at == {0: a, 1: b, 2: c}
    assert [slot.uuid for slot in matching.slots] == ["a", "b", "c"]
    assert matching.new == []
    assert matching.stored_is_array


def test_match_new_passes_are_the_unmatched_ones_in_fresh_order() -> None:
    a, b, c = make_pass("a", 1), make_pass("b", 2), make_pass("c", 3)
    matching = match([element(b)], [a, b, c], NOW)
    assert matching.new == [a, c]
    assert matching.fresh_at == {0: b}


def test_match_malformed_elements_are_slots_without_element() -> None:
    junk: list[Any] = ["text", 7, None, {"no": "uuid"}, {"pass_uuid": ""}, {"pass_uuid": None, "payload": {}}]
    matching = match(junk, [make_pass("a", 1)], NOW)
    assert [(slot.index, slot.stored, slot.element, slot.uuid) for slot in matching.slots] == [
        (index, item, None, None) for index, item in enumerate(junk)
    ]
    assert matching.fresh_at == {}
    assert [p["uuid"] for p in matching.new] == ["a"]


def test_match_repeated_uuid_keeps_the_first_element_and_marks_later_copies() -> None:
    a = make_pass("a", 1)
    first, later = element(a, _id="first"), element(a, _id="later")
    matching = match([first, later], [a], NOW)
    assert [slot.copy for slot in matching.slots] == [False, True]
    assert matching.slots[1].element is None
    assert matching.fresh_at == {0: a}
    assert matching.new == []


def test_match_a_value_that_is_not_an_array_has_no_slots() -> None:
    a = make_pass("a", 1)
    for stored in (None, {"0": element(a)}, "passes"):
        matching = match(stored, [a], NOW)
        assert not matching.stored_is_array
        assert matching.slots == []
        assert matching.new == [a]


@pytest.mark.parametrize(
    ("change", "legacy"),
    [
        ({}, False),
        ({"payload_hash": None}, False),  # a missing hash alone: updated like any changed pass
        ({"_id": "oid", "extra": 1}, False),  # unknown fields are no legacy shape
        ({"status": None}, True),
        ({"timestamp": T0 * 1000}, True),
        ({"timestamp": float(T0)}, True),
        ({"timestamp": None}, True),
        ({"free_ticket_status": None}, True),
    ],
)
def test_match_flags_elements_that_need_a_rewrite_to_converge(change: dict[str, Any], legacy: bool) -> None:
    stored = element(make_pass("a", 1))
    for key, value in change.items():
        if value is None:
            stored.pop(key, None)
        else:
            stored[key] = value
    assert match([stored], [], NOW).slots[0].legacy is legacy


def test_match_legacy_uuid_key_is_flagged_and_renamed() -> None:
    stored = {key: value for key, value in element(make_pass("a", 1)).items() if key != "pass_uuid"}
    stored["uuid"] = "a"
    slot = match([stored], [], NOW).slots[0]
    assert slot.legacy
    assert slot.element is not None
    assert slot.element["pass_uuid"] == "a"
    assert "uuid" not in slot.element
    assert slot.stored is stored


# --- 2. decide -------------------------------------------------------------------------------------


def test_decide_same_hash_keeps_the_element_untouched() -> None:
    a = make_pass("a", 1)
    stored = element(a, status="USING", _id="oid")  # a local activation: payload says USABLE
    decisions = decide(match([stored], [a], NOW), hashes_of(a), NOW, keep_absent=never)
    assert [d.kind for d in decisions] == ["keep"]
    assert decisions[0].element == stored
    assert decisions[0].index == 0
    assert decisions[0].previous_hash == payload_hash(a)


def test_decide_changed_hash_replaces_exactly_the_wrapper_fields() -> None:
    a = make_pass("a", 1)
    stored = element(a, _id="oid", free_ticket_status=1, extra={"kept": True})
    changed = make_pass("a", 1, status="USING", first_use="2024-06-15T12:00:00Z")
    [decision] = decide(match([stored], [changed], NOW), hashes_of(changed), NOW, keep_absent=never)
    assert decision.kind == "update"
    assert decision.index == 0
    assert decision.previous_hash == payload_hash(a)
    assert decision.element == {
        **stored,
        "status": "USING",
        "payload": changed,
        "payload_hash": payload_hash(changed),
        "timestamp": NOW,
    }
    assert decision.element["payload"] is changed


def test_decide_absent_pass_is_removed_unless_kept_absent() -> None:
    a = make_pass("a", 1)
    stored = [element(a)]
    [removed] = decide(match(stored, [], NOW), {}, NOW, keep_absent=never)
    assert (removed.kind, removed.index, removed.previous_hash) == ("remove", 0, payload_hash(a))
    assert not removed.kept
    [kept] = decide(match(stored, [], NOW), {}, NOW, keep_absent=always)
    assert (kept.kind, kept.element) == ("keep", stored[0])


def test_decide_keep_absent_is_asked_per_uuid() -> None:
    stored = [element(make_pass("a", 1)), element(make_pass("b", 2))]
    decisions = decide(match(stored, [], NOW), {}, NOW, keep_absent=lambda uuid: uuid == "b")
    assert kinds(decisions) == [("remove", "a"), ("keep", "b")]


def test_decide_malformed_is_verbatim_and_copies_drop() -> None:
    a = make_pass("a", 1)
    stored: list[Any] = ["junk", element(a), element(a, _id="copy")]
    decisions = decide(match(stored, [a], NOW), hashes_of(a), NOW, keep_absent=never)
    assert [d.kind for d in decisions] == ["verbatim", "keep", "drop"]
    assert decisions[0].element == "junk"
    assert decisions[0].kept
    assert decisions[2].element["_id"] == "copy"
    assert not decisions[2].kept


def test_decide_new_passes_are_wrapped_in_fresh_order() -> None:
    a, b = make_pass("a", 1), make_pass("b", 2)
    decisions = decide(match([], [b, a], NOW), hashes_of(a, b), NOW, keep_absent=never)
    assert [(d.kind, d.index) for d in decisions] == [("new", None), ("new", None)]
    assert [d.element for d in decisions] == [
        wrap_pass(b, NOW, payload_hash(b)),
        wrap_pass(a, NOW, payload_hash(a)),
    ]


def test_decide_carries_the_legacy_flag() -> None:
    a = make_pass("a", 1)
    legacy = element(a, timestamp=T0 * 1000)
    [decision] = decide(match([legacy], [a], NOW), hashes_of(a), NOW, keep_absent=never)
    assert decision.legacy
    assert decision.element["timestamp"] == T0  # normalised for the rewrite


def test_decide_missing_hash_is_an_update_with_no_previous_hash() -> None:
    a = make_pass("a", 1)
    stored = element(a)
    del stored["payload_hash"]
    [decision] = decide(match([stored], [a], NOW), hashes_of(a), NOW, keep_absent=never)
    assert decision.kind == "update"
    assert decision.previous_hash is None
    assert not decision.legacy


# --- 3. bound --------------------------------------------------------------------------------------


def _history_decisions(stored: list[Any], fresh: list[Pass], limit: int) -> list[Decision]:
    decisions = decide(match(stored, fresh, NOW), hashes_of(*fresh), NOW, keep_absent=always)
    return bound(decisions, limit)


def test_bound_within_the_limit_changes_nothing() -> None:
    decisions = decide(match([element(make_pass("a", 1))], [], NOW), {}, NOW, keep_absent=always)
    assert bound(decisions, 1) == decisions


def test_bound_trims_the_oldest_stored_elements() -> None:
    stored = [element(make_pass(f"h{day}", day, "EXPIRED")) for day in (1, 2, 3)]
    assert kinds(_history_decisions(stored, [], 2)) == [("trim", "h1"), ("keep", "h2"), ("keep", "h3")]


def test_bound_does_not_add_new_passes_older_than_the_window() -> None:
    stored = [element(make_pass(f"h{day}", day, "EXPIRED")) for day in (5, 6)]
    ancient, newest = make_pass("ancient", 1, "EXPIRED"), make_pass("newest", 9, "EXPIRED")
    decisions = _history_decisions(stored, [ancient, newest], 2)
    assert kinds(decisions) == [("trim", "h5"), ("keep", "h6"), ("new", "newest")]


def test_bound_counts_the_updated_element_by_its_new_payload() -> None:
    # An update can move a pass's creation time (Bytemark corrected it): the bound sees the new one.
    stored = [element(make_pass("a", 1, "EXPIRED")), element(make_pass("b", 2, "EXPIRED"))]
    moved = make_pass("a", 3, "EXPIRED")
    assert kinds(_history_decisions(stored, [moved], 1)) == [("update", "a"), ("trim", "b")]


def test_bound_ignores_malformed_removed_and_dropped_elements() -> None:
    h1, h2 = make_pass("h1", 1, "EXPIRED"), make_pass("h2", 2, "EXPIRED")
    stored: list[Any] = ["junk", element(h1), {"no": "uuid"}, element(h2), element(h2, _id="copy")]
    decisions = decide(match(stored, [], NOW), {}, NOW, keep_absent=lambda uuid: uuid != "h1")
    assert kinds(bound(decisions, 1)) == [
        ("verbatim", "junk"),
        ("remove", "h1"),
        ("verbatim", {"no": "uuid"}),
        ("keep", "h2"),
        ("drop", "h2"),
    ]


def test_bound_passes_without_a_creation_time_are_the_oldest() -> None:
    stored = [
        element(make_pass("dated", 1, "EXPIRED")),
        element(make_pass("undated", 9, "EXPIRED", time_created=None)),
        element(make_pass("garbage", 9, "EXPIRED", time_created="yesterday")),
    ]
    assert kinds(_history_decisions(stored, [], 1)) == [
        ("keep", "dated"),
        ("trim", "undated"),
        ("trim", "garbage"),
    ]


def test_bound_equal_times_keep_the_greater_uuid() -> None:
    stored = [element(make_pass(uuid, 1, "EXPIRED")) for uuid in ("b", "a", "c")]
    assert kinds(_history_decisions(stored, [], 2)) == [("keep", "b"), ("trim", "a"), ("keep", "c")]


@pytest.mark.parametrize("limit", [0, -1])
def test_bound_refuses_a_limit_below_one(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        bound([], limit)


# --- 4. order --------------------------------------------------------------------------------------


def _order(stored: Any, fresh: list[Pass], *, keep_absent: Any = never, limit: int | None = None) -> Any:
    matching = match(stored, fresh, NOW)
    decisions = decide(matching, hashes_of(*fresh), NOW, keep_absent=keep_absent)
    if limit is not None:
        decisions = bound(decisions, limit)
    return order(CURRENT, decisions, matching)


def test_order_updates_in_place_with_only_the_wrapper_fields() -> None:
    a, b = make_pass("a", 1), make_pass("b", 2)
    stored = [element(a, _id="oid-a"), element(b, _id="oid-b")]
    changed_b = make_pass("b", 2, status="USING")
    changes = _order(stored, [a, changed_b])
    assert not changes.rewrite
    assert changes.appended == []
    assert changes.updated == [
        (
            1,
            {
                "status": "USING",
                "payload": changed_b,
                "payload_hash": payload_hash(changed_b),
                "timestamp": NOW,
            },
        )
    ]
    assert set(changes.updated[0][1]) == set(MUTABLE_ELEMENT_FIELDS)
    assert changes.final == [stored[0], {**stored[1], **changes.updated[0][1]}]
    assert changes.stored_length == 2


def test_order_appends_newer_passes_after_the_whole_stored_array() -> None:
    a, new = make_pass("a", 1), make_pass("new", 5)
    stored: list[Any] = [element(a), "junk"]
    changes = _order(stored, [a, new])
    assert not changes.rewrite
    assert changes.appended == [wrap_pass(new, NOW, payload_hash(new))]
    assert changes.stored_length == 2  # malformed slots count: the append index is past them
    assert changes.final == [*stored, changes.appended[0]]


def test_order_nothing_to_do_is_no_change() -> None:
    a = make_pass("a", 1)
    changes = _order([element(a)], [a])
    assert not changes.changed
    assert changes.final == [element(a)]


@pytest.mark.parametrize(
    "why",
    ["removal", "copy", "trim", "legacy element", "older new pass", "stored out of order", "not an array"],
)
def test_order_rewrites_when_in_place_cannot_reach_the_result(why: str) -> None:
    a, b, c = make_pass("a", 1), make_pass("b", 2), make_pass("c", 3)
    stored: Any = [element(a), element(c)]
    fresh = [a, c]
    limit = None
    keep_absent: Any = never
    if why == "removal":
        fresh = [a]
    elif why == "copy":
        stored.append(element(a))
    elif why == "trim":
        keep_absent, limit = always, 1
    elif why == "legacy element":
        stored[0] = element(a, timestamp=T0 * 1000)
    elif why == "older new pass":
        fresh = [a, b, c]
    elif why == "stored out of order":
        stored.reverse()
    elif why == "not an array":
        stored = None
    changes = _order(stored, fresh, keep_absent=keep_absent, limit=limit)
    assert changes.rewrite
    assert changes.changed


def test_order_rewrite_puts_malformed_first_then_oldest_first() -> None:
    a, b, c = make_pass("a", 1), make_pass("b", 2), make_pass("c", 3)
    stored: list[Any] = [element(c), {"junk": 1}, element(a), "junk-2"]
    changes = _order(stored, [a, b, c])  # stored out of order and b older than c: a rewrite
    assert changes.rewrite
    assert changes.final[:2] == [{"junk": 1}, "junk-2"]
    assert [e["pass_uuid"] for e in changes.final[2:]] == ["a", "b", "c"]


def test_order_in_place_keeps_malformed_elements_where_they_are() -> None:
    a, b = make_pass("a", 1), make_pass("b", 2)
    stored: list[Any] = [element(a), {"junk": 1}, element(b)]
    changes = _order(stored, [a, make_pass("b", 2, status="USING")])
    assert not changes.rewrite
    assert [index for index, _ in changes.updated] == [2]
    assert changes.final[1] == {"junk": 1}


def test_order_rewrite_writes_legacy_elements_normalised() -> None:
    a = make_pass("a", 1)
    legacy = {key: value for key, value in element(a, _id="oid").items() if key != "pass_uuid"}
    legacy["uuid"] = "a"
    changes = _order([legacy], [a])
    assert changes.rewrite
    assert changes.final == [element(a, _id="oid")]


# --- 5. log_entries --------------------------------------------------------------------------------


def test_log_entries_one_per_created_updated_removed() -> None:
    a, b, c, d = (make_pass(u, n) for n, u in enumerate("abcd", start=1))
    changed_b = make_pass("b", 2, status="USING")
    stored = [element(a), element(b), element(c), "junk", element(a, _id="copy")]
    fresh = [a, changed_b, d]
    decisions = decide(match(stored, fresh, NOW), hashes_of(*fresh), NOW, keep_absent=never)
    entries = log_entries(HISTORY, decisions)
    assert [(action, name, e["pass_uuid"], new, previous) for action, name, e, new, previous in entries] == [
        ("updated", HISTORY, "b", payload_hash(changed_b), payload_hash(b)),
        ("removed", HISTORY, "c", None, payload_hash(c)),
        ("created", HISTORY, "d", payload_hash(d), None),
    ]


def test_log_entries_nothing_for_keep_verbatim_drop_and_trim() -> None:
    decisions = [
        Decision("keep", element(make_pass("a", 1)), 0),
        Decision("verbatim", "junk", 1),
        Decision("drop", element(make_pass("a", 1)), 2),
        Decision("trim", element(make_pass("b", 2)), 3, previous_hash="h"),
    ]
    assert log_entries(CURRENT, decisions) == []


def test_log_entries_hashes_that_are_not_strings_are_none() -> None:
    stored = element(make_pass("a", 1), payload_hash=12345)
    entries = log_entries(CURRENT, [Decision("remove", stored, 0, previous_hash=12345)])
    assert [(action, new, previous) for action, _, _, new, previous in entries] == [("removed", None, None)]


def test_log_entries_removed_entry_names_the_stored_element() -> None:
    stored = element(make_pass("a", 1), status="USING")
    [(action, _, logged, _, _)] = log_entries(CURRENT, [Decision("remove", stored, 0, previous_hash="h")])
    assert action == "removed"
    assert logged is stored


# --- fit_document ----------------------------------------------------------------------------------

BLOB = 200_000


def big_pass(uuid: str, day: int, status: str = "EXPIRED", size: int = BLOB) -> Pass:
    return make_pass(uuid, day, status, blob="x" * size)


def _plan(
    document: CacheDocument | None, current: list[Pass], expired: list[Pass], limit: int = 500, now: int = NOW
) -> Any:
    fresh = prepare_fresh(fetch(current, expired))
    return plan_sync(USER, stored_of(document, now), fresh, now, history_limit=limit, write_id="w")


def _item_size(index: int, value: Any) -> int:
    return bson_document_size({str(index): value}) - bson_document_size({})


def test_fit_document_leaves_a_plan_that_fits_alone() -> None:
    plan = _plan(None, [make_pass("a", 1)], [make_pass("x", 1, "EXPIRED")])
    assert fit_document(None, plan) is plan


def test_fit_document_trims_the_oldest_history_down_to_the_trim_ratio() -> None:
    history = [big_pass(f"h{n:03d}", 1) for n in range(84)]  # ~16.8 MB: over the 15 MiB limit
    plan = _plan(None, [big_pass("c", 1, "USABLE")], history)
    final = plan.history.final
    kept = [e["pass_uuid"] for e in final]
    assert 0 < len(kept) < 84
    assert kept == [p["uuid"] for p in history][-len(kept) :]  # the newest, oldest first
    document = apply_plan(None, plan)
    target = HISTORY_TRIM_RATIO * MAX_DOCUMENT_BYTES
    assert bson_document_size(document) <= target
    # No more than needed: the newest trimmed pass would not have fitted under the target.
    newest_trimmed = history[-len(kept) - 1]
    one_more = {**document, HISTORY: [wrap_pass(newest_trimmed, NOW), *final]}
    assert bson_document_size(one_more) > target
    # The passes are all there; the trimmed history is not logged as created.
    assert [e["pass_uuid"] for e in plan.passes.final] == ["c"]
    assert sorted(entry.uuid for entry in plan.log if entry.list == HISTORY) == sorted(kept)
    assert plan.history.rewrite


def test_fit_document_drops_only_the_log_of_trimmed_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = 6_000
    old = build(
        [make_pass("back", 1)],
        [big_pass("h1", 1, size=blob), big_pass("h2", 2, size=blob), big_pass("h3", 3, size=blob),
         make_pass("again", 4, "EXPIRED")],
    )  # fmt: skip
    # back: v1 -> v4 (removed from passes, created in history); again: history -> current (removed from
    # history, created in passes); h1 changed.
    fresh_history = [
        big_pass("h1", 1, size=blob + 1),
        *old_history_passes(old)[1:3],
        make_pass("back", 1, "EXPIRED"),
    ]
    plan = _plan(old, [make_pass("again", 4)], fresh_history)
    logged = {(e.action, e.list, e.uuid) for e in plan.log}
    assert logged == {
        ("removed", "passes", "back"),
        ("created", "passes", "again"),
        ("updated", "passes4", "h1"),
        ("removed", "passes4", "again"),
        ("created", "passes4", "back"),
    }
    assert [e["pass_uuid"] for e in plan.history.final] == ["back", "h1", "h2", "h3"]
    # A limit under which back and h1 (the oldest) must go, but h2 may stay.
    size = bson_document_size(apply_plan(old, plan))
    back_size, h1_size = (_item_size(index, e) for index, e in enumerate(plan.history.final[:2]))
    limit = int((size - back_size - h1_size / 2) / HISTORY_TRIM_RATIO)
    assert size > limit
    monkeypatch.setattr(plan_module, "MAX_DOCUMENT_BYTES", limit)
    fitted = fit_document(old, plan)
    assert [e["pass_uuid"] for e in fitted.history.final] == ["h2", "h3"]
    assert fitted.history.rewrite
    assert bson_document_size(apply_plan(old, fitted)) <= HISTORY_TRIM_RATIO * limit
    assert {(e.action, e.list, e.uuid) for e in fitted.log} == logged - {
        ("updated", "passes4", "h1"),
        ("created", "passes4", "back"),
    }
    assert fitted.passes == plan.passes


def old_history_passes(document: CacheDocument) -> list[Pass]:
    return [e["payload"] for e in document[HISTORY]]


def test_fit_document_refuses_current_passes_that_do_not_fit_alone() -> None:
    current = [big_pass(f"c{n:02d}", 1, "USABLE", size=1_000_000) for n in range(16)]
    with pytest.raises(UpstreamError, match="more than one document holds") as raised:
        _plan(None, current, [big_pass("h", 1)])
    assert not raised.value.transient


def test_fit_document_does_not_measure_a_plan_that_changes_no_array() -> None:
    # Only fields change: even a stored document over the limit (a huge passesLog) is not refused.
    old = build([make_pass("a", 1)])
    old["passesLog"] = ["x" * 1_000_000] * 16
    plan = _plan(old, [make_pass("a", 1)], [])
    assert not plan.passes.changed
    assert not plan.history.changed
    assert bson_document_size(apply_plan(old, plan)) > MAX_DOCUMENT_BYTES


def test_fit_document_sizes_malformed_history_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    old: CacheDocument = {"_id": 1, "user_id": USER, "timestamp": T0, "passes": [], "passes4": ["junk", 7]}
    history = [big_pass(f"h{n:02d}", 1 + n) for n in range(10)]
    monkeypatch.setattr(plan_module, "MAX_DOCUMENT_BYTES", 1_000_000)
    plan = _plan(old, [], history)  # must not fail on the string and the number
    assert bson_document_size(apply_plan(old, plan)) <= HISTORY_TRIM_RATIO * 1_000_000
    assert [e["pass_uuid"] for e in plan.history.final if isinstance(e, dict)][-1] == "h09"


# --- plan_status -----------------------------------------------------------------------------------


def test_plan_status_sets_only_the_status_in_place_and_logs_nothing() -> None:
    old = build([make_pass("a", 1), make_pass("b", 2)], [make_pass("x", 1, "EXPIRED")])
    old["passes"][1]["_id"] = "oid-b"
    stored = stored_of(old, NOW)
    assert stored is not None
    plan = plan_status(stored, "b", "USING", write_id="w", now=NOW)
    assert plan is not None
    assert plan.passes.updated == [(1, {"status": "USING", "status_marked_at": NOW})]
    assert not plan.passes.rewrite
    assert not plan.history.changed
    assert plan.log == []
    assert plan.fields == {}  # not a sync: the sync time stays
    assert plan.revision == 2
    assert plan.guard == stored.guard
    applied = apply_plan(old, plan)
    assert applied["passes"][1] == {**old["passes"][1], "status": "USING", "status_marked_at": NOW}
    assert applied["passes"][0] is old["passes"][0]
    assert applied["passes4"] == old["passes4"]
    assert applied["timestamp"] == T0
    assert applied[REVISION_FIELD] == 2


def test_plan_status_of_a_node_element_without_payload_hash() -> None:
    # A missing hash alone is no legacy shape to rewrite: the status is set in place, nothing else.
    old = build([make_pass("a", 1), make_pass("b", 2)])
    del old["passes"][1]["payload_hash"]
    stored = stored_of(old, NOW)
    assert stored is not None
    plan = plan_status(stored, "b", "USING", write_id="w", now=NOW)
    assert plan is not None
    assert not plan.passes.rewrite
    assert plan.passes.updated == [(1, {"status": "USING", "status_marked_at": NOW})]
    assert apply_plan(old, plan)["passes"][1] == {
        **old["passes"][1],
        "status": "USING",
        "status_marked_at": NOW,
    }


def test_plan_status_none_for_a_pass_not_current() -> None:
    old = build([make_pass("a", 1)], [make_pass("x", 1, "EXPIRED")])
    stored = stored_of(old, NOW)
    assert stored is not None
    assert plan_status(stored, "x", "USING", write_id="w", now=NOW) is None
    assert plan_status(stored, "nope", "USING", write_id="w", now=NOW) is None
    broken = stored_of({"user_id": USER, "timestamp": T0, "passes": None}, NOW)
    assert broken is not None
    assert plan_status(broken, "a", "USING", write_id="w", now=NOW) is None


def test_plan_status_carries_the_pending_log() -> None:
    old = build([make_pass("a", 1)])
    pending = LogEntry("42:1:w:0", USER, T0, "a", "USABLE", "created", "passes", "h", None)
    old[PENDING_LOG_FIELD] = [pending.to_document()]
    stored = stored_of(old, NOW)
    assert stored is not None
    plan = plan_status(stored, "a", "USING", write_id="w", now=NOW)
    assert plan is not None
    assert plan.carried_log == [pending]
    assert plan.log == []


def test_plan_status_converges_a_legacy_array_by_a_rewrite() -> None:
    a, b = make_pass("a", 1), make_pass("b", 2)
    legacy_b = {key: value for key, value in element(b).items() if key != "pass_uuid"} | {"uuid": "b"}
    old: CacheDocument = {"user_id": USER, "timestamp": T0, "passes": [element(a), legacy_b, element(a)]}
    stored = stored_of(old, NOW)
    assert stored is not None
    plan = plan_status(stored, "b", "USING", write_id="w", now=NOW)
    assert plan is not None
    assert plan.passes.rewrite
    assert plan.passes.final == [element(a), {**element(b, status="USING"), "status_marked_at": NOW}]
    assert plan.log == []


def test_plan_status_leaves_a_history_that_is_not_an_array_alone() -> None:
    old: CacheDocument = {
        "user_id": USER,
        "timestamp": T0,
        "passes": [element(make_pass("a", 1))],
        "passes4": "not an array",
    }
    stored = stored_of(old, NOW)
    assert stored is not None
    plan = plan_status(stored, "a", "USING", write_id="w", now=NOW)
    assert plan is not None
    assert not plan.history.changed
    applied = apply_plan(old, plan)
    assert applied["passes4"] == "not an array"
    missing = {key: value for key, value in old.items() if key != "passes4"}
    stored = stored_of(missing, NOW)
    assert stored is not None
    plan = plan_status(stored, "a", "USING", write_id="w", now=NOW)
    assert plan is not None
    assert "passes4" not in apply_plan(missing, plan)


# --- what plan_sync adds --------------------------------------------------------------------------


@pytest.mark.parametrize("legacy_id", [str(USER), float(USER)])
def test_plan_sync_converges_a_string_or_double_user_id(legacy_id: object) -> None:
    old = build([make_pass("a", 1)])
    old["user_id"] = legacy_id
    plan = _plan(old, [make_pass("a", 1)], [])
    assert plan.fields["user_id"] == USER
    assert type(apply_plan(old, plan)["user_id"]) is int


@pytest.mark.parametrize("stored_id", [USER, Int64(USER)])
def test_plan_sync_keeps_an_integer_user_id_int64_included(stored_id: int) -> None:
    # The reader and migrate count Int64 as the contract's shape; the planner must not rewrite it either.
    old = build([make_pass("a", 1)])
    old["user_id"] = stored_id
    assert "user_id" not in _plan(old, [make_pass("a", 1)], []).fields


def test_plan_sync_sets_the_given_fields_but_never_the_user_id() -> None:
    old = build([make_pass("a", 1)])
    plan = plan_sync(
        USER,
        stored_of(old, NOW),
        prepare_fresh(fetch([make_pass("a", 1)])),
        NOW,
        history_limit=5,
        write_id="w",
        fields={"next_sync_at": NOW + 100, "user_id": 999},
    )
    assert plan.fields == {"timestamp": NOW, "next_sync_at": NOW + 100}


def test_plan_sync_revision_and_entry_ids_follow_the_stored_revision() -> None:
    old = build([make_pass("a", 1)])
    old[REVISION_FIELD] = 41
    plan = plan_sync(
        USER,
        stored_of(old, NOW),
        prepare_fresh(fetch([make_pass("b", 2)])),
        NOW,
        history_limit=5,
        write_id="abc",
    )
    assert plan.revision == 42
    assert [entry.entry_id for entry in plan.log] == [f"{USER}:42:abc:0", f"{USER}:42:abc:1"]
    assert plan.guard is not None
    assert plan.guard.fields == {REVISION_FIELD: 41, "timestamp": T0}


def test_plan_sync_carries_the_pending_log_of_an_earlier_write() -> None:
    old = build([make_pass("a", 1)])
    pending = LogEntry("42:1:w:0", USER, T0, "a", "USABLE", "created", "passes", "h", None)
    old[PENDING_LOG_FIELD] = [pending.to_document(), {"not": "an entry"}]
    plan = _plan(old, [make_pass("a", 1), make_pass("b", 2)], [])
    assert plan.carried_log == [pending]
    assert [(entry.uuid, entry.action) for entry in plan.log] == [("b", "created")]


def test_plan_sync_same_stored_element_objects_are_not_modified() -> None:
    old = build([make_pass("a", 1)], [make_pass("x", 1, "EXPIRED")])
    snapshot = copy.deepcopy(old)
    stored = stored_of(old, NOW)
    assert stored is not None
    plan_status(stored, "a", "USING", write_id="w", now=NOW)
    plan_sync(
        USER, stored, prepare_fresh(fetch([make_pass("a", 1, "USING")])), NOW, history_limit=1, write_id="w"
    )
    assert old == snapshot


def test_fit_document_counts_the_pending_log_and_keeps_malformed_history() -> None:
    # The written document carries this write's log entries: a build that fits only without them is trimmed.
    history = [big_pass(f"h{n:03d}", 1 + n % 28, size=60_000) for n in range(270)]  # ~16.2 MB
    stored = build([make_pass("a", 1)])
    stored["passes4"] = ["a malformed element", *stored.get("passes4", [])]
    plan = _plan(stored, [make_pass("a", 1)], history)

    assert written_size(stored, plan) <= MAX_DOCUMENT_BYTES
    assert len(plan.history.final) < 1 + len(history)  # trimmed
    assert "a malformed element" in plan.history.final
    logged = {entry.uuid for entry in plan.log if entry.list == "passes4"}
    assert logged == {element_uuid(element) for element in plan.history.final if isinstance(element, dict)}


def test_a_local_status_bytemark_never_confirmed_is_restored_after_the_grace() -> None:
    old = build([make_pass("a", 1)])
    marked = plan_status(stored_of(old, NOW), "a", "USING", write_id="m", now=NOW)  # type: ignore[arg-type]
    assert marked is not None
    after_mark = apply_plan(old, marked)
    fresh = fetch([make_pass("a", 1)])  # Bytemark still says USABLE, same hash

    soon = _plan(after_mark, fresh.current, [], now=NOW + UNCONFIRMED_MARK_SECONDS - 1)
    later = _plan(after_mark, fresh.current, [], now=NOW + UNCONFIRMED_MARK_SECONDS)

    assert apply_plan(after_mark, soon)["passes"][0]["status"] == "USING"  # still waiting for Bytemark
    restored = apply_plan(after_mark, later)["passes"][0]
    assert (restored["status"], restored["status_marked_at"]) == ("USABLE", None)
    assert later.passes.updated == [(0, {"status": "USABLE", "status_marked_at": None})]
    assert later.log == []  # Bytemark did not change: nothing to log


def test_bytemarks_own_change_replaces_a_local_status_at_once() -> None:
    old = build([make_pass("a", 1)])
    marked = plan_status(stored_of(old, NOW), "a", "USING", write_id="m", now=NOW)  # type: ignore[arg-type]
    assert marked is not None
    after_mark = apply_plan(old, marked)
    confirmed = make_pass("a", 1, "USING", first_use="2024-06-15T15:00:00Z")

    plan = _plan(after_mark, [confirmed], [], now=NOW + 60)

    element_after = apply_plan(after_mark, plan)["passes"][0]
    assert (element_after["status"], element_after["status_marked_at"]) == ("USING", None)
    assert [entry.action for entry in plan.log] == ["updated"]
