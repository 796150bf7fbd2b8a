"""The outside things the services need, as ``typing.Protocol`` ports (adapters and fakes implement them)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from bytemark_cache.domain.model import CacheDocument, FetchedPasses, SyncPlan, UpdateMessage


class TokenStore(Protocol):
    """Bytemark OAuth tokens by user (MySQL ``bytemark_tokens``)."""

    def token_for(self, user_id: int) -> str | None:
        """The user's token, or None when the row is absent or the token NULL/empty."""
        ...

    def users_with_token(self, after_user_id: int | None, page_size: int) -> Iterator[list[int]]:
        """Ascending pages of user ids with a non-empty token after ``after_user_id`` (keyset paging)."""
        ...


class PassSource(Protocol):
    """Bytemark's pass lists for one user."""

    requests_sent: int
    """HTTP requests made so far (the handlers' ``BytemarkRequests`` metric is the difference)."""

    def fetch_passes(self, token: str, budget_seconds: float) -> FetchedPasses:
        """Both lists, every page, complete within ``budget_seconds`` (connect, every read, every page,
        retries; ``inf`` for no limit). A budget, not an instant: the caller's clock need not be the source's.

        Raises TokenRevoked, DeadlineExceeded, or UpstreamError (``transient`` says whether asking again
        later may help). Never returns a partial list.
        """
        ...


class CacheStore(Protocol):
    """The per-user cache documents, the change log and the write claims (MongoDB)."""

    def load(self, user_id: int) -> list[CacheDocument]:
        """Every stored document of the user as found (with ``_id``): usually one; legacy data may hold two,
        or a ``user_id`` stored as a string. The domain's reader picks and interprets them."""
        ...

    def claim(self, user_id: int, revision: int, owner: str, now: float, ttl_seconds: float) -> bool:
        """Take the one right to move the user's document on from ``revision``: False when someone holds it.

        A claim left by a holder that died is taken over once ``ttl_seconds`` have passed.
        """
        ...

    def release(self, user_id: int, revision: int, owner: str) -> None:
        """Give back a claim whose write did not happen (the revision did not move)."""
        ...

    def write(self, plan: SyncPlan) -> None:
        """Apply the plan in one atomic statement while the document is still as its guard says; then make
        sure its log entries are in the log collection; then drop the claims of older revisions.

        Raises ConcurrentModification (nothing written) when the guard no longer matches, or for a create
        when a document exists. A failure after the document write leaves the entries in ``log_pending``
        for the next write to flush: an entry is never lost.
        """
        ...

    def set_next_sync(self, user_id: int, at: int) -> None:
        """Reschedule the user's next sync without writing anything else (no revision change)."""
        ...

    def cache_timestamps(self, user_ids: Sequence[int]) -> dict[int, Any]:
        """``user_id -> stored timestamp`` (raw, as found) for those of ``user_ids`` that have a document."""
        ...

    def take_due(self, now: int, limit: int, hold_until: int) -> list[int]:
        """Up to ``limit`` users whose ``next_sync_at`` has passed (oldest first), each moved to
        ``hold_until`` so the next page and the next run do not take them again before their sync."""
        ...

    def count_due(self, now: int) -> int:
        """How many users ``take_due`` would find now (nothing is taken)."""
        ...

    def read_log(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        """The user's newest change-log entries, newest first."""
        ...

    def prune_log(self, before: int, limit: int) -> int:
        """Delete up to ``limit`` change-log entries older than ``before`` (unix seconds); how many went."""
        ...

    def throttle(self, key: str, now: float, interval_seconds: float) -> float:
        """Claim the slot ``key`` for ``interval_seconds``: 0 when claimed, else seconds until it frees up."""
        ...


class UpdateQueue(Protocol):
    """The update queue the purchase flow, the reads and the back-fill feed (SQS)."""

    def enqueue(self, messages: Sequence[UpdateMessage]) -> None:
        """Send every message (batches of 10, failed entries retried); StoreError if some never went."""
        ...


class Redelivery(Protocol):
    """What the update consumer does with a message it could not process (SQS)."""

    def retry_later(self, receipt_handle: str, delay_seconds: int) -> None:
        """Make the message visible again only after ``delay_seconds`` (growing delays per receive)."""
        ...

    def dead_letter(self, body: str, reason: str, message_id: str) -> None:
        """Put a message that can never succeed on the dead-letter queue at once, with the reason."""
        ...


class BackfillRunStore(Protocol):
    """Progress of back-fill runs, so a retried or continued run resumes instead of starting over."""

    def load_run(self, run_id: str) -> dict[str, Any] | None:
        """``{"mode", "cursor", "scanned", "enqueued", "done"}`` of the run, or None if unknown."""
        ...

    def save_run(self, run_id: str, progress: dict[str, Any], now: float) -> None:
        """Record the run's progress (upsert)."""
        ...


class Continuation(Protocol):
    """Hands a back-fill that ran out of time on to a fresh invocation."""

    def continue_backfill(self, request: dict[str, Any]) -> None:
        """Start a new back-fill invocation with ``request`` as its input (asynchronously)."""
        ...


class Clock(Protocol):
    """Wall-clock time and waiting, injectable so tests control time."""

    def now(self) -> float:
        """Unix time in seconds."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait (production) or advance (tests)."""
        ...
