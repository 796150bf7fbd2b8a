"""What every policy of the simulated day shares: the event loop in simulated time, the meter of Bytemark
requests and MongoDB write bytes, and the recorder that compares each open with Bytemark's truth.

Ticket state: the set of (pass uuid, status) of the passes shown as not expired. An open is *stale* when
that set differs from the truth's (every pass Bytemark holds for the rider that is not expired at that
instant, with its real status). Its *age* is how long the truth had differed from what was shown: the time
since the shown answer was last right (the last instant at which the shown cache, read at that instant,
matched the truth), never further back than the sync that produced the cache.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.daysim_riders import T0, T_END
from bench.daysim_truth import Truth

State = frozenset[tuple[str, str]]
ShownAt = Callable[[float], State]


def in_window(t: float) -> bool:
    """True inside the measured 24 h."""
    return T0 <= t < T_END


@dataclass
class PolicyResult:
    """One policy's figures over the measured 24 h (summed over the processes' riders)."""

    key: str
    name: str
    riders: int = 0
    opens: int = 0
    no_wait: int = 0
    stale: int = 0
    stale_raw: int | None = None
    worst_age: float = 0.0
    requests: int = 0
    requests_by_hour: list[int] = field(default_factory=lambda: [0] * 24)
    write_bytes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, name: str, value: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + value

    def merge(self, other: PolicyResult) -> PolicyResult:
        """The figures of two disjoint sets of riders together."""
        merged = PolicyResult(self.key, self.name)
        for name in ("riders", "opens", "no_wait", "stale", "requests", "write_bytes"):
            setattr(merged, name, getattr(self, name) + getattr(other, name))
        if self.stale_raw is not None or other.stale_raw is not None:
            merged.stale_raw = (self.stale_raw or 0) + (other.stale_raw or 0)
        merged.worst_age = max(self.worst_age, other.worst_age)
        merged.requests_by_hour = [
            a + b for a, b in zip(self.requests_by_hour, other.requests_by_hour, strict=True)
        ]
        for counts in (self.counts, other.counts):
            for name, value in counts.items():
                merged.count(name, value)
        merged.seconds = self.seconds + other.seconds
        return merged


class Meter:
    """Counts, inside the window only, Bytemark requests (per hour) and MongoDB write bytes."""

    def __init__(self, result: PolicyResult) -> None:
        self.result = result

    def requests(self, t: float, count: int) -> None:
        if in_window(t):
            self.result.requests += count
            self.result.requests_by_hour[int((t - T0) // 3600)] += count

    def write(self, t: float, size: int) -> None:
        if in_window(t):
            self.result.write_bytes += size


class Recorder:
    """Records each open in the window: waited or not, and whether what was shown matched the truth."""

    def __init__(self, truth: Truth, result: PolicyResult) -> None:
        self.truth = truth
        self.result = result

    def open(
        self,
        user_id: int,
        t: float,
        *,
        waited: bool,
        shown: ShownAt,
        synced_at: float | None,
        why: str,
        shown_raw: ShownAt | None = None,
    ) -> None:
        if not in_window(t):
            return
        result = self.result
        result.opens += 1
        result.no_wait += not waited
        result.count(f"opens: {why}")
        truth = self.truth.state_at(user_id, t)
        state = shown(t)
        if state != truth:
            result.stale += 1
            result.count(f"stale: {why}")
            for reason in stale_reasons(self.truth, user_id, t, state, truth):
                result.count(f"why stale: {reason}")
            result.worst_age = max(result.worst_age, stale_age(self.truth, user_id, t, shown, synced_at))
        if shown_raw is not None:
            result.stale_raw = (result.stale_raw or 0) + (shown_raw(t) != truth)


def stale_reasons(truth: Truth, user_id: int, t: float, shown: State, real: State) -> set[str]:
    """What differs between the shown and the real ticket state, in words."""
    shown_status, real_status = dict(shown), dict(real)
    reasons = set()
    for uuid in shown_status.keys() | real_status.keys():
        seen, actual = shown_status.get(uuid), real_status.get(uuid)
        if seen == actual:
            continue
        if seen is None:
            reasons.add("a new pass not shown" if actual == "USABLE" else f"a pass {actual} not shown")
        elif actual is None:
            gone = truth.pass_of(user_id, uuid).status_at(t) is None
            reasons.add("a refunded pass still shown" if gone else f"an expired pass shown {seen}")
        elif (seen, actual) == ("USABLE", "USING"):
            reasons.add("an activation not shown")
        elif (seen, actual) == ("USING", "USES_GONE"):
            reasons.add("a finished ride not shown (USING, not USES_GONE)")
        else:
            reasons.add(f"{seen} shown, {actual} at Bytemark")
    return reasons


def stale_age(truth: Truth, user_id: int, t: float, shown: ShownAt, synced_at: float | None) -> float:
    """Seconds since the answer shown at ``t`` was last right (see the module docstring)."""
    since = synced_at if synced_at is not None else t - 7 * 86400
    points = truth.breakpoints(user_id)
    changes = points[bisect.bisect_right(points, since) : bisect.bisect_right(points, t)]
    for point in reversed(changes):
        before = point - 0.5
        if shown(before) == truth.state_at(user_id, before):
            return t - point
    return t - changes[0] if changes else t - since


class EventLoop:
    """Events in simulated time, in order (ties in the order they were scheduled)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, Any]] = []
        self._sequence = itertools.count()

    def at(self, t: float, kind: str, data: Any = None) -> None:
        heapq.heappush(self._heap, (t, next(self._sequence), kind, data))

    def run(self, until: float, handle: Callable[[float, str, Any], None]) -> None:
        """Handle every event before ``until`` (events may schedule more)."""
        while self._heap and self._heap[0][0] < until:
            t, _, kind, data = heapq.heappop(self._heap)
            handle(t, kind, data)


def marks(start: float, end: float, period: float, offset: float = 0.0) -> list[float]:
    """Instants ``T0 + offset + k * period`` (any integer k) in [start, end): schedules on the window."""
    k = -int((T0 + offset - start) // period)
    first = T0 + offset + k * period
    while first < start:
        first += period
    instants = []
    while first < end:
        instants.append(first)
        first += period
    return instants
