"""End-to-end harness: the artifacts of ``sam build``, the local settings, and one emulator per function.

The runner itself is ``local/emulator.py`` (shared with the local stack); this module adds what the tests
need around it: finding or producing the build, reading each function's handler, timeout and memory from
the built template, checking that the local services answer, an import probe that shows where a
built function's modules really come from, and the test data helpers: ``bytemark_tokens`` rows in MySQL,
the functions' MongoDB collections, and the update queue (with its DLQ) on SQS.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pymongo
import pymysql
import yaml
from emulator import BuiltFunction, LambdaEmulator
from pymongo.collection import Collection

from bytemark_cache.config import Settings
from bytemark_simulator import SimulatorServer

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO_ROOT / ".aws-sam" / "build"
EVENTS_DIR = REPO_ROOT / "events"
LAYER_ID = "SharedLayer"
FUNCTION_IDS = ("OnDemandCheckFunction", "UserUpdatesFunction", "ScheduledBackfillFunction")
QUIET_SAM_ENV = {
    "SAM_CLI_TELEMETRY": "0",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PROBE_MODULE = "btc_import_probe"
PROBE_SOURCE = textwrap.dedent(
    '''
    """Reports where modules are imported from inside the emulated runtime (e2e tests only)."""
    import importlib
    import sys


    def lambda_handler(event, context):
        files = {name: importlib.import_module(name).__file__ for name in event["modules"]}
        return {"files": files, "sys_path": list(sys.path)}
    '''
)


@dataclass(frozen=True)
class FunctionConfig:
    """What the built template says about one function (Globals applied)."""

    handler: str
    timeout_seconds: int
    memory_mb: int


def missing_artifacts(build_dir: Path = BUILD_DIR) -> list[Path]:
    """The parts of a complete build that are absent (empty when the build is usable)."""
    expected = [build_dir / "template.yaml", build_dir / LAYER_ID / "python" / "bytemark_cache"]
    expected += [build_dir / function_id for function_id in FUNCTION_IDS]
    return [path for path in expected if not path.exists()]


def find_sam() -> str | None:
    """The SAM CLI: ``$SAM_CLI``, the project's ``.sam-venv``, then ``PATH``."""
    candidates = [os.environ.get("SAM_CLI", ""), str(REPO_ROOT / ".sam-venv" / "bin" / "sam"), "sam"]
    for candidate in candidates:
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def run_sam_build(sam: str) -> subprocess.CompletedProcess[str]:
    """``sam build`` in the repository with SAM's telemetry and AWS lookups switched off."""
    env = {**os.environ, **QUIET_SAM_ENV}
    return subprocess.run(
        [sam, "build"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def function_config(function_id: str, build_dir: Path = BUILD_DIR) -> FunctionConfig:
    """Handler, timeout and memory of ``function_id`` from the built template (long-form YAML)."""
    built: dict[str, Any] = yaml.safe_load((build_dir / "template.yaml").read_text())
    defaults = built.get("Globals", {}).get("Function", {})
    properties = built["Resources"][function_id]["Properties"]

    def setting(name: str, fallback: Any) -> Any:
        return properties.get(name, defaults.get(name, fallback))

    return FunctionConfig(
        handler=str(setting("Handler", "app.lambda_handler")),
        timeout_seconds=int(setting("Timeout", 3)),
        memory_mb=int(setting("MemorySize", 128)),
    )


def unreachable_services(settings: Mapping[str, str]) -> list[str]:
    """The local services the functions need that do not accept a TCP connection right now."""
    targets = {
        "MongoDB (MONGODB_URI)": _address(settings.get("MONGODB_URI", ""), 27017),
        "MySQL (MYSQL_HOST/MYSQL_PORT)": (
            settings.get("MYSQL_HOST", ""),
            int(settings.get("MYSQL_PORT", "3306")),
        ),
        "moto (AWS_ENDPOINT_URL)": _address(settings.get("AWS_ENDPOINT_URL", ""), 80),
        "Bytemark simulator (BYTEMARK_API_URL)": _address(settings.get("BYTEMARK_API_URL", ""), 80),
    }
    down = []
    for name, (host, port) in targets.items():
        try:
            with socket.create_connection((host, port), timeout=1.0):
                pass
        except OSError:
            down.append(f"{name} at {host}:{port}")
    return down


def _address(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url.split(",")[0])  # a MongoDB seed list: the first host is enough for a probe
    return parts.hostname or "", parts.port or default_port


class EmulatorPool:
    """One emulator per built function, started on first use and kept for the session."""

    def __init__(
        self,
        settings: Mapping[str, str],
        build_dir: Path = BUILD_DIR,
        *,
        timeouts: Mapping[str, int] | None = None,
    ) -> None:
        self.settings = dict(settings)
        self.build_dir = build_dir
        # Per-function timeouts that replace the template's (the back-fill's remaining time comes from it).
        self.timeouts = dict(timeouts or {})
        self._running: dict[str, LambdaEmulator] = {}

    def derive(
        self, overrides: Mapping[str, str], *, timeouts: Mapping[str, int] | None = None
    ) -> EmulatorPool:
        """A new pool (its own emulators; close it) with these settings and timeouts on top of this one's."""
        return EmulatorPool(
            {**self.settings, **overrides}, self.build_dir, timeouts={**self.timeouts, **(timeouts or {})}
        )

    def built(self, function_id: str) -> BuiltFunction:
        """The artifact folders of ``function_id``."""
        config = function_config(function_id, self.build_dir)
        return BuiltFunction.from_build(
            function_id, self.build_dir, layer_id=LAYER_ID, handler=config.handler
        )

    def emulator(self, function_id: str) -> LambdaEmulator:
        """The running emulator of ``function_id`` (started now if needed)."""
        if function_id not in self._running:
            config = function_config(function_id, self.build_dir)
            emulator = LambdaEmulator(
                self.built(function_id),
                self.settings,
                timeout_seconds=self.timeouts.get(function_id, config.timeout_seconds),
                memory_mb=config.memory_mb,
            )
            emulator.start()
            self._running[function_id] = emulator
        return self._running[function_id]

    def invoke(self, function_id: str, event: Any) -> dict[str, Any]:
        """Invoke ``function_id`` with ``event`` and return its JSON object answer."""
        return self.emulator(function_id).invoke(event)

    def probe_imports(self, function_id: str, modules: list[str], probe_dir: Path) -> dict[str, Any]:
        """Where ``modules`` are imported from in ``function_id``'s emulated runtime.

        Runs a throw-away emulator configured exactly like the function's (same code folder, layer,
        working directory and settings) whose handler is a probe placed *after* them on the path.
        """
        probe_dir.mkdir(parents=True, exist_ok=True)
        (probe_dir / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE)
        built = self.built(function_id)
        probe = BuiltFunction(
            function_id, built.code_dir, built.layer_python_dir, f"{PROBE_MODULE}.lambda_handler"
        )
        with LambdaEmulator(probe, self.settings, extra_paths=[probe_dir]) as emulator:
            return emulator.invoke({"modules": modules})

    def close(self) -> None:
        """Stop every emulator this pool started."""
        running, self._running = self._running, {}
        for emulator in running.values():
            emulator.stop()


def load_event(name: str) -> dict[str, Any]:
    """A fresh copy of one of the shared ``events/`` files (tests adapt the copy, never the file)."""
    event: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return event


def unique_name(prefix: str) -> str:
    """A name no other test session uses."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# -- test data: MySQL ``bytemark_tokens`` ----------------------------------------------------------

TOKEN_TABLE_DDL = (REPO_ROOT / "local" / "migrations" / "001_bytemark_tokens.sql").read_text()
"""SPEC §3 as the project's migration creates it (one idempotent statement)."""


class TokenTable:
    """The ``bytemark_tokens`` rows of one MySQL database, for set-up and clean-up (autocommit)."""

    def __init__(self, settings: Mapping[str, str], database: str) -> None:
        self.database = database
        self._connection = pymysql.connect(
            host=settings["MYSQL_HOST"],
            port=int(settings.get("MYSQL_PORT") or 3306),
            user=settings["MYSQL_USER"],
            password=settings.get("MYSQL_PASSWORD", ""),
            connect_timeout=5,
            read_timeout=30,
            write_timeout=30,
            autocommit=True,
            charset="utf8mb4",
        )
        self._execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
        self._connection.select_db(database)
        self._execute(TOKEN_TABLE_DDL)

    def put(self, user_id: int, token: str | None) -> None:
        """Give ``user_id`` this token (None = a row whose token is NULL)."""
        self.put_many([(user_id, token)])

    def put_many(self, rows: Sequence[tuple[int, str | None]]) -> None:
        """Insert or replace many ``(user_id, token)`` rows in one statement."""
        if not rows:
            return
        with self._connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO bytemark_tokens (user_id, email, token, status) VALUES (%s, %s, %s, 'active')"
                " ON DUPLICATE KEY UPDATE token = VALUES(token)",
                [(user_id, f"user{user_id}@example.test", token) for user_id, token in rows],
            )

    def delete(self, user_ids: Iterable[int]) -> None:
        """Remove the rows of ``user_ids``."""
        ids = list(user_ids)
        if ids:
            placeholders = ", ".join(["%s"] * len(ids))
            self._execute(f"DELETE FROM bytemark_tokens WHERE user_id IN ({placeholders})", ids)

    def drop_database(self) -> None:
        """Drop the whole database (only for the throw-away ``btc_test_*`` ones)."""
        self._execute(f"DROP DATABASE IF EXISTS `{self.database}`")

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    def _execute(self, sql: str, args: Sequence[Any] | None = None) -> None:
        with self._connection.cursor() as cursor:
            cursor.execute(sql, args)


# -- test data: the functions' MongoDB collections -------------------------------------------------


class CacheDatabase:
    """The MongoDB collections the functions use, named as the functions read them from ``settings``."""

    def __init__(self, settings: Mapping[str, str]) -> None:
        # The production settings parser names the collections, so the tests look where the code writes.
        parsed = Settings.from_env(settings)
        self.settings = parsed
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            parsed.mongodb_uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000
        )
        self.name = parsed.mongodb_database
        database = self.client[self.name]
        self.cache: Collection[dict[str, Any]] = database[parsed.cache_collection]
        self.log: Collection[dict[str, Any]] = database[parsed.log_collection]
        self.claims: Collection[dict[str, Any]] = database[parsed.claim_collection]

    def document(self, user_id: int) -> dict[str, Any] | None:
        """The user's cache document (without ``_id`` and the pending log), or None."""
        return self.cache.find_one({"user_id": user_id}, {"_id": 0, "log_pending": 0})

    def log_entries(self, user_id: int) -> list[dict[str, Any]]:
        """The user's change-log entries, oldest first."""
        return list(self.log.find({"user_id": user_id}, {"_id": 0}).sort("_id", pymongo.ASCENDING))

    def set_timestamp(self, user_id: int, timestamp: int) -> None:
        """Make the user's cache look last synced at ``timestamp`` (unix seconds)."""
        result = self.cache.update_one({"user_id": user_id}, {"$set": {"timestamp": timestamp}})
        assert result.matched_count == 1, f"user {user_id} has no cache document to age"

    def insert_cache(self, user_id: int, timestamp: int) -> None:
        """A minimal contract §4 cache document (no passes) synced at ``timestamp``."""
        self.cache.insert_one({"user_id": user_id, "timestamp": timestamp, "passes": [], "passes4": []})

    def forget(self, user_ids: Iterable[int]) -> None:
        """Remove everything the functions stored about ``user_ids``: cache, change log, claims, throttles."""
        ids = list(user_ids)
        if not ids:
            return
        self.cache.delete_many({"user_id": {"$in": ids}})
        self.log.delete_many({"user_id": {"$in": ids}})
        self.claims.delete_many({"user_id": {"$in": ids}})
        self.claims.delete_many({"_id": {"$in": [f"throttle:forced-sync:{user_id}" for user_id in ids]}})

    def drop(self) -> None:
        """Drop the whole database (only for the throw-away per-session one)."""
        self.client.drop_database(self.name)

    def close(self) -> None:
        """Close the client."""
        self.client.close()


