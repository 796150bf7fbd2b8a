"""The policies the bundle is compared with, modelled directly on the truth (no engine code):

- (a) the Node service: an open is answered from the cache at once (a first open without one waits for a
  build) and a sync runs right after it; every user with a token is also refreshed every hour. No queue.
- (a') the same, but the open waits for its sync (the other reading of "sync on every open").
- (b) no cache: every open fetches both lists from Bytemark and waits.
- (c) a generic HTTP cache (requests-cache's behaviour, ``expire_after=3600``) keyed per rider: an open
  within an hour of the rider's last fetch gets that answer, else it fetches and waits. Purchases and
  activations do not reach it.

What they show: the cached Bytemark passes with each pass's status re-derived by the app's clock rule
(``effective_status``: past its expiration → EXPIRED; USABLE with a first use → USING), the same function
the bundle's view uses, so only what the clock cannot know makes them stale. ``stale_raw`` also counts the
reading where the app shows Bytemark's ``status`` field as cached.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import bson

from bench.daysim_core import EventLoop, Meter, PolicyResult, Recorder, ShownAt, in_window, marks
from bench.daysim_riders import T0, T_END, TIMEZONE, Rider
from bench.daysim_truth import Truth, requests_for, response_bytes
from bytemark_cache.domain.expiry import DEFAULT_DAY_PASS_LABEL, effective_status

DAY_PASS_LABEL = DEFAULT_DAY_PASS_LABEL
"""The apps of (a)-(c) apply the service's default day-pass rule, as (d) and (e) do."""
NODE_REFRESH_SPREAD_SECONDS = 300
"""The Node service's hourly refresh walks every user; its syncs spread over the first minutes of the hour."""
HTTP_CACHE_TTL_SECONDS = 3600
Body = dict[str, Any]


def shown_from(bodies: list[Body]) -> ShownAt:
    """What an app shows from cached Bytemark passes, read at ``t`` (clock rule applied)."""

    def at(t: float) -> frozenset[tuple[str, str]]:
        moment = datetime.fromtimestamp(t, UTC)
        shown = set()
        for body in bodies:
            status = effective_status(body, moment, day_pass_label=DAY_PASS_LABEL, tz=TIMEZONE)
            if status != "EXPIRED":
                shown.add((body["uuid"], status))
        return frozenset(shown)

    return at


def raw_from(bodies: list[Body]) -> ShownAt:
    """The same with Bytemark's ``status`` field as cached (no clock rule)."""
    shown = frozenset((body["uuid"], body["status"]) for body in bodies if body["status"] != "EXPIRED")
    return lambda _t: shown


class ElementSizes:
    """BSON sizes of cache elements wrapping each pass body (memoised: bodies never change)."""

    def __init__(self) -> None:
        self._sizes: dict[int, int] = {}

    def element(self, body: Body) -> int:
        size = self._sizes.get(id(body))
        if size is None:
            element = {
                "pass_uuid": body["uuid"],
                "timestamp": T0,
                "status": body["status"],
                "free_ticket_status": 0,
                "payload": body,
                "payload_hash": "0" * 32,
            }
            size = self._sizes[id(body)] = len(bson.encode(element))
        return size

    def array(self, bodies: list[Body]) -> int:
        return 5 + sum(2 + len(str(index)) + self.element(body) for index, body in enumerate(bodies))

    def document(self, current: list[Body], history: list[Body]) -> int:
        """A Node cache document: ``_id``, ``user_id``, ``timestamp``, ``passes``, ``passes4``, ``__v``."""
        fields = (1 + 4 + 12) + (1 + 8 + 4) + (1 + 10 + 4) + (1 + 4 + 4)
        return 5 + fields + (1 + 7) + self.array(current) + (1 + 8) + self.array(history)


def _open_events(loop: EventLoop, riders: Iterable[Rider], start: float) -> None:
    for rider in riders:
        for event in rider.events:
            if event.kind == "open" and start <= event.t < T_END:
                loop.at(event.t, "open", (rider.user_id, event.why))


