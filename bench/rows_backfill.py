"""Back-fill throughput: ``BackfillService.scan`` with the real adapters over a large population.

MySQL (MariaDB locally) holds ``users`` tokens; MongoDB (FerretDB locally) holds a minimal contract
document for every other user (the other half has no cache), each with ``next_sync_at`` in the past, so
every cached user is in the ``due`` set. The queue is a real SQS queue (moto locally). Each mode runs until
its time box is spent (``should_stop``, the mechanism the scheduled function hands its cursor over with);
the figures are over the pages it did, and a full pass is projected from them. Delegating wrappers time
each port and a CommandListener the slowest MongoDB commands, so the table says what bounds the scan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pymongo import monitoring

from bench.rows_common import (
    bench_settings,
    duration,
    fraction,
    megabytes,
    mongo_indexes,
    mysql_database,
    seed_tokens,
    table,
    top_entries,
    unique_name,
)
from bytemark_cache.adapters.mongo_store import MongoCacheStore, connect
from bytemark_cache.bootstrap import build_services, indexed_collections, mysql_token_store
from bytemark_cache.services.backfill import DEFAULT_PAGE_SIZE, BackfillResult

SEED_BATCH = 5_000
SOCKET_TIMEOUT_MS = 120_000


@dataclass(frozen=True)
class Seeding:
    """How many users got a cache document, and how long seeding each server took."""

    cached: int
    mysql_seconds: float
    mongo_seconds: float


class Timed:
    """Delegates every call to ``target`` and adds up the seconds each method took."""

    def __init__(self, target: Any, seconds: defaultdict[str, float], prefix: str) -> None:
        self._target = target
        self._seconds = seconds
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self._seconds[f"{self._prefix}.{name}"] += time.perf_counter() - started

        return timed


class SlowestCommands(monitoring.CommandListener):
    """The longest each kind of command took on the server (as the driver saw it), per scan."""

    def __init__(self) -> None:
        self.slowest: dict[str, float] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Nothing to record before the answer."""

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Keep the longest duration of this command name."""
        seconds = event.duration_micros / 1e6
        self.slowest[event.command_name] = max(seconds, self.slowest.get(event.command_name, 0.0))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Nothing to record (a failure ends the bench)."""

    def take(self) -> dict[str, float]:
        """What was recorded since the last take, and start again."""
        slowest, self.slowest = self.slowest, {}
        return slowest


def minimal_cache(user_id: int, now: int) -> dict[str, Any]:
    """A contract document with no passes, synced two hours ago and due for a sync (``next_sync_at`` past)."""
    return {
        "user_id": user_id,
        "timestamp": now - 7200,
        "passes": [],
        "passes4": [],
        "sync_revision": 1,
        "next_sync_at": now - 60 - user_id % 3600,
    }


@contextlib.contextmanager
def population(resources: Any, users: int) -> Iterator[tuple[Any, Seeding]]:
    """Seed the tokens and the caches; yield (settings aimed at them, seeding figures); remove both."""
    with mysql_database(resources.env) as mysql:
        settings = bench_settings({**resources.settings_env(unique_name()), "MYSQL_DATABASE": mysql})
        database = connect(
            settings.mongodb_uri, settings.mongodb_database, socket_timeout_ms=SOCKET_TIMEOUT_MS
        )
        try:
            started = time.perf_counter()
            user_ids = list(range(1, users + 1))
            seed_tokens(resources.env, mysql, user_ids, lambda uid: f"tok-{uid}")
            mysql_seconds = time.perf_counter() - started
            mongo_indexes(database, indexed_collections(settings))
            started = time.perf_counter()
            now = int(time.time())
            cached = [minimal_cache(uid, now) for uid in user_ids if uid % 2 == 1]
            collection = database[settings.cache_collection]
            for start in range(0, len(cached), SEED_BATCH):
                collection.insert_many(cached[start : start + SEED_BATCH], ordered=False)
            seeding = Seeding(len(cached), mysql_seconds, time.perf_counter() - started)
            yield settings, seeding
        finally:
            database.client.drop_database(database.name)
            database.client.close()


@dataclass
class ScanFigures:
    """One time-boxed scan: its result, wall time, the seconds of each page, the peak of Python allocations,
    and the seconds each port method took."""

    mode: str
    page_size: int
    result: BackfillResult
    took: float
    pages: list[float]
    peak: int
    ports: dict[str, float]
    slowest: dict[str, float]

    @property
    def rate(self) -> float:
        return self.result.scanned / self.took if self.took else 0.0


def run_scan(
    backfill: Any,
    mode: str,
    page_size: int,
    seconds: float,
    spent: defaultdict[str, float],
    commands: SlowestCommands,
) -> ScanFigures:
    """One scan, stopped at the first page boundary past ``seconds`` (0: a whole pass)."""
    before = dict(spent)
    commands.take()
    marks: list[float] = []
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = backfill.scan(
            mode,
            page_size=page_size,
            should_stop=lambda: bool(seconds) and time.perf_counter() - started >= seconds,
            on_page=lambda _progress: marks.append(time.perf_counter()),
        )
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    pages = [end - start for start, end in itertools.pairwise([started, *marks])]
    ports = {key: spent[key] - before.get(key, 0.0) for key in spent}
    return ScanFigures(mode, page_size, result, took, pages, peak, ports, commands.take())


