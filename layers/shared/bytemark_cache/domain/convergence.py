"""Converging a legacy cache document to the contract's shape (``bytemark-cache migrate``), pure.

What ``read_cache`` tolerates on every read, the migration writes down once, keeping every value it does not
have to change:

- ``timestamp`` in unix seconds (the original sync time converted; 0 when there never was one or it
  cannot be believed: every reader then counts the cache as stale, as it did before);
- ``user_id`` a number (Node also stored strings);
- elements keyed ``pass_uuid`` with ``status``, an element ``timestamp`` in seconds, ``free_ticket_status``
  and the Node-compatible ``payload_hash`` of the stored payload filled in (``normalise_element``);
- both arrays present, and oldest first when the document is written anyway (the order every sync
  writes; the order alone is not a reason to write);
- fields this service does not know (``__v``, ``passesLog``, an element's ``_id``) kept as they are.

Of a user's several documents the one ``read_cache`` picks stays; ``split_duplicates`` names the others.
A converged document converges to itself: no action, nothing to write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bytemark_cache.domain.bounds import MONGODB_DOCUMENT_LIMIT, NotStorable, bson_document_size
from bytemark_cache.domain.document import (
    StoredCache,
    element_uuid,
    interpret_time,
    interpret_user_id,
    legacy_user_id_kind,
    normalise_element,
    read_cache,
    timestamp_kind,
)
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.identity import is_user_id
from bytemark_cache.domain.model import CURRENT, HISTORY, CacheDocument, ListChanges, ListName, SyncPlan
from bytemark_cache.domain.plan import apply_plan, element_key

ELEMENTS_REORDERED: Final = "elements_reordered"
"""An array of a document that is written anyway was not oldest first (``element_key`` order; malformed
elements lead, as a sync writes them). The order alone is no reason to write a document."""

DUPLICATE_MOVED: Final = "duplicate_moved"
"""A user's older document, moved to the side collection (the newest sync stays)."""

# Why a document is left as it is: it needs a person (doctor reports these too).
UNREADABLE_USER_ID: Final = "unreadable_user_id"
LIST_NOT_ARRAY: Final = "list_not_array"
TOO_LARGE: Final = "too_large"
NOT_STORABLE: Final = "not_storable"

_HASH_MISSING: Final = "element_payload_hash_missing"


@dataclass(frozen=True)
class Convergence:
    """What converging one document takes.

    ``actions`` names each legacy shape found (the reader's names, plus ``elements_reordered``); empty
    when the document already has the contract's shape. ``problem`` says why it cannot be converged
    automatically (then nothing is written). ``fields`` are the top-level fields to set, ``changes``
    their values before and after (for the migration log).
    """

    user_id: int | None
    actions: tuple[str, ...]
    problem: str | None = None
    passes: list[Any] = field(default_factory=list)
    history: list[Any] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """True when there is something to write."""
        return self.problem is None and bool(self.actions)


def converge(document: Mapping[str, Any], now: float) -> Convergence:
    """What ``document`` needs to have the contract's shape (``now`` only bounds believable times)."""
    user_id = interpret_user_id(document.get("user_id"))
    if user_id is None or not is_user_id(user_id):
        return Convergence(None, (), problem=UNREADABLE_USER_ID)
    actions: list[str] = []
    fields: dict[str, Any] = {}
    changes: dict[str, dict[str, Any]] = {}

    raw_user_id = document.get("user_id")
    user_id_shape = legacy_user_id_kind(raw_user_id)
    if user_id_shape is not None:
        actions.append(user_id_shape)
        fields["user_id"] = user_id
        changes["user_id"] = {"from": raw_user_id, "to": user_id}

    raw_time = document.get("timestamp")
    kind = timestamp_kind(raw_time)
    if kind != "seconds":
        converted = interpret_time(raw_time, now) or 0
        actions.append(f"timestamp_{kind}")
        fields["timestamp"] = converted
        changes["timestamp"] = {"from": raw_time, "to": converted}

    arrays: dict[ListName, list[Any]] = {}
    element_actions: set[str] = set()
    for name in (CURRENT, HISTORY):
        stored = document.get(name)
        if stored is None:
            element_actions.add("list_missing")
            arrays[name] = []
            continue
        if not isinstance(stored, list):
            return Convergence(user_id, (), problem=LIST_NOT_ARRAY)
        arrays[name], notes = _converge_array(stored, now)
        element_actions.update(notes)
    if element_actions == {ELEMENTS_REORDERED} and not actions:
        # The order alone is no reason to write (Node's readers keep theirs; a sync re-sorts anyway).
        element_actions.clear()
    actions.extend(sorted(element_actions))
    return Convergence(
        user_id,
        tuple(actions),
        passes=arrays[CURRENT],
        history=arrays[HISTORY],
        fields=fields,
        changes=changes,
    )


