"""TicketCacheService: the reads and syncs of one user's cache (contract §6).

The service decides *what* happens; the domain decides the plan and the policy; the ports do the I/O.
Concurrency is one mechanism, the revision claim (docs/architecture.md): a sync first claims the revision
it read, so a second caller of the same user waits for that sync's result instead of calling Bytemark,
and only the claim holder can move the document on from that revision.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.document import StoredCache, read_cache
from bytemark_cache.domain.freshness import REFRESH_QUEUED_SECONDS, REVOKED_RECHECK_SECONDS, FreshnessPolicy
from bytemark_cache.domain.model import ACTIVE_FIELD, NEXT_SYNC_FIELD, SyncPlan, UpdateMessage, UpdateReason
from bytemark_cache.domain.plan import apply_plan, plan_status, plan_sync, prepare_fresh
from bytemark_cache.errors import (
    BytemarkCacheError,
    ConcurrentModification,
    InvalidInput,
    NoBytemarkAccount,
    RateLimited,
    SyncInProgress,
    TokenRevoked,
    UpstreamError,
)
from bytemark_cache.ports import CacheStore, Clock, PassSource, TokenStore, UpdateQueue

logger = logging.getLogger(__name__)

Source = Literal["built", "synced", "cache", "shared", "stale", "refresh_queued"]
"""How a result came to be: built or synced by this call; served from the cache (fresh enough, or as it was
when another sync of the rider outlasted the wait); produced by a concurrent sync this call waited for;
served as it was because Bytemark failed; or served as it was with a refresh queued behind the rider."""

CLAIM_POLL_SECONDS = 0.1
"""How often a caller waiting for another sync of the same user looks again."""

CLAIM_SLACK_SECONDS = 5.0
"""A claim outlives its holder's deadline by this much before others may take it over."""

ACTIVE_REASONS: frozenset[UpdateReason] = frozenset({"purchase", "activation", "refresh"})
"""Syncs the rider caused (an open, a purchase): they make the rider "active" for the policy."""


