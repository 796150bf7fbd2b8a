"""Shapes shared by the domain, the ports and the adapters (the cache document is docs/contract.md §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

Pass = dict[str, Any]
"""One Bytemark pass exactly as received (key order kept); stored untouched as an element's ``payload``."""

Element = dict[str, Any]
"""A cache element: ``pass_uuid, timestamp, status, free_ticket_status, payload, payload_hash``.
Fields older writers added (``_id`` …) ride along untouched."""

CacheDocument = dict[str, Any]
"""One stored cache document as MongoDB returns it (with ``_id``), whatever shape its writer gave it."""

ListName = Literal["passes", "passes4"]
"""The two arrays: ``passes`` mirrors Bytemark's current list, ``passes4`` keeps the expired history."""

LogAction = Literal["created", "updated", "removed"]
UpdateReason = Literal["purchase", "activation", "backfill", "manual", "refresh"]
BackfillMode = Literal["missing", "stale", "due", "prune"]

HISTORY: Final[ListName] = "passes4"
"""The expired history's array. In code it is "history" everywhere; the document field keeps the name the
Node service gave it."""

CURRENT: Final[ListName] = "passes"

# Fields of the cache document this service writes besides the two arrays (docs/contract.md §4).
REVISION_FIELD: Final = "sync_revision"
"""Incremented by every write; the claim and the write guard name it. Absent on Node documents (= 0)."""
NEXT_SYNC_FIELD: Final = "next_sync_at"
"""Unix seconds when the freshness policy wants this user synced again (indexed: the ``due`` back-fill)."""
ACTIVE_FIELD: Final = "active_at"
"""Unix seconds of the rider's last open or purchase that led to a sync (an input of the policy)."""
PENDING_LOG_FIELD: Final = "log_pending"
"""Change-log entries written with the document and not yet confirmed in the log collection."""


@dataclass(frozen=True)
class FetchedPasses:
    """Both Bytemark lists of one user, freshly fetched (v1 = current, v4 = expired history)."""

    current: list[Pass]
    expired: list[Pass]


@dataclass(frozen=True)
class LogEntry:
    """One change-log document (docs/contract.md §4); ``entry_id`` makes its insert idempotent."""

    entry_id: str
    user_id: int
    timestamp: int
    uuid: str
    status: str
    action: LogAction
    list: ListName
    payload_hash: str | None
    previous_hash: str | None

    def to_document(self) -> dict[str, Any]:
        """The MongoDB document for this entry."""
        return {
            "_id": self.entry_id,
            "user_id": self.user_id,
            "timestamp": self.timestamp,
            "uuid": self.uuid,
            "status": self.status,
            "action": self.action,
            "list": self.list,
            "payload_hash": self.payload_hash,
            "previous_hash": self.previous_hash,
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> LogEntry:
        """An entry read back (from ``log_pending``); raises KeyError/TypeError for something else."""
        return cls(
            entry_id=str(document["_id"]),
            user_id=int(document["user_id"]),
            timestamp=int(document["timestamp"]),
            uuid=str(document["uuid"]),
            status=str(document["status"]),
            action=document["action"],
            list=document["list"],
            payload_hash=document.get("payload_hash"),
            previous_hash=document.get("previous_hash"),
        )


@dataclass(frozen=True)
class ListChanges:
    """What a sync does to one array, as one set of paths the store can write in a single statement.

    Either ``rewrite`` (the store sets the whole array to ``final``) or in place: ``updated`` elements
    replace the element at that index of the stored array, ``appended`` ones go at the indexes from
    ``stored_length`` on. ``final`` is always the complete resulting array.
    """

    name: ListName
    final: list[Element]
    rewrite: bool = False
    updated: list[tuple[int, Element]] = field(default_factory=list)
    appended: list[Element] = field(default_factory=list)
    stored_length: int = 0

    @property
    def changed(self) -> bool:
        """True when anything in this array must be written."""
        return bool(self.rewrite or self.updated or self.appended)


@dataclass(frozen=True)
class WriteGuard:
    """The stored state a plan was computed from; the store writes only while the document is still in it.

    ``document_id`` is the stored ``_id``. ``fields`` holds the raw stored values of the guarded fields
    (``sync_revision``, ``timestamp``), ``missing`` the guarded fields the document did not have: every
    writer of this service moves the revision, and the Node service rewrites the timestamp on every write
    without knowing the revision, so either kind of concurrent write makes the guard miss.
    """

    document_id: Any
    fields: dict[str, Any]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class SyncPlan:
    """One write: the array changes, the document fields to set, and the change-log entries.

    ``guard`` None means there is no document and the plan creates one. ``fields`` holds the top-level
    fields to set (``timestamp``, ``next_sync_at``, a normalised ``user_id`` …); ``revision`` is the
    revision the write produces. ``log`` is this write's change-log entries;
    ``carried_log`` the entries an earlier write left in ``log_pending`` (written again, idempotently).
    """

    user_id: int
    guard: WriteGuard | None
    revision: int
    passes: ListChanges
    history: ListChanges
    fields: dict[str, Any]
    log: list[LogEntry]
    carried_log: list[LogEntry] = field(default_factory=list)

    @property
    def creates(self) -> bool:
        """True when there was no cache document (a build)."""
        return self.guard is None

    @property
    def changed_passes(self) -> int:
        """How many passes this write creates, updates or removes."""
        return len(self.log)

    def lists(self) -> tuple[ListChanges, ListChanges]:
        """Both arrays' changes."""
        return (self.passes, self.history)


@dataclass(frozen=True)
class UpdateMessage:
    """One message on the update queue (docs/contract.md §7 ``user_updates`` body)."""

    user_id: int
    reason: UpdateReason
    pass_uuid: str | None = None

    def to_body(self) -> dict[str, Any]:
        """The JSON body of the SQS message."""
        body: dict[str, Any] = {"user_id": self.user_id, "reason": self.reason}
        if self.pass_uuid is not None:
            body["pass_uuid"] = self.pass_uuid
        return body
