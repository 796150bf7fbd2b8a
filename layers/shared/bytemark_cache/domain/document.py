"""Stored cache documents read as they are found (docs/contract.md §4), pure.

The Node service wrote documents over years; nobody can list every shape they took. The reader never fails
on a shape: it picks the user's document, interprets what it can, and what it cannot interpret counts as
stale (the next read syncs it). Known legacy shapes, each named in ``StoredCache.legacy``:

- ``timestamp`` in milliseconds, as a double, a BSON date, a numeric or ISO string, or missing;
- elements keyed ``uuid`` instead of ``pass_uuid``, without ``status``, ``payload_hash`` or
  ``free_ticket_status``, or with an element ``timestamp`` in another unit; a uuid repeated in one array
  (the first element is read, as the planner keeps it);
- a ``user_id`` stored as a string; two documents for one user (the newest sync wins);
- fields this service does not know (``__v``, ``passesLog``, element ``_id``): kept, never dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from bytemark_cache.domain.model import (
    ACTIVE_FIELD,
    CURRENT,
    HISTORY,
    NEXT_SYNC_FIELD,
    PENDING_LOG_FIELD,
    REVISION_FIELD,
    CacheDocument,
    Element,
    LogEntry,
    WriteGuard,
)
from bytemark_cache.domain.passes import parse_bytemark_time

MILLISECONDS_ABOVE: Final = 100_000_000_000
"""A unix time above this (year 5138 in seconds) is in milliseconds: 1e11 ms is March 1973."""

FUTURE_TOLERANCE_SECONDS: Final = 300
"""A sync time further ahead than this is not believed (a clock or unit error): the cache counts as stale."""

ELEMENT_FIELDS: Final = ("pass_uuid", "timestamp", "status", "free_ticket_status", "payload", "payload_hash")
"""The wrapper of every cache element, in the order the contract lists them."""

MUTABLE_ELEMENT_FIELDS: Final = ("status", "payload", "payload_hash", "timestamp")
"""The element fields a sync replaces on a changed pass; everything else on an element stays."""


@dataclass(frozen=True)
class StoredCache:
    """A user's cache as this service understands it, over the document as it was found.

    ``passes``/``history`` are the elements normalised for reading (``pass_uuid``, ``status`` and an
    element ``timestamp`` in seconds filled in from the legacy fields); elements that are not objects or
    have no uuid, and later copies of a repeated uuid, are left out of them but stay in ``document``.
    ``synced_at`` None means the sync time could not be interpreted: the cache is stale.
    """

    user_id: int
    document: CacheDocument
    synced_at: int | None
    revision: int
    passes: list[Element]
    history: list[Element]
    legacy: tuple[str, ...]
    duplicates: int
    pending_log: list[LogEntry]
    next_sync_at: int | None
    active_at: int | None

    def age(self, now: float) -> int | None:
        """Seconds since the last sync (None when unknown); never negative."""
        return None if self.synced_at is None else max(0, int(now) - self.synced_at)

    def payload_hashes(self) -> dict[str, str]:
        """Pass uuid → the payload hash stored for it, over both arrays (the planner's "already stored")."""
        return {
            element["pass_uuid"]: element["payload_hash"]
            for element in (*self.passes, *self.history)
            if isinstance(element.get("payload_hash"), str)
        }

    @property
    def guard(self) -> WriteGuard:
        """The state a write computed from this document must still find (see ``WriteGuard``)."""
        guarded = (REVISION_FIELD, "timestamp")
        return WriteGuard(
            document_id=self.document.get("_id"),
            fields={name: self.document[name] for name in guarded if name in self.document},
            missing=tuple(name for name in guarded if name not in self.document),
        )


def read_cache(documents: Sequence[CacheDocument], user_id: int, now: float) -> StoredCache | None:
    """The user's cache from the stored documents found for them (None when there is none)."""
    own = [document for document in documents if interpret_user_id(document.get("user_id")) == user_id]
    if not own:
        return None
    # Several documents for one user (written by two Node instances at once): the newest sync wins.
    chosen = max(own, key=lambda document: _recency(document, now))
    legacy: list[str] = []
    user_id_shape = legacy_user_id_kind(chosen.get("user_id"))
    if user_id_shape is not None:
        legacy.append(user_id_shape)
    if len(own) > 1:
        legacy.append("duplicate_documents")
    raw_timestamp = chosen.get("timestamp", None)
    synced_at = interpret_time(raw_timestamp, now)
    kind = timestamp_kind(raw_timestamp)
    if kind != "seconds":
        legacy.append(f"timestamp_{kind}")
    passes, passes_notes = _read_elements(chosen.get(CURRENT), now)
    history, history_notes = _read_elements(chosen.get(HISTORY), now)
    legacy.extend(sorted(passes_notes | history_notes))
    return StoredCache(
        user_id=user_id,
        document=chosen,
        synced_at=synced_at,
        revision=revision_of(chosen),
        passes=passes,
        history=history,
        legacy=tuple(legacy),
        duplicates=len(own) - 1,
        pending_log=_pending_log(chosen.get(PENDING_LOG_FIELD)),
        next_sync_at=_seconds_or_none(chosen.get(NEXT_SYNC_FIELD)),
        active_at=_seconds_or_none(chosen.get(ACTIVE_FIELD)),
    )


def legacy_user_id_kind(value: object) -> str | None:
    """None for a ``user_id`` in the contract's shape (an integer, Int64 included); else the legacy shape's
    name. The reader, ``converge`` and the sync planner all ask this one rule."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    return "user_id_string" if isinstance(value, str) else "user_id_double"


def interpret_user_id(value: object) -> int | None:
    """A stored ``user_id``: an int, a whole double or a string of ASCII digits (Node wrote all three); else
    None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return int(value)
    return None


def interpret_time(value: object, now: float) -> int | None:
    """Unix seconds from a stored time in any known shape; None when it cannot be believed.

    Seconds or milliseconds as int or double, a BSON date, a numeric or ISO-8601 string. A time more than
    FUTURE_TOLERANCE_SECONDS ahead of ``now`` (or not positive) is not believed.
    """
    seconds: float | None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    elif isinstance(value, str):
        seconds = _seconds_from_text(value)
    else:
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    if seconds > MILLISECONDS_ABOVE:
        seconds /= 1000
    if seconds <= 0 or seconds > now + FUTURE_TOLERANCE_SECONDS:
        return None
    return int(seconds)


def timestamp_kind(value: object) -> str:
    """The shape of a stored time: ``seconds`` (the contract's), ``milliseconds``, ``double``, ``date``,
    ``string``, ``missing`` or ``unreadable``."""
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "unreadable"
    if isinstance(value, int):
        return "milliseconds" if value > MILLISECONDS_ABOVE else "seconds"
    if isinstance(value, float):
        return "milliseconds" if value > MILLISECONDS_ABOVE else "double"
    if isinstance(value, datetime):
        return "date"
    if isinstance(value, str):
        return "string"
    return "unreadable"


def revision_of(document: Mapping[str, Any]) -> int:
    """The document's ``sync_revision``; 0 when absent or not a whole number (Node documents)."""
    value = document.get(REVISION_FIELD)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value) if math.isfinite(value) and value >= 0 else 0