def bench_backfill(resources: Any, *, users: int, seconds: float, due_page_size: int) -> list[str]:
    """The ``missing`` and ``due`` scans against reading the MySQL pages alone."""
    spent: defaultdict[str, float] = defaultdict(float)
    with population(resources, users) as (settings, seeding):
        tokens = mysql_token_store(settings)
        # The MySQL pages alone: the floor of any token scan.
        started = time.perf_counter()
        floor_users = sum(len(page) for page in tokens.users_with_token(None, DEFAULT_PAGE_SIZE))
        floor_seconds = time.perf_counter() - started
        # The store's client as the functions build it, but for the socket timeout (see the section's text).
        commands = SlowestCommands()
        store_database = connect(
            settings.mongodb_uri,
            settings.mongodb_database,
            socket_timeout_ms=SOCKET_TIMEOUT_MS,
            event_listeners=[commands],
        )
        cache = MongoCacheStore(
            store_database, settings.cache_collection, settings.log_collection, settings.claim_collection
        )
        services = build_services(settings, tokens=tokens, cache=cache, check_indexes=False)
        assert services.backfill is not None
        # The same service, each port timed (the wrappers delegate every call).
        backfill = dataclasses.replace(
            services.backfill, cache=Timed(cache, spent, "MongoDB"), queue=Timed(services.queue, spent, "SQS")
        )
        try:
            scans = [
                run_scan(backfill, "missing", DEFAULT_PAGE_SIZE, seconds, spent, commands),
                run_scan(backfill, "due", due_page_size, seconds, spent, commands),
            ]
        finally:
            tokens.close()
            store_database.client.close()
    cached = seeding.cached
    floor_rate = floor_users / floor_seconds
    rows = [
        ["baseline: MySQL keyset pages alone (`users_with_token`)", f"{DEFAULT_PAGE_SIZE}",
         f"{floor_users:,} of {users:,}", "—", f"{floor_seconds:.1f} s", "—", "—", f"{floor_rate:,.0f}", "1x",
         "—", duration(users / floor_rate), "—"],
    ]  # fmt: skip
    for scan in scans:
        total = users if scan.mode == "missing" else cached
        shares = port_shares(scan.ports, scan.took)
        rows.append(
            [
                f"`{scan.mode}`",
                str(scan.page_size),
                f"{scan.result.scanned:,} of {total:,}",
                f"{scan.result.enqueued:,}",
                f"{scan.took:.1f} s",
                f"{len(scan.pages)} ({max(scan.pages, default=0):.1f} s)",
                ", ".join(f"{name} {took:.1f} s" for name, took in top_entries(scan.slowest, 2)),
                f"{scan.rate:,.1f}",
                fraction(scan.rate, floor_rate),
                megabytes(scan.peak),
                duration(total / scan.rate) if scan.rate else "—",
                ", ".join(f"{name} {share:.0%}" for name, share in shares.items() if share >= 0.01),
            ]
        )
    box = f"a time box of {seconds:.0f} s per mode" if seconds else "no time box"
    return [
        f"### Back-fill over {users:,} users ({cached:,} with a cache, all of them due)",
        "",
        "`BackfillService.scan` with the real adapters (MySQL tokens, MongoDB caches, an SQS queue; the "
        f"servers above), {box} (`should_stop`, as the scheduled function uses it: the scan ends at the "
        f"first page boundary past it). Seeding: {seeding.mysql_seconds:.1f} s (MySQL, executemany) + "
        f"{seeding.mongo_seconds:.1f} s (MongoDB, insert_many). The store's client is built by `connect` as "
        f"in the functions but with a {SOCKET_TIMEOUT_MS // 1000} s socket timeout instead of 10 s, so that "
        "a slower page is measured instead of failing (in a function it fails with a StoreError). "
        "Peak memory: tracemalloc's peak of Python allocations during the scan. Time in ports: delegating "
        "wrappers around the cache store and the queue; the rest is MySQL and the service itself.",
        "",
        *table(
            ["scan", "page", "users scanned", "enqueued", "took", "pages (slowest)",
             "slowest MongoDB commands", "users/s", "vs MySQL pages alone", "peak memory",
             "projected full pass", "time in ports"],
            rows,
            right=range(1, 11),
        ),
    ]  # fmt: skip


def port_shares(ports: dict[str, float], took: float) -> dict[str, float]:
    """Each port method's share of the scan's wall time, largest first."""
    if not took:
        return {}
    shares = {name: seconds / took for name, seconds in ports.items()}
    return dict(sorted(shares.items(), key=lambda item: -item[1]))
