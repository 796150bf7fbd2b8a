"""Shapes shared by the domain, the ports and the adapters (SPEC §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Pass = dict[str, Any]
"""One Bytemark pass exactly as received (key order kept); stored untouched as an element's ``payload``."""

Element = dict[str, Any]
"""A cache element: ``pass_uuid, timestamp, status, free_ticket_status, payload, payload_hash``.
Fields older writers added (``_id`` …) ride along untouched."""

CacheDocument = dict[str, Any]
"""One user's cache document: ``user_id, timestamp, passes, passes4, sync_revision`` (+ unknown fields)."""

ListName = Literal["passes", "passes4"]
LogAction = Literal["created", "updated", "removed"]
UpdateReason = Literal["purchase", "activation", "backfill", "manual"]
BackfillMode = Literal["missing", "stale"]

REVISION_FIELD = "sync_revision"
"""Optimistic-concurrency counter on the cache document; absent on documents the Node service wrote."""


@dataclass(frozen=True)
class FetchedPasses:
    """Both Bytemark lists of one user, freshly fetched (v1 = current, v4 = expired history)."""

    current: list[Pass]
    expired: list[Pass]


@dataclass(frozen=True)
class LogEntry:
    """One change-log document (SPEC §4)."""

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
            "user_id": self.user_id,
            "timestamp": self.timestamp,
            "uuid": self.uuid,
            "status": self.status,
            "action": self.action,
            "list": self.list,
            "payload_hash": self.payload_hash,
            "previous_hash": self.previous_hash,
        }


@dataclass(frozen=True)
class ListChanges:
    """What a sync changes in one array of the cache document.

    A store applies them in this order: ``updated`` (by index into the *old* array; only the wrapper
    fields ``status, payload, payload_hash, timestamp`` are set so unknown element fields survive),
    then ``removed`` (by ``pass_uuid``), then ``appended`` (to the end, in order). When ``rewrite`` is
    true the order cannot be reached that way and the store replaces the whole array with ``final``.
    ``final`` is always the complete resulting array.
    """

    name: ListName
    final: list[Element]
    updated: list[tuple[int, Element]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    appended: list[Element] = field(default_factory=list)
    rewrite: bool = False

    @property
    def changed(self) -> bool:
        """True when anything in this array must be written."""
        return bool(self.updated or self.removed or self.appended or self.rewrite)


@dataclass(frozen=True)
class SyncPlan:
    """The whole outcome of one sync decision: the writes, the log and the new document timestamp.

    ``base_revision`` is the ``sync_revision`` of the document the plan was computed from (0 when the
    field is absent); ``None`` means there was no document and the plan creates one.
    """

    user_id: int
    timestamp: int
    base_revision: int | None
    passes: ListChanges
    passes4: ListChanges
    log: list[LogEntry]

    @property
    def creates(self) -> bool:
        """True when there was no cache document (a build)."""
        return self.base_revision is None

    @property
    def changed_passes(self) -> int:
        """How many log entries (created/updated/removed passes) the plan writes."""
        return len(self.log)


@dataclass(frozen=True)
class UpdateMessage:
    """One message on the update queue (SPEC §7 ``user_updates`` body)."""

    user_id: int
    reason: UpdateReason
    pass_uuid: str | None = None

    def to_body(self) -> dict[str, Any]:
        """The JSON body of the SQS message."""
        body: dict[str, Any] = {"user_id": self.user_id, "reason": self.reason}
        if self.pass_uuid is not None:
            body["pass_uuid"] = self.pass_uuid
        return body
