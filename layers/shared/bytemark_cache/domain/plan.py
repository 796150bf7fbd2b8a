"""The sync planner, pure: the stored cache and Bytemark's fresh lists → one SyncPlan (contract §6).

``plan_sync`` is the composition of small steps, each with its own tests:

0. ``prepare_fresh`` — validate, collapse duplicate uuids (newest ``time_modified`` wins), split into
   current and history (a v4 pass, or any EXPIRED one, is history; a uuid in both lists is history),
   hash every pass once, enforce the count and storability bounds (storability only for payloads not
   already stored: checking every pass of every no-op sync was 42 % of a simulated day's CPU).
1. ``match`` — pair each stored element with the fresh pass of its uuid. Malformed elements (not an
   object, no uuid) stay verbatim; a repeated uuid keeps its first element, the later copies go.
2. ``decide`` — per element: keep (same hash), update (wrapper fields replaced), remove (gone from
   Bytemark; history keeps what is gone except a uuid current again), and the new passes.
3. ``bound`` — the history keeps the newest ``limit`` passes by ``time_created``; what the bound trims
   is retention, not a change at Bytemark, so it is not logged.
4. ``order`` — both arrays oldest first; changed elements are written in place and new ones appended
   when that keeps the order, else the whole array is rewritten (also for removals and legacy shapes).
5. ``log_entries`` — one change-log entry per created, updated or removed pass.

Then the whole document must fit ``MAX_DOCUMENT_BYTES``: the oldest history goes first, and an answer
whose current passes alone do not fit is refused (nothing written).

Longer than the layer's ~350-line guide on purpose: the steps and their composition are one story, read
top to bottom; each step is a small function tested on its own (tests/unit/test_plan_steps.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from bytemark_cache.domain.bounds import (
    HISTORY_TRIM_RATIO,
    MAX_DOCUMENT_BYTES,
    MAX_PASSES_PER_LIST,
    NotStorable,
    bson_document_size,
    check_storable,
)
from bytemark_cache.domain.document import (
    MUTABLE_ELEMENT_FIELDS,
    StoredCache,
    element_uuid,
    legacy_user_id_kind,
    normalise_element,
)
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.model import (
    CURRENT,
    HISTORY,
    PENDING_LOG_FIELD,
    REVISION_FIELD,
    CacheDocument,
    Element,
    FetchedPasses,
    ListChanges,
    ListName,
    LogAction,
    LogEntry,
    Pass,
    SyncPlan,
)
from bytemark_cache.domain.passes import (
    EXPIRED,
    CreationKey,
    collapse_duplicates,
    creation_key,
    validate_pass,
    wrap_pass,
)
from bytemark_cache.errors import UpstreamError


@dataclass(frozen=True)
class FreshPasses:
    """Bytemark's answer made ready to plan with: both lists oldest first, every pass hashed once."""

    current: list[Pass]
    history: list[Pass]
    hashes: dict[str, str]


def prepare_fresh(fetched: FetchedPasses, stored_hashes: Mapping[str, str] | None = None) -> FreshPasses:
    """Step 0. Raises UpstreamError (permanent: asking again returns the same) for an answer that breaks
    a bound or cannot be stored; nothing of it is ever written.

    ``stored_hashes`` (pass uuid → payload hash, from the stored cache) names the payloads MongoDB already
    holds: a fresh pass with the same uuid and hash is that payload, storable, and is not checked again.
    """
    known = stored_hashes or {}
    for name, passes in (("current", fetched.current), ("expired", fetched.expired)):
        if len(passes) > MAX_PASSES_PER_LIST:
            raise UpstreamError(
                f"Bytemark's {name} list holds {len(passes)} passes (more than {MAX_PASSES_PER_LIST})",
                transient=False,
            )
    expired = collapse_duplicates([validate_pass(candidate) for candidate in fetched.expired])
    current = collapse_duplicates([validate_pass(candidate) for candidate in fetched.current])
    in_history = {pass_["uuid"] for pass_ in expired}
    history = list(expired)
    still_current: list[Pass] = []
    for pass_ in current:
        if pass_["uuid"] in in_history:
            continue  # the v4 copy wins
        (history if pass_["status"] == EXPIRED else still_current).append(pass_)
    hashes = {pass_["uuid"]: _fresh_payload_hash(pass_) for pass_ in (*still_current, *history)}
    for pass_ in (*still_current, *history):
        if known.get(pass_["uuid"]) == hashes[pass_["uuid"]]:
            continue
        try:
            check_storable(pass_)
        except NotStorable as exc:
            raise UpstreamError(
                f"Bytemark pass {pass_['uuid'][:64]!r} cannot be stored: {exc}", transient=False
            ) from None
    still_current.sort(key=creation_key)
    history.sort(key=creation_key)
    return FreshPasses(current=still_current, history=history, hashes=hashes)


