"""Side-by-side benchmarks, printed as a Markdown report (docs/benchmarks.md records one run).

    make bench            (= .venv/bin/python bench/run.py, services from `make up-services`)

Every figure is a ratio between two things measured in the same run on the same data, because these
machines are noisy: incremental sync writes vs rewriting the whole document, the Node-compatible hash vs
plain json.dumps+md5, a cache hit vs a sync through Bytemark, and each handler's cold import.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
import pymongo
from pymongo import monitoring

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT / "local"), str(ROOT)]

from local_env import local_settings  # noqa: E402

from bytemark_cache.adapters.mongo_store import MongoCacheStore, connect  # noqa: E402
from bytemark_cache.domain.hashing import payload_hash  # noqa: E402
from bytemark_cache.domain.model import FetchedPasses  # noqa: E402
from bytemark_cache.domain.sync import plan_sync  # noqa: E402
from bytemark_simulator import SimulatorServer  # noqa: E402

PASSES = 100
HISTORY = 20
REPEATS = 15


class Recorder(monitoring.CommandListener):
    """Counts the write commands a client sends and their BSON size."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, int]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("insert", "update", "delete", "findAndModify"):
            self.commands.append((event.command_name, len(bson.encode(event.command))))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def median_ms(action: Callable[[], Any], repeats: int = REPEATS) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def realistic_passes() -> FetchedPasses:
    with SimulatorServer(port=0, seed=11, now="2024-06-15T04:30:00Z") as simulator:
        simulator.admin.seed_user(1, "tok-1", current=PASSES, expired=HISTORY, seed=11)
        held = simulator.admin.passes(1)
    return FetchedPasses(current=held["current"], expired=held["expired"])


