"""Backoff with jitter: the one rule for how long to wait before trying again (Bytemark, SQS, redelivery)."""

from __future__ import annotations

import random
from typing import Final

REDELIVERY_BASE_SECONDS: Final = 60
"""An update message that failed for a passing reason is retried a minute later at first..."""

REDELIVERY_CAP_SECONDS: Final = 2 * 3600
"""...then at doubling delays up to two hours (settings REDELIVERY_BASE_SECONDS, REDELIVERY_CAP_SECONDS).
With the queue's maxReceiveCount of 10 a message is delayed after each of its first 10 receives: ceilings of
1+2+4+8+16+32+64+120+120+120 min ≈ 8.1 h; with equal jitter at least half of that, ≈ 4.1 h, about 6.1 h on
average. A message outlives an outage of four hours for sure, and usually of six, before the DLQ."""

SQS_MAX_VISIBILITY_SECONDS: Final = 12 * 3600


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random, floor: float = 0.0) -> float:
    """A jittered exponential delay for retry number ``attempt`` (0 = the first retry).

    The ceiling doubles per attempt from ``base`` up to ``cap``; the delay is uniform between
    ``floor * ceiling`` and the ceiling. ``floor`` 0 is "full jitter" (best at spreading many clients);
    0.5 is "equal jitter", which also guarantees half the ceiling (the redelivery schedule relies on it).
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError("floor must be between 0 and 1")
    ceiling = min(cap, base * (2 ** max(0, attempt)))
    return rng.uniform(floor * ceiling, ceiling)


def redelivery_delay(
    receive_count: int,
    rng: random.Random,
    *,
    base: float = REDELIVERY_BASE_SECONDS,
    cap: float = REDELIVERY_CAP_SECONDS,
) -> int:
    """Seconds before an update message that failed on its ``receive_count``-th receive (from 1) is
    delivered again: doubling from ``base`` to ``cap``, equal jitter."""
    delay = backoff_delay(max(0, receive_count - 1), base=base, cap=cap, rng=rng, floor=0.5)
    return min(SQS_MAX_VISIBILITY_SECONDS, max(1, round(delay)))
