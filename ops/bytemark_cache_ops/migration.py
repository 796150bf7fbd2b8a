"""``migrate``: converge the Node service's documents to the contract's shape, then create the indexes.

A dry run (the default) reads and reports only. ``--apply`` writes each document through the service's own
protocol, so it never races a running sync: claim the document's revision (``CacheStore.claim``), write a
``SyncPlan`` guarded by what was read (``CacheStore.write``; a document that changed meanwhile is read
again and planned once more), release the claim when nothing was written. A user's older documents are
copied verbatim to the side collection before they are deleted (deleted only while still as read), so a
re-run never loses or duplicates anything. Every change gets an entry in the migration log (never in the
pass change log). Batches go by ``_id``; ``--after`` resumes after any ``_id``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from bytemark_cache.domain.convergence import (
    DUPLICATE_MOVED,
    UNREADABLE_USER_ID,
    check_size,
    converge,
    convergence_plan,
    split_duplicates,
)
from bytemark_cache.domain.document import StoredCache, interpret_user_id, read_cache
from bytemark_cache.domain.identity import is_user_id
from bytemark_cache.errors import ConcurrentModification
from bytemark_cache_ops.doctor import Found
from bytemark_cache_ops.indexes import explain_failures, index_dict

if TYPE_CHECKING:
    from bytemark_cache.adapters.mongo_indexes import IndexFinding
    from bytemark_cache.domain.model import CacheDocument
    from bytemark_cache.ports import CacheStore
    from bytemark_cache_ops.context import MaintenanceStore

DEFAULT_BATCH_SIZE: Final = 200
DEFAULT_EXAMPLES: Final = 20
ATTEMPTS: Final = 2
"""A document that changed between read and write is read again and planned once more."""


class _Changed(Exception):
    """The document changed while it was being migrated (inside one attempt)."""


@dataclass
class MigrationReport:
    """What a run did (or, dry, would do)."""

    apply: bool
    collection: str
    duplicates_collection: str
    migration_log_collection: str
    examples_wanted: int
    scanned: int = 0
    converged: int = 0
    unchanged: int = 0
    moved: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_ids: Found = field(default_factory=Found)
    changed_meanwhile: Found = field(default_factory=Found)
    busy: Found = field(default_factory=Found)
    examples: list[dict[str, Any]] = field(default_factory=list)
    cursor: Any = None
    finished: bool = False
    indexes: list[IndexFinding] = field(default_factory=list)

    def example(self, document_id: Any, user_id: int, actions: list[str]) -> None:
        """Remember one converged or moved document while there are fewer than asked for."""
        if len(self.examples) < self.examples_wanted:
            self.examples.append({"_id": str(document_id), "user_id": user_id, "actions": actions})

    @property
    def left_alone(self) -> int:
        """Documents that need another run or a person."""
        return self.skipped_ids.count + self.changed_meanwhile.count + self.busy.count

    def to_dict(self) -> dict[str, Any]:
        """The report for machines (``--json``)."""
        return {
            "apply": self.apply,
            "collection": self.collection,
            "duplicates_collection": self.duplicates_collection,
            "migration_log_collection": self.migration_log_collection,
            "scanned": self.scanned,
            "converged": self.converged,
            "moved": self.moved,
            "unchanged": self.unchanged,
            "actions": dict(sorted(self.actions.items())),
            "skipped": {**self.skipped_ids.to_dict(), "reasons": dict(sorted(self.skipped.items()))},
            "changed_meanwhile": self.changed_meanwhile.to_dict(),
            "busy": self.busy.to_dict(),
            "documents": self.examples,
            "cursor": None if self.cursor is None else str(self.cursor),
            "finished": self.finished,
            "indexes": [index_dict(finding) for finding in self.indexes],
        }


class Migration:
    """One run over the collection, dry or applying."""

    def __init__(
        self,
        cache: CacheStore,
        store: MaintenanceStore,
        *,
        apply: bool,
        now: Callable[[], float],
        claim_seconds: float,
        examples: int = DEFAULT_EXAMPLES,
    ) -> None:
        self._cache = cache
        self._store = store
        self._now = now
        self._claim_seconds = claim_seconds
        self._duplicates: dict[int, int] = {}
        self._merged: set[int] = set()
        self.report = MigrationReport(
            apply,
            store.cache_collection,
            store.duplicates_collection,
            store.migration_log_collection,
            examples,
        )

    def run(
        self,
        *,
        after: Any = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_documents: int | None = None,
        on_batch: Callable[[MigrationReport], None] = lambda _report: None,
    ) -> MigrationReport:
        """Every document after ``after`` (at most ``max_documents``), then the indexes when finished."""
        report = self.report
        report.cursor = after
        self._duplicates = self._store.duplicate_user_ids()
        while True:
            wanted = batch_size if max_documents is None else min(batch_size, max_documents - report.scanned)
            if wanted <= 0:
                break
            batch = self._store.scan(report.cursor, wanted)
            for document in batch:
                self._document(document)
                report.cursor = document.get("_id")
            if batch:
                on_batch(report)
            if len(batch) < wanted:
                report.finished = True
                break
        if report.finished:
            findings = self._store.ensure_indexes() if report.apply else self._store.check_indexes()
            report.indexes = explain_failures(self._store, findings)
        return report

    def _document(self, document: CacheDocument) -> None:
        report = self.report
        report.scanned += 1
        user_id = interpret_user_id(document.get("user_id"))
        if user_id is None or not is_user_id(user_id):
            report.skipped[UNREADABLE_USER_ID] += 1
            report.skipped_ids.add(document.get("_id"))
            return
        if user_id in self._duplicates:
            if user_id in self._merged:
                return  # done with the user's first document this run
            self._merged.add(user_id)
        for attempt in range(1, ATTEMPTS + 1):
            if attempt > 1 or user_id in self._duplicates:
                found = split_duplicates(self._cache.load(user_id), user_id, self._now())
                if found is None:
                    return  # gone meanwhile: nothing to converge
                stored, others = found
            else:
                stored, others = _alone(document, user_id, self._now()), []
            try:
                self._user(stored, others)
                return
            except _Changed:
                if attempt == ATTEMPTS:
                    report.changed_meanwhile.add(stored.document.get("_id"))

    def _user(self, stored: StoredCache, others: list[CacheDocument]) -> None:
        """Converge the user's kept document and move the others aside (one attempt)."""
        report = self.report
        now = self._now()
        document_id = stored.document.get("_id")
        convergence = converge(stored.document, now)
        plan = convergence_plan(stored, convergence) if convergence.changed else None
        problem = convergence.problem or (check_size(stored.document, plan) if plan else None)
        if problem is not None:
            report.skipped[problem] += 1
            report.skipped_ids.add(document_id)
            return
        if plan is None and not others:
            report.unchanged += 1
            return
        owner = uuid.uuid4().hex
        if report.apply and not self._cache.claim(
            stored.user_id, stored.revision, owner, now, self._claim_seconds
        ):
            report.busy.add(document_id)  # a sync of this user is running: the next run converges it
            return
        wrote = False
        try:
            # The others first: once the kept document's user_id is a number, a unique index (which tells
            # 42 from "42") could otherwise refuse it while a numeric duplicate still exists.
            for other in others:
                self._move_aside(other, stored, now)
            if plan is not None:
                entry = self._entry(
                    f"{document_id}:{stored.revision}", stored, list(convergence.actions), now
                )
                if report.apply:
                    self._store.record_migration(
                        {**entry, "revision": plan.revision, "changes": convergence.changes}
                    )
                    try:
                        self._cache.write(plan)
                    except ConcurrentModification:
                        self._store.forget_migration(entry["_id"])
                        raise _Changed from None
                    wrote = True
                report.converged += 1
                report.actions.update(convergence.actions)
                report.example(document_id, stored.user_id, list(convergence.actions))
            else:
                report.unchanged += 1  # the kept document itself needed nothing; its duplicates went aside
        finally:
            if report.apply and not wrote:
                self._cache.release(stored.user_id, stored.revision, owner)

    def _move_aside(self, other: CacheDocument, kept: StoredCache, now: float) -> None:
        """Copy a duplicate to the side collection, then delete it while it is still as read (one that
        changed meanwhile stays, and the next run copies it again: the copy is replaced, never added)."""
        report = self.report
        other_id = other.get("_id")
        if report.apply:
            self._store.copy_aside(other)
            alone = _alone(other, kept.user_id, now)
            entry = self._entry(f"{other_id}:moved", alone, [DUPLICATE_MOVED], now)
            entry.update(moved_to=report.duplicates_collection, kept_document_id=kept.document.get("_id"))
            self._store.record_migration(entry)
            if not self._store.delete_guarded(alone.guard):
                self._store.forget_migration(entry["_id"])
                report.changed_meanwhile.add(other_id)
                return
        report.moved += 1
        report.actions[DUPLICATE_MOVED] += 1
        report.example(other_id, kept.user_id, [DUPLICATE_MOVED])

    def _entry(self, entry_id: str, stored: StoredCache, actions: list[str], now: float) -> dict[str, Any]:
        return {
            "_id": entry_id,
            "document_id": stored.document.get("_id"),
            "collection": self.report.collection,
            "user_id": stored.user_id,
            "actions": actions,
            "timestamp": int(now),
        }


def _alone(document: CacheDocument, user_id: int, now: float) -> StoredCache:
    stored = read_cache([document], user_id, now)
    assert stored is not None  # the document is this user's
    return stored