def _fresh_payload_hash(pass_: Pass) -> str:
    """The pass's hash, or the permanent refusal of a pass nested deeper than the interpreter's stack.

    Hashing runs before the storability check (which it lets skip stored payloads), so a hostile nesting
    reaches it first; MongoDB would refuse that depth anyway (MAX_PASS_DEPTH).
    """
    try:
        return payload_hash(pass_)
    except RecursionError:
        raise UpstreamError(
            f"Bytemark pass {pass_['uuid'][:64]!r} cannot be stored: nested too deeply", transient=False
        ) from None


# -- 1. match ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One position of the stored array: the element as stored, and as this service reads it.

    ``element`` is None for a malformed element (kept verbatim); ``legacy`` says reading it needed a
    normalisation (so the array must be rewritten to converge it); ``copy`` marks a repeated uuid.
    """

    index: int
    stored: Any
    element: Element | None
    uuid: str | None
    legacy: bool = False
    copy: bool = False


@dataclass(frozen=True)
class Matching:
    """The stored array's slots, the fresh pass of each matched slot, and the fresh passes nobody had."""

    slots: list[Slot]
    fresh_at: dict[int, Pass]
    new: list[Pass]
    stored_is_array: bool


def match(stored: object, fresh: Sequence[Pass], now: float) -> Matching:
    """Step 1: pair stored elements with fresh passes by uuid (``pass_uuid``, or the legacy ``uuid``)."""
    fresh_by_uuid = {pass_["uuid"]: pass_ for pass_ in fresh}
    stored_is_array = isinstance(stored, list)
    slots: list[Slot] = []
    fresh_at: dict[int, Pass] = {}
    seen: set[str] = set()
    for index, item in enumerate(stored if isinstance(stored, list) else []):
        uuid = element_uuid(item)
        if uuid is None or not isinstance(item, Mapping):
            slots.append(Slot(index, item, None, None))
            continue
        if uuid in seen:
            slots.append(Slot(index, item, None, uuid, copy=True))
            continue
        seen.add(uuid)
        element, notes = normalise_element(item, now)
        # A missing hash alone needs no rewrite: the element is updated (or logged) like any changed one.
        legacy = any(note != "element_payload_hash_missing" for note in notes)
        slots.append(Slot(index, item, element, uuid, legacy=legacy))
        if uuid in fresh_by_uuid:
            fresh_at[index] = fresh_by_uuid[uuid]
    new = [pass_ for pass_ in fresh if pass_["uuid"] not in seen]
    return Matching(slots=slots, fresh_at=fresh_at, new=new, stored_is_array=stored_is_array)


# -- 2. decide -----------------------------------------------------------------------------------

Kind = Literal["keep", "update", "restore", "remove", "new", "verbatim", "drop", "trim"]

MARKED_AT: Final = "status_marked_at"
"""Element field: when a status was shown locally (an activation in the app) before Bytemark said so."""

UNCONFIRMED_MARK_SECONDS: Final = 15 * 60
"""Bytemark applies an activation within seconds; a local status it has still not confirmed after this long
was refused there, and the element shows Bytemark's status again (``restore``, not logged)."""


@dataclass(frozen=True)
class Decision:
    """What becomes of one element. ``element`` is the resulting one (the stored one for remove/drop/
    trim); ``index`` its stored position (None for a new pass)."""

    kind: Kind
    element: Any
    index: int | None
    previous_hash: object = None
    legacy: bool = False

    @property
    def kept(self) -> bool:
        """True when the element is in the resulting array."""
        return self.kind in ("keep", "update", "restore", "new", "verbatim")


