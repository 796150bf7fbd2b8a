"""Use cases: check, check_with_ttl, sync, build, mark_activation and backfill (SPEC §6).

The services decide *what* happens; the domain decides the sync plan; the ports do the I/O.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bytemark_cache.domain.messages import BackfillRequest
from bytemark_cache.domain.model import (
    REVISION_FIELD,
    BackfillMode,
    CacheDocument,
    FetchedPasses,
    SyncPlan,
    UpdateMessage,
)
from bytemark_cache.domain.sync import plan_sync
from bytemark_cache.errors import (
    ConcurrentModification,
    InvalidInput,
    NoBytemarkAccount,
    RateLimited,
    SyncInProgress,
    UpstreamError,
)
from bytemark_cache.ports import BackfillRunStore, CacheStore, Clock, PassSource, TokenStore, UpdateQueue

logger = logging.getLogger(__name__)

Source = Literal["built", "synced", "cache", "shared", "stale"]
"""How a result came to be: built/synced by this call, served from the cache within the TTL, produced by a
concurrent sync this call waited for, or served from the cache because Bytemark failed."""

_MAX_APPLY_ATTEMPTS = 3
_LEASE_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class CheckResult:
    """A user's cache after a check, and how it was obtained."""

    user_id: int
    document: CacheDocument
    source: Source
    age_seconds: int
    changed_passes: int = 0
    upstream_error: UpstreamError | None = None

    @property
    def stale(self) -> bool:
        """True when Bytemark failed and the cache was served as it was."""
        return self.source == "stale"

    @property
    def called_upstream(self) -> bool:
        """True when this call itself asked Bytemark (built, synced, or tried and served stale)."""
        return self.source in ("built", "synced", "stale")


@dataclass(frozen=True)
class BackfillResult:
    """Summary of one back-fill run; ``cursor`` is None once every user was scanned."""

    mode: BackfillMode
    scanned: int
    enqueued: int
    cursor: int | None

    run_id: str | None = None
    already_done: bool = False

    def to_dict(self) -> dict[str, object]:
        """SPEC §7 summary (plus the run id)."""
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
        return summary


