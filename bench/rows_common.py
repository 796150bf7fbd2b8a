"""What every benchmark section of bench/run.py shares: timing, command recording, Markdown, the local
resources (unique names, created and dropped by the bench), and the pure helpers tests/unit/test_bench_run.py
pins down."""

from __future__ import annotations

import copy
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bson
from pymongo import monitoring

if TYPE_CHECKING:
    from bytemark_cache.adapters.mongo_indexes import Role

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = ROOT / "local" / "migrations"
SIMULATOR_NOW = "2024-06-15T04:30:00Z"
"""The simulator's frozen clock: the same seed then gives the same passes in every run."""


# -- timing -----------------------------------------------------------------------------------------


def median_ms(action: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, in milliseconds."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def ratio(value: float, baseline: float, digits: int = 2) -> str:
    """``value / baseline`` as ``"0.12x"`` (``"n/a"`` without a baseline)."""
    if not baseline:
        return "n/a"
    return f"{value / baseline:.{digits}f}x"


def duration(seconds: float) -> str:
    """``"42.0 s"``, ``"3m 07s"``, ``"7h 40m"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m {rest:02d}s"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours}h {rest:02d}m"


def fraction(value: float, baseline: float) -> str:
    """``value / baseline`` as a ratio, or as ``"1/4,800"`` when it is below 0.01."""
    if not baseline or not value:
        return "n/a"
    share = value / baseline
    return f"{share:.2f}x" if share >= 0.01 else f"1/{baseline / value:,.0f}"


# -- Markdown ---------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Iterable[Sequence[object]], right: Iterable[int] = ()) -> list[str]:
    """A Markdown table; the columns in ``right`` are right-aligned (numbers)."""
    aligned = set(right)
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---:" if index in aligned else "---" for index in range(len(header))) + " |",
    ]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return lines


def splice_section(document: str, start: str, end: str, section: str) -> str:
    """``document`` with the text from ``start`` to ``end`` (markers included) replaced by ``section``
    (which carries its own markers); appended when the markers are missing. Nothing else changes."""
    if start in document and end in document:
        before, rest = document.split(start, 1)
        after = rest.split(end, 1)[1]
        return before + section + after
    return document.rstrip("\n") + "\n\n" + section + "\n"


# -- MongoDB commands -------------------------------------------------------------------------------


class CommandRecorder(monitoring.CommandListener):
    """Every command a client sends, in order: name, target collection (if any) and encoded BSON size."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, str, int]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Remember the command with its collection and BSON size."""
        target = event.command.get(event.command_name)
        collection = target if isinstance(target, str) else ""
        self.commands.append((event.command_name, collection, len(bson.encode(event.command))))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Nothing to record."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Nothing to record."""

    def clear(self) -> None:
        """Forget what was recorded."""
        self.commands.clear()

    def sent(self, *names: str) -> int:
        """Bytes of the recorded commands (only those named, when names are given)."""
        return sum(size for name, _, size in self.commands if not names or name in names)


def command_summary(commands: Sequence[tuple[str, str, int]], roles: dict[str, str]) -> str:
    """``"find cache, insert claims, update cache"``: each command and the role of its collection."""
    return ", ".join(
        f"{name} {roles.get(collection, collection)}".strip() for name, collection, _ in commands
    )


# -- passes -----------------------------------------------------------------------------------------


def changed_positions(count: int, total: int) -> list[int]:
    """``count`` positions spread evenly over ``total`` passes (0 … total-1)."""
    if count <= 0 or total <= 0:
        return []
    count = min(count, total)
    return sorted({(index * total) // count for index in range(count)})


def changes_for(rate: float, total: int) -> int:
    """How many of ``total`` passes a change rate touches: at least one for any rate above 0."""
    if rate <= 0 or total <= 0:
        return 0
    return min(total, max(1, round(rate * total)))


def with_changes(
    passes: Sequence[dict[str, Any]], positions: Iterable[int], stamp: str
) -> list[dict[str, Any]]:
    """A deep copy of ``passes`` whose passes at ``positions`` were modified at Bytemark (``time_modified``
    set to ``stamp``): each becomes a different payload, hence one updated element."""
    changed = copy.deepcopy(list(passes))
    for position in positions:
        changed[position]["time_modified"] = stamp
    return changed


# -- sizes ------------------------------------------------------------------------------------------


def du_bytes(path: Path) -> int:
    """``du -sb --exclude=__pycache__``: bytecode caches left out, ``sam build`` writes none (an import run
    may have added them)."""
    output = subprocess.run(
        ["du", "-sb", "--exclude=__pycache__", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return int(output.split()[0])


def top_entries(sizes: dict[str, int], count: int) -> list[tuple[str, int]]:
    """The ``count`` largest ``(name, bytes)``, largest first (ties by name)."""
    return sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:count]


def megabytes(size: float) -> str:
    """``"12.3 MB"`` (10^6 bytes)."""
    return f"{size / 1e6:.1f} MB"


# -- local resources ---------------------------------------------------------------------------------


def unique_name(prefix: str = "btc_bench") -> str:
    """A database or queue name no other session uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextmanager
def mysql_database(env: dict[str, str]) -> Iterator[str]:
    """A throw-away MySQL database with the schema of local/migrations (``btc_test_…``: the local user may
    create and drop those), dropped afterwards."""
    from pymysql.constants import CLIENT

    name = unique_name("btc_test_bench")
    connection = mysql_connect(env, None, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            cursor.execute(f"USE `{name}`")
            for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
                cursor.execute(path.read_text(encoding="utf-8"))
                while cursor.nextset():
                    pass
        yield name
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            connection.close()


def mysql_connect(env: dict[str, str], database: str | None, **extra: Any) -> Any:
    """An autocommit pymysql connection to the local MariaDB."""
    import pymysql

    return pymysql.connect(
        host=env["MYSQL_HOST"],
        port=int(env["MYSQL_PORT"]),
        user=env["MYSQL_USER"],
        password=env.get("MYSQL_PASSWORD", ""),
        database=database,
        autocommit=True,
        connect_timeout=5,
        read_timeout=120,
        **extra,
    )


def seed_tokens(
    env: dict[str, str], database: str, user_ids: Sequence[int], token: Callable[[int], str]
) -> None:
    """Insert a ``bytemark_tokens`` row per user (``executemany``, a few thousand rows per statement)."""
    connection = mysql_connect(env, database)
    try:
        with connection.cursor() as cursor:
            for start in range(0, len(user_ids), 5000):
                cursor.executemany(
                    "INSERT INTO bytemark_tokens (user_id, token, status) VALUES (%s, %s, 'ACTIVE')",
                    [(user_id, token(user_id)) for user_id in user_ids[start : start + 5000]],
                )
    finally:
        connection.close()


def mongo_indexes(database: Any, names: dict[Role, str]) -> None:
    """The deploy step (``bytemark-cache ensure-indexes``) on the bench's collections."""
    from bytemark_cache.adapters.mongo_indexes import ensure_indexes

    ensure_indexes(database, names)


def bench_settings(env: dict[str, str], **overrides: str) -> Any:
    """``Settings`` of the local stack with the bench's own database names, queue and Bytemark."""
    from bytemark_cache.config import Settings

    return Settings.from_env({**env, **overrides})
