"""End-to-end harness: the artifacts of ``sam build``, the local settings, and one emulator per function.

The runner itself is ``local/emulator.py`` (shared with the local stack); this module adds what the tests
need around it: finding or producing the build, reading each function's handler, timeout, memory and
environment from the built template, checking that the local services answer, an import probe that shows
where a built function's modules (and its environment) really come from, and the test data helpers:
``bytemark_tokens`` rows in MySQL, the functions' MongoDB collections, and update queues (each with its
DLQ) on SQS.

Each function's environment follows the template, as ``local/stack.py`` builds it: the session's settings
(where the servers are) minus the variables another function owns, plus the function's own template
variables (which win), plus what a test overrides. Unlike the stack, the MongoDB URI and the MySQL
credentials are passed directly rather than through Secrets Manager: the local secrets name the shared
``portal`` database, and every session works in throw-away databases of its own.
"""

from __future__ import annotations

import functools
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pymongo
import pymysql
import yaml
from emulator import BuiltFunction, LambdaEmulator
from local_env import TemplateSettings, template_settings
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
    import os
    import sys


    def lambda_handler(event, context):
        files = {name: importlib.import_module(name).__file__ for name in event["modules"]}
        return {"files": files, "sys_path": list(sys.path), "environ": dict(os.environ)}
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


LOCAL_KNOB_PREFIX = "LOCAL_"
"""Settings of the local stack itself (``local/defaults.env``); never a function's, as in local/stack.py."""


@functools.cache
def _template_settings(template: Path, modified_ns: int) -> TemplateSettings:
    del modified_ns  # part of the cache key only: a rebuilt template is read again
    return template_settings(template)


def built_template_settings(build_dir: Path = BUILD_DIR) -> TemplateSettings:
    """What the built template says about every function (read once per build)."""
    template = build_dir / "template.yaml"
    return _template_settings(template, template.stat().st_mtime_ns)


def function_environment(
    function_id: str,
    settings: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    *,
    template: TemplateSettings,
) -> dict[str, str]:
    """The settings ``function_id`` runs with, following the template as ``local/stack.py`` does.

    ``settings`` say where the servers are (the session's databases, queues and simulator); a variable
    that another function owns in the template is dropped (in AWS this one does not get it), the
    function's own template variables with a known value replace the settings' (``IDENTITY_CLAIM``,
    ``REDELIVERY_*``, ``BYTEMARK_MAX_RETRIES`` …), and ``overrides`` - a test's changes, like a deployment
    with other parameter values - come last, for the variables this function gets at all. Every variable of
    the function's own ``Environment`` must end up with a value: one the template cannot give offline
    (``UPDATE_DLQ_URL`` is a queue's ``Ref``) must come from ``settings``.
    """
    function = template.function(function_id)
    elsewhere = template.variables_owned_elsewhere(function_id)

    def applicable(values: Mapping[str, str]) -> dict[str, str]:
        return {
            key: value
            for key, value in values.items()
            if key not in elsewhere and not key.startswith(LOCAL_KNOB_PREFIX)
        }

    environment = applicable(settings)
    environment.update(function.environment)
    environment.update(applicable(overrides or {}))
    if unresolved := sorted(name for name in function.own_variables if not environment.get(name)):
        raise AssertionError(
            f"{function_id}'s template variables {unresolved} have no local value: the e2e settings "
            "must provide them (as local/stack.py does for the deployed stack's resources)"
        )
    return environment


class EmulatorPool:
    """One emulator per built function, started on first use and kept for the session.

    Each function runs with ``function_environment``: the pool's ``settings`` shaped by the built
    template, then the pool's ``overrides``.
    """

    def __init__(
        self,
        settings: Mapping[str, str],
        build_dir: Path = BUILD_DIR,
        *,
        overrides: Mapping[str, str] | None = None,
        timeouts: Mapping[str, int] | None = None,
    ) -> None:
        self.settings = dict(settings)
        self.overrides = dict(overrides or {})
        self.build_dir = build_dir
        # Per-function timeouts that replace the template's (the back-fill's remaining time comes from it).
        self.timeouts = dict(timeouts or {})
        self._running: dict[str, LambdaEmulator] = {}

    def derive(
        self, overrides: Mapping[str, str], *, timeouts: Mapping[str, int] | None = None
    ) -> EmulatorPool:
        """A new pool (its own emulators; close it) with these overrides and timeouts on top of this one's.

        An override is a test's change to what a function gets (it beats the template's value); a variable
        the template gives only to other functions stays theirs.
        """
        return EmulatorPool(
            self.settings,
            self.build_dir,
            overrides={**self.overrides, **overrides},
            timeouts={**self.timeouts, **(timeouts or {})},
        )

    def environment(self, function_id: str) -> dict[str, str]:
        """The settings ``function_id`` runs with in this pool (see ``function_environment``)."""
        return function_environment(
            function_id, self.settings, self.overrides, template=built_template_settings(self.build_dir)
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
                self.environment(function_id),
                timeout_seconds=self.timeouts.get(function_id, config.timeout_seconds),
                memory_mb=config.memory_mb,
            )
            emulator.start()
            self._running[function_id] = emulator
        return self._running[function_id]

    def invoke(self, function_id: str, event: Any) -> dict[str, Any]:
        """Invoke ``function_id`` with ``event`` and return its JSON object answer."""
        return self.emulator(function_id).invoke(event)

    def log_records(self, function_id: str, message: str | None = None) -> list[dict[str, Any]]:
        """The function's JSON log lines so far (Powertools), only those with ``message`` if given."""
        records = []
        for line in self.emulator(function_id).log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (message is None or record.get("message") == message):
                records.append(record)
        return records

    def probe_imports(self, function_id: str, modules: list[str], probe_dir: Path) -> dict[str, Any]:
        """Where ``modules`` are imported from in ``function_id``'s emulated runtime, and its environment.

        Runs a throw-away emulator configured exactly like the function's (same code folder, layer,
        working directory and environment) whose handler is a probe placed *after* them on the path.
        """
        probe_dir.mkdir(parents=True, exist_ok=True)
        (probe_dir / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE)
        built = self.built(function_id)
        probe = BuiltFunction(
            function_id, built.code_dir, built.layer_python_dir, f"{PROBE_MODULE}.lambda_handler"
        )
        with LambdaEmulator(probe, self.environment(function_id), extra_paths=[probe_dir]) as emulator:
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
"""docs/contract.md §3 as the project's migration creates it (one idempotent statement)."""


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

    def clear(self) -> None:
        """Remove every row."""
        self._execute("DELETE FROM bytemark_tokens")

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
    """An update queue, its DLQ and the redrive policy's receive limit."""

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


