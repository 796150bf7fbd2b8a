"""The sync decision (SPEC §6), pure: old cache document + fresh Bytemark lists → a SyncPlan.

Rules, in the order they apply:

- Fresh lists: duplicate uuids inside one list collapse to the newest ``time_modified``. A pass in the
  v4 list, or with status EXPIRED, is history (``passes4``), never current; a uuid in both lists is kept
  once, in ``passes4``, as its v4 copy. ``passes`` is the rest of v1, oldest ``time_created`` first.
- Each fresh pass is hashed once; stored elements are compared by their stored ``payload_hash`` only
  (a payload read back from MongoDB does not hash like the JSON Bytemark sent).
- ``passes`` mirrors v1: unchanged hash → element untouched; changed → wrapper fields replaced in place
  (other element fields such as ``_id`` kept), logged ``updated``; new → appended, logged ``created``;
  gone → removed, logged ``removed``.
- ``passes4`` only grows: elements absent from the fresh v4 list stay, except a uuid that is current
  again in v1 (a uuid is never in both arrays). It is bounded to the newest ``passes4_limit`` by
  ``time_created``; what the bound trims is removed without a log entry (retention, not a change at
  Bytemark), and a new history pass older than the whole window is not added at all.
- Stored elements that are malformed (not an object, or without a string ``pass_uuid``) are kept
  verbatim where they are: they cannot be matched, removed by uuid or dated, so they neither count
  against the bound nor are trimmed by it. A repeated ``pass_uuid`` keeps its first element; the later
  copies are dropped through a rewrite (removal by uuid would take every copy).
- Both arrays are kept oldest first. New elements are appended when that keeps the order; when it does
  not (a new pass older than a kept one, a stored array out of order), when a copy has to go, or when
  the stored value is not an array, the whole array is rewritten (``rewrite``). A rewrite puts the
  malformed elements first, in their stored order. ``updated``/``removed``/``appended`` still describe
  a rewritten array's changes, but a store writes ``final`` then.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.model import (
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

WRAPPER_FIELDS = ("status", "payload", "payload_hash", "timestamp")
"""The element fields a sync replaces on a changed pass; every other element field is left alone."""


@dataclass(frozen=True)
class FreshPasses:
    """The fetched passes split the way the cache stores them, each list oldest first."""

    current: list[Pass]
    history: list[Pass]


def split_fresh(fetched: FetchedPasses) -> FreshPasses:
    """Collapse duplicates and split into current (``passes``) and history (``passes4``), both sorted.

    Raises UpstreamError (not transient) for a pass without a uuid or status.
    """
    expired = collapse_duplicates([validate_pass(candidate) for candidate in fetched.expired])
    current = collapse_duplicates([validate_pass(candidate) for candidate in fetched.current])
    history = list(expired)
    in_history = {pass_["uuid"] for pass_ in expired}
    still_current: list[Pass] = []
    for pass_ in current:
        if pass_["uuid"] in in_history:
            continue  # the v4 copy wins
        if pass_["status"] == EXPIRED:
            history.append(pass_)
        else:
            still_current.append(pass_)
    still_current.sort(key=creation_key)
    history.sort(key=creation_key)
    return FreshPasses(current=still_current, history=history)


def plan_sync(
    user_id: int,
    old: CacheDocument | None,
    fetched: FetchedPasses,
    now: int,
    *,
    passes4_limit: int,
) -> SyncPlan:
    """Decide what one sync writes and logs; ``old`` None means build (every pass created)."""
    if passes4_limit < 1:
        raise ValueError("passes4_limit must be at least 1")
    fresh = split_fresh(fetched)
    hashes = {pass_["uuid"]: payload_hash(pass_) for pass_ in (*fresh.current, *fresh.history)}
    current_uuids = {pass_["uuid"] for pass_ in fresh.current}
    context = _Context(user_id=user_id, now=now, hashes=hashes)

    base_revision: int | None = None
    old_passes: object = []
    old_history: object = []
    if old is not None:
        stored_revision = old.get(REVISION_FIELD, 0)
        # A revision that is not an int was not written by us; count from 0 like a Node document.
        is_revision = isinstance(stored_revision, int) and not isinstance(stored_revision, bool)
        base_revision = stored_revision if is_revision else 0
        old_passes = old.get("passes", [])
        old_history = old.get("passes4", [])

    passes = _plan_list(context, "passes", old_passes, fresh.current, drop_absent=_always, limit=None)
    passes4 = _plan_list(
        context,
        "passes4",
        old_history,
        fresh.history,
        drop_absent=current_uuids.__contains__,
        limit=passes4_limit,
    )
    return SyncPlan(
        user_id=user_id,
        timestamp=now,
        base_revision=base_revision,
        passes=passes.changes,
        passes4=passes4.changes,
        log=passes.log + passes4.log,
    )


def changed_count(plan: SyncPlan) -> int:
    """How many passes the plan creates, updates or removes (its log entries; retention trims not counted)."""
    return len(plan.log)


def is_noop(plan: SyncPlan) -> bool:
    """True when the plan changes no element (only the document timestamp would be refreshed)."""
    return not (plan.creates or plan.passes.changed or plan.passes4.changed or plan.log)


def apply_plan(old: CacheDocument | None, plan: SyncPlan) -> CacheDocument:
    """The document after applying ``plan`` to ``old`` by ListChanges' rules; ``old`` is not modified.

    Sets ``timestamp`` and increments ``sync_revision``; unknown top-level fields are kept. Raises
    ValueError when the plan does not fit ``old`` (create with a document, update without one).
    """
    if plan.creates:
        if old is not None:
            raise ValueError("the plan creates a document but one exists")
        document: CacheDocument = {"user_id": plan.user_id, "timestamp": plan.timestamp}
    else:
        if old is None:
            raise ValueError("the plan updates a document but there is none")
        document = dict(old)
    for changes in (plan.passes, plan.passes4):
        document[changes.name] = _apply_list(document.get(changes.name), changes)
    document["timestamp"] = plan.timestamp
    document[REVISION_FIELD] = (plan.base_revision or 0) + 1
    return document


def element_key(element: object) -> CreationKey:
    """Sort key of a stored element: its payload's ``time_created``, then its ``pass_uuid``."""
    if not isinstance(element, Mapping):
        return creation_key({})
    payload = element.get("payload")
    time_created = payload.get("time_created") if isinstance(payload, Mapping) else None
    return creation_key({"uuid": element.get("pass_uuid"), "time_created": time_created})