def run_node(truth: Truth, *, wait_for_sync: bool, seed: int) -> PolicyResult:
    """(a), or (a') with ``wait_for_sync``."""
    key = "a'" if wait_for_sync else "a"
    name = "Node: open waits for its sync" if wait_for_sync else "Node: cache at once, sync after open"
    result = PolicyResult(key, name, riders=len(truth.riders))
    meter, recorder, sizes = Meter(result), Recorder(truth, result), ElementSizes()
    rng = random.Random(f"bench-day:{seed}:node")
    start = T0 - 2 * 3600
    cache: dict[int, tuple[float, list[Body]]] = {}

    def sync(user_id: int, t: float) -> list[Body]:
        current, history = truth.lists_at(user_id, t)
        meter.requests(t, requests_for(len(current), len(history)))
        meter.write(t, sizes.document(current, history))
        result.count("syncs", int(in_window(t)))
        bodies = current + history
        cache[user_id] = (t, bodies)
        return bodies

    loop = EventLoop()
    for user_id, rider in truth.riders.items():
        initial = start - rng.uniform(0, 3600)
        if rider.has_token(initial):
            sync(user_id, initial)
    _open_events(loop, truth.riders.values(), start)
    for mark in marks(start, T_END, 3600):
        for user_id in truth.riders:
            spread = ((user_id * 7919) % 10007) / 10007 * NODE_REFRESH_SPREAD_SECONDS
            loop.at(mark + spread, "refresh", (user_id, ""))

    def handle(t: float, kind: str, data: tuple[int, str]) -> None:
        user_id, why = data
        rider = truth.riders[user_id]
        if kind in ("refresh", "sync"):
            if rider.has_token(t):
                sync(user_id, t)
            return
        cached = cache.get(user_id)
        if cached is None or wait_for_sync:
            bodies = sync(user_id, t)
            recorder.open(user_id, t, waited=True, shown=shown_from(bodies), synced_at=t, why=why)
            return
        synced_at, bodies = cached
        recorder.open(
            user_id,
            t,
            waited=False,
            shown=shown_from(bodies),
            synced_at=synced_at,
            why=why,
            shown_raw=raw_from(bodies),
        )
        loop.at(t + 0.5, "sync", (user_id, ""))

    loop.run(T_END, handle)
    return result


def run_no_cache(truth: Truth) -> PolicyResult:
    """(b): every open asks Bytemark for both lists and waits."""
    result = PolicyResult("b", "no cache", riders=len(truth.riders))
    meter, recorder = Meter(result), Recorder(truth, result)
    loop = EventLoop()
    _open_events(loop, truth.riders.values(), T0)

    def handle(t: float, _kind: str, data: tuple[int, str]) -> None:
        user_id, why = data
        current, history = truth.lists_at(user_id, t)
        meter.requests(t, requests_for(len(current), len(history)))
        recorder.open(user_id, t, waited=True, shown=shown_from(current + history), synced_at=t, why=why)

    loop.run(T_END, handle)
    return result


def run_http_cache(truth: Truth) -> PolicyResult:
    """(c): requests-cache with a one-hour expiry and a per-rider key; it starts empty an hour before."""
    result = PolicyResult("c", "HTTP cache, 1 h TTL per rider", riders=len(truth.riders))
    meter, recorder = Meter(result), Recorder(truth, result)
    memo: dict[int, int] = {}
    entries: dict[int, tuple[float, list[Body]]] = {}
    loop = EventLoop()
    _open_events(loop, truth.riders.values(), T0 - HTTP_CACHE_TTL_SECONDS)

    def handle(t: float, _kind: str, data: tuple[int, str]) -> None:
        user_id, why = data
        entry = entries.get(user_id)
        if entry is not None and t - entry[0] < HTTP_CACHE_TTL_SECONDS:
            fetched_at, bodies = entry
            shown, raw = shown_from(bodies), raw_from(bodies)
            recorder.open(user_id, t, waited=False, shown=shown, synced_at=fetched_at, why=why, shown_raw=raw)
            return
        current, history = truth.lists_at(user_id, t)
        meter.requests(t, requests_for(len(current), len(history)))
        meter.write(t, response_bytes(current, memo) + response_bytes(history, memo))
        entries[user_id] = (t, current + history)
        recorder.open(user_id, t, waited=True, shown=shown_from(current + history), synced_at=t, why=why)

    loop.run(T_END, handle)
    return result


def shared_key_answers(opens: list[tuple[float, int]]) -> tuple[int, int]:
    """(opens in the window, of them answered with another rider's tickets) under requests-cache's default
    key, which leaves out the Authorization header: every rider's request is the same URL, so one entry
    (per list) serves everyone for an hour. ``opens``: (t, user_id) of every open from an hour before."""
    entry: tuple[float, int] | None = None
    total = foreign = 0
    for t, user_id in sorted(opens):
        counted = T0 <= t < T_END
        if entry is not None and t - entry[0] < HTTP_CACHE_TTL_SECONDS:
            total += counted
            foreign += counted and entry[1] != user_id
            continue
        entry = (t, user_id)
        total += counted
    return total, foreign