# -- test data: SQS (moto locally) -----------------------------------------------------------------


@dataclass(frozen=True)
class UpdateQueues:
    """The update queue, its DLQ and the redrive policy's receive limit."""

    url: str
    dlq_url: str
    max_receive_count: int


def sqs_client(settings: Mapping[str, str]) -> Any:
    """A boto3 SQS client for the settings' endpoint, region and (dummy) credentials."""
    return boto3.client(
        "sqs",
        endpoint_url=settings.get("AWS_ENDPOINT_URL") or None,
        region_name=settings.get("AWS_DEFAULT_REGION") or "us-east-1",
        aws_access_key_id=settings.get("AWS_ACCESS_KEY_ID") or "local",
        aws_secret_access_key=settings.get("AWS_SECRET_ACCESS_KEY") or "local",
    )


def queue_name(url: str) -> str:
    """The queue name at the end of a queue URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def ensure_update_queues(
    sqs: Any, queue_url: str, dlq_name: str, default_max_receive_count: int = 3
) -> UpdateQueues:
    """The update queue with a redrive policy to ``dlq_name``, created if missing (idempotent).

    An existing redrive policy (``local/services.sh`` sets one) is kept as it is; only a missing queue,
    DLQ or policy is made, as the service scripts would.
    """
    dlq_url: str = sqs.create_queue(QueueName=dlq_name)["QueueUrl"]
    dlq_attributes = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]
    dlq_arn = dlq_attributes["QueueArn"]
    url: str = sqs.create_queue(QueueName=queue_name(queue_url))["QueueUrl"]
    answer = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
    attributes = answer.get("Attributes", {})
    policy = json.loads(attributes["RedrivePolicy"]) if attributes.get("RedrivePolicy") else {}
    if policy.get("deadLetterTargetArn") != dlq_arn or "maxReceiveCount" not in policy:
        policy = {
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": int(policy.get("maxReceiveCount") or default_max_receive_count),
        }
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": json.dumps(policy)})
    return UpdateQueues(url, dlq_url, int(policy["maxReceiveCount"]))


def receive_all(sqs: Any, url: str, *, deadline_seconds: float = 60.0) -> list[dict[str, Any]]:
    """Every message visible in the queue now, each once (held invisible for 10 minutes, not deleted)."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        batch = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=600,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)
    raise AssertionError(f"{url} was still yielding messages after {deadline_seconds:.0f} s")