def _apply_list(stored: object, changes: ListChanges) -> list[Any]:
    if changes.rewrite:
        return list(changes.final)
    array: list[Any] = list(stored) if isinstance(stored, list) else []
    for index, element in changes.updated:
        merged = dict(array[index])
        for name in WRAPPER_FIELDS:
            merged[name] = element[name]
        array[index] = merged
    if changes.removed:
        removed = set(changes.removed)
        array = [element for element in array if _uuid_of(element) not in removed]
    array.extend(changes.appended)
    return array


@dataclass(frozen=True)
class _Context:
    user_id: int
    now: int
    hashes: dict[str, str]

    def entry(
        self,
        action: LogAction,
        name: ListName,
        element: Mapping[str, Any],
        new_hash: object,
        previous_hash: object,
    ) -> LogEntry:
        """The log entry of ``element``; hashes that are not strings (absent in old data) become None."""
        status = element.get("status")
        return LogEntry(
            user_id=self.user_id,
            timestamp=self.now,
            uuid=element["pass_uuid"],
            # Stored elements written by others may lack a status; the log entry must still be written.
            status=status if isinstance(status, str) else "",
            action=action,
            list=name,
            payload_hash=new_hash if isinstance(new_hash, str) else None,
            previous_hash=previous_hash if isinstance(previous_hash, str) else None,
        )


@dataclass(frozen=True)
class _ListPlan:
    changes: ListChanges
    log: list[LogEntry]


def _always(_uuid: str) -> bool:
    return True


def _uuid_of(element: object) -> str | None:
    """The element's ``pass_uuid`` when it is a non-empty string, else None (a malformed element)."""
    if not isinstance(element, Mapping):
        return None
    uuid = element.get("pass_uuid")
    return uuid if isinstance(uuid, str) and uuid else None