@dataclass(frozen=True)
class CheckResult:
    """A user's cache after a read or sync, and how it was obtained."""

    user_id: int
    cache: StoredCache
    source: Source
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
class TicketCacheService:
    """The cache's reads and syncs over the token store, Bytemark, the cache store and the update queue.

    ``queue`` None: reads sync inline instead of refreshing behind the rider. ``claim_seconds`` caps how long
    a claim outlives its holder; ``wait_seconds`` how long a second caller waits for a sync in flight.
    """

    tokens: TokenStore
    source: PassSource
    cache: CacheStore
    queue: UpdateQueue | None
    clock: Clock
    policy: FreshnessPolicy
    history_limit: int
    claim_seconds: float
    wait_seconds: float

    def now(self) -> float:
        """The service's clock (tests drive it), for callers that present ages and expiries."""
        return self.clock.now()

    # -- reads -------------------------------------------------------------------------------------

    def check_with_ttl(self, user_id: int, *, deadline: Deadline, refresh_behind: bool = True) -> CheckResult:
        """``GET /tickets``: no cache → build; younger than the TTL → serve; older → the policy decides
        between serving it with a refresh queued behind the rider and syncing first (``refresh_behind``
        False: always sync first, the contract's plain check_with_ttl)."""
        ttl = self.policy.ttl_seconds
        now = int(self.clock.now())
        stored = self._load(user_id)
        if stored is None:
            return self._refresh(user_id, None, deadline=deadline, reason="refresh", fresh_enough=_exists)
        age = stored.age(now)
        if age is not None and age < ttl:
            return CheckResult(user_id, stored, "cache")
        action = self.policy.read_action(stored.passes, synced_at=stored.synced_at, now=now)
        if refresh_behind and action == "refresh_behind" and self._queue_refresh(user_id):
            return CheckResult(user_id, stored, "refresh_queued")

        def fresh_enough(current: StoredCache) -> bool:
            current_age = current.age(int(self.clock.now()))
            return current_age is not None and current_age < ttl

        return self._refresh(user_id, stored, deadline=deadline, reason="refresh", fresh_enough=fresh_enough)

    def check(self, user_id: int, *, deadline: Deadline) -> CheckResult:
        """No cache → build; cache → sync now. Upstream failure with a cache serves it, flagged stale."""
        stored = self._load(user_id)
        return self._refresh(
            user_id, stored, deadline=deadline, reason="refresh", fresh_enough=_synced_after(stored)
        )

    def forced_check(self, user_id: int, *, deadline: Deadline, min_interval_seconds: float) -> CheckResult:
        """A check the rider asked for explicitly, at most once per ``min_interval_seconds`` per user."""
        wait = self.cache.throttle(f"forced-sync:{user_id}", self.clock.now(), min_interval_seconds)
        if wait > 0:
            raise RateLimited(wait)
        return self.check(user_id, deadline=deadline)

    # -- syncs -------------------------------------------------------------------------------------

    def sync(self, user_id: int, *, deadline: Deadline, reason: UpdateReason = "manual") -> CheckResult:
        """Synchronise now (building a missing cache); any failure is raised and nothing is written.

        It never shares a concurrent sync's result: that sync may have fetched before the purchase this
        message announces. It waits for it to finish (no two fetches at once), then fetches itself.
        """
        stored = self._load(user_id)
        return self._refresh(
            user_id, stored, deadline=deadline, reason=reason, fresh_enough=_never_shared, serve_stale=False
        )

    def mark_activation(self, user_id: int, pass_uuid: str, *, deadline: Deadline) -> bool:
        """Show a just-activated pass as USING at once, before Bytemark confirms (payload untouched).

        False when the user has no cache or the pass is not in it. Waits for a sync in flight (its write
        comes first); raises ConcurrentModification when the document kept moving until the deadline.
        """
        if not pass_uuid:
            raise InvalidInput("pass_uuid must be a non-empty string")
        wait_until = deadline.earlier(Deadline.after(self.clock.now(), self.wait_seconds))
        while True:
            stored = self._load(user_id)
            if stored is None:
                return False
            plan = plan_status(stored, pass_uuid, "USING", write_id=_write_id(), now=self.clock.now())
            if plan is None:
                return False
            if self._write_claimed(user_id, stored.revision, plan, deadline):
                return True
            if wait_until.expired(self.clock.now()):
                raise ConcurrentModification(f"cache of user {user_id} kept changing; activation not shown")
            self.clock.sleep(CLAIM_POLL_SECONDS)

    # -- the sync itself ---------------------------------------------------------------------------

    def _refresh(
        self,
        user_id: int,
        stored: StoredCache | None,
        *,
        deadline: Deadline,
        reason: UpdateReason,
        fresh_enough: Callable[[StoredCache], bool],
        serve_stale: bool = True,
    ) -> CheckResult:
        """Sync under the claim of the revision read (single flight across threads and Lambda instances).

        A caller that finds the claim taken waits for that sync and shares its result (``fresh_enough``
        says whether a document read now is that result); when the wait ends first, a read serves the cache
        as it is and a sync (``serve_stale`` False: the queue's) raises SyncInProgress, so its message comes
        back later instead of being acknowledged unsynced.
        """
        # A build reads the token before claiming (a rider without an account leaves nothing behind) and
        # fetches with it; a sync reads it at fetch time.
        token = self.tokens.token_for(user_id) if stored is None else None
        if stored is None and not token:
            raise NoBytemarkAccount(user_id)
        owner = uuid.uuid4().hex
        revision = stored.revision if stored is not None else 0
        wait_until = deadline.earlier(Deadline.after(self.clock.now(), self.wait_seconds))
        while not self.cache.claim(user_id, revision, owner, self.clock.now(), self._claim_ttl(deadline)):
            if wait_until.expired(self.clock.now()):
                if stored is not None and serve_stale:
                    return CheckResult(user_id, stored, "cache")
                raise SyncInProgress(f"a sync of user {user_id} is in progress")
            self.clock.sleep(CLAIM_POLL_SECONDS)
            current = self._load(user_id)
            if current is not None and (stored is None or current.revision != revision):
                if fresh_enough(current):
                    return CheckResult(user_id, current, "shared")
                stored, revision = current, current.revision
        try:
            return self._fetch_and_write(user_id, stored, owner, deadline, reason, serve_stale, token)
        except BaseException:
            # Nothing was written: the next caller may claim this revision at once.
            self.cache.release(user_id, revision, owner)
            raise

    def _fetch_and_write(
        self,
        user_id: int,
        stored: StoredCache | None,
        owner: str,
        deadline: Deadline,
        reason: UpdateReason,
        serve_stale: bool,
        token: str | None,
    ) -> CheckResult:
        if token is None:
            token = self.tokens.token_for(user_id)
        if not token:
            if stored is not None:
                self._postpone(user_id, REVOKED_RECHECK_SECONDS)
            raise NoBytemarkAccount(user_id)
        try:
            fetched = self.source.fetch_passes(token, deadline.remaining(self.clock.now()))
            fresh = prepare_fresh(fetched, stored.payload_hashes() if stored is not None else None)
        except UpstreamError as exc:
            if isinstance(exc, TokenRevoked) and stored is not None:
                self._postpone(user_id, REVOKED_RECHECK_SECONDS)
            if stored is None or not serve_stale:
                raise
            logger.warning(
                "bytemark failed, serving the cache",
                extra={"user_id": user_id, "error": type(exc).__name__, "transient": exc.transient},
            )
            self.cache.release(user_id, stored.revision, owner)
            return CheckResult(user_id, stored, "stale", upstream_error=exc)
        for attempt in (1, 2):
            now = int(self.clock.now())
            active_at = now if reason in ACTIVE_REASONS else (stored.active_at if stored else None)
            plan = plan_sync(
                user_id, stored, fresh, now, history_limit=self.history_limit, write_id=owner[:12]
            )
            fields = {
                NEXT_SYNC_FIELD: self.policy.next_sync_at(plan.passes.final, now=now, active_at=active_at),
                ACTIVE_FIELD: active_at,
            }
            plan = _with_fields(plan, fields)
            try:
                self.cache.write(plan)
            except ConcurrentModification:
                # Only a writer outside the claim protocol (the Node service during a cutover) or a holder
                # whose claim expired can move the document under us: re-plan once on what is there now.
                current = self._load(user_id)
                claimed = stored.revision if stored is not None else 0
                if current is not None and current.revision != claimed:
                    # Our claim expired and another sync wrote: its result is as fresh as ours.
                    self.cache.release(user_id, claimed, owner)
                    return CheckResult(user_id, current, "shared")
                if attempt == 2 or current is None or stored is None:
                    raise
                stored = current
                continue
            written = read_cache([apply_plan(stored.document if stored else None, plan)], user_id, now)
            assert written is not None  # the plan wrote this user's document
            if stored is not None and stored.legacy:
                logger.info(
                    "legacy cache document converged",
                    extra={
                        "user_id": user_id,
                        "legacy": list(stored.legacy),
                        "duplicates": stored.duplicates,
                    },
                )
            return CheckResult(user_id, written, "built" if plan.creates else "synced", plan.changed_passes)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _write_claimed(self, user_id: int, revision: int, plan: SyncPlan, deadline: Deadline) -> bool:
        """Write ``plan`` under the claim of ``revision``; False when someone else holds it or the
        document moved (the caller re-reads and tries again)."""
        owner = uuid.uuid4().hex
        if not self.cache.claim(user_id, revision, owner, self.clock.now(), self._claim_ttl(deadline)):
            return False
        try:
            self.cache.write(plan)
        except ConcurrentModification:
            self.cache.release(user_id, revision, owner)
            return False
        except BaseException:
            self.cache.release(user_id, revision, owner)
            raise
        return True

    def _queue_refresh(self, user_id: int) -> bool:
        """Queue a sync behind the rider; False (and the read syncs itself) when the queue is unavailable."""
        if self.queue is None:
            return False
        try:
            if self.cache.throttle(f"refresh:{user_id}", self.clock.now(), REFRESH_QUEUED_SECONDS) > 0:
                return True  # one is on its way: opening the app again does not queue another
            self.queue.enqueue([UpdateMessage(user_id=user_id, reason="refresh")])
        except BytemarkCacheError as exc:
            logger.warning(
                "refresh not queued; syncing inline", extra={"user_id": user_id, "error": str(exc)}
            )
            return False
        return True

    def _postpone(self, user_id: int, seconds: int) -> None:
        """Move the user's next background sync away (a revoked token: asking again soon cannot help)."""
        try:
            self.cache.set_next_sync(user_id, int(self.clock.now()) + seconds)
        except BytemarkCacheError as exc:
            logger.warning("next sync not postponed", extra={"user_id": user_id, "error": str(exc)})

    def _load(self, user_id: int) -> StoredCache | None:
        return read_cache(self.cache.load(user_id), user_id, self.clock.now())

    def _claim_ttl(self, deadline: Deadline) -> float:
        """A claim lasts until its holder surely gave up: its deadline plus slack, at most the setting."""
        return min(self.claim_seconds, deadline.remaining(self.clock.now()) + CLAIM_SLACK_SECONDS)


def _with_fields(plan: SyncPlan, fields: dict[str, Any]) -> SyncPlan:
    """The plan with more top-level fields to set (None values are left out)."""
    return replace(
        plan, fields={**plan.fields, **{key: value for key, value in fields.items() if value is not None}}
    )


def _write_id() -> str:
    return uuid.uuid4().hex[:12]


def _exists(_current: StoredCache) -> bool:
    return True


def _never_shared(_current: StoredCache) -> bool:
    return False


def _synced_after(seen: StoredCache | None) -> Callable[[StoredCache], bool]:
    """A test for "a write happened after ``seen`` was read" (every write moves the revision)."""
    seen_revision = None if seen is None else seen.revision
    return lambda current: current.revision != seen_revision
