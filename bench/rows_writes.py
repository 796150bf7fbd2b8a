"""Sections about one sync's write: its bytes against a whole-document replace (one user, timed), the same at
change rates 0/1/10/100 % for 10, 100 and 1,000 passes, and the Node-compatible hash against json+md5.

The write is the store's own statement (``mongo_store.update_statement`` of the planner's plan), sent through
a client whose CommandListener counts the bytes of every command.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from typing import Any

import bson

from bench.rows_common import (
    SIMULATOR_NOW,
    CommandRecorder,
    changed_positions,
    changes_for,
    median_ms,
    ratio,
    table,
    unique_name,
    with_changes,
)
from bytemark_cache.adapters.mongo_store import connect, update_statement
from bytemark_cache.domain.document import read_cache
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.model import NEXT_SYNC_FIELD, PENDING_LOG_FIELD, FetchedPasses, SyncPlan
from bytemark_cache.domain.plan import FreshPasses, apply_plan, plan_sync, prepare_fresh
from bytemark_simulator import SimulatorServer

USER = 1
HISTORY_LIMIT = 200
WRITE_REPEATS = 7
HASH_PAIRS = 60
RATES = (0.0, 0.01, 0.10, 1.0)
SIZES = (10, 100, 1000)


def simulated_passes(current: int, expired: int, seed: int = 11) -> FetchedPasses:
    """Realistic passes: what the simulator serves a user seeded with that many (same seed, same passes)."""
    with SimulatorServer(port=0, seed=seed, now=SIMULATOR_NOW) as simulator:
        simulator.admin.seed_user(USER, f"tok-{USER}", current=current, expired=expired, seed=seed)
        held = simulator.admin.passes(USER)
    return FetchedPasses(current=held["current"], expired=held["expired"])


class StatementBench:
    """One user's document in a collection of its own, written with the store's statement, every command
    counted. The bench keeps the stored document itself (``apply_plan`` is the planner's model of what a
    statement leaves, property-tested against the store), so it never reads a large document back; each
    statement's guard (revision, timestamp) proves the two still agree."""

    def __init__(self, uri: str) -> None:
        self.recorder = CommandRecorder()
        self.database = connect(
            uri, unique_name(), event_listeners=[self.recorder], socket_timeout_ms=120_000
        )
        self.collection = self.database["cache"]
        self.now = 1_718_425_800
        self.document: dict[str, Any] = {}

    def close(self) -> None:
        self.database.client.drop_database(self.database.name)
        self.database.client.close()

    def plan(self, fresh: FreshPasses, *, build: bool = False) -> SyncPlan:
        """The plan of a sync that fetched ``fresh`` now (with the freshness field the service adds)."""
        self.now += 1
        stored = None if build else read_cache([self.document], USER, self.now)
        return plan_sync(
            USER,
            stored,
            fresh,
            self.now,
            history_limit=HISTORY_LIMIT,
            write_id=f"w{self.now}",
            fields={NEXT_SYNC_FIELD: self.now + 3600},
        )

    def build(self, fresh: FreshPasses) -> int:
        """Insert the user's document as a sync leaves it once its change-log entries went to the log;
        returns the bytes those entries take in ``log_pending`` until the next write."""
        plan = self.plan(fresh, build=True)
        self.document = apply_plan(None, plan)
        self.collection.insert_one(self.document)
        return len(bson.encode({PENDING_LOG_FIELD: [entry.to_document() for entry in plan.log]}))

    def send(self, plan: SyncPlan) -> tuple[int, float]:
        """Send the plan's one update statement: (bytes of the update command, ms)."""
        self.recorder.clear()
        started = time.perf_counter()
        result = self.collection.update_one(*update_statement(plan))
        took = (time.perf_counter() - started) * 1000
        assert result.matched_count == 1, "the statement's guard missed"
        document = apply_plan(self.document, plan)
        entries = [entry.to_document() for entry in plan.log]
        if entries:
            document[PENDING_LOG_FIELD] = entries
        else:
            document.pop(PENDING_LOG_FIELD, None)
        self.document = document
        return self.recorder.sent("update"), took

    def replace(self) -> tuple[int, float, int]:
        """Rewrite the whole document as it is: (bytes of the update command, ms, document bytes)."""
        self.recorder.clear()
        started = time.perf_counter()
        result = self.collection.replace_one({"_id": self.document["_id"]}, self.document)
        took = (time.perf_counter() - started) * 1000
        assert result.matched_count == 1
        return self.recorder.sent("update"), took, len(bson.encode(self.document))


