"""Policies (d) and (e): the REAL services (``build_services``) over in-process adapters and one simulated
clock, driven through the simulated day the way the three Lambda functions drive them:

- an open is ``GET /tickets``: ``check_with_ttl`` (``refresh_behind=False`` for (d)), shown through the
  view's ``tickets_body`` (``effective_status`` per element);
- the update queue's consumer does what ``user_updates`` does per message: parse the body, for an activation
  ``mark_activation`` then ``sync(reason)``;
- the schedules call ``BackfillService.scan(mode)``; every enqueued user is synced through the queue.

Exploration variants patch the freshness constants (or the ride-ticket rule) of this process while they run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.daysim_adapters import FastCacheStore, SimQueue, TimedTokens, TruthSource
from bench.daysim_core import EventLoop, Meter, PolicyResult, Recorder, State, in_window, marks
from bench.daysim_riders import T0, T_END
from bench.daysim_truth import Truth
from bytemark_cache.bootstrap import build_services
from bytemark_cache.config import Settings
from bytemark_cache.domain import freshness
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.document import StoredCache
from bytemark_cache.domain.expiry import effective_status
from bytemark_cache.domain.messages import parse_update_message
from bytemark_cache.domain.passes import USING
from bytemark_cache.domain.views import tickets_body
from bytemark_cache.errors import BytemarkCacheError, NoBytemarkAccount, TokenRevoked
from tests.fakes import LOCAL_TEST_ENV, FakeClock, InMemoryBackfillRuns, InMemoryRedelivery

OPEN_BUDGET_SECONDS = 27.5
"""on_demand_check's deadline: API Gateway's 29 s less its safety margin."""
QUEUE_BUDGET_SECONDS = 60.0
NO_WAIT_SOURCES = frozenset({"cache", "refresh_queued"})
"""Answers that did not wait on Bytemark (``shared`` waited on another caller's sync)."""


@dataclass(frozen=True)
class EngineConfig:
    """One run of the real services: the read mode, the schedules, the warm-up, and what to patch."""

    key: str
    name: str
    refresh_behind: bool
    scans: tuple[tuple[str, float, float], ...]
    """(mode, period, offset from the window's 03:00 local) of each scheduled back-fill."""
    warmup: float
    """The run starts this long before the window."""
    initial_spread: float
    """Each cache was last synced at a random time this long before the run starts; with ``active_start``
    instead over one dormant floor, or at the rider's last app event in the day before the start, as a sync
    the rider caused (``active_at``)."""
    active_start: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    constants: Mapping[str, int] = field(default_factory=dict)
    """``bytemark_cache.domain.freshness`` constants to patch (exploration only)."""
    every_pass_riding: bool = False
    """Exploration: the rule before the ride-ticket one, every pass in use counts (riding interval)."""


BEFORE = EngineConfig(
    "d",
    "bundle before this issue",
    refresh_behind=False,
    scans=(("stale", 3600, 0), ("missing", 86400, 900)),
    warmup=2 * 3600,
    initial_spread=3600,
)
NEW = EngineConfig(
    "e",
    "new policy (shipped constants)",
    refresh_behind=True,
    scans=(("due", 300, 0), ("missing", 86400, 900)),
    warmup=12 * 3600,
    initial_spread=0,
    active_start=True,
)


def variants() -> list[EngineConfig]:
    """Exploration variants of (e) on the same riders and events: the constants around the shipped ones."""

    def variant(key: str, name: str, **changes: Any) -> EngineConfig:
        return dataclasses.replace(NEW, key=key, name=name, **changes)

    hour = 3600
    return [
        variant("e1", "ACTIVE_INTERVAL 4 h + DORMANT_FLOOR 24 h (the first constants)",
                constants={"ACTIVE_INTERVAL_SECONDS": 4 * hour, "DORMANT_FLOOR_SECONDS": 24 * hour}),
        variant("e2", "ACTIVE_INTERVAL 8 h + DORMANT_FLOOR 24 h",
                constants={"ACTIVE_INTERVAL_SECONDS": 8 * hour, "DORMANT_FLOOR_SECONDS": 24 * hour}),
        variant("e3", "ACTIVE_INTERVAL 12 h", constants={"ACTIVE_INTERVAL_SECONDS": 12 * hour}),
        variant("e4", "DORMANT_FLOOR 72 h", constants={"DORMANT_FLOOR_SECONDS": 72 * hour}),
        variant("e5", "the rule before: every pass in use is synced every 30 min", every_pass_riding=True),
    ]  # fmt: skip


@contextlib.contextmanager
def patched(config: EngineConfig) -> Iterator[None]:
    """The config's freshness constants (and in-use rule) in place while the run lasts."""
    saved = {name: getattr(freshness, name) for name in config.constants}
    original_rule = freshness.FreshnessPolicy._ride_ticket_in_use
    try:
        for name, value in config.constants.items():
            setattr(freshness, name, value)
        if config.every_pass_riding:

            def in_use(self: freshness.FreshnessPolicy, element: Mapping[str, Any], moment: datetime) -> bool:
                label, zone = self.day_pass_label, self.timezone
                return effective_status(element, moment, day_pass_label=label, tz=zone) == USING

            freshness.FreshnessPolicy._ride_ticket_in_use = in_use  # type: ignore[method-assign]
        yield
    finally:
        for name, value in saved.items():
            setattr(freshness, name, value)
        freshness.FreshnessPolicy._ride_ticket_in_use = original_rule  # type: ignore[method-assign]


def run_engine(truth: Truth, config: EngineConfig, *, seed: int) -> PolicyResult:
    """One policy over the day; the figures cover the window only."""
    with patched(config):
        return _run(truth, config, seed)


def _run(truth: Truth, config: EngineConfig, seed: int) -> PolicyResult:
    result = PolicyResult(config.key, config.name, riders=len(truth.riders))
    meter, recorder = Meter(result), Recorder(truth, result)
    start = T0 - config.warmup
    clock, loop = FakeClock(start), EventLoop()
    rng = random.Random(f"bench-day:{seed}:{config.key}")
    settings = Settings.from_env({**LOCAL_TEST_ENV, **config.env})
    source = TruthSource(truth, clock, meter, result)
    services = build_services(
        settings,
        tokens=TimedTokens(truth.riders, clock),
        source=source,
        cache=FastCacheStore(clock, meter, result),
        queue=SimQueue(loop, clock, f"bench-day:{seed}:{config.key}:queue"),
        redelivery=InMemoryRedelivery(),
        clock=clock,
        runs=InMemoryBackfillRuns(),
    )
    tickets, backfill = services.tickets, services.backfill
    assert backfill is not None
    label, zone = settings.day_pass_label, settings.agency_timezone

    # The caches as the previous days left them (see EngineConfig.initial_spread).
    source.cause = "initial"
    initial = []
    # In a steady state the floor's syncs are spread over one floor period: a spread shorter than the floor
    # would leave the window without the floor syncs it owes.
    spread = freshness.DORMANT_FLOOR_SECONDS if config.active_start else config.initial_spread
    for user_id, rider in truth.riders.items():
        at, reason = start - rng.uniform(0, spread), "backfill"
        if config.active_start:
            recent = [e.t for e in rider.events if start - 86400 <= e.t < start]
            at, reason = (max(recent), "refresh") if recent else (at, reason)
        if rider.has_token(at):
            initial.append((at, user_id, reason))
    for at, user_id, reason in sorted(initial):
        clock.current = at
        tickets.sync(user_id, deadline=Deadline.after(at, QUEUE_BUDGET_SECONDS), reason=reason)  # type: ignore[arg-type]
    for rider in truth.riders.values():
        for event in rider.events:
            if start <= event.t < T_END:
                loop.at(event.t, event.kind, (rider.user_id, event.pass_uuid, event.why))
    for mode, period, offset in config.scans:
        for mark in marks(start, T_END, period, offset):
            loop.at(mark, "scan", mode)

    def shown_by_view(cache: StoredCache, stale: bool, refreshing: bool) -> Callable[[float], State]:
        """What the app shows of ``cache`` at any instant: the API's own body (``tickets_body``)."""

        def at(moment: float) -> State:
            body = tickets_body(
                cache, now=moment, stale=stale, refreshing=refreshing, day_pass_label=label, timezone=zone
            )
            return frozenset(
                (e["pass_uuid"], e["effective_status"])
                for e in [*body["passes"], *body["passes4"]]
                if e["effective_status"] != "EXPIRED"
            )

        return at

    def open_tickets(user_id: int, t: float, why: str) -> None:
        source.cause = "open (inline)"
        try:
            answer = tickets.check_with_ttl(
                user_id, deadline=Deadline.after(t, OPEN_BUDGET_SECONDS), refresh_behind=config.refresh_behind
            )
        except BytemarkCacheError as exc:
            result.count(f"open failed: {type(exc).__name__}", int(in_window(t)))
            return
        result.count(f"open: {answer.source}", int(in_window(t)))
        recorder.open(
            user_id,
            t,
            waited=answer.source not in NO_WAIT_SOURCES,
            shown=shown_by_view(answer.cache, answer.stale, answer.source == "refresh_queued"),
            synced_at=answer.cache.synced_at,
            why=why,
        )

    def deliver(t: float, body: dict[str, Any]) -> None:
        message = parse_update_message(json.dumps(body))
        deadline = Deadline.after(t, QUEUE_BUDGET_SECONDS)
        source.cause = f"queue: {message.reason}"
        try:
            if message.reason == "activation" and message.pass_uuid:
                tickets.mark_activation(message.user_id, message.pass_uuid, deadline=deadline)
            tickets.sync(message.user_id, deadline=deadline, reason=message.reason)
        except (TokenRevoked, NoBytemarkAccount) as exc:
            result.count(f"sync skipped: {type(exc).__name__}", int(in_window(t)))
            return
        result.count(f"syncs: {message.reason}", int(in_window(t)))

    def handle(t: float, kind: str, data: Any) -> None:
        clock.current = t
        if kind == "open":
            open_tickets(data[0], t, data[2])
        elif kind in ("purchase", "activation"):
            user_id, pass_uuid, _ = data
            message = {"user_id": user_id, "reason": kind}
            if kind == "activation":
                message["pass_uuid"] = pass_uuid
            services.queue.enqueue([parse_update_message(json.dumps(message))])  # type: ignore[union-attr]
        elif kind == "deliver":
            deliver(t, data)
        elif kind == "scan":
            scan = backfill.scan(data)
            result.count(f"scan {data}: enqueued", scan.enqueued * int(in_window(t)))

    loop.run(T_END, handle)
    return result