def create_update_queues(
    sqs: Any, prefix: str, *, max_receive_count: int, visibility_timeout_seconds: int
) -> UpdateQueues:
    """A new update queue ``<prefix><random>`` whose redrive policy sends to its own new DLQ.

    As the template makes ``UpdateQueue`` and ``UpdateDeadLetterQueue`` (tests pass the template's
    maxReceiveCount and VisibilityTimeout, or smaller ones to see the redrive within a test); delete both
    with ``delete_update_queues``. The URLs are as SQS spells them (moto may name another host).
    """
    name = unique_name(prefix)
    dlq_url: str = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]
    dlq_arn = attributes["QueueArn"]
    policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
    url: str = sqs.create_queue(
        QueueName=name,
        Attributes={
            "RedrivePolicy": json.dumps(policy),
            "VisibilityTimeout": str(visibility_timeout_seconds),
        },
    )["QueueUrl"]
    return UpdateQueues(url, dlq_url, max_receive_count)


def delete_update_queues(sqs: Any, queues: UpdateQueues) -> None:
    """Delete a queue pair made by ``create_update_queues``."""
    for url in (queues.url, queues.dlq_url):
        sqs.delete_queue(QueueUrl=url)


def take_messages(
    sqs: Any, url: str, wanted: Callable[[dict[str, Any]], bool], *, deadline_seconds: float = 30.0
) -> list[dict[str, Any]]:
    """Delete and return every message visible in the queue now that ``wanted`` accepts (with its
    attributes and message attributes); every other message is left visible as it was."""
    taken: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    deadline = time.monotonic() + deadline_seconds
    try:
        # Read past whatever else the queue holds: each message is held briefly so it is seen once.
        while time.monotonic() < deadline:
            batch = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                VisibilityTimeout=60,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not batch:
                return taken
            for message in batch:
                if wanted(message):
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    taken.append(message)
                else:
                    held.append(message)
        raise AssertionError(f"{url} was still yielding messages after {deadline_seconds:.0f} s")
    finally:
        for message in held:
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )


def message_attribute(message: dict[str, Any], name: str) -> str | None:
    """A string message attribute of a received message, or None."""
    attribute = (message.get("MessageAttributes") or {}).get(name)
    return None if attribute is None else str(attribute.get("StringValue"))


# -- the session's stores and test users ------------------------------------------------------------

USER_IDS = itertools.count(random.randrange(100, 1000) * 100_000)
"""User ids handed out in this session: unique per test, far from the ids in ``events/`` (42, 43, 7)."""


@dataclass(frozen=True)
class E2eStores:
    """Where this session's functions keep their data, and handles to set it up and read it back.

    MongoDB and MySQL use throw-away databases of this session (dropped at the end), so what a test
    asserts about "every user" (the back-fill) is not disturbed by other data on the same servers. The
    update queue and its DLQ are this session's too (deleted at the end), made like the template's: the
    functions send refreshes to the queue, and user_updates dead-letters to the DLQ (``UPDATE_DLQ_URL``).
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

    def new_idle(self, *, unused: int = 2, expired: int = 1) -> Account:
        """A user whose current passes are all bought and never activated: none is in use and none changes
        by the clock alone (no expiration), so an old cache of theirs is refreshed behind the rider."""
        account = self.new(current=0, expired=expired)
        for _ in range(unused):
            self._simulator.admin.purchase(account.user_id, "Local Single Ride")
        return account

    def new_riding(self, *, unused: int = 1, expired: int = 1) -> Account:
        """A user riding on a single ride activated just now (a ride ticket in use for 90 minutes) and holding
        ``unused`` never activated passes: an old cache of theirs is synced before the read is answered."""
        account = self.new_idle(unused=unused, expired=expired)
        riding = self._simulator.admin.purchase(account.user_id, "Local Single Ride")
        self._simulator.admin.activate(account.user_id, riding["uuid"])
        return account

    def cleanup(self) -> None:
        """Delete the token rows, caches, change logs and claims of every user handed out; clear faults."""
        self._simulator.admin.clear_faults()
        self._stores.tokens.delete(self.ids)
        self._stores.mongo.forget(self.ids)