def bench_writes(uri: str, fetched: FetchedPasses) -> list[str]:
    """No-op and one-pass syncs of a 100 + 20 pass user against replacing the whole document, timed."""
    bench = StatementBench(uri)
    samples: dict[str, list[tuple[int, float]]] = {"noop": [], "one": [], "replace": []}
    try:
        current = prepare_fresh(fetched)
        bench.build(current)
        middle = len(fetched.current) // 2
        # Two versions of one pass, alternated: every one-pass write changes exactly that pass.
        versions = [
            prepare_fresh(FetchedPasses(with_changes(fetched.current, [middle], stamp), fetched.expired))
            for stamp in ("2024-06-15T05:00:00Z", "2024-06-15T05:01:00Z")
        ]
        for index in range(WRITE_REPEATS):  # interleaved, so all three see the same noise
            noop = bench.plan(current)
            assert noop.changed_passes == 0
            samples["noop"].append(bench.send(noop))
            current = versions[index % 2]
            one = bench.plan(current)
            assert one.changed_passes == 1
            samples["one"].append(bench.send(one))
            sent, took, document_bytes = bench.replace()
            samples["replace"].append((sent, took))
    finally:
        bench.close()
    figures = {
        name: (max(sent for sent, _ in values), statistics.median(took for _, took in values))
        for name, values in samples.items()
    }
    whole_bytes, whole_ms = figures["replace"]
    rows = [
        [label, f"{figures[name][0]:,}", ratio(figures[name][0], whole_bytes, 4), f"{figures[name][1]:.1f}",
         ratio(figures[name][1], whole_ms)]
        for name, label in (("noop", "no change"), ("one", "one pass changed"))
    ]  # fmt: skip
    return [
        f"### Sync writes: one user with {len(fetched.current)} passes + {len(fetched.expired)} history",
        "",
        "The write statement (`mongo_store.update_statement` of the planner's plan) as sent, its bytes "
        "counted by a CommandListener, against replacing the whole document "
        f"({document_bytes:,} B of BSON). Median of {WRITE_REPEATS} writes each, interleaved.",
        "",
        *table(
            ["sync", "update command bytes", "bytes vs replace", "median ms", "time vs replace"],
            [
                *rows,
                ["baseline: replace the whole document", f"{whole_bytes:,}", "1x", f"{whole_ms:.1f}", "1x"],
            ],
            right=(1, 2, 3, 4),
        ),
    ]


def bench_change_rates(uri: str) -> list[str]:
    """Bytes of the write statement at change rates 0/1/10/100 % for 10, 100 and 1,000 passes."""
    rows = []
    for size in SIZES:
        truth = simulated_passes(size, 0)
        bench = StatementBench(uri)
        try:
            pending = bench.build(prepare_fresh(truth))
            whole_bytes, _, document_bytes = bench.replace()
            cells = []
            for step, rate in enumerate(RATES):
                count = changes_for(rate, size)
                stamp = f"2024-06-15T06:{step:02d}:00Z"
                # Relative to what is stored now, so exactly ``count`` passes differ.
                truth = FetchedPasses(with_changes(truth.current, changed_positions(count, size), stamp), [])
                plan = bench.plan(prepare_fresh(truth))
                assert plan.changed_passes == count, (size, rate, plan.changed_passes)
                sent, _ = bench.send(plan)
                cells.append(f"{count:,}: {sent:,} B = {ratio(sent, whole_bytes, 3)}")
        finally:
            bench.close()
        rows.append([f"{size:,}", f"{document_bytes:,} B", *cells, f"{pending:,} B"])
    return [
        "### Sync write bytes by change rate",
        "",
        "Each cell: passes changed at Bytemark: bytes of the update command = its ratio to a replace command "
        "of the whole document. Current passes only, no history; each write applies to the document the "
        "previous one left. Last column: what a build's change-log entries add to the document in "
        "`log_pending`, kept there until the next write.",
        "",
        *table(
            ["passes", "document", *(f"{rate:.0%} changed" for rate in RATES), "build's `log_pending`"],
            rows,
            right=range(1, 7),
        ),
    ]


def bench_hash(fetched: FetchedPasses) -> list[str]:
    """payload_hash (Node-compatible) against json.dumps + md5 over a realistic user's passes."""
    passes = fetched.current + fetched.expired

    def ours() -> None:
        for pass_ in passes:
            payload_hash(pass_)

    def plain() -> None:
        for pass_ in passes:
            text = json.dumps(pass_, separators=(",", ":"), ensure_ascii=False)
            hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    # One of each, alternated call by call: each pair shares its moment's noise; the ratio is the median of
    # the pairs' ratios.
    pairs = [(median_ms(ours, 1), median_ms(plain, 1)) for _ in range(HASH_PAIRS)]
    mine = statistics.median(ours_ms for ours_ms, _ in pairs)
    baseline = statistics.median(plain_ms for _, plain_ms in pairs)
    paired = statistics.median(ours_ms / plain_ms for ours_ms, plain_ms in pairs)
    size = statistics.mean(len(json.dumps(p)) for p in passes)
    per_pass = 1000 / len(passes)
    return [
        f"### Hashing {len(passes)} realistic passes (mean {size:,.0f} B of JSON each)",
        "",
        f"Every pass of one user hashed, {HASH_PAIRS} times each, alternated call by call; the ratio is the "
        "median of the pairs' ratios.",
        "",
        *table(
            ["hash", "median ms per user", "µs per pass", "ratio"],
            [
                ["payload_hash (Node-compatible)", f"{mine:.2f}", f"{mine * per_pass:.0f}", f"{paired:.2f}x"],
                ["baseline: json.dumps + md5 (not Node-compatible)", f"{baseline:.2f}",
                 f"{baseline * per_pass:.0f}", "1x"],
            ],
            right=(1, 2, 3),
        ),
    ]  # fmt: skip
