"""The simulated day's pieces (bench/day.py): seeded riders, the truth model, the staleness comparison, and
the in-process adapters the real services run on there."""

from __future__ import annotations

import copy
import dataclasses
import json

import bson

from bench.daysim_adapters import FastCacheStore, TimedTokens, TruthSource
from bench.daysim_baselines import ElementSizes, shared_key_answers, shown_from
from bench.daysim_core import Meter, PolicyResult, Recorder, marks, stale_age, stale_reasons
from bench.daysim_engine import NEW, patched, variants
from bench.daysim_riders import (
    DAYPASS,
    SINGLE,
    T0,
    T_END,
    Rider,
    SimPass,
    end_of_local_day,
    local_time,
    make_rider,
)
from bench.daysim_truth import Truth, requests_for
from bytemark_cache.bootstrap import build_services
from bytemark_cache.config import Settings
from bytemark_cache.domain import freshness
from bytemark_cache.domain.deadline import Deadline
from tests.fakes import LOCAL_TEST_ENV, FakeClock, InMemoryBackfillRuns, InMemoryUpdateQueue

HOUR = 3600


def _rider(*passes: SimPass, user_id: int = 1) -> Rider:
    return Rider(user_id, "occasional", None, passes=list(passes))


def _single(created: int, first_use: int | None = None, uuid: str = "00000000-aaaa") -> SimPass:
    p = SimPass(uuid, SINGLE, created, "app")
    if first_use is not None:
        p.first_use, p.used_up, p.expiration = first_use, first_use + 1800, first_use + SINGLE.duration  # type: ignore[operator]
        p.moved = p.expiration + 30
    return p


def test_a_rider_is_the_same_for_the_same_seed_and_id_only() -> None:
    first, again = make_rider(7, 123), make_rider(7, 123)
    assert [(e.t, e.kind, e.pass_uuid) for e in first.events] == [
        (e.t, e.kind, e.pass_uuid) for e in again.events
    ]
    assert [p.uuid for p in first.passes] == [p.uuid for p in again.passes]
    other_seed = make_rider(8, 123)
    assert [p.uuid for p in other_seed.passes] != [p.uuid for p in first.passes]


def test_riders_cover_the_segments_and_their_events_are_ordered() -> None:
    riders = [make_rider(7, uid) for uid in range(1, 120)]
    assert {"commuter", "occasional", "dormant"} <= {r.segment for r in riders}
    for rider in riders:
        times = [e.t for e in rider.events]
        assert times == sorted(times)
        assert all(e.pass_uuid for e in rider.events if e.kind in ("purchase", "activation"))


def test_a_single_ride_goes_usable_using_uses_gone_expired_and_moves_to_the_history() -> None:
    p = _single(T0, first_use=T0 + HOUR)
    truth = Truth([_rider(p)], keep_after=T0 - 86400)
    assert p.status_at(T0 - 1) is None
    assert [p.status_at(T0 + HOUR * k) for k in (0.5, 1.1, 1.6, 3)] == [
        "USABLE",
        "USING",
        "USES_GONE",
        "EXPIRED",
    ]
    statuses = []
    for t in (T0 + 10, T0 + HOUR + 10, T0 + HOUR + 1900, (p.expiration or 0) + 10, (p.moved or 0) + 1):
        current, history = truth.lists_at(1, t)
        statuses.append(([b["status"] for b in current], [b["status"] for b in history]))
    assert statuses == [
        (["USABLE"], []),
        (["USING"], []),
        (["USES_GONE"], []),
        (["USES_GONE"], []),  # Bytemark moves it a few seconds after the expiration
        ([], ["EXPIRED"]),
    ]
    assert truth.state_at(1, (p.expiration or 0) + 10) == {(p.uuid, "USES_GONE")}  # as Bytemark lists it
    assert truth.state_at(1, (p.moved or 0) + 1) == frozenset()


def test_a_day_pass_activated_late_expires_at_local_midnight_and_a_refund_removes_a_pass() -> None:
    first_use = local_time(0, 22.5)
    assert end_of_local_day(first_use) == local_time(0, 24) - 1
    day = SimPass("00000000-dddd", DAYPASS, first_use - 600, "app", first_use=first_use)
    day.expiration = end_of_local_day(first_use)
    refunded = SimPass("00000000-rrrr", SINGLE, T0, "web", removed=T0 + HOUR)
    truth = Truth([_rider(day, refunded)], keep_after=T0 - 86400)
    assert truth.state_at(1, local_time(0, 23.9)) == {("00000000-dddd", "USING")}
    assert truth.state_at(1, local_time(1, 0.2)) == frozenset()
    assert truth.lists_at(1, T0 + 2 * HOUR)[0] == []
    body = truth.lists_at(1, first_use + 1)[0][0]
    assert body["expiration"] == "2024-06-19T04:59:59.000Z"


def test_requests_count_every_page_of_both_lists() -> None:
    assert requests_for(0, 0) == 2
    assert requests_for(100, 3) == 2
    assert requests_for(101, 250) == 5


