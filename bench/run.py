"""Side-by-side benchmarks, printed as a Markdown report (docs/benchmarks.md records one run).

    make bench            (= .venv/bin/python bench/run.py; `make` starts the servers and builds first)
    .venv/bin/python bench/run.py [--only writes,hash,...] [--cold-start-before PATH|none]
        [--backfill-users N] [--backfill-seconds S] [--due-page-size N] [--write]

Every figure is a ratio between two things measured in the same run on the same data, because these
2-core machines are noisy. Each section is printed as soon as it is done:

- writes    a sync's write statement against rewriting the whole document    bench/rows_writes.py
- hash      the Node-compatible payload hash against json.dumps + md5          bench/rows_writes.py
- check     a cache hit against a sync through Bytemark                        bench/rows_service.py
- cold      each handler's cold start BEFORE vs AFTER the upgrade; the layer   bench/rows_cold.py
- commands  every MongoDB command of one sync                                   bench/rows_service.py
- backfill  `missing` and `due` over 100,000 users against MySQL pages alone   bench/rows_backfill.py
- batch     an SQS batch, slow Bytemark: the handler's pool against one by one bench/rows_service.py
- rates     write bytes at change rates 0/1/10/100 % for 10/100/1,000 passes   bench/rows_writes.py

Every resource is the bench's own (``btc_bench_…`` MongoDB databases, a ``btc_test_bench_…`` MySQL
database, ``btc-bench-…`` queues) and is removed afterwards. ``--write`` puts the report into
docs/benchmarks.md between its markers (the `make bench-day` section is left as it is).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT / "local"), str(ROOT)]

from local_env import local_settings  # noqa: E402

from bench.rows_backfill import bench_backfill  # noqa: E402
from bench.rows_cold import bench_cold_start  # noqa: E402
from bench.rows_common import duration, splice_section  # noqa: E402
from bench.rows_service import bench_batch, bench_check, bench_commands, local_resources  # noqa: E402
from bench.rows_writes import bench_change_rates, bench_hash, bench_writes, simulated_passes  # noqa: E402

SECTIONS = ("writes", "hash", "check", "cold", "commands", "backfill", "batch", "rates")
BEFORE_BUILD = Path("/tmp/build-before")
DOC = ROOT / "docs" / "benchmarks.md"
START_MARKER = "<!-- bench-run:start -->"
END_MARKER = "<!-- bench-run:end -->"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    parser.add_argument(
        "--cold-start-before",
        type=Path,
        default=BEFORE_BUILD if BEFORE_BUILD.exists() else None,
        help=f"the pre-upgrade .aws-sam/build (default {BEFORE_BUILD} when present; 'none' skips it)",
    )
    parser.add_argument("--backfill-users", type=int, default=100_000)
    parser.add_argument(
        "--backfill-seconds", type=float, default=20.0, help="time box per back-fill mode (0: whole passes)"
    )
    parser.add_argument(
        "--due-page-size",
        type=int,
        default=10,
        help="page of the `due` scan (the functions use 500: docs/benchmarks.md says why the bench does not)",
    )
    parser.add_argument("--write", action="store_true", help="also write the report into docs/benchmarks.md")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    if args.cold_start_before is not None and str(args.cold_start_before) == "none":
        args.cold_start_before = None
    return args


def server_versions(env: dict[str, str]) -> str:
    """The servers measured against, for the report's header."""
    import pymongo

    from bench.rows_common import mysql_connect

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        env["MONGODB_URI"], serverSelectionTimeoutMS=3000
    )
    try:
        info = client.server_info()
        ferretdb = info.get("ferretdbVersion")
        mongo = (
            f"FerretDB {ferretdb} (MongoDB {info.get('version')} wire)"
            if ferretdb
            else f"MongoDB {info.get('version')}"
        )
    finally:
        client.close()
    connection = mysql_connect(env, None)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            (mysql,) = cursor.fetchone()
    finally:
        connection.close()
    sql = f"{'MariaDB' if 'MariaDB' in str(mysql) else 'MySQL'} {str(mysql).split('-')[0]}"
    return f"{mongo}, {sql}, SQS at {env['AWS_ENDPOINT_URL']}, the in-process Bytemark simulator"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    wanted = args.only.split(",")
    env = local_settings()
    # boto3 reads its region and credentials from the environment, as on Lambda.
    for name in ("AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, env[name])
    started = time.perf_counter()
    report: list[str] = []

    def emit(lines: list[str]) -> None:
        report.extend([*lines, ""])
        print("\n".join(lines), end="\n\n", flush=True)

    # --write changes no figure: the command shown is the one that measures.
    shown = [arg for arg in argv if arg != "--write"]
    command = " ".join([".venv/bin/python bench/run.py", *shown]) if shown else "make bench"
    emit(
        [
            "## The side-by-side run (`make bench`)",
            "",
            f"Command: `{command}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs",
            "",
            f"Servers: {server_versions(env)}.",
        ]
    )
    uri = env["MONGODB_URI"]
    realistic = functools.cache(lambda: simulated_passes(100, 20))
    with local_resources(env) as resources:
        sections: dict[str, Callable[[], list[str]]] = {
            "writes": lambda: bench_writes(uri, realistic()),
            "hash": lambda: bench_hash(realistic()),
            "check": lambda: bench_check(resources),
            "cold": lambda: bench_cold_start(ROOT / ".aws-sam" / "build", args.cold_start_before),
            "commands": lambda: bench_commands(resources),
            "backfill": lambda: bench_backfill(
                resources,
                users=args.backfill_users,
                seconds=args.backfill_seconds,
                due_page_size=args.due_page_size,
            ),
            "batch": lambda: bench_batch(resources),
            "rates": lambda: bench_change_rates(uri),
        }
        for name in SECTIONS:
            if name in wanted:
                section_started = time.perf_counter()
                lines = sections[name]()
                emit([*lines, "", f"<sub>{name}: {duration(time.perf_counter() - section_started)}</sub>"])
    emit([f"Run time: {duration(time.perf_counter() - started)}."])
    if args.write:
        section = "\n".join([START_MARKER, *report[:-1], END_MARKER])
        DOC.write_text(splice_section(DOC.read_text(), START_MARKER, END_MARKER, section))
        print(f"written: {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
