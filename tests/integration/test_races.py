"""Races across OS processes on a handful of riders while Bytemark's passes change under them.

``test_processes_race_on_a_handful_of_riders``: WORKERS spawned processes, each with its own
``build_services`` (its own MongoDB client, MySQL connection and HTTP session), do hundreds of operations on
USERS riders: app opens (check_with_ttl), pull-to-refresh (forced_check), checks, syncs, and the SQS-style
messages (purchase, activation with ``mark_activation``, refund) of the changes the parent makes at the
simulator meanwhile, with Bytemark answering late now and then. Afterwards, for every rider:

- one more sync leaves the cache equal to Bytemark's lists (each pass once, payloads as served);
- the change log is exact: replayed from nothing it gives the cache, every entry follows from the one
  before it for its pass (none duplicated, none lost, no two writes of one revision), and every hash it
  names is a version of a pass Bytemark really served;
- no caller ever got anything but an answer or a transient "try again" (SyncInProgress, RateLimited,
  ConcurrentModification).

``test_a_purchase_message_never_shares_an_older_fetch``: the single-flight path deterministically: a sync
that fetched the current list before a purchase must not be taken as the purchase message's sync.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

from bytemark_cache.adapters.clock import SystemClock
from bytemark_cache.adapters.mongo_indexes import ensure_indexes
from bytemark_cache.bootstrap import build_services, indexed_collections
from bytemark_cache.config import Settings
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.hashing import payload_hash
from bytemark_simulator import AdminClient, SimulatorServer
from tests.integration.conftest import MongoDatabase, SeedToken
from tests.reliability import race_worker
from tests.reliability.rig import (
    assert_cache_matches,
    assert_log_replays,
    call_updates,
    purchase_body,
    snapshot,
    sqs_record,
)

pytestmark = pytest.mark.integration

USERS = [8001, 8002, 8003, 8004]
WORKERS = 4
OPERATIONS = 300
"""The race goes on until the workers have done this many operations, or for RACE_SECONDS on a machine too
busy for that; it must reach MIN_OPERATIONS. The parent changes Bytemark about every CHANGE_INTERVAL seconds
meanwhile, never more than one message per worker ahead of them."""
MIN_OPERATIONS = 200
CHANGE_INTERVAL = 0.05
RACE_SECONDS = 45.0


@pytest.fixture
def race_env(
    integration_env: dict[str, str],
    collection_names: tuple[str, str, str],
    mongo_db: MongoDatabase,
    seed_token: SeedToken,
    simulator: SimulatorServer,
) -> dict[str, str]:
    cache, log, claims = collection_names
    env = {
        **integration_env,
        "CACHE_COLLECTION": cache,
        "LOG_COLLECTION": log,
        "CLAIM_COLLECTION": claims,
        "BACKFILL_RUN_COLLECTION": f"runs_{cache}",
        "UPDATE_QUEUE_URL": "",
        "CACHE_TTL_SECONDS": "3",
        "FORCED_SYNC_INTERVAL_SECONDS": "0.5",
        "BYTEMARK_PAGE_SIZE": "3",
        "PASSES4_LIMIT": "1000",
    }
    ensure_indexes(mongo_db, indexed_collections(Settings.from_env(env)))
    for user_id in USERS:
        seed_token(user_id, f"tok-race-{user_id}")
        simulator.admin.seed_user(user_id, f"tok-race-{user_id}", current=3, expired=1, seed=user_id)
    return env


def record_versions(admin: AdminClient, user_id: int, versions: dict[int, set[str]]) -> dict[str, Any]:
    """Bytemark's lists now; every pass version seen is remembered by its payload hash."""
    served = admin.passes(user_id)
    versions.setdefault(user_id, set()).update(
        payload_hash(p) for p in (*served["current"], *served["expired"])
    )
    return served


def change_bytemark(
    admin: AdminClient, rng: random.Random, number: int, tasks: Any, versions: dict[int, set[str]]
) -> str:
    """One change at Bytemark for a random rider (and the message the portal sends for it, if any)."""
    user_id = rng.choice(USERS)
    current = admin.passes(user_id)["current"]
    usable = [p for p in current if p["status"] == "USABLE"]
    kind = rng.choice(("purchase", "purchase", "activate", "expire", "refund", "edit"))
    if kind == "activate" and usable:
        chosen = rng.choice(usable)
        admin.activate(user_id, chosen["uuid"])
        tasks.put((user_id, "activation", chosen["uuid"]))
    elif kind == "expire" and current:
        admin.expire(user_id, rng.choice(current)["uuid"])
    elif kind == "refund" and current:
        admin.remove_pass(user_id, rng.choice(current)["uuid"])
        tasks.put((user_id, "manual", None))
    elif kind == "edit" and current:
        edited = {**rng.choice(current), "rider_note": f"edit {number}"}
        admin.put_pass(user_id, edited, "current")
    else:
        kind = "purchase"
        admin.purchase(user_id, rng.choice(("Local Single Ride", "Local Day Pass")))
        tasks.put((user_id, "purchase", None))
    record_versions(admin, user_id, versions)
    return kind


def collect_reports(results: Any, workers: list[Any], timeout: float = 120.0) -> list[tuple[str, Any]]:
    """Every worker's final report; a worker that died or hangs fails the test with what is known."""
    reports: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(reports) < len(workers):
        try:
            reports.append(results.get(timeout=0.5))
        except queue.Empty:
            states = [(worker.pid, worker.exitcode) for worker in workers]
            assert time.monotonic() < deadline, f"{len(reports)} reports; workers (pid, exit code): {states}"
            crashed = [state for state in states if state[1] not in (None, 0)]
            assert crashed == [], f"a worker died: {states}"
    return reports