def test_an_answer_is_stale_since_the_first_change_it_misses() -> None:
    old = _single(T0 - 86400, uuid="00000000-0001")
    bought = _single(T0 + HOUR, uuid="00000000-0002")
    truth = Truth([_rider(old, bought)], keep_after=T0 - 2 * 86400)
    cached = truth.lists_at(1, T0)
    shown = shown_from(cached[0] + cached[1])
    t = T0 + HOUR + 40
    assert shown(t) != truth.state_at(1, t)
    assert stale_age(truth, 1, t, shown, synced_at=T0) == 40
    assert stale_reasons(truth, 1, t, shown(t), truth.state_at(1, t)) == {"a new pass not shown"}
    result = PolicyResult("x", "x", riders=1)
    recorder = Recorder(truth, result)
    recorder.open(1, t, waited=False, shown=shown, synced_at=T0, why="trip")
    recorder.open(1, T0 + 60, waited=True, shown=shown, synced_at=T0, why="trip")
    assert (result.opens, result.no_wait, result.stale, result.worst_age) == (2, 1, 1, 40)


def test_the_shared_default_key_serves_other_riders_for_an_hour() -> None:
    opens = [(T0 + 1.0, 1), (T0 + 10.0, 2), (T0 + 20.0, 1), (T0 + HOUR + 5.0, 3), (T0 + HOUR + 6.0, 3)]
    assert shared_key_answers(opens) == (5, 1)


def test_schedules_align_to_the_window() -> None:
    assert marks(T0 - 2 * HOUR, T0 + HOUR, HOUR) == [T0 - 2 * HOUR, T0 - HOUR, T0]
    assert marks(T0, T_END, 86400, 1800) == [T0 + 1800]


def test_node_document_size_is_the_bson_size_of_the_document() -> None:
    truth = Truth([make_rider(7, 5)], keep_after=T0 - 3 * 86400)
    current, history = truth.lists_at(5, T0)
    element = {
        "pass_uuid": "",
        "timestamp": T0,
        "status": "",
        "free_ticket_status": 0,
        "payload_hash": "0" * 32,
    }
    document = {
        "_id": bson.ObjectId(),
        "user_id": 5,
        "timestamp": T0,
        "passes": [{**element, "pass_uuid": b["uuid"], "status": b["status"], "payload": b} for b in current],
        "passes4": [
            {**element, "pass_uuid": b["uuid"], "status": b["status"], "payload": b} for b in history
        ],
        "__v": 0,
    }
    assert ElementSizes().document(current, history) == len(bson.encode(document))


def test_the_real_services_run_on_the_bench_adapters_without_touching_the_truth() -> None:
    rider = make_rider(7, 11)
    while (
        not [p for p in rider.passes if p.first_use and T0 - 86400 < p.first_use < T_END]
        and rider.user_id < 400
    ):
        rider = make_rider(7, rider.user_id + 1)
    truth = Truth([rider], keep_after=T0 - 3 * 86400)
    snapshot = json.dumps(truth.lists_at(rider.user_id, T_END), sort_keys=True)
    clock, result = FakeClock(T0 - 86400), PolicyResult("x", "x", riders=1)
    meter = Meter(result)
    store = FastCacheStore(clock, meter, result)
    services = build_services(
        Settings.from_env(LOCAL_TEST_ENV),
        tokens=TimedTokens(truth.riders, clock),
        source=TruthSource(truth, clock, meter, result),
        cache=store,
        queue=InMemoryUpdateQueue(),
        clock=clock,
        runs=InMemoryBackfillRuns(),
    )
    uid = rider.user_id
    services.tickets.sync(uid, deadline=Deadline.never(), reason="backfill")
    first = store.documents[uid]
    kept = copy.deepcopy(first)
    for t in range(T0 - 86400, T_END, 4 * HOUR):
        clock.current = t
        services.tickets.check_with_ttl(uid, deadline=Deadline.never())
        services.tickets.sync(uid, deadline=Deadline.never(), reason="purchase")
    assert json.dumps(truth.lists_at(uid, T_END), sort_keys=True) == snapshot
    assert first == kept  # loaded documents are never modified in place
    assert store.documents[uid]["sync_revision"] > 1
    clock.current = T_END + 3 * 86400
    assert store.take_due(int(clock.current), 10, int(clock.current) + 900) == [uid]
    assert store.take_due(int(clock.current), 10, int(clock.current) + 900) == []


def test_exploration_patches_are_undone_after_the_run() -> None:
    before = (freshness.ACTIVE_INTERVAL_SECONDS, freshness.FreshnessPolicy._ride_ticket_in_use)
    rule = next(v for v in variants() if v.every_pass_riding)
    constants = next(v for v in variants() if "ACTIVE_INTERVAL_SECONDS" in v.constants)
    combined = dataclasses.replace(rule, constants=constants.constants)
    with patched(combined):
        assert freshness.FreshnessPolicy._ride_ticket_in_use is not before[1]
        patched_interval = constants.constants["ACTIVE_INTERVAL_SECONDS"]
        assert freshness.ACTIVE_INTERVAL_SECONDS == patched_interval != before[0]
    with patched(NEW):
        pass
    assert (freshness.ACTIVE_INTERVAL_SECONDS, freshness.FreshnessPolicy._ride_ticket_in_use) == before
