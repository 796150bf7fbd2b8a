"""BackfillService: the scheduled job's modes (contract §7), resumable and idempotent per run id.

- ``due``: users whose ``next_sync_at`` (the freshness policy's) has passed, read from an indexed MongoDB
  range; each taken user is held for a while so the next page and the next run skip it until it synced.
- ``missing``: users with a Bytemark token and no cache: MySQL keyset pages anti-joined with MongoDB.
- ``stale``: users whose cache is older than the TTL, the same way (for manual runs; ``due`` replaces it).
- ``prune``: change-log entries older than the retention, deleted in bounded batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bytemark_cache.domain.document import interpret_time
from bytemark_cache.domain.freshness import FAILED_SYNC_RETRY_SECONDS
from bytemark_cache.domain.messages import BACKFILL_MODES, BackfillRequest
from bytemark_cache.domain.model import BackfillMode, UpdateMessage
from bytemark_cache.errors import InvalidInput
from bytemark_cache.ports import BackfillRunStore, CacheStore, Clock, TokenStore, UpdateQueue

DEFAULT_PAGE_SIZE = 500
"""Users per page: one MySQL range read, one MongoDB ``$in`` read and 50 SQS batch sends."""

PRUNE_BATCH = 5_000
"""Change-log entries deleted per command: small enough to never hold MongoDB for long."""


@dataclass(frozen=True)
class BackfillResult:
    """Summary of one back-fill invocation; ``cursor`` None once the run has nothing left to do."""

    mode: BackfillMode
    scanned: int
    enqueued: int
    cursor: int | None
    run_id: str | None = None
    already_done: bool = False
    pruned: int = 0

    def to_dict(self) -> dict[str, object]:
        """The contract's summary ``{"mode", "scanned", "enqueued", "cursor"}`` (+ run id, pruned)."""
        summary: dict[str, object] = {
            "mode": self.mode,
            "scanned": self.scanned,
            "enqueued": self.enqueued,
            "cursor": self.cursor,
        }
        if self.run_id is not None:
            summary["run_id"] = self.run_id
        if self.already_done:
            summary["already_done"] = True
        if self.mode == "prune":
            summary["pruned"] = self.pruned
        return summary


