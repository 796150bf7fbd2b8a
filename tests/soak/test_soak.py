"""The soak: minutes of rider traffic on the real services with 5 % of Bytemark's answers faulty.

One process drives the three handlers in-process on one ``build_services`` (a warm container of each):
purchases and activations at the simulator with their SQS messages (a real moto queue, pumped through
user_updates as Lambda's event source would), app opens (GET /tickets: served, synced, or refreshed
behind the rider through the queue), pulls to refresh (POST /tickets/sync), refunds and expiries, the
``due`` back-fill every 15 s and a ``prune`` every minute. The simulator (its own process) fails
SOAK_FAULT_RATE of its answers: 503s, resets, cut bodies, timeouts, slow drips, latency (transient) and
malformed or unstorable pages (permanent).

Asserted at the end:
- memory flat: what was allocated after the warm-up and is still alive stays under MEMORY_GROWTH_BYTES
  (tracemalloc), and RSS under RSS_GROWTH_BYTES more than at the warm-up;
- no leak: threads and open sockets / file descriptors are back to their warm-up counts (+ a small slack);
- nothing lost: every purchase message's pass is in its rider's cache, unless the message is in the DLQ
  for a permanent reason (checked before any catch-up); no exception escaped a handler, no 500;
- once the faults stop and one message per rider went through, every cache equals Bytemark's lists and
  its change log replays to it.

The figures are printed (``-s``); docs/reliability.md has the last run's.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bytemark_cache.adapters.mongo_indexes import ensure_indexes
from bytemark_cache.bootstrap import build_services, indexed_collections
from bytemark_cache.config import Settings
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.errors import BytemarkCacheError
from bytemark_simulator import AdminClient
from tests.reliability.rig import (
    SqsPump,
    api_event,
    assert_cache_matches,
    assert_log_replays,
    call_api,
    call_backfill,
    drain,
    queue_counts,
    snapshot,
)

REPORT = Path(__file__).resolve().parents[2] / ".local-data" / "reliability" / "soak.json"
"""The last run's figures (also printed)."""
MEMORY_GROWTH_BYTES = 8 * 2**20
RSS_GROWTH_BYTES = 64 * 2**20
RIDER_THREADS = 3
"""Threads calling the services directly (app opens and pulls) beside the handlers' own traffic."""
MIN_OPERATIONS_PER_SECOND = 2
THREAD_SLACK = 2
SOCKET_SLACK = 8
WARM_UP_SHARE = 0.2
"""The first fifth of the run (at least 20 s) fills pools and caches; growth is measured from its end."""

FAULT_SHARES = (
    ("http_503", None, 0.25, {}),
    ("reset", None, 0.15, {}),
    ("truncated_body", None, 0.15, {}),
    ("timeout", None, 0.05, {"latency_ms": 2500}),
    ("slow_drip", None, 0.05, {"drip_interval_ms": 200}),
    ("latency", None, 0.10, {"latency_ms": 300}),
    ("malformed_json", None, 0.15, {}),
    ("unstorable_pass", "dollar_key", 0.10, {}),
)
"""(kind, variant, share of the faults, parameters): transient ones first, then the permanent ones."""


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def resources() -> dict[str, int]:
    fds = os.listdir("/proc/self/fd")
    sockets = 0
    for fd in fds:
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return {"threads": threading.active_count(), "fds": len(fds), "sockets": sockets}


class NoLogCapture:
    """pytest keeps every captured log record of a test in memory: not during a soak that measures memory."""

    def __enter__(self) -> NoLogCapture:
        root = logging.getLogger()
        self.saved = list(root.handlers)
        root.handlers = [h for h in root.handlers if "LogCaptureHandler" not in type(h).__name__]
        return self

    def __exit__(self, *_exc: object) -> None:
        logging.getLogger().handlers = self.saved