def decide(
    matching: Matching, hashes: Mapping[str, str], now: int, *, keep_absent: Callable[[str], bool]
) -> list[Decision]:
    """Step 2: keep, update or remove each stored element; add the new passes (in their fresh order)."""
    decisions: list[Decision] = []
    for slot in matching.slots:
        if slot.copy:
            decisions.append(Decision("drop", slot.stored, slot.index))
        elif slot.element is None or slot.uuid is None:
            decisions.append(Decision("verbatim", slot.stored, slot.index))
        elif slot.index in matching.fresh_at:
            pass_ = matching.fresh_at[slot.index]
            fresh_hash = hashes[slot.uuid]
            previous = slot.element.get("payload_hash")
            if previous == fresh_hash:
                decisions.append(_keep_or_restore(slot, pass_, now, previous))
            else:
                changed = {
                    **slot.element,
                    "status": pass_["status"],
                    "payload": pass_,
                    "payload_hash": fresh_hash,
                    "timestamp": now,
                }
                if MARKED_AT in changed:
                    changed[MARKED_AT] = None  # Bytemark's word replaces the local status
                decisions.append(Decision("update", changed, slot.index, previous, slot.legacy))
        elif keep_absent(slot.uuid):
            decisions.append(Decision("keep", slot.element, slot.index, None, slot.legacy))
        else:
            previous = slot.element.get("payload_hash")
            decisions.append(Decision("remove", slot.element, slot.index, previous, slot.legacy))
    decisions.extend(
        Decision("new", wrap_pass(pass_, now, hashes[pass_["uuid"]]), None) for pass_ in matching.new
    )
    return decisions


def _keep_or_restore(slot: Slot, pass_: Pass, now: int, previous: object) -> Decision:
    """An unchanged pass keeps its element, unless a local status Bytemark never confirmed has expired."""
    element = slot.element
    assert element is not None
    marked_at = element.get(MARKED_AT)
    unconfirmed = element.get("status") != pass_["status"]
    if isinstance(marked_at, int) and unconfirmed and now - marked_at >= UNCONFIRMED_MARK_SECONDS:
        restored = {**element, "status": pass_["status"], MARKED_AT: None}
        return Decision("restore", restored, slot.index, previous, slot.legacy)
    return Decision("keep", element, slot.index, previous, slot.legacy)


# -- 3. bound ------------------------------------------------------------------------------------


def bound(decisions: list[Decision], limit: int) -> list[Decision]:
    """Step 3: keep the newest ``limit`` dated elements; older stored ones are trimmed, older new ones are
    not added at all. Verbatim (malformed) elements cannot be dated and neither count nor go."""
    if limit < 1:
        raise ValueError("the history limit must be at least 1")
    positions = [
        position
        for position, decision in enumerate(decisions)
        if decision.kept and decision.kind != "verbatim"
    ]
    if len(positions) <= limit:
        return decisions  # the usual case: no element is dated (order() dates them once)
    dated = sorted((element_key(decisions[position].element), position) for position in positions)
    too_old = {position for _, position in dated[: len(dated) - limit]}
    bounded: list[Decision] = []
    for position, decision in enumerate(decisions):
        if position not in too_old:
            bounded.append(decision)
        elif decision.index is not None:
            bounded.append(replace(decision, kind="trim"))
    return bounded


# -- 4. order ------------------------------------------------------------------------------------


def order(name: ListName, decisions: Sequence[Decision], matching: Matching) -> ListChanges:
    """Step 4: the resulting array oldest first, as in-place changes when reachable, else a rewrite."""
    stored_kept = [d for d in decisions if d.index is not None and d.kept]
    new = [d.element for d in decisions if d.kind == "new"]
    in_place = [d.element for d in sorted(stored_kept, key=lambda d: d.index or 0)] + new
    rewrite = (
        not matching.stored_is_array
        or any(d.kind in ("remove", "drop", "trim") or d.legacy for d in decisions)
        or not _dated_in_order(in_place)
    )
    if rewrite:
        # Malformed elements cannot be dated: they lead, in their stored order.
        verbatim = [
            d.element for d in sorted(stored_kept, key=lambda d: d.index or 0) if d.kind == "verbatim"
        ]
        dated = sorted((d.element for d in decisions if d.kept and d.kind != "verbatim"), key=element_key)
        return ListChanges(name=name, final=verbatim + dated, rewrite=True, stored_length=len(matching.slots))
    written = {"update": (*MUTABLE_ELEMENT_FIELDS, MARKED_AT), "restore": ("status", MARKED_AT)}
    updated = [
        # ``if field in``: a status-only change (plan_status) of a Node element that has no payload_hash.
        (d.index, {field: d.element[field] for field in written[d.kind] if field in d.element})
        for d in decisions
        if d.kind in written and d.index is not None
    ]
    return ListChanges(
        name=name, final=in_place, updated=updated, appended=new, stored_length=len(matching.slots)
    )


def element_key(element: object) -> CreationKey:
    """Sort key of a stored element: its payload's ``time_created``, then its uuid."""
    if not isinstance(element, Mapping):
        return creation_key({})
    payload = element.get("payload")
    time_created = payload.get("time_created") if isinstance(payload, Mapping) else None
    return creation_key({"uuid": element_uuid(element), "time_created": time_created})


