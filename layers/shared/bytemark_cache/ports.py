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

    def fetch_passes(self, token: str) -> FetchedPasses:
        """Both lists, every page. Raises TokenRevoked, or UpstreamError for anything else that failed."""
        ...


class CacheStore(Protocol):
    """The per-user cache documents, the change log and the single-flight leases (MongoDB)."""

    def load(self, user_id: int) -> CacheDocument | None:
        """The user's cache document, or None."""
        ...

    def apply(self, plan: SyncPlan) -> None:
        """Write what the plan changes (only that), append its log entries, set the document timestamp.

        Creates the document when ``plan.creates``. Raises ConcurrentModification when the document is
        not at ``plan.base_revision`` any more (or already exists for a create): nothing is written then.
        """
        ...

    def cache_timestamps(self, user_ids: Sequence[int]) -> dict[int, int]:
        """``user_id -> document timestamp`` for those of ``user_ids`` that have a cache document."""
        ...

    def mark_pass_status(self, user_id: int, pass_uuid: str, status: str) -> bool:
        """Set one element's wrapper ``status`` locally (payload and hash untouched); False if not found."""
        ...

    def read_log(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        """The user's newest change-log entries, newest first."""
        ...

    def throttle(self, key: str, now: float, interval_seconds: float) -> float:
        """Claim the slot ``key`` for ``interval_seconds``: 0 when claimed, else seconds until it frees up."""
        ...

    def acquire_lease(self, user_id: int, owner: str, now: float, ttl_seconds: float) -> bool:
        """Take the user's sync lease if it is free or expired; False when someone else holds it."""
        ...

    def release_lease(self, user_id: int, owner: str) -> None:
        """Give the lease back (only if ``owner`` still holds it)."""
        ...


class UpdateQueue(Protocol):
    """The update queue the purchase flow and the back-fill feed (SQS)."""

    def enqueue(self, messages: Sequence[UpdateMessage]) -> None:
        """Send every message (batches of 10, failed entries retried); StoreError if some never went."""
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