def test_processes_race_on_a_handful_of_riders(
    race_env: dict[str, str], mongo_db: MongoDatabase, simulator: SimulatorServer
) -> None:
    admin = simulator.admin
    settings = Settings.from_env(race_env)
    services = build_services(settings, check_indexes=False)
    versions: dict[int, set[str]] = {}
    for user_id in USERS:
        record_versions(admin, user_id, versions)
        assert services.tickets.sync(user_id, deadline=Deadline.after(time.time(), 10)).source == "built"

    context = multiprocessing.get_context("spawn")
    tasks = context.Queue()
    results = context.Queue()
    done = context.Value("i", 0)
    workers = [
        context.Process(
            target=race_worker.run, args=(race_env, USERS, tasks, results, done, seed), daemon=True
        )
        for seed in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            assert results.get(timeout=60)[0] == "ready"
        # Bytemark answers late now and then: wider windows for the races.
        admin.set_fault("latency", rate=0.3, latency_ms=60)
        rng = random.Random(20)
        kinds: Counter[str] = Counter()
        started = time.monotonic()
        with done.get_lock():
            done.value = 0
        while done.value < OPERATIONS and time.monotonic() - started < RACE_SECONDS:
            if tasks.qsize() < WORKERS:
                kinds[change_bytemark(admin, rng, kinds.total(), tasks, versions)] += 1
            time.sleep(CHANGE_INTERVAL)
        for _ in workers:
            tasks.put(race_worker.STOP)
        reports = collect_reports(results, workers)
        elapsed = time.monotonic() - started
        for worker in workers:
            worker.join(30)
    finally:
        admin.clear_faults()
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    # Messages a worker put back after the others stopped: delivered once more, as SQS would.
    leftover = 0
    while True:
        try:
            task = tasks.get(timeout=0.2)
        except queue.Empty:
            break
        if task == race_worker.STOP:
            continue
        user_id, reason, pass_uuid = task
        extra = {} if pass_uuid is None else {"pass_uuid": pass_uuid}
        response = call_updates(services, {"Records": [sqs_record(purchase_body(user_id, reason, **extra))]})
        assert response["batchItemFailures"] == []
        leftover += 1

    counts: Counter[str] = Counter()
    escaped: list[str] = []
    for kind, report in reports:
        assert kind == "done"
        counts.update(report["counts"])
        escaped.extend(report["escaped"])
    operations = sum(counts.values())
    print(
        f"\n{WORKERS} processes, {operations} operations in {elapsed:.1f}s on {len(USERS)} riders while "
        f"Bytemark changed {kinds.total()} times ({dict(kinds)}); outcomes {dict(sorted(counts.items()))}; "
        f"{leftover} redelivered at the end"
    )
    assert escaped == [], escaped[0]
    assert operations >= MIN_OPERATIONS

    matched_before_final_sync = 0
    for user_id in USERS:
        served = admin.passes(user_id)
        before = snapshot(mongo_db, settings, user_id, time.time())
        try:
            assert_cache_matches(before.document, served)
            matched_before_final_sync += 1
        except AssertionError:
            pass
        result = services.tickets.sync(user_id, deadline=Deadline.after(time.time(), 10))
        assert result.source == "synced"
        after = snapshot(mongo_db, settings, user_id, time.time())
        assert_cache_matches(after.document, served)
        assert_log_replays(after.document, after.log)
        named = {entry["payload_hash"] for entry in after.log} | {
            entry["previous_hash"] for entry in after.log
        }
        assert named - {None} <= versions[user_id], "the log names a pass version Bytemark never served"
        assert after.live_claims == []
    print(f"caches already equal to Bytemark before the final sync: {matched_before_final_sync}/{len(USERS)}")


def test_a_purchase_message_never_shares_an_older_fetch(
    race_env: dict[str, str], mongo_db: MongoDatabase, simulator: SimulatorServer
) -> None:
    admin = simulator.admin
    user_id = USERS[0]
    settings = Settings.from_env(race_env)
    first = build_services(settings, clock=SystemClock(), check_indexes=False)
    second = build_services(settings, clock=SystemClock(), check_indexes=False)
    assert first.tickets.sync(user_id, deadline=Deadline.after(time.time(), 10)).source == "built"
    # The rider opens the app: its sync reads the current list, then waits on the history list...
    admin.set_fault("latency", user_id=user_id, endpoint="v4", count=1, latency_ms=1500)
    asked_before = admin.request_counts()["by_endpoint"]["v4"]
    opened: list[str] = []
    opening = threading.Thread(
        target=lambda: opened.append(
            first.tickets.check(user_id, deadline=Deadline.after(time.time(), 10)).source
        )
    )
    opening.start()
    deadline = time.monotonic() + 10
    while admin.request_counts()["by_endpoint"]["v4"] == asked_before:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # ... while the rider buys a pass, and the portal's purchase message is processed.
    bought = admin.purchase(user_id, "Local Single Ride")
    response = call_updates(second, {"Records": [sqs_record(purchase_body(user_id))]})
    opening.join(20)

    assert opened == ["synced"]
    assert response["batchItemFailures"] == []  # acknowledged: it will never come back
    document = snapshot(mongo_db, settings, user_id, time.time()).document
    assert document is not None
    assert bought["uuid"] in {element["pass_uuid"] for element in document["passes"]}
