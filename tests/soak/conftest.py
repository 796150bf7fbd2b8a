"""The soak's resources: the shared local servers (its own database, MySQL schema and queues on them) and a
Bytemark simulator in a process of its own, so the soak process holds only what the application holds.

``make soak`` runs ``python -m pytest tests/soak -q``; ``make test`` never collects this folder. Knobs (env):
``SOAK_SECONDS`` (default 240: the whole run stays around five minutes), ``SOAK_USERS`` (50),
``SOAK_FAULT_RATE`` (0.05), ``SOAK_SEED`` (1).
"""

from __future__ import annotations

import os

# Before any handler module is imported: INFO lines of thousands of syncs are not what the soak measures.
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymysql.constants import CLIENT

from bytemark_simulator import AdminClient
from tests.integration.conftest import apply_migrations, aws_client, connect_mysql
from tests.reliability.rig import Queues, delete_queues, make_queues

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SoakKnobs:
    seconds: float
    users: int
    fault_rate: float
    seed: int


@pytest.fixture(scope="session")
def knobs() -> SoakKnobs:
    return SoakKnobs(
        seconds=float(os.environ.get("SOAK_SECONDS", "240")),
        users=int(os.environ.get("SOAK_USERS", "50")),
        fault_rate=float(os.environ.get("SOAK_FAULT_RATE", "0.05")),
        seed=int(os.environ.get("SOAK_SEED", "1")),
    )


@pytest.fixture(scope="session")
def simulator_process() -> Iterator[tuple[str, AdminClient]]:
    """``python -m bytemark_simulator`` on a free port; its URL and admin client."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bytemark_simulator", "--host", "127.0.0.1", "--port", "0", "--quiet"],
        cwd=REPO_ROOT / "local",
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://"), f"the simulator said {url!r}"
        admin = AdminClient(url)
        admin.health()
        yield url, admin
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="session")
def soak_resources(local_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A MongoDB database, a MySQL schema (migrated) and an update queue pair of the soak alone."""
    name = f"btc_test_soak_{uuid.uuid4().hex[:8]}"
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        local_env["MONGODB_URI"], serverSelectionTimeoutMS=3000
    )
    client.admin.command("ping")
    connect_args = {
        "host": local_env["MYSQL_HOST"],
        "port": int(local_env["MYSQL_PORT"]),
        "user": local_env["MYSQL_USER"],
        "password": local_env.get("MYSQL_PASSWORD", ""),
    }
    mysql = connect_mysql(connect_args, client_flag=CLIENT.MULTI_STATEMENTS)
    with mysql.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    mysql.select_db(name)
    apply_migrations(mysql)
    sqs = aws_client("sqs", local_env)
    queues: Queues = make_queues(sqs, visibility=2, max_receive_count=100)
    try:
        yield {"name": name, "mongo": client, "mysql": mysql, "sqs": sqs, "queues": queues}
    finally:
        delete_queues(sqs, queues)
        with mysql.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        mysql.close()
        client.drop_database(name)
        client.close()