# -- the session's stores and test users ------------------------------------------------------------

USER_IDS = itertools.count(random.randrange(100, 1000) * 100_000)
"""User ids handed out in this session: unique per test, far from the ids in ``events/`` (42, 43, 7)."""


@dataclass(frozen=True)
class E2eStores:
    """Where this session's functions keep their data, and handles to set it up and read it back.

    MongoDB and MySQL use throw-away databases of this session (dropped at the end), so what a test
    asserts about "every user" (the back-fill) is not disturbed by other data on the same servers. The
    update queue is the configured one (it must exist, with its DLQ, for the functions and the poller).
    """

    settings: dict[str, str]
    tokens: TokenTable
    mongo: CacheDatabase
    sqs: Any
    queues: UpdateQueues


@dataclass(frozen=True)
class Account:
    """A test user: a Bytemark token in MySQL and (usually) passes in the simulator."""

    user_id: int
    token: str


class Accounts:
    """Hands out users unique to one test and removes what the test and the functions stored for them."""

    def __init__(self, stores: E2eStores, simulator: SimulatorServer) -> None:
        self._stores = stores
        self._simulator = simulator
        self.ids: list[int] = []

    def new_id(self) -> int:
        """A fresh user id, with nothing anywhere yet."""
        user_id = next(USER_IDS)
        self.ids.append(user_id)
        return user_id

    def new(self, *, current: int = 3, expired: int = 2) -> Account:
        """A user with a token row in MySQL and that many current and expired passes in the simulator."""
        user_id = self.new_id()
        account = Account(user_id, f"tok-e2e-{user_id}-{uuid.uuid4().hex}")
        self._simulator.admin.seed_user(user_id, account.token, current=current, expired=expired)
        self._stores.tokens.put(user_id, account.token)
        return account

    def cleanup(self) -> None:
        """Delete the token rows, caches, change logs and leases of every user handed out; clear faults."""
        self._simulator.admin.clear_faults()
        self._stores.tokens.delete(self.ids)
        self._stores.mongo.forget(self.ids)