def element_uuid(element: object) -> str | None:
    """The pass uuid of a stored element: ``pass_uuid``, else the legacy ``uuid``, else the payload's."""
    if not isinstance(element, Mapping):
        return None
    # Looked up lazily: a sync asks this of every element several times, and nearly all have a pass_uuid.
    candidate = element.get("pass_uuid")
    if not (isinstance(candidate, str) and candidate):
        candidate = element.get("uuid")
    if not (isinstance(candidate, str) and candidate):
        candidate = _get(element.get("payload"), "uuid")
    return candidate if isinstance(candidate, str) and candidate else None


def normalise_element(element: Mapping[str, Any], now: float) -> tuple[Element, list[str]]:
    """The element in the contract's shape (unknown fields kept, legacy ``uuid`` key renamed), and what had
    to change. Call only for elements with an ``element_uuid``."""
    notes: list[str] = []
    normalised: Element = dict(element)
    uuid = element_uuid(element)
    if "uuid" in normalised:
        normalised.pop("uuid")
        notes.append("element_uuid_key")
    if normalised.get("pass_uuid") != uuid:
        normalised["pass_uuid"] = uuid
        if "element_uuid_key" not in notes:
            notes.append("element_uuid_missing")
    status = normalised.get("status")
    if not isinstance(status, str) or not status:
        payload_status = _get(normalised.get("payload"), "status")
        normalised["status"] = payload_status if isinstance(payload_status, str) else ""
        notes.append("element_status_missing")
    raw_time = normalised.get("timestamp")
    if timestamp_kind(raw_time) != "seconds":
        normalised["timestamp"] = interpret_time(raw_time, now) or 0
        notes.append("element_timestamp_" + timestamp_kind(raw_time))
    if "free_ticket_status" not in normalised:
        normalised["free_ticket_status"] = 0
        notes.append("element_free_ticket_status_missing")
    if not isinstance(normalised.get("payload_hash"), str):
        notes.append("element_payload_hash_missing")
    return normalised, notes


def _read_elements(stored: object, now: float) -> tuple[list[Element], set[str]]:
    if stored is None:
        return [], {"list_missing"}
    if not isinstance(stored, list):
        return [], {"list_not_array"}
    elements: list[Element] = []
    notes: set[str] = set()
    seen: set[str] = set()
    for element in stored:
        uuid = element_uuid(element)
        if uuid is None:
            notes.add("element_malformed")
            continue
        if uuid in seen:
            # A repeated uuid: the first element is the pass, as for the planner (which drops the copies).
            notes.add("element_duplicate")
            continue
        seen.add(uuid)
        normalised, element_notes = normalise_element(element, now)
        elements.append(normalised)
        notes.update(element_notes)
    return elements, notes


def _recency(document: Mapping[str, Any], now: float) -> tuple[int, int, str]:
    synced_at = interpret_time(document.get("timestamp"), now)
    return (synced_at if synced_at is not None else -1, revision_of(document), str(document.get("_id", "")))


def _seconds_from_text(text: str) -> float | None:
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    try:
        moment = parse_bytemark_time(stripped)
    except ValueError:
        return None
    return None if moment is None else moment.timestamp()


def _seconds_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _pending_log(value: object) -> list[LogEntry]:
    if not isinstance(value, list):
        return []
    entries: list[LogEntry] = []
    for document in value:
        try:
            entries.append(LogEntry.from_document(document))
        except (KeyError, TypeError, ValueError):
            continue  # not ours: nothing to flush
    return entries


def _get(value: object, key: str) -> object:
    return value.get(key) if isinstance(value, Mapping) else None
