"""Properties of the planner over arbitrary stored documents and arbitrary Bytemark answers (hypothesis).

Stored documents mix well-formed elements in and out of order, repeated uuids, malformed elements and the
Node service's legacy keys; fresh answers overlap the stored uuids, move passes between the lists, repeat
uuids and change payloads. For all of them the applied plan is exactly what the contract (§6) says, the log
names each created, updated or removed pass once, a second sync of the same answer changes nothing, and an
in-place plan, as the store's own update statement applied the way MongoDB applies it, gives the same
document as ``apply_plan``.

Examples are derandomized and few (the unit suite stays fast); set ``PLAN_PROPERTY_EXAMPLES`` for a longer
hunt, e.g. ``PLAN_PROPERTY_EXAMPLES=5000 pytest tests/unit/test_plan_properties.py``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bytemark_cache.adapters.mongo_store import update_statement
from bytemark_cache.domain.document import normalise_element, read_cache
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.model import (
    CURRENT,
    HISTORY,
    PENDING_LOG_FIELD,
    REVISION_FIELD,
    CacheDocument,
    Element,
    FetchedPasses,
    Pass,
    SyncPlan,
)
from bytemark_cache.domain.passes import creation_key, time_or_none, wrap_pass
from bytemark_cache.domain.plan import FreshPasses, apply_plan, plan_status, plan_sync, prepare_fresh

USER = 42
T0 = 1_718_425_800
NOW = T0 + 3600
EXAMPLES = int(os.environ.get("PLAN_PROPERTY_EXAMPLES", "100"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 100,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

UUIDS = ("a", "b", "c", "d", "e", "f", "g")
# Creation times per uuid: none, garbage, equal instants written differently, an offset, plain days.
CREATED = {
    "a": None,
    "b": "not a time",
    "c": "2024-06-01T10:00:00Z",
    "d": "2024-06-02T10:00:00.000Z",
    "e": "2024-06-02T12:00:00+02:00",  # the same instant as d: ordered by uuid
    "f": "2024-06-03T10:00:00Z",
    "g": "2024-06-04T10:00:00Z",
}
MOVED_CREATED = "2024-06-02T11:00:00Z"  # a variant whose creation time moved (reorders the array)


def make_pass(uuid: str, variant: int, status: str) -> Pass:
    """Pass ``uuid`` in one of a few versions: same (uuid, variant, status) → the same payload and hash."""
    return {
        "uuid": uuid,
        "status": status,
        "time_created": MOVED_CREATED if variant == 3 else CREATED[uuid],
        "time_modified": f"2024-06-10T10:00:0{variant}Z",
        "label_name": "Local Day Pass" if variant % 2 else "Local Single Ride",
        "n": (1, 2.5, "x", 1e-7)[variant],
    }


def passes_of(statuses: tuple[str, ...]) -> st.SearchStrategy[Pass]:
    return st.builds(
        make_pass, st.sampled_from(UUIDS), st.integers(min_value=0, max_value=3), st.sampled_from(statuses)
    )


ANY_PASS = passes_of(("USABLE", "USING", "USES_GONE", "EXPIRED"))
MALFORMED: tuple[Any, ...] = (
    "junk",
    7,
    None,
    [1, 2],
    {"no": "uuid"},
    {"pass_uuid": ""},
    {"pass_uuid": None, "payload": {}},
    {"pass_uuid": 5, "payload": {"uuid": 6}},
)
MISSING = object()
"""A document field that is absent."""


@st.composite
def stored_elements(draw: st.DrawFn, passes: st.SearchStrategy[Pass]) -> Element:
    """A well-formed element of ``passes``: mostly in the contract's shape (its hash right, stale or missing,
    an ``_id``, a local activation's status), sometimes as the Node service stored it (legacy keys and
    units)."""
    pass_ = copy.deepcopy(draw(passes))
    element = wrap_pass(pass_, T0)
    hash_kind = draw(st.sampled_from(["right", "right", "right", "stale", "missing", "number"]))
    if hash_kind == "stale":
        element["payload_hash"] = "0" * 32
    elif hash_kind == "missing":
        del element["payload_hash"]
    elif hash_kind == "number":
        element["payload_hash"] = 12345
    if draw(st.booleans()):
        element["_id"] = f"oid-{draw(st.integers(0, 99))}"
    if draw(st.integers(0, 3)) == 0:
        element["status"] = "USING"  # a local activation: wrapper and payload disagree
    if draw(st.integers(0, 3)) == 0:
        legacy = draw(
            st.sampled_from(
                [
                    "uuid key",
                    "payload uuid only",
                    "no status",
                    "ms",
                    "double",
                    "no timestamp",
                    "iso",
                    "no fts",
                ]
            )
        )
        if legacy in ("uuid key", "payload uuid only"):
            del element["pass_uuid"]
            if legacy == "uuid key":
                element["uuid"] = pass_["uuid"]
        elif legacy == "no status":
            del element["status"]
        elif legacy == "ms":
            element["timestamp"] = T0 * 1000
        elif legacy == "double":
            element["timestamp"] = T0 + 0.5
        elif legacy == "no timestamp":
            del element["timestamp"]
        elif legacy == "iso":
            element["timestamp"] = "2024-06-15T04:30:00Z"
        else:
            del element["free_ticket_status"]
    return element


@st.composite
def stored_arrays(draw: st.DrawFn, passes: st.SearchStrategy[Pass]) -> Any:
    """A stored array: elements in any order with copies and junk, or something that is not an array."""
    shape = draw(st.sampled_from(["array"] * 10 + ["missing", "not an array"]))
    if shape == "missing":
        return MISSING
    if shape == "not an array":
        return draw(st.sampled_from([None, {"0": "x"}, "text"]))
    items = draw(
        st.lists(
            st.one_of(stored_elements(passes), stored_elements(passes), st.sampled_from(MALFORMED)),
            max_size=6,
        )
    )
    if draw(st.integers(0, 3)):
        # Mostly without copies (a copy forces a rewrite), so in-place plans are exercised too.
        seen: set[str | None] = set()
        items = [
            item
            for item in items
            if _uuid(item) is None or not (_uuid(item) in seen or seen.add(_uuid(item)))
        ]
    if items and draw(st.integers(0, 3)):
        items = sorted(items, key=lambda item: creation_key(_payload(item) | {"uuid": _uuid(item) or ""}))
    return items


@st.composite
def raw_scenarios(draw: st.DrawFn) -> tuple[CacheDocument | None, FetchedPasses, int]:
    """(stored document or None, Bytemark's answer, history limit): a document of any shape."""
    current = draw(st.lists(ANY_PASS, max_size=7))
    expired = draw(st.lists(passes_of(("EXPIRED", "EXPIRED", "USES_GONE")), max_size=7))
    limit = draw(st.integers(min_value=1, max_value=12))
    if draw(st.integers(0, 9)) == 0:
        document = None
    else:
        document = {
            "_id": "oid",
            "user_id": draw(st.sampled_from([USER, str(USER)])),
            "timestamp": draw(st.sampled_from([T0, T0 * 1000, float(T0) + 0.25, "2024-06-15T04:30:00Z"])),
        }
        for name, same_list in ((CURRENT, current), (HISTORY, expired)):
            # Mostly versions of what Bytemark answers now in the same list (unchanged or changed passes),
            # else anything (gone passes, passes that moved between the lists).
            versions = st.sampled_from(same_list) if same_list else ANY_PASS
            array = draw(stored_arrays(st.one_of(versions, versions, versions, ANY_PASS)))
            if array is not MISSING:
                document[name] = array
        if draw(st.booleans()):
            document["__v"] = 3
            document["passesLog"] = [{"legacy": True}]
        if draw(st.booleans()):
            document[REVISION_FIELD] = draw(st.integers(1, 50))
    fetched = FetchedPasses(current=copy.deepcopy(current), expired=copy.deepcopy(expired))
    return document, fetched, limit


@st.composite
def evolutions(draw: st.DrawFn) -> tuple[CacheDocument | None, FetchedPasses, int]:
    """A document this service wrote for an earlier answer, and a later answer that differs a little:
    passes unchanged, changed (in place, or with a moved creation time), expired into the history, gone,
    and new ones; history shown again, changed, or not shown."""
    limit = draw(st.integers(min_value=1, max_value=8))
    before = prepare_fresh(
        FetchedPasses(
            current=draw(st.lists(passes_of(("USABLE", "USING", "USES_GONE")), max_size=6)),
            expired=draw(st.lists(passes_of(("EXPIRED",)), max_size=6)),
        )
    )
    document = apply_plan(None, plan_sync(USER, None, before, T0, history_limit=limit, write_id="w"))
    document["_id"] = "oid"
    if draw(st.booleans()):
        for element in document[CURRENT] + document[HISTORY]:
            element["_id"] = f"oid-{element['pass_uuid']}"
    current: list[Pass] = []
    expired: list[Pass] = []
    for pass_ in before.history:
        edit = draw(st.sampled_from(["shown", "shown", "changed", "not shown"]))
        if edit == "shown":
            expired.append(copy.deepcopy(pass_))
        elif edit == "changed":
            expired.append({**pass_, "status": "USES_GONE", "n": "changed"})
    for pass_ in before.current:
        edit = draw(
            st.sampled_from(["same", "same", "changed", "changed", "same", "moved", "expired", "gone"])
        )
        if edit == "same":
            current.append(copy.deepcopy(pass_))
        elif edit == "changed":
            current.append({**pass_, "status": "USING", "n": "changed"})
        elif edit == "moved":
            current.append(
                {**pass_, "time_created": draw(st.sampled_from(sorted(set(CREATED.values()) - {None})))}
            )
        elif edit == "expired":
            expired.append({**pass_, "status": "EXPIRED"})
    if draw(st.booleans()):
        current += draw(st.lists(ANY_PASS, max_size=2))
    if draw(st.booleans()):
        expired += draw(st.lists(passes_of(("EXPIRED",)), max_size=3))
    return document, FetchedPasses(current=current, expired=expired), limit


def scenarios() -> st.SearchStrategy[tuple[CacheDocument | None, FetchedPasses, int]]:
    return st.one_of(raw_scenarios(), evolutions(), evolutions())


# --- an oracle written from the contract --------------------------------------------------------------


def _payload(item: object) -> dict[str, Any]:
    payload = item.get("payload") if isinstance(item, Mapping) else None
    return dict(payload) if isinstance(payload, Mapping) else {}


def _uuid(item: object) -> str | None:
    """The uuid the contract matches on: ``pass_uuid``, the legacy ``uuid``, else the payload's."""
    if not isinstance(item, Mapping):
        return None
    for candidate in (item.get("pass_uuid"), item.get("uuid"), _payload(item).get("uuid")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


def _key(element: Mapping[str, Any]) -> tuple[int, Any, str]:
    """Oldest first by the payload's ``time_created`` (no usable time first), then uuid."""
    created = time_or_none(_payload(element).get("time_created"))
    uuid = _uuid(element) or ""
    return (0, "", uuid) if created is None else (1, created.timestamp(), uuid)


def _first_copies(array: object) -> dict[str, Any]:
    first: dict[str, Any] = {}
    for item in array if isinstance(array, list) else []:
        uuid = _uuid(item)
        if uuid is not None:
            first.setdefault(uuid, item)
    return first


def _malformed(array: object) -> list[Any]:
    return [item for item in array if _uuid(item) is None] if isinstance(array, list) else []


def _well_formed(array: object) -> list[Any]:
    return [item for item in array if _uuid(item) is not None] if isinstance(array, list) else []


def _result(stored: Any, pass_: Pass | None, fresh: FreshPasses) -> Element:
    """The element a sync leaves for one uuid: new → wrapped; same hash → untouched (as read); changed →
    the wrapper fields replaced, every other field kept; absent → untouched."""
    if stored is None:
        assert pass_ is not None
        return wrap_pass(pass_, NOW, fresh.hashes[pass_["uuid"]])
    element, _notes = normalise_element(stored, NOW)
    if pass_ is None or element.get("payload_hash") == fresh.hashes[pass_["uuid"]]:
        return element
    return {
        **element,
        "status": pass_["status"],
        "payload": pass_,
        "payload_hash": fresh.hashes[pass_["uuid"]],
        "timestamp": NOW,
    }


def expected_arrays(
    document: CacheDocument | None, fresh: FreshPasses, limit: int
) -> tuple[list[Any], list[Any]]:
    """The well-formed elements of both arrays after the sync, oldest first."""
    old = document or {}
    stored_current, stored_history = _first_copies(old.get(CURRENT)), _first_copies(old.get(HISTORY))
    current = {pass_["uuid"]: pass_ for pass_ in fresh.current}
    history = {pass_["uuid"]: pass_ for pass_ in fresh.history}
    passes = [_result(stored_current.get(uuid), pass_, fresh) for uuid, pass_ in current.items()]
    candidates = [
        _result(stored_history.get(uuid), history.get(uuid), fresh)
        for uuid in (stored_history.keys() | history.keys()) - current.keys()
    ]
    return sorted(passes, key=_key), sorted(candidates, key=_key)[
        len(candidates) - min(limit, len(candidates)) :
    ]


def _plan(document: CacheDocument | None, fresh: FreshPasses, limit: int, now: int = NOW) -> SyncPlan:
    stored = None if document is None else read_cache([document], USER, now)
    assert document is None or stored is not None
    return plan_sync(USER, stored, fresh, now, history_limit=limit, write_id="w")


# --- MongoDB's $set, simulated ----------------------------------------------------------------------


def _mongo_set(document: dict[str, Any], path: str, value: Any) -> None:
    """``$set`` of one dotted path as MongoDB applies it (a missing field becomes an embedded object, an
    index past the end pads with nulls); a path through a scalar fails, as MongoDB refuses it."""
    *parents, last = path.split(".")
    target: Any = document
    for part in parents:
        if isinstance(target, list):
            index = int(part)
            assert index < len(target), f"{path}: positional set past the end of the array"
            target = target[index]
        elif isinstance(target, dict):
            target = target.setdefault(part, {})
        else:
            raise AssertionError(f"{path}: MongoDB cannot create a field in {target!r}")
    if isinstance(target, list):
        index = int(last)
        target.extend([None] * (index + 1 - len(target)))
        target[index] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise AssertionError(f"{path}: MongoDB cannot create a field in {target!r}")


def store_apply(stored: CacheDocument | None, plan: SyncPlan) -> CacheDocument:
    """The document after the write, the way the MongoDB store issues it: an insert for a build, else the
    store's own update statement (``update_statement``: one ``$set`` of whole arrays, positional fields at
    their index and appends from ``stored_length``, and an ``$unset``) applied as MongoDB applies it. The
    change-log entries its ``$set`` carries (``PENDING_LOG_FIELD``) belong to the log, not to the plan."""
    if plan.creates:
        return apply_plan(None, plan)
    assert stored is not None
    _filter, update = update_statement(plan)
    assert set(update) == {"$set", "$unset"}, update.keys()
    paths = {path: value for path, value in update["$set"].items() if path != PENDING_LOG_FIELD}
    unset = list(update["$unset"])
    # MongoDB refuses one update whose paths overlap ("passes" and "passes.0.status"), across $set and $unset.
    every_path = [*update["$set"], *unset]
    assert len(every_path) == len(set(every_path)), every_path
    for path in every_path:
        for other in every_path:
            assert not other.startswith(path + "."), (path, other)
    document = copy.deepcopy(stored)
    for path, value in paths.items():
        _mongo_set(document, path, copy.deepcopy(value))
    for name in unset:
        document.pop(name, None)
    return document


# --- the properties ---------------------------------------------------------------------------------


@SETTINGS
@given(scenarios())
def test_a_sync_leaves_exactly_what_the_contract_says(scenario: tuple[Any, FetchedPasses, int]) -> None:
    document, fetched, limit = scenario
    snapshot = copy.deepcopy((document, fetched))
    fresh = prepare_fresh(fetched)
    plan = _plan(document, fresh, limit)
    applied = apply_plan(document, plan)
    assert (document, fetched) == snapshot, "the plan modified its inputs"

    passes, history = expected_arrays(document, fresh, limit)
    assert _well_formed(applied[CURRENT]) == passes
    assert _well_formed(applied[HISTORY]) == history
    assert applied[CURRENT] == plan.passes.final
    assert applied[HISTORY] == plan.history.final
    # Every fresh pass's element carries that very pass and its Node-compatible hash.
    fresh_by_uuid = {pass_["uuid"]: pass_ for pass_ in (*fresh.current, *fresh.history)}
    for element in _well_formed(applied[CURRENT]) + _well_formed(applied[HISTORY]):
        pass_ = fresh_by_uuid.get(element["pass_uuid"])
        if pass_ is not None:
            assert element["payload"] == pass_
            assert element["payload_hash"] == payload_hash(pass_)
    # Malformed elements stay, in their stored order; no uuid twice in a list or in both.
    for name in (CURRENT, HISTORY):
        assert _malformed(applied[name]) == _malformed((document or {}).get(name))
    current_uuids = [element["pass_uuid"] for element in _well_formed(applied[CURRENT])]
    history_uuids = [element["pass_uuid"] for element in _well_formed(applied[HISTORY])]
    assert len(set(current_uuids)) == len(current_uuids)
    assert len(set(history_uuids)) == len(history_uuids)
    assert not set(current_uuids) & set(history_uuids)
    # The rest of the document: unknown fields kept, the sync time and revision moved.
    for field, value in (document or {}).items():
        if field not in (CURRENT, HISTORY, "timestamp", "user_id", REVISION_FIELD):
            assert applied[field] == value
    assert applied["timestamp"] == NOW
    assert applied["user_id"] == USER
    assert applied[REVISION_FIELD] == plan.revision


@SETTINGS
@given(scenarios())
def test_the_log_names_each_created_updated_and_removed_pass_once(
    scenario: tuple[Any, FetchedPasses, int],
) -> None:
    document, fetched, limit = scenario
    fresh = prepare_fresh(fetched)
    plan = _plan(document, fresh, limit)
    applied = apply_plan(document, plan)
    old = document or {}
    current = {pass_["uuid"] for pass_ in fresh.current}
    expected: set[tuple[str, str, str, Any, Any]] = set()
    for name in (CURRENT, HISTORY):
        before = {
            uuid: normalise_element(item, NOW)[0] for uuid, item in _first_copies(old.get(name)).items()
        }
        after = {element["pass_uuid"]: element for element in _well_formed(applied[name])}

        def hash_of(element: Mapping[str, Any]) -> str | None:
            value = element.get("payload_hash")
            return value if isinstance(value, str) else None

        for uuid in after.keys() - before.keys():
            expected.add(("created", name, uuid, hash_of(after[uuid]), None))
        for uuid in after.keys() & before.keys():
            if uuid in fresh.hashes and before[uuid].get("payload_hash") != fresh.hashes[uuid]:
                expected.add(("updated", name, uuid, hash_of(after[uuid]), hash_of(before[uuid])))
        gone = before.keys() - after.keys()
        if name == HISTORY:
            gone &= current  # what the bound trims is retention, not logged
        expected.update(("removed", name, uuid, None, hash_of(before[uuid])) for uuid in gone)
    logged = [
        (entry.action, entry.list, entry.uuid, entry.payload_hash, entry.previous_hash) for entry in plan.log
    ]
    assert len(logged) == len(set(logged))
    assert set(logged) == expected
    assert len({entry.entry_id for entry in plan.log}) == len(plan.log)
    assert all(entry.timestamp == NOW and entry.user_id == USER for entry in plan.log)


@SETTINGS
@given(scenarios())
def test_a_second_sync_of_the_same_answer_changes_nothing(scenario: tuple[Any, FetchedPasses, int]) -> None:
    document, fetched, limit = scenario
    fresh = prepare_fresh(fetched)
    applied = apply_plan(document, _plan(document, fresh, limit))
    again = _plan(applied, prepare_fresh(copy.deepcopy(fetched)), limit, now=NOW + 60)
    assert again.log == []
    assert not again.passes.changed
    assert not again.history.changed
    assert again.fields == {"timestamp": NOW + 60}
    assert apply_plan(applied, again) == {**applied, "timestamp": NOW + 60, REVISION_FIELD: again.revision}


@SETTINGS
@given(scenarios())
def test_the_store_writing_the_plan_as_set_paths_gives_the_same_document(
    scenario: tuple[Any, FetchedPasses, int],
) -> None:
    document, fetched, limit = scenario
    plan = _plan(document, prepare_fresh(fetched), limit)
    assert store_apply(document, plan) == apply_plan(document, plan)
    if document is not None:
        for changes in plan.lists():
            if not changes.rewrite:
                # In place is only planned over a stored array, at the length it had.
                assert changes.stored_length == len(document[changes.name])


@SETTINGS
@given(scenarios(), st.sampled_from(UUIDS), st.sampled_from(["USING", "USABLE"]))
def test_plan_status_changes_one_status_and_nothing_else(
    scenario: tuple[Any, FetchedPasses, int], uuid: str, status: str
) -> None:
    document, _fetched, _limit = scenario
    if document is None:
        return
    stored = read_cache([document], USER, NOW)
    assert stored is not None
    plan = plan_status(stored, uuid, status, write_id="w", now=NOW)
    firsts = _first_copies(document.get(CURRENT))
    if uuid not in firsts:
        assert plan is None
        return
    assert plan is not None
    assert plan.log == []
    applied = apply_plan(document, plan)
    assert store_apply(document, plan) == applied
    after = {element["pass_uuid"]: element for element in _well_formed(applied[CURRENT])}
    assert after.keys() == firsts.keys()
    for other, item in firsts.items():
        element = normalise_element(item, NOW)[0]
        marked = {**element, "status": status, "status_marked_at": NOW}
        assert after[other] == (marked if other == uuid else element)
    assert _malformed(applied[CURRENT]) == _malformed(document[CURRENT])
    assert applied.get(HISTORY, MISSING) == document.get(HISTORY, MISSING)
    assert applied["timestamp"] == document["timestamp"]


@SETTINGS
@given(st.lists(ANY_PASS, max_size=8), st.lists(passes_of(("EXPIRED", "USABLE")), max_size=8))
def test_prepare_fresh_splits_and_collapses_by_the_rules(current: list[Pass], expired: list[Pass]) -> None:
    fresh = prepare_fresh(FetchedPasses(current=current, expired=expired))

    def newest(passes: list[Pass]) -> dict[str, Pass]:
        """Per uuid the latest time_modified; on a tie the later occurrence."""
        chosen: dict[str, Pass] = {}
        for pass_ in passes:
            held = chosen.get(pass_["uuid"])
            if held is None or pass_["time_modified"] >= held["time_modified"]:
                chosen[pass_["uuid"]] = pass_
        return chosen

    v4, v1 = newest(expired), newest(current)
    want_history = {**{u: p for u, p in v1.items() if p["status"] == "EXPIRED"}, **v4}
    want_current = {u: p for u, p in v1.items() if u not in want_history}
    assert sorted(fresh.history, key=_pass_key) == fresh.history
    assert sorted(fresh.current, key=_pass_key) == fresh.current
    assert {p["uuid"]: p for p in fresh.history} == want_history
    assert {p["uuid"]: p for p in fresh.current} == want_current
    assert len(fresh.history) == len(want_history)
    assert len(fresh.current) == len(want_current)
    assert fresh.hashes == {p["uuid"]: payload_hash(p) for p in (*fresh.current, *fresh.history)}


def _pass_key(pass_: Pass) -> tuple[int, Any, str]:
    return _key({"pass_uuid": pass_["uuid"], "payload": pass_})
