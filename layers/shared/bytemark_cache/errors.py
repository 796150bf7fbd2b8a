"""The project's own error types; adapters translate driver exceptions into these (``raise ... from exc``)."""

from __future__ import annotations


class BytemarkCacheError(Exception):
    """Base of every error this package raises on purpose.

    ``transient`` says whether the same request may succeed later (an outage) or never will (bad input, an
    answer that breaks the contract): retries, dead-lettering and answers are decided from it.
    """

    transient: bool = False


class ConfigError(BytemarkCacheError):
    """Configuration is missing or malformed; the message names every problem at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class InvalidInput(BytemarkCacheError):
    """An event, message or argument from outside failed validation."""


class NoBytemarkAccount(BytemarkCacheError):
    """The user has no (or an empty) Bytemark token: nothing is fetched or written."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        super().__init__(f"user {user_id} has no Bytemark account")


class UpstreamError(BytemarkCacheError):
    """Bytemark failed or answered something unusable. ``transient`` errors may be retried later."""

    def __init__(self, message: str, *, transient: bool = True, retry_after: float | None = None) -> None:
        self.transient = transient
        self.retry_after = retry_after
        super().__init__(message)


class DeadlineExceeded(UpstreamError):
    """The call's deadline came before Bytemark had answered completely (a slow or dripping answer)."""

    def __init__(self, message: str = "Bytemark did not answer before the deadline") -> None:
        super().__init__(message, transient=True)


class TokenRevoked(UpstreamError):
    """Bytemark said 50020 / HTTP 401: the user's token expired or was revoked. Never retried."""

    def __init__(self, message: str = "Bytemark token expired or revoked (50020)") -> None:
        super().__init__(message, transient=False)


class StoreError(BytemarkCacheError):
    """MongoDB, MySQL or SQS failed; transient from the caller's point of view."""

    transient = True


class UnstorableDocument(StoreError):
    """MongoDB refused to encode or store a document (the domain's bounds should have caught it first)."""

    transient = False


class ConcurrentModification(StoreError):
    """The cache document changed between read and write (optimistic concurrency lost)."""


class SyncInProgress(BytemarkCacheError):
    """Another sync of this user holds the claim and did not finish within the wait."""

    transient = True


class RateLimited(BytemarkCacheError):
    """The caller asked again too soon; ``retry_after`` seconds until the next attempt is allowed."""

    transient = True

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limited, retry after {retry_after:.0f} s")