def _dated_in_order(array: Sequence[Any]) -> bool:
    keys = [element_key(element) for element in array if element_uuid(element) is not None]
    return all(earlier <= later for earlier, later in itertools.pairwise(keys))


# -- 5. log entries ------------------------------------------------------------------------------

_LOGGED: dict[Kind, LogAction] = {"new": "created", "update": "updated", "remove": "removed"}


def log_entries(
    name: ListName, decisions: Sequence[Decision]
) -> list[tuple[LogAction, ListName, Mapping[str, Any], str | None, str | None]]:
    """Step 5: ``(action, list, element, payload_hash, previous_hash)`` per created/updated/removed pass."""
    entries: list[tuple[LogAction, ListName, Mapping[str, Any], str | None, str | None]] = []
    for decision in decisions:
        action = _LOGGED.get(decision.kind)
        if action is None:
            continue
        element = decision.element
        new_hash = None if action == "removed" else element.get("payload_hash")
        previous = decision.previous_hash if action != "created" else None
        entries.append(
            (
                action,
                name,
                element,
                new_hash if isinstance(new_hash, str) else None,
                previous if isinstance(previous, str) else None,
            )
        )
    return entries


# -- the plan ------------------------------------------------------------------------------------


def plan_sync(
    user_id: int,
    stored: StoredCache | None,
    fresh: FreshPasses,
    now: int,
    *,
    history_limit: int,
    write_id: str,
    fields: Mapping[str, Any] | None = None,
) -> SyncPlan:
    """The write one sync makes (``stored`` None: a build, every pass created). ``fields`` are further
    top-level fields to set (the freshness policy's). ``write_id`` makes the log entries' ids unique.
    Raises UpstreamError when the result cannot fit in one document."""
    document: CacheDocument = stored.document if stored is not None else {}
    current_uuids = {pass_["uuid"] for pass_ in fresh.current}
    lists: dict[ListName, tuple[ListChanges, list[Decision]]] = {}
    for name, fresh_list, keep_absent, limit in (
        (CURRENT, fresh.current, _never, None),
        (HISTORY, fresh.history, lambda uuid: uuid not in current_uuids, history_limit),
    ):
        matching = match(document.get(name) if stored is not None else [], fresh_list, now)
        decisions = decide(matching, fresh.hashes, now, keep_absent=keep_absent)
        if limit is not None:
            decisions = bound(decisions, limit)
        changes = order(name, decisions, matching)
        if stored is None:
            changes = replace(changes, rewrite=True, updated=[], appended=[])
        lists[name] = (changes, decisions)
    revision = (stored.revision if stored is not None else 0) + 1
    raw_entries = [entry for name in (CURRENT, HISTORY) for entry in log_entries(name, lists[name][1])]
    entries = [
        LogEntry(
            entry_id=f"{user_id}:{revision}:{write_id}:{number}",
            user_id=user_id,
            timestamp=now,
            uuid=str(element_uuid(element)),
            status=_status_of(element),
            action=action,
            list=list_name,
            payload_hash=new_hash,
            previous_hash=previous,
        )
        for number, (action, list_name, element, new_hash, previous) in enumerate(raw_entries)
    ]
    set_fields: dict[str, Any] = {"timestamp": now}
    if stored is not None and legacy_user_id_kind(stored.document.get("user_id")) is not None:
        set_fields["user_id"] = user_id  # converge a string or double id
    set_fields.update({key: value for key, value in (fields or {}).items() if key != "user_id"})
    plan = SyncPlan(
        user_id=user_id,
        guard=stored.guard if stored is not None else None,
        revision=revision,
        passes=lists[CURRENT][0],
        history=lists[HISTORY][0],
        fields=set_fields,
        log=entries,
        carried_log=list(stored.pending_log) if stored is not None else [],
    )
    return fit_document(document if stored is not None else None, plan)


def plan_status(
    stored: StoredCache, pass_uuid: str, status: str, *, write_id: str, now: float
) -> SyncPlan | None:
    """The write that shows one current pass with ``status`` (an activation the app just made), payload and
    hash untouched and not logged (Bytemark did not change); None when the pass is not cached."""
    array = stored.document.get(CURRENT)
    matching = match(array, [], now)
    decisions: list[Decision] = []
    found = False
    for decision in decide(matching, {}, 0, keep_absent=lambda _uuid: True):
        if (
            decision.index is not None
            and element_uuid(decision.element) == pass_uuid
            and decision.kind == "keep"
        ):
            found = True
            marked = {**decision.element, "status": status, MARKED_AT: int(now)}
            decision = replace(decision, kind="update", element=marked)
        decisions.append(decision)
    if not found:
        return None
    changes = order(CURRENT, decisions, matching)
    if not changes.rewrite:
        mark = {"status": status, MARKED_AT: int(now)}
        changes = replace(changes, updated=[(index, mark) for index, _ in changes.updated])
    return SyncPlan(
        user_id=stored.user_id,
        guard=stored.guard,
        revision=stored.revision + 1,
        passes=changes,
        history=ListChanges(name=HISTORY, final=list(stored.document.get(HISTORY) or [])),
        fields={},
        log=[],
        carried_log=list(stored.pending_log),
    )


