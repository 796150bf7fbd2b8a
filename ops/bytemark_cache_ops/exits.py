"""Errors → exit codes and one-line messages: ONE table, read by one generic lookup.

``ERRORS`` maps an exception type to its exit code and how to say it; ``describe_error`` walks the
exception's type hierarchy and takes the first type in the table (a ``TokenRevoked`` is said as revoked
before the ``UpstreamError`` it also is). Types not in the table are bugs: they keep their traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from bytemark_cache.errors import (
    BytemarkCacheError,
    ConfigError,
    InvalidInput,
    NoBytemarkAccount,
    StoreError,
    SyncInProgress,
    TokenRevoked,
    UpstreamError,
)
from bytemark_cache_ops.render import scrub

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_UPSTREAM: Final = 4
EXIT_CONFIG: Final = 5
EXIT_STORE: Final = 6
EXIT_PROBLEMS: Final = 7
EXIT_INTERRUPTED: Final = 130

EPILOG: Final = """\
exit codes:
  0    ok
  1    other failure (e.g. a sync of that user is already running)
  2    usage error
  3    not found (no cache, no Bytemark account)
  4    Bytemark failed (down, or the user's token expired / was revoked)
  5    configuration error (every problem is listed)
  6    store unavailable (MongoDB, MySQL or SQS)
  7    problems found (doctor, migrate or ensure-indexes: the report says which)
  130  interrupted (an interrupted back-fill or migration names where to resume)

Configuration comes from the environment (MONGODB_URI, MYSQL_*, BYTEMARK_API_URL, UPDATE_QUEUE_URL, ...).
"""


class NotFound(BytemarkCacheError):
    """What the command was asked about does not exist (no cache, no change log)."""


class ProblemsFound(BytemarkCacheError):
    """A check found something that would break the service; the report on stdout says what."""


class Interrupted(BytemarkCacheError):
    """The operator pressed Ctrl-C during a long command; the message says where to resume."""


@dataclass(frozen=True)
class Rule:
    """The exit code of an error type and its message lines (usually one)."""

    code: int
    lines: Callable[[BaseException], list[str]]


def _as_said(exc: BaseException) -> list[str]:
    return [scrub(str(exc))]


def _prefixed(prefix: str, suffix: str = "") -> Callable[[BaseException], list[str]]:
    return lambda exc: [f"{prefix}{scrub(str(exc))}{suffix}"]


def _no_account(exc: BaseException) -> list[str]:
    user = getattr(exc, "user_id", "?")
    return [f"user {user} has no Bytemark account (no token in bytemark_tokens); nothing was written"]


def _revoked(_exc: BaseException) -> list[str]:
    return [
        "Bytemark rejected the user's token: expired or revoked (50020); the user must sign in to "
        "Bytemark again; the cache was left unchanged"
    ]


def _upstream(exc: BaseException) -> list[str]:
    retry_after = getattr(exc, "retry_after", None)
    retry = f", retry after {retry_after:g} s" if retry_after is not None else ""
    kind = f"transient{retry}" if getattr(exc, "transient", False) else "not transient"
    return [f"Bytemark is unavailable: {scrub(str(exc))} ({kind}); the cache was left unchanged"]


def _config(exc: BaseException) -> list[str]:
    problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
    return [f"configuration error: {scrub(problem)}" for problem in problems]


ERRORS: Final[dict[type[BaseException], Rule]] = {
    NoBytemarkAccount: Rule(EXIT_NOT_FOUND, _no_account),
    NotFound: Rule(EXIT_NOT_FOUND, _as_said),
    TokenRevoked: Rule(EXIT_UPSTREAM, _revoked),
    UpstreamError: Rule(EXIT_UPSTREAM, _upstream),
    ConfigError: Rule(EXIT_CONFIG, _config),
    StoreError: Rule(EXIT_STORE, _prefixed("store unavailable: ")),
    InvalidInput: Rule(EXIT_USAGE, _prefixed("invalid input: ")),
    SyncInProgress: Rule(EXIT_FAILURE, _prefixed("", "; try again in a few seconds")),
    ProblemsFound: Rule(EXIT_PROBLEMS, _as_said),
    Interrupted: Rule(EXIT_INTERRUPTED, _as_said),
    KeyboardInterrupt: Rule(EXIT_INTERRUPTED, lambda _exc: ["interrupted"]),
    BytemarkCacheError: Rule(EXIT_FAILURE, _as_said),
}
"""Every error the CLI answers itself: exit code and message. The most specific type wins."""


def rule_for(exc: BaseException) -> Rule | None:
    """The table's rule for ``exc`` (its most specific type in the table), or None: not ours to answer."""
    for kind in type(exc).__mro__:
        rule = ERRORS.get(kind)
        if rule is not None:
            return rule
    return None


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The message (its lines joined by ``; ``) and exit code of an error the table knows."""
    rule = rule_for(exc)
    if rule is None:
        raise TypeError(f"{type(exc).__name__} is not an error the CLI answers")
    return "; ".join(rule.lines(exc)), rule.code