class TicketCacheService:
    """The cache's use cases over the four ports."""

    def __init__(
        self,
        *,
        tokens: TokenStore,
        source: PassSource,
        cache: CacheStore,
        queue: UpdateQueue | None,
        clock: Clock,
        ttl_seconds: int,
        passes4_limit: int,
        lease_seconds: float,
        wait_seconds: float,
        runs: BackfillRunStore | None = None,
    ) -> None:
        self._tokens = tokens
        self._source = source
        self._cache = cache
        self._queue = queue
        self._clock = clock
        self.ttl_seconds = ttl_seconds
        self._passes4_limit = passes4_limit
        self._lease_seconds = lease_seconds
        self._wait_seconds = wait_seconds
        self._runs = runs

    def now(self) -> float:
        """The service's clock (tests drive it), for callers that present ages and expiries."""
        return self._clock.now()

    # -- reads -------------------------------------------------------------------------------------

    def check_with_ttl(self, user_id: int, ttl_seconds: int | None = None) -> CheckResult:
        """No cache → build; cache at least ``ttl`` old → sync; else serve it with no upstream call."""
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        document = self._cache.load(user_id)
        if document is not None and self._age(document) < ttl:
            return self._result(user_id, document, "cache")
        return self._refresh(user_id, document, fresh_enough=lambda doc: self._age(doc) < ttl)

    def check(self, user_id: int) -> CheckResult:
        """No cache → build; cache → sync now. Upstream failure with a cache serves it, flagged stale."""
        document = self._cache.load(user_id)
        return self._refresh(user_id, document, fresh_enough=_synced_since(document))

    def forced_check(self, user_id: int, min_interval_seconds: float) -> CheckResult:
        """A check the user asked for explicitly, at most once per ``min_interval_seconds`` per user."""
        wait = self._cache.throttle(f"forced-sync:{user_id}", self._clock.now(), min_interval_seconds)
        if wait > 0:
            raise RateLimited(wait)
        return self.check(user_id)

    def sync(self, user_id: int) -> CheckResult:
        """Synchronise now (building a missing cache); any upstream failure is raised, nothing written."""
        document = self._cache.load(user_id)
        return self._refresh(user_id, document, fresh_enough=_synced_since(document), serve_stale=False)

    def build(self, user_id: int) -> CheckResult:
        """Build a missing cache (an existing one is synchronised instead)."""
        return self.sync(user_id)

    def mark_activation(self, user_id: int, pass_uuid: str) -> bool:
        """Show a just-activated pass as USING at once, before Bytemark confirms (payload untouched)."""
        if not pass_uuid:
            raise InvalidInput("pass_uuid must be a non-empty string")
        return self._cache.mark_pass_status(user_id, pass_uuid, "USING")

    # -- back-fill ---------------------------------------------------------------------------------

    def backfill(
        self,
        mode: BackfillMode,
        cursor: int | None = None,
        *,
        max_users: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        page_size: int = 500,
        dry_run: bool = False,
        on_page: Callable[[BackfillResult], None] | None = None,
    ) -> BackfillResult:
        """Enqueue every user with a token and no cache (``missing``) or a stale one (``stale``).

        Users are scanned in ascending id order; the returned cursor is the last id whose page was fully
        enqueued, so a run resumed from it never skips nor repeats a user. ``cursor`` None = finished.
        """
        if mode not in ("missing", "stale"):
            raise InvalidInput(f"unknown back-fill mode {mode!r} (expected 'missing' or 'stale')")
        if self._queue is None and not dry_run:
            raise InvalidInput("back-fill needs UPDATE_QUEUE_URL")
        scanned = enqueued = 0
        position = cursor
        for page in self._tokens.users_with_token(position, page_size):
            due = self._due_for_backfill(mode, page)
            if due and not dry_run:
                assert self._queue is not None
                self._queue.enqueue([UpdateMessage(user_id=uid, reason="backfill") for uid in due])
            scanned += len(page)
            enqueued += len(due)
            position = page[-1]
            if on_page is not None:
                on_page(BackfillResult(mode, scanned, enqueued, position))
            if should_stop() or (max_users is not None and scanned >= max_users):
                return BackfillResult(mode, scanned, enqueued, position)
        return BackfillResult(mode, scanned, enqueued, None)

    def backfill_run(
        self, request: BackfillRequest, *, should_stop: Callable[[], bool] = lambda: False
    ) -> BackfillResult:
        """One invocation of a back-fill run, resumable and idempotent per run id.

        Progress is recorded after every enqueued page, so EventBridge's retries of the same run resume
        where it stopped (and a finished run enqueues nothing again) and a continuation picks up the cursor.
        Without a run id the run is the current TTL window of that mode.
        """
        if self._runs is None:
            return self.backfill(request.mode, request.cursor, should_stop=should_stop)
        runs = self._runs
        window = int(self._clock.now()) // max(1, self.ttl_seconds)
        run_id = request.run_id or f"{request.mode}:{window}"
        state = runs.load_run(run_id) or {}
        base_scanned = int(state.get("scanned") or 0)
        base_enqueued = int(state.get("enqueued") or 0)
        if state.get("done"):
            return BackfillResult(request.mode, base_scanned, base_enqueued, None, run_id, already_done=True)
        cursor = _later(request.cursor, state.get("cursor"))

        def record(progress: BackfillResult, done: bool = False) -> None:
            runs.save_run(
                run_id,
                {
                    "mode": request.mode,
                    "cursor": progress.cursor,
                    "scanned": base_scanned + progress.scanned,
                    "enqueued": base_enqueued + progress.enqueued,
                    "done": done,
                },
                self._clock.now(),
            )

        result = self.backfill(request.mode, cursor, should_stop=should_stop, on_page=record)
        record(result, done=result.cursor is None)
        return BackfillResult(
            request.mode,
            base_scanned + result.scanned,
            base_enqueued + result.enqueued,
            result.cursor,
            run_id,
        )

    def _due_for_backfill(self, mode: BackfillMode, user_ids: list[int]) -> list[int]:
        timestamps = self._cache.cache_timestamps(user_ids)
        if mode == "missing":
            return [uid for uid in user_ids if uid not in timestamps]
        oldest_fresh = self._clock.now() - self.ttl_seconds
        return [uid for uid in user_ids if uid in timestamps and timestamps[uid] <= oldest_fresh]

    # -- the sync itself ---------------------------------------------------------------------------

    def _refresh(
        self,
        user_id: int,
        document: CacheDocument | None,
        *,
        fresh_enough: Callable[[CacheDocument], bool],
        serve_stale: bool = True,
    ) -> CheckResult:
        """Sync under the user's lease (single flight across threads and Lambda instances).

        A caller that finds the lease taken waits for that in-flight sync and shares its result (it
        asked at the same moment); ``fresh_enough`` says whether a document re-read now is that result.
        """
        owner = uuid.uuid4().hex
        deadline = self._clock.now() + self._wait_seconds
        while not self._cache.acquire_lease(user_id, owner, self._clock.now(), self._lease_seconds):
            # Someone else is syncing this user: wait briefly for their result instead of calling Bytemark.
            if self._clock.now() >= deadline:
                if document is not None:
                    return self._result(user_id, document, "cache")
                raise SyncInProgress(f"a sync of user {user_id} is in progress")
            self._clock.sleep(_LEASE_POLL_SECONDS)
            current = self._cache.load(user_id)
            if current is not None and fresh_enough(current):
                return self._result(user_id, current, "shared")
        try:
            # Re-read under the lease: a sync that finished while we queued for it is our answer too.
            current = self._cache.load(user_id)
            if current is not None and fresh_enough(current):
                return self._result(user_id, current, "shared")
            return self._fetch_and_apply(user_id, current, serve_stale=serve_stale)
        finally:
            self._cache.release_lease(user_id, owner)

    def _fetch_and_apply(
        self, user_id: int, document: CacheDocument | None, *, serve_stale: bool
    ) -> CheckResult:
        token = self._tokens.token_for(user_id)
        if not token:
            raise NoBytemarkAccount(user_id)
        try:
            fetched = self._source.fetch_passes(token)
        except UpstreamError as exc:
            if document is None or not serve_stale:
                raise
            logger.warning(
                "bytemark failed, serving the cache", extra={"user_id": user_id, "error": type(exc).__name__}
            )
            return self._result(user_id, document, "stale", upstream_error=exc)
        plan = self._apply(user_id, document, fetched)
        written = self._cache.load(user_id)
        if written is None:  # deleted between our write and this read: report what we wrote
            raise ConcurrentModification(f"cache of user {user_id} vanished after the sync")
        return self._result(user_id, written, "built" if plan.creates else "synced", plan.changed_passes)

    def _apply(self, user_id: int, document: CacheDocument | None, fetched: FetchedPasses) -> SyncPlan:
        """Plan and write; on a lost optimistic race re-plan on the winner's document (no second fetch)."""
        for _attempt in range(_MAX_APPLY_ATTEMPTS):
            plan = plan_sync(
                user_id, document, fetched, int(self._clock.now()), passes4_limit=self._passes4_limit
            )
            try:
                self._cache.apply(plan)
                return plan
            except ConcurrentModification:
                document = self._cache.load(user_id)
        raise ConcurrentModification(f"cache of user {user_id} kept changing during the sync")

    def _age(self, document: CacheDocument) -> int:
        return max(0, int(self._clock.now()) - _timestamp(document))

    def _result(
        self,
        user_id: int,
        document: CacheDocument,
        source: Source,
        changed_passes: int = 0,
        upstream_error: UpstreamError | None = None,
    ) -> CheckResult:
        return CheckResult(user_id, document, source, self._age(document), changed_passes, upstream_error)


def _synced_since(seen: CacheDocument | None) -> Callable[[CacheDocument], bool]:
    """A test for "a sync was written after ``seen`` was read" (the revision moves on every write)."""
    seen_revision = None if seen is None else seen.get(REVISION_FIELD, 0)
    return lambda current: current.get(REVISION_FIELD, 0) != seen_revision


def _later(first: int | None, second: object) -> int | None:
    """The further of two cursors (None = from the start)."""
    candidates = [
        value for value in (first, second) if isinstance(value, int) and not isinstance(value, bool)
    ]
    return max(candidates) if candidates else None


def _timestamp(document: CacheDocument) -> int:
    value = document.get("timestamp")
    return int(value) if isinstance(value, int | float) else 0