def bench_writes(env: dict[str, str], fetched: FetchedPasses) -> list[str]:
    recorder = Recorder()
    database = connect(env["MONGODB_URI"], f"bench_{uuid.uuid4().hex[:8]}", event_listeners=[recorder])
    store = MongoCacheStore(database, "cache", "log", "leases")
    store.ensure_indexes()
    user = 1
    store.apply(plan_sync(user, None, fetched, 1_000, passes4_limit=200))
    document = store.load(user)
    assert document is not None
    document_bytes = len(bson.encode(document))

    def incremental(change: Callable[[FetchedPasses], FetchedPasses]) -> tuple[int, int, float]:
        now = [2_000]

        def once() -> None:
            now[0] += 1
            old = store.load(user)
            store.apply(plan_sync(user, old, change(fetched), now[0], passes4_limit=200))

        recorder.commands.clear()
        once()
        ops, sent = len(recorder.commands), sum(size for _, size in recorder.commands)
        return ops, sent, median_ms(once)

    def whole_document() -> tuple[int, int, float]:
        collection = database["cache"]

        def once() -> None:
            current = collection.find_one({"user_id": user})
            assert current is not None
            collection.replace_one({"_id": current["_id"]}, current)

        recorder.commands.clear()
        once()
        ops, sent = len(recorder.commands), sum(size for _, size in recorder.commands)
        return ops, sent, median_ms(once)

    def one_activated(source: FetchedPasses) -> FetchedPasses:
        changed = copy.deepcopy(source)
        target = changed.current[len(changed.current) // 2]
        target["status"] = "USING" if target["status"] != "USING" else "USABLE"
        target["time_modified"] = f"2024-06-15T05:{time.time_ns() % 60:02d}:00Z"
        return changed

    noop = incremental(lambda source: source)
    one = incremental(one_activated)
    full = whole_document()
    database.client.drop_database(database.name)
    rows = [
        f"MongoDB writes for one user with {PASSES} passes + {HISTORY} history "
        f"(document {document_bytes:,} B), server {env['MONGODB_URI'].split('@')[-1]}:",
        "",
        "| sync | write commands | bytes sent | median ms | bytes vs whole-document replace |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| no-op (nothing changed) | {noop[0]} | {noop[1]:,} | {noop[2]:.1f} | {noop[1] / full[1]:.3f}x |",
        f"| one pass changed | {one[0]} | {one[1]:,} | {one[2]:.1f} | {one[1] / full[1]:.3f}x |",
        f"| baseline: replace whole document | {full[0]} | {full[1]:,} | {full[2]:.1f} | 1x |",
    ]
    return rows


def bench_hash(fetched: FetchedPasses) -> list[str]:
    passes = fetched.current + fetched.expired

    def ours() -> None:
        for pass_ in passes:
            payload_hash(pass_)

    def plain() -> None:
        for pass_ in passes:
            text = json.dumps(pass_, separators=(",", ":"), ensure_ascii=False)
            hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    ours_ms, plain_ms = median_ms(ours, 30), median_ms(plain, 30)
    size = statistics.mean(len(json.dumps(p)) for p in passes)
    return [
        f"Hashing {len(passes)} realistic passes (mean {size:,.0f} B of JSON each):",
        "",
        "| hash | median ms per user | µs per pass | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| payload_hash (Node-compatible) | {ours_ms:.2f} | {ours_ms * 1000 / len(passes):.0f} | "
        f"{ours_ms / plain_ms:.2f}x |",
        f"| baseline: json.dumps + md5 (not Node-compatible) | {plain_ms:.2f} | "
        f"{plain_ms * 1000 / len(passes):.0f} | 1x |",
    ]


def bench_check(env: dict[str, str]) -> list[str]:
    import pymysql

    from bytemark_cache.bootstrap import build_services
    from bytemark_cache.config import Settings

    with SimulatorServer(port=0, seed=5) as simulator:
        simulator.admin.seed_user(900_001, "tok-bench", current=10, expired=5, seed=5)
        connection = pymysql.connect(
            host=env["MYSQL_HOST"],
            port=int(env["MYSQL_PORT"]),
            user=env["MYSQL_USER"],
            password=env["MYSQL_PASSWORD"],
            database=env["MYSQL_DATABASE"],
            autocommit=True,
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO bytemark_tokens (user_id, token) VALUES (900001, 'tok-bench') "
                "ON DUPLICATE KEY UPDATE token = VALUES(token)"
            )
        database = f"bench_{uuid.uuid4().hex[:8]}"
        settings = Settings.from_env({**env, "BYTEMARK_API_URL": simulator.url, "MONGODB_DATABASE": database})
        tickets = build_services(settings).tickets
        tickets.check(900_001)
        before = simulator.admin.request_counts()["total"]
        hit_ms = median_ms(lambda: tickets.check_with_ttl(900_001))
        hit_requests = simulator.admin.request_counts()["total"] - before
        before = simulator.admin.request_counts()["total"]
        sync_ms = median_ms(lambda: tickets.check(900_001))
        sync_requests = (simulator.admin.request_counts()["total"] - before) / REPEATS
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM bytemark_tokens WHERE user_id = 900001")
        connection.close()
        pymongo.MongoClient(env["MONGODB_URI"]).drop_database(database)
    return [
        "A user's check, 10 passes + 5 history, Bytemark = the local simulator (no added latency):",
        "",
        "| path | median ms | Bytemark requests per call | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| check_with_ttl, cache fresh (served from MongoDB) | {hit_ms:.1f} | "
        f"{hit_requests / REPEATS:.0f} | "
        f"{hit_ms / sync_ms:.2f}x |",
        f"| check, forced sync through Bytemark (no change) | {sync_ms:.1f} | {sync_requests:.0f} | 1x |",
    ]


def bench_cold_imports() -> list[str]:
    build = ROOT / ".aws-sam" / "build"
    if not (build / "SharedLayer" / "python").exists():
        return ["Cold imports: skipped — no `sam build` output (run `make build`)."]
    rows = [
        "Cold import of each built handler (fresh interpreter, artifact only on the path, median of 5):",
        "",
        "| module | median ms | ratio to importing boto3 alone |",
        "| --- | ---: | ---: |",
    ]

    def import_ms(code_dir: Path, module: str) -> float:
        samples = []
        for _ in range(5):
            env = {"PYTHONPATH": f"{code_dir}:{build / 'SharedLayer' / 'python'}", "PATH": os.environ["PATH"]}
            env.update({"POWERTOOLS_TRACE_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"})
            started = time.perf_counter()
            # -S: no site-packages, so only the artifact (and the standard library) can be imported.
            subprocess.run(
                [sys.executable, "-S", "-c", f"import {module}"], env=env, check=True, cwd=code_dir
            )
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    baseline = import_ms(build / "SharedLayer" / "python", "boto3")
    for logical_id in ("OnDemandCheckFunction", "UserUpdatesFunction", "ScheduledBackfillFunction"):
        took = import_ms(build / logical_id, "app")
        rows.append(f"| {logical_id}/app.py | {took:.0f} | {took / baseline:.2f}x |")
    rows.append(f"| baseline: boto3 | {baseline:.0f} | 1x |")
    return rows


def main() -> int:
    env = local_settings()
    fetched = realistic_passes()
    sections = [bench_writes(env, fetched), bench_hash(fetched), bench_check(env), bench_cold_imports()]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"Command: `make bench` — {stamp}, Python {sys.version.split()[0]}")
    for section in sections:
        print()
        print("\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
