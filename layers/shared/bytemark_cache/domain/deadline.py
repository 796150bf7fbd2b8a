"""Deadline: the instant by which a call must have answered, so every wait and every I/O is bounded by it.

Pure: a deadline is a number on the caller's clock; whoever holds it asks how much time is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """An absolute instant (seconds on the clock that made it); ``never()`` has no limit."""

    at: float

    @classmethod
    def after(cls, now: float, seconds: float) -> Deadline:
        """The deadline ``seconds`` from ``now`` (a negative budget is already over)."""
        return cls(now + seconds)

    @classmethod
    def never(cls) -> Deadline:
        """A deadline that never comes (tools, tests and batch jobs that have their own limit)."""
        return cls(math.inf)

    def remaining(self, now: float) -> float:
        """Seconds left at ``now`` (0 when over; ``inf`` for ``never()``)."""
        return max(0.0, self.at - now)

    def expired(self, now: float) -> bool:
        """True once ``now`` has reached the deadline."""
        return now >= self.at

    def cap(self, seconds: float, now: float) -> float:
        """``seconds``, or the time left if that is less: the timeout for one step of the call."""
        return min(seconds, self.remaining(now))

    def earlier(self, other: Deadline) -> Deadline:
        """The sooner of two deadlines."""
        return self if self.at <= other.at else other