def _plan_list(
    context: _Context,
    name: ListName,
    stored: object,
    fresh: list[Pass],
    *,
    drop_absent: Callable[[str], bool],
    limit: int | None,
) -> _ListPlan:
    """The changes of one array: match ``fresh`` (sorted) against the stored elements by uuid."""
    fresh_by_uuid = {pass_["uuid"]: pass_ for pass_ in fresh}
    rewrite = not isinstance(stored, list)
    old_array: list[Any] = stored if isinstance(stored, list) else []

    # First pass over the stored array: what becomes of each element (None = removed or a dropped copy).
    outcome: list[Any] = []
    updated_at: dict[int, Element] = {}
    gone: list[int] = []
    seen: set[str] = set()
    for index, element in enumerate(old_array):
        uuid = _uuid_of(element)
        if uuid is None:
            outcome.append(element)
            continue
        if uuid in seen:
            rewrite = True
            outcome.append(None)
            continue
        seen.add(uuid)
        pass_ = fresh_by_uuid.get(uuid)
        if pass_ is None:
            if drop_absent(uuid):
                gone.append(index)
                outcome.append(None)
            else:
                outcome.append(element)
        elif element.get("payload_hash") == context.hashes[uuid]:
            outcome.append(element)
        else:
            changed = {
                **element,
                "status": pass_["status"],
                "payload": pass_,
                "payload_hash": context.hashes[uuid],
                "timestamp": context.now,
            }
            updated_at[index] = changed
            outcome.append(changed)
    new_elements = [
        wrap_pass(pass_, context.now, context.hashes[pass_["uuid"]])
        for pass_ in fresh
        if pass_["uuid"] not in seen
    ]

    trimmed_indexes: set[int] = set()
    if limit is not None:
        trimmed_indexes, new_elements = _apply_bound(outcome, new_elements, limit)

    updated: list[tuple[int, Element]] = []
    removed: list[str] = []
    log: list[LogEntry] = []
    for index, element in enumerate(old_array):
        if index in trimmed_indexes:
            # Retention, not a change at Bytemark: removed without a log entry.
            removed.append(element["pass_uuid"])
            outcome[index] = None
        elif index in updated_at:
            changed = updated_at[index]
            updated.append((index, changed))
            log.append(
                context.entry("updated", name, changed, changed["payload_hash"], element.get("payload_hash"))
            )
    for index in gone:
        element = old_array[index]
        removed.append(element["pass_uuid"])
        log.append(context.entry("removed", name, element, None, element.get("payload_hash")))
    log.extend(
        context.entry("created", name, element, element["payload_hash"], None) for element in new_elements
    )

    in_place = [element for element in outcome if element is not None] + new_elements
    if not rewrite and not _dated_in_order(in_place):
        # An appended pass older than a kept one (or a stored array out of order): only a rewrite
        # reaches the oldest-first order.
        rewrite = True
    final = sorted(in_place, key=element_key) if rewrite else in_place
    changes = ListChanges(
        name=name,
        final=final,
        updated=updated,
        removed=removed,
        appended=new_elements,
        rewrite=rewrite,
    )
    return _ListPlan(changes=changes, log=log)


def _dated_in_order(array: list[Any]) -> bool:
    """True when the well-formed elements are oldest first (malformed ones have no place to check)."""
    keys = [element_key(element) for element in array if _uuid_of(element) is not None]
    return all(earlier <= later for earlier, later in itertools.pairwise(keys))


def _apply_bound(
    outcome: list[Any], new_elements: list[Element], limit: int
) -> tuple[set[int], list[Element]]:
    """Keep the newest ``limit`` dated elements: the stored indexes to trim and the new elements that fit."""
    candidates: list[tuple[CreationKey, int]] = [
        (element_key(element), index)
        for index, element in enumerate(outcome)
        if element is not None and _uuid_of(element) is not None
    ]
    # New elements get indexes past the stored array so both kinds sort in one list.
    offset = len(outcome)
    candidates += [(element_key(element), offset + number) for number, element in enumerate(new_elements)]
    if len(candidates) <= limit:
        return set(), new_elements
    candidates.sort()
    dropped = {index for _, index in candidates[: len(candidates) - limit]}
    trimmed = {index for index in dropped if index < offset}
    fitting = [element for number, element in enumerate(new_elements) if offset + number not in dropped]
    return trimmed, fitting