def fit_document(stored: CacheDocument | None, plan: SyncPlan) -> SyncPlan:
    """The plan, with the oldest history trimmed if the written document would exceed MAX_DOCUMENT_BYTES.

    The written document includes this write's change-log entries (they travel in ``log_pending``). Only
    dated history goes (malformed elements are kept). Raises UpstreamError (permanent) when even without
    any dated history the document does not fit.
    """
    if not (plan.creates or plan.passes.changed or plan.history.changed):
        return plan  # only fields change: the size cannot grow meaningfully
    size = written_size(stored, plan)
    if size <= MAX_DOCUMENT_BYTES:
        return plan
    history = plan.history.final
    # What each dated history element costs: its array item and the log entries it brings.
    entry_bytes: dict[str, int] = {}
    for entry in plan.log:
        if entry.list == HISTORY and entry.action != "removed":
            entry_bytes[entry.uuid] = entry_bytes.get(entry.uuid, 0) + _array_item_size(
                0, entry.to_document()
            )
    target = int(MAX_DOCUMENT_BYTES * HISTORY_TRIM_RATIO)
    dropped: set[int] = set()
    for position, element in enumerate(history):
        if size <= target:
            break
        uuid = element_uuid(element)
        if uuid is None:
            continue  # malformed: cannot be dated, kept
        size -= _array_item_size(position, element) + entry_bytes.get(uuid, 0)
        dropped.add(position)
    kept_history = [element for position, element in enumerate(history) if position not in dropped]
    kept_uuids = {element_uuid(element) for element in kept_history}
    log = [
        entry
        for entry in plan.log
        if entry.list != HISTORY or entry.action == "removed" or entry.uuid in kept_uuids
    ]
    fitted = replace(
        plan,
        history=ListChanges(
            name=HISTORY, final=kept_history, rewrite=True, stored_length=plan.history.stored_length
        ),
        log=log,
    )
    size = written_size(stored, fitted)
    if size > MAX_DOCUMENT_BYTES:
        raise UpstreamError(
            f"the cache document would need ~{size} bytes even without its history, more than one "
            f"document holds ({MAX_DOCUMENT_BYTES}): too many current passes, or large unmanaged fields",
            transient=False,
        )
    return fitted


def written_size(stored: CacheDocument | None, plan: SyncPlan) -> int:
    """BSON bytes of the document the plan's write leaves, its pending change-log entries included."""
    document = apply_plan(stored, plan)
    if plan.log:
        document[PENDING_LOG_FIELD] = [entry.to_document() for entry in plan.log]
    return bson_document_size(document)


def apply_plan(stored: CacheDocument | None, plan: SyncPlan) -> CacheDocument:
    """The document after the plan's write (what MongoDB will hold); ``stored`` is not modified."""
    if plan.creates:
        if stored is not None:
            raise ValueError("the plan creates a document but one exists")
        document: CacheDocument = {"user_id": plan.user_id}
    else:
        if stored is None:
            raise ValueError("the plan updates a document but there is none")
        document = dict(stored)
    for changes in plan.lists():
        if changes.rewrite or plan.creates:
            document[changes.name] = list(changes.final)
            continue
        if not changes.changed:
            continue  # the store writes nothing here: the stored value stays as found (even if not an array)
        array = list(document.get(changes.name) or [])
        for index, fields in changes.updated:
            array[index] = {**array[index], **fields}
        array.extend(changes.appended)
        document[changes.name] = array
    document.update(plan.fields)
    document[REVISION_FIELD] = plan.revision
    return document


def _never(_uuid: str) -> bool:
    return False


def _status_of(element: Mapping[str, Any]) -> str:
    status = element.get("status")
    return status if isinstance(status, str) else ""


def _array_item_size(index: int, element: object) -> int:
    """Bytes one array item takes (type byte, index key, value), whatever the item is: a malformed element
    kept verbatim may be a string or a number."""
    return bson_document_size({str(index): element}) - bson_document_size({})