def test_soak(
    knobs: Any,
    simulator_process: tuple[str, AdminClient],
    soak_resources: dict[str, Any],
    local_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, local_env[name])
    url, admin = simulator_process
    name, sqs, queues = soak_resources["name"], soak_resources["sqs"], soak_resources["queues"]
    database = soak_resources["mongo"][name]
    settings = Settings.from_env(
        {
            **local_env,
            "MONGODB_DATABASE": name,
            "MYSQL_DATABASE": name,
            "BYTEMARK_API_URL": url,
            "BYTEMARK_TIMEOUT_SECONDS": "1",
            "BYTEMARK_MAX_RETRIES": "1",
            "BYTEMARK_PAGE_SIZE": "10",
            "UPDATE_QUEUE_URL": queues.url,
            "UPDATE_DLQ_URL": queues.dlq_url,
            "REDELIVERY_BASE_SECONDS": "1",
            "REDELIVERY_CAP_SECONDS": "4",
            "CACHE_TTL_SECONDS": "30",
            "FORCED_SYNC_INTERVAL_SECONDS": "1",
            "PASSES4_LIMIT": "1000",
        }
    )
    ensure_indexes(database, indexed_collections(settings))
    users = list(range(20_001, 20_001 + knobs.users))
    with soak_resources["mysql"].cursor() as cursor:
        cursor.executemany(
            "INSERT INTO bytemark_tokens (user_id, token, status) VALUES (%s, %s, 'ACTIVE')",
            [(user_id, f"tok-soak-{user_id}") for user_id in users],
        )
    for user_id in users:
        admin.seed_user(user_id, f"tok-soak-{user_id}", current=2, expired=1, seed=user_id)
    services = build_services(settings, check_indexes=False)
    pump = SqsPump(sqs, queues, services)
    rng = random.Random(knobs.seed)
    counts: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    escaped: list[str] = []
    purchases: dict[int, tuple[int, str]] = {}  # soak id → (user, pass uuid)
    refunded: set[str] = set()
    soak_ids = iter(range(1, 10**9))

    def send(user_id: int, reason: str, pass_uuid: str | None = None) -> int:
        soak_id = next(soak_ids)
        body: dict[str, Any] = {"user_id": user_id, "reason": reason, "soak_id": soak_id}
        if pass_uuid is not None:
            body["pass_uuid"] = pass_uuid
        sqs.send_message(QueueUrl=queues.url, MessageBody=json.dumps(body))
        return soak_id

    def api(method: str, path: str, user_id: int) -> None:
        try:
            response = call_api(services, api_event(method, path, user=str(user_id)), 15_000)
        except Exception as exc:
            escaped.append(f"{method} {path}: {exc!r}")
            return
        statuses[response["statusCode"]] += 1

    for kind, variant, share, params in FAULT_SHARES:
        admin.set_fault(kind, variant=variant, rate=share * knobs.fault_rate, **params)

    stop = threading.Event()
    rider_outcomes: Counter[str] = Counter()

    def rider(seed: int) -> None:
        """A rider thread on the services themselves (the handlers serialise; the services must not)."""
        own = random.Random(seed)
        while not stop.is_set():
            user_id = own.choice(users)
            deadline = Deadline.after(time.time(), 10)
            try:
                if own.random() < 0.8:
                    result = services.tickets.check_with_ttl(user_id, deadline=deadline)
                else:
                    result = services.tickets.forced_check(user_id, deadline=deadline, min_interval_seconds=1)
                rider_outcomes[result.source] += 1
            except BytemarkCacheError as exc:
                rider_outcomes[type(exc).__name__] += 1
            except Exception as exc:
                escaped.append(f"rider: {exc!r}")

    def pumping() -> None:
        while not stop.is_set():
            if pump.pump() == 0:
                stop.wait(0.05)

    drivers = [threading.Thread(target=pumping, name="soak-pump")]
    drivers += [
        threading.Thread(target=rider, args=(seed,), name=f"soak-rider-{seed}")
        for seed in range(RIDER_THREADS)
    ]

    started = time.monotonic()
    end = started + knobs.seconds
    warm_at = started + max(20.0, WARM_UP_SHARE * knobs.seconds)
    next_backfill, next_prune = started + 15, started + 60
    warm: dict[str, int] | None = None
    rss_warm = 0
    with NoLogCapture():
        for driver in drivers:
            driver.start()
        try:
            while time.monotonic() < end:
                user_id = rng.choice(users)
                roll = rng.random()
                if roll < 0.35:
                    bought = admin.purchase(user_id, rng.choice(("Local Single Ride", "Local Day Pass")))
                    purchases[send(user_id, "purchase")] = (user_id, bought["uuid"])
                    counts["purchase"] += 1
                elif roll < 0.45:
                    usable = [p for p in admin.passes(user_id)["current"] if p["status"] == "USABLE"]
                    if usable:
                        chosen = rng.choice(usable)
                        admin.activate(user_id, chosen["uuid"])
                        send(user_id, "activation", chosen["uuid"])
                        counts["activation"] += 1
                elif roll < 0.50:
                    current = admin.passes(user_id)["current"]
                    if current:
                        admin.expire(user_id, rng.choice(current)["uuid"])
                        counts["expiry"] += 1
                elif roll < 0.53:
                    current = admin.passes(user_id)["current"]
                    if current:
                        refund = rng.choice(current)["uuid"]
                        admin.remove_pass(user_id, refund)
                        refunded.add(refund)
                        send(user_id, "manual")
                        counts["refund"] += 1
                elif roll < 0.88:
                    api("GET", "/tickets", user_id)
                    counts["open"] += 1
                else:
                    api("POST", "/tickets/sync", user_id)
                    counts["pull_to_refresh"] += 1
                now = time.monotonic()
                if now >= next_backfill:
                    summary = call_backfill(services, {"mode": "due"})
                    counts["backfill_due"] += 1
                    counts["backfill_enqueued"] += int(summary.get("enqueued", 0))
                    next_backfill = now + 15
                if now >= next_prune:
                    call_backfill(services, {"mode": "prune"})
                    counts["backfill_prune"] += 1
                    next_prune = now + 60
                if warm is None and now >= warm_at:
                    warm = resources()
                    rss_warm = rss_bytes()
                    tracemalloc.start()
            at_end = resources()
        finally:
            stop.set()
            for driver in drivers:
                driver.join(60)

        # The faults stop; what is queued is delivered (redelivery included), nothing new is sent.
        admin.clear_faults()
        drained = drain_queue(pump, sqs, queues.url)
        assert warm is not None, "the soak ended before its warm-up"
        grown, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_end = rss_bytes()
        after = resources()

        dead_letters = drain(sqs, queues.dlq_url)
        dead_ids = set()
        for letter in dead_letters:
            reason = letter["MessageAttributes"]["failure_reason"]["StringValue"]
            assert reason.startswith("UpstreamError"), reason  # permanent (a malformed or unstorable page)
            dead_ids.add(json.loads(letter["Body"]).get("soak_id"))
        cached: dict[int, set[str]] = {}
        for user_id in users:
            document = snapshot(database, settings, user_id, time.time()).document
            assert document is not None
            cached[user_id] = {e["pass_uuid"] for e in (*document["passes"], *document["passes4"])}
        lost = [
            (soak_id, user_id, pass_uuid)
            for soak_id, (user_id, pass_uuid) in purchases.items()
            if soak_id not in dead_ids and pass_uuid not in refunded and pass_uuid not in cached[user_id]
        ]

        # One message per rider catches every cache up; then each must equal Bytemark's lists.
        for user_id in users:
            send(user_id, "manual")
        drain_queue(pump, sqs, queues.url)

    elapsed = time.monotonic() - started
    messages = pump.acknowledged + pump.failed
    changes = sum(counts[k] for k in ("purchase", "activation", "expiry", "refund"))
    operations = counts["open"] + counts["pull_to_refresh"] + rider_outcomes.total() + messages
    figures = {
        "seconds": round(elapsed),
        "operations": operations,
        "api": {"opens": counts["open"], "pulls": counts["pull_to_refresh"], "statuses": dict(statuses)},
        "rider_threads": dict(rider_outcomes),
        "sqs_records": messages,
        "sqs_reported_failures": pump.failed,
        "dead_lettered": len(dead_letters),
        "bytemark_changes": changes,
        "counts": dict(counts),
        "fault_rate": knobs.fault_rate,
        "users": knobs.users,
        "queue_drained_seconds": round(drained, 1),
        "memory_growth_mib": round(grown / 2**20, 2),
        "rss_mib": [round(rss_warm / 2**20), round(rss_end / 2**20)],
        "resources_warm": warm,
        "resources_end": at_end,
        "resources_after_stop": after,
        "purchases": len(purchases),
        "lost": len(lost),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(figures, indent=2) + "\n")
    with capsys.disabled():
        print(f"\nsoak figures ({REPORT}): {json.dumps(figures)}")
    assert escaped == [], escaped[:3]
    assert pump.escaped == [], pump.escaped[:3]
    assert 500 not in statuses
    # Thousands on a quiet machine (~8 operations/s); the floor only proves the soak really ran.
    assert operations >= MIN_OPERATIONS_PER_SECOND * knobs.seconds
    assert not {"StoreError", "ConcurrentModification"} & set(rider_outcomes), rider_outcomes
    assert lost == [], f"{len(lost)} purchase messages acknowledged without their pass: {lost[:5]}"
    assert grown < MEMORY_GROWTH_BYTES
    assert rss_end - rss_warm < RSS_GROWTH_BYTES
    assert at_end["threads"] <= warm["threads"] + THREAD_SLACK
    assert at_end["sockets"] <= warm["sockets"] + SOCKET_SLACK
    assert at_end["fds"] <= warm["fds"] + SOCKET_SLACK
    assert after["threads"] <= warm["threads"] - len(drivers) + THREAD_SLACK
    assert drain(sqs, queues.dlq_url) == []
    for user_id in users:
        state = snapshot(database, settings, user_id, time.time())
        assert_cache_matches(state.document, admin.passes(user_id))
        assert_log_replays(state.document, state.log)


def drain_queue(pump: SqsPump, sqs: Any, url: str, timeout: float = 120.0) -> float:
    """Pump until the queue holds nothing (visible or in flight); how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if pump.pump() == 0:
            if queue_counts(sqs, url) == (0, 0):
                return time.monotonic() - started
            time.sleep(0.2)
    raise AssertionError(f"the queue still holds {queue_counts(sqs, url)} messages")