def convergence_plan(stored: StoredCache, convergence: Convergence) -> SyncPlan:
    """The write of a converged document through the service's protocol: both arrays rewritten, the
    fields set, the revision moved on, guarded by what was read; no change-log entry (Bytemark did not
    change), and the entries an earlier write left pending carried (flushed, never dropped)."""
    if not convergence.changed:
        raise ValueError("nothing to write: the document needs no change or cannot be converged")
    return SyncPlan(
        user_id=stored.user_id,
        guard=stored.guard,
        revision=stored.revision + 1,
        passes=_rewrite(CURRENT, convergence.passes, stored.document.get(CURRENT)),
        history=_rewrite(HISTORY, convergence.history, stored.document.get(HISTORY)),
        fields=dict(convergence.fields),
        log=[],
        carried_log=list(stored.pending_log),
    )


def check_size(stored: CacheDocument, plan: SyncPlan) -> str | None:
    """``TOO_LARGE`` when the converged document would not fit MongoDB's limit (filling in hashes adds
    ~50 bytes an element), ``NOT_STORABLE`` when it holds something BSON cannot; else None."""
    try:
        size = bson_document_size(apply_plan(stored, plan))
    except NotStorable:
        return NOT_STORABLE
    return TOO_LARGE if size > MONGODB_DOCUMENT_LIMIT else None


def split_duplicates(
    documents: Sequence[CacheDocument], user_id: int, now: float
) -> tuple[StoredCache, list[CacheDocument]] | None:
    """The user's document the reader picks (the newest sync) and the others (to move aside)."""
    stored = read_cache(documents, user_id, now)
    if stored is None:
        return None
    kept = stored.document.get("_id")
    others = [
        document
        for document in documents
        if interpret_user_id(document.get("user_id")) == user_id and document.get("_id") != kept
    ]
    return stored, others


def _converge_array(stored: list[Any], now: float) -> tuple[list[Any], set[str]]:
    """The array with every element converged and oldest first, and the actions that took."""
    notes: set[str] = set()
    verbatim: list[tuple[Any, Any]] = []
    dated: list[tuple[Any, Any]] = []
    for element in stored:
        if element_uuid(element) is None or not isinstance(element, Mapping):
            verbatim.append((element, element))  # cannot be interpreted: kept as it is, leading (as a sync)
            continue
        converged, element_notes = _converge_element(element, now)
        notes.update(element_notes)
        dated.append((element, converged))
    pairs = verbatim + sorted(dated, key=lambda pair: element_key(pair[1]))
    if [id(original) for original, _ in pairs] != [id(original) for original in stored]:
        notes.add(ELEMENTS_REORDERED)
    return [converged for _, converged in pairs], notes


_NOTE_FIELDS: Final = {
    "element_uuid_key": "uuid",
    "element_uuid_missing": "pass_uuid",
    "element_status_missing": "status",
    "element_free_ticket_status_missing": "free_ticket_status",
    _HASH_MISSING: "payload_hash",
}


def _converge_element(element: Mapping[str, Any], now: float) -> tuple[Any, set[str]]:
    """The element in the contract's shape (unknown fields kept) and the reader's names of what changed;
    the element itself when nothing did."""
    normalised, notes = normalise_element(element, now)
    if _HASH_MISSING in notes and isinstance(normalised.get("payload"), dict):
        # A payload JSON could not have produced (a BSON type) is left without a hash.
        with contextlib.suppress(TypeError, ValueError):
            normalised["payload_hash"] = payload_hash(normalised["payload"])
    if _strictly_equal(normalised, element):
        return element, set()
    changed = {
        note for note in notes if not _same_field(normalised, element, _NOTE_FIELDS.get(note, "timestamp"))
    }
    # Keys stay in normalise_element's order (a renamed ``pass_uuid`` goes last), as a sync writes them.
    # It also matters to FerretDB 1.x, which skips a $set whose value differs from the stored one only in
    # key names (it compares the values in order): a rename in place would silently not be written.
    return normalised, changed


def _same_field(first: Mapping[str, Any], second: Mapping[str, Any], name: str) -> bool:
    if (name in first) != (name in second):
        return False
    return name not in first or _strictly_equal({name: first[name]}, {name: second[name]})


def _strictly_equal(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Same keys and, per key, the same value of the same type (``1.0 == 1`` is a change of unit here)."""
    if first.keys() != second.keys():
        return False
    return all(
        first[key] is second[key] or (type(first[key]) is type(second[key]) and first[key] == second[key])
        for key in first
    )


def _rewrite(name: ListName, final: list[Any], stored: object) -> ListChanges:
    stored_length = len(stored) if isinstance(stored, list) else 0
    return ListChanges(name=name, final=list(final), rewrite=True, stored_length=stored_length)
