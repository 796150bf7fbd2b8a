"""The simulated day: Bytemark requests, waits and stale ticket states per policy, on the same riders.

    make bench-day        (= .venv/bin/python bench/day.py)
    .venv/bin/python bench/day.py --riders 10000 --seed 7 [--explore] [--no-write] [--processes 2]

Riders, passes and Bytemark's truth: bench/daysim_riders.py, bench/daysim_truth.py. The policies: (a) (a')
(b) (c) in bench/daysim_baselines.py, (d) (e) — the REAL services — in bench/daysim_engine.py. The report
(tables, goals, plot, the section of docs/benchmarks.md): bench/daysim_report.py.

Riders are split over processes by user id; each process simulates every policy for its riders (a rider
is generated from the seed and its id alone, so the split does not change any figure) and the figures are
summed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT)]

from bench.daysim_baselines import run_http_cache, run_no_cache, run_node, shared_key_answers  # noqa: E402
from bench.daysim_core import PolicyResult  # noqa: E402
from bench.daysim_engine import BEFORE, NEW, run_engine, variants  # noqa: E402
from bench.daysim_report import merge_stats, world_stats, write_report  # noqa: E402
from bench.daysim_riders import T0, T_END, make_rider  # noqa: E402
from bench.daysim_truth import Truth  # noqa: E402

KEEP_AFTER = T0 - 3 * 86400
"""The truth keeps every pass version from three days before the window (the earliest any policy asks)."""


def simulate_shard(args: tuple[int, int, int, int, bool]) -> dict[str, Any]:
    """Every policy for the riders ``user_id % shards == shard`` of ``1..riders``."""
    shard, shards, riders, seed, explore = args
    started = time.perf_counter()
    world = [make_rider(seed, uid) for uid in range(1, riders + 1) if uid % shards == shard]
    truth = Truth(world, keep_after=KEEP_AFTER)
    built = time.perf_counter() - started
    runs: list[tuple[str, Any]] = [
        ("a", lambda: run_node(truth, wait_for_sync=False, seed=seed)),
        ("a'", lambda: run_node(truth, wait_for_sync=True, seed=seed)),
        ("b", lambda: run_no_cache(truth)),
        ("c", lambda: run_http_cache(truth)),
        ("d", lambda: run_engine(truth, BEFORE, seed=seed)),
        ("e", lambda: run_engine(truth, NEW, seed=seed)),
    ]
    if explore:
        runs += [
            (config.key, lambda config=config: run_engine(truth, config, seed=seed)) for config in variants()
        ]
    results: dict[str, PolicyResult] = {}
    for key, run in runs:
        began = time.perf_counter()
        results[key] = run()
        results[key].seconds = time.perf_counter() - began
    opens = [
        (event.t, rider.user_id)
        for rider in world
        for event in rider.events
        if event.kind == "open" and T0 - 3600 <= event.t < T_END
    ]
    return {"results": results, "opens": opens, "stats": world_stats(world, truth), "built": built}


def layer_version() -> str:
    """The commit the layer was run at, and whether it had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "layers"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} + uncommitted changes" if dirty else commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--riders", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--explore", action="store_true", help="also run the policy-constant variants of (e)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ untouched")
    options = parser.parse_args(argv)
    started = time.perf_counter()
    shards = max(1, options.processes)
    jobs = [(shard, shards, options.riders, options.seed, options.explore) for shard in range(shards)]
    if shards == 1:
        parts = [simulate_shard(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(shards) as pool:
            parts = pool.map(simulate_shard, jobs)
    results: dict[str, PolicyResult] = {}
    for part in parts:
        for key, result in part["results"].items():
            results[key] = result if key not in results else results[key].merge(result)
    opens = [item for part in parts for item in part["opens"]]
    shared = shared_key_answers(opens)
    stats = merge_stats(part["stats"] for part in parts)
    elapsed = time.perf_counter() - started
    write_report(
        results,
        shared=shared,
        stats=stats,
        riders=options.riders,
        seed=options.seed,
        processes=shards,
        elapsed=elapsed,
        explore=options.explore,
        layer=layer_version(),
        write=not options.no_write,
        root=ROOT,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