@dataclass(frozen=True)
class BackfillService:
    """The back-fill over the token store, the cache store, the update queue and the run records."""

    tokens: TokenStore
    cache: CacheStore
    queue: UpdateQueue
    runs: BackfillRunStore
    clock: Clock
    ttl_seconds: int
    log_retention_seconds: int

    def run(
        self, request: BackfillRequest, *, should_stop: Callable[[], bool] = lambda: False
    ) -> BackfillResult:
        """One invocation of a run. Progress is recorded after every page, so EventBridge's retries of a
        run resume where it stopped (a finished run does nothing again) and a continuation picks up the
        cursor. Without a run id the run is the current TTL window of that mode."""
        window = int(self.clock.now()) // max(1, self.ttl_seconds)
        run_id = request.run_id or f"{request.mode}:{window}"
        state = self.runs.load_run(run_id) or {}
        base = BackfillResult(
            request.mode, int(state.get("scanned") or 0), int(state.get("enqueued") or 0), None, run_id
        )
        if state.get("done"):
            return BackfillResult(request.mode, base.scanned, base.enqueued, None, run_id, already_done=True)
        cursor = _later(request.cursor, state.get("cursor"))

        def record(progress: BackfillResult, done: bool = False) -> None:
            self.runs.save_run(
                run_id,
                {
                    "mode": request.mode,
                    "cursor": progress.cursor,
                    "scanned": base.scanned + progress.scanned,
                    "enqueued": base.enqueued + progress.enqueued,
                    "done": done,
                },
                self.clock.now(),
            )

        result = self.scan(request.mode, cursor, should_stop=should_stop, on_page=record)
        record(result, done=result.cursor is None)
        return BackfillResult(
            request.mode,
            base.scanned + result.scanned,
            base.enqueued + result.enqueued,
            result.cursor,
            run_id,
            pruned=result.pruned,
        )

    def scan(
        self,
        mode: BackfillMode,
        cursor: int | None = None,
        *,
        max_users: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        page_size: int = DEFAULT_PAGE_SIZE,
        dry_run: bool = False,
        on_page: Callable[[BackfillResult], None] | None = None,
    ) -> BackfillResult:
        """One pass of ``mode`` from ``cursor``; the returned cursor is where to resume (None: finished)."""
        if mode not in BACKFILL_MODES:
            raise InvalidInput(f"unknown back-fill mode {mode!r} (one of {', '.join(BACKFILL_MODES)})")
        limits = _Limits(page_size, max_users, should_stop, dry_run, on_page)
        if mode == "due":
            return self._due(limits)
        if mode == "prune":
            return self._prune(limits)
        return self._scan_tokens(mode, cursor, limits)

    def _scan_tokens(self, mode: BackfillMode, cursor: int | None, limits: _Limits) -> BackfillResult:
        """Users with a token in ascending id order; the cursor is the last id whose page was fully
        enqueued, so a run resumed from it never skips nor repeats a user."""
        scanned = enqueued = 0
        position = cursor
        for page in self.tokens.users_with_token(position, limits.page_size):
            due = self._due_of_page(mode, page)
            if due and not limits.dry_run:
                self._enqueue(due)
            scanned += len(page)
            enqueued += len(due)
            position = page[-1]
            limits.report(BackfillResult(mode, scanned, enqueued, position))
            if limits.stop_after(scanned):
                return BackfillResult(mode, scanned, enqueued, position)
        return BackfillResult(mode, scanned, enqueued, None)

    def _due_of_page(self, mode: BackfillMode, user_ids: list[int]) -> list[int]:
        timestamps = self.cache.cache_timestamps(user_ids)
        if mode == "missing":
            return [uid for uid in user_ids if uid not in timestamps]
        now = self.clock.now()
        oldest_fresh = now - self.ttl_seconds
        due: list[int] = []
        for uid in user_ids:
            if uid not in timestamps:
                continue
            synced_at = interpret_time(timestamps[uid], now)
            # A time that cannot be read counts as stale (contract §4).
            if synced_at is None or synced_at <= oldest_fresh:
                due.append(uid)
        return due

    def _due(self, limits: _Limits) -> BackfillResult:
        """Take due users page by page until none is left; nothing to resume (the range is the progress)."""
        now = int(self.clock.now())
        if limits.dry_run:
            # Counted without taking anyone: a dry run must not move anyone's next sync.
            due = self.cache.count_due(now)
            return BackfillResult(
                "due", due, due if limits.max_users is None else min(due, limits.max_users), None
            )
        scanned = 0
        while (limit := limits.page_limit(scanned)) > 0:
            now = int(self.clock.now())
            taken = self.cache.take_due(now, limit, now + FAILED_SYNC_RETRY_SECONDS)
            if taken:
                self._enqueue(taken)
            scanned += len(taken)
            limits.report(BackfillResult("due", scanned, scanned, None))
            if len(taken) < limit or limits.should_stop():
                break
        return BackfillResult("due", scanned, scanned, None)

    def _prune(self, limits: _Limits) -> BackfillResult:
        """Delete change-log entries older than the retention, a batch at a time."""
        before = int(self.clock.now()) - self.log_retention_seconds
        pruned = 0
        while not limits.dry_run:
            deleted = self.cache.prune_log(before, PRUNE_BATCH)
            pruned += deleted
            if deleted < PRUNE_BATCH or limits.should_stop():
                break
        return BackfillResult("prune", pruned, 0, None, pruned=pruned)

    def _enqueue(self, user_ids: list[int]) -> None:
        self.queue.enqueue([UpdateMessage(user_id=uid, reason="backfill") for uid in user_ids])


@dataclass(frozen=True)
class _Limits:
    """How far one scan may go: page size, a user cap, when to stop, dry run, and whom to tell per page."""

    page_size: int
    max_users: int | None
    should_stop: Callable[[], bool]
    dry_run: bool
    on_page: Callable[[BackfillResult], None] | None

    def page_limit(self, scanned: int) -> int:
        """Users to take next: a page, or what is left under the cap."""
        return self.page_size if self.max_users is None else min(self.page_size, self.max_users - scanned)

    def stop_after(self, scanned: int) -> bool:
        """True when the scan must hand back its cursor now (told to stop, or the cap reached)."""
        return self.should_stop() or (self.max_users is not None and scanned >= self.max_users)

    def report(self, progress: BackfillResult) -> None:
        if self.on_page is not None:
            self.on_page(progress)


def _later(first: int | None, second: object) -> int | None:
    """The further of two cursors (None = from the start)."""
    candidates = [
        value for value in (first, second) if isinstance(value, int) and not isinstance(value, bool)
    ]
    return max(candidates) if candidates else None
