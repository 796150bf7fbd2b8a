"""Fixtures of the storage adapter integration tests: real FerretDB/MongoDB, MariaDB/MySQL and moto SQS.

Endpoints come from the environment (MONGODB_URI, MYSQL_*, AWS_ENDPOINT_URL …) with ``local/defaults.env``
as the default. An unreachable server fails the test (never a skip). Every session uses its own uniquely
named MongoDB database, MySQL database and SQS queues, and removes them afterwards.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import bson
import pymongo
import pymysql
import pytest
from pymongo.database import Database
from pymongo.errors import PyMongoError
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent

from bytemark_cache.adapters.mongo_store import MongoCacheStore, connect

DEFAULTS_FILE = Path(__file__).resolve().parents[2] / "local" / "defaults.env"
SERVER_TIMEOUT_MS = 3000
# The SPEC §3 table exactly as the migration creates it (one statement).
TABLE_DDL = (DEFAULTS_FILE.parent / "migrations" / "001_bytemark_tokens.sql").read_text()


@cache
def _defaults() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in DEFAULTS_FILE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def setting(name: str) -> str:
    """The environment's value of ``name``, else local/defaults.env's."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    try:
        return _defaults()[name]
    except KeyError:
        pytest.fail(f"{name} is neither in the environment nor in {DEFAULTS_FILE}")


def redact(uri: str) -> str:
    """``uri`` without its password (for failure messages)."""
    return re.sub(r"(mongodb(?:\+srv)?://[^:/@]*:)[^@]*@", r"\1***@", uri)


def unique_name(prefix: str) -> str:
    """A name no other test session uses."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# -- MongoDB (FerretDB locally) -------------------------------------------------------------------


class CommandRecorder(CommandListener):
    """Records every command a MongoClient sends: name, collection and encoded size in bytes."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any], int]] = []

    def started(self, event: CommandStartedEvent) -> None:
        """Remember the command with its BSON size."""
        command = dict(event.command)
        self.commands.append((event.command_name, command, len(bson.encode(command))))

    def succeeded(self, event: CommandSucceededEvent) -> None:
        """Nothing to record."""

    def failed(self, event: CommandFailedEvent) -> None:
        """Nothing to record."""

    def clear(self) -> None:
        """Forget what was recorded."""
        self.commands.clear()

    def named(self, *names: str) -> list[tuple[str, dict[str, Any], int]]:
        """The recorded commands with one of ``names`` (ignoring handshakes, pings, endSessions …)."""
        return [command for command in self.commands if command[0] in names]


@pytest.fixture(scope="session")
def store_mongo_uri() -> str:
    """The MongoDB URI under test."""
    return setting("MONGODB_URI")


@pytest.fixture(scope="session")
def store_mongo_db(store_mongo_uri: str) -> Iterator[Database[dict[str, Any]]]:
    """A fresh, uniquely named database on the real server; dropped after the session."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        store_mongo_uri, serverSelectionTimeoutMS=SERVER_TIMEOUT_MS, connectTimeoutMS=SERVER_TIMEOUT_MS
    )
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        client.close()
        pytest.fail(
            f"MongoDB is not reachable at {redact(store_mongo_uri)} (start it: local/services.sh up): {exc}"
        )
    name = unique_name("btc_test_")
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture
def store_collections() -> tuple[str, str, str]:
    """Cache, log and lease collection names unique to one test."""
    suffix = uuid.uuid4().hex[:8]
    return f"cache_{suffix}", f"log_{suffix}", f"leases_{suffix}"


@pytest.fixture
def mongo_cache_store(
    store_mongo_db: Database[dict[str, Any]], store_collections: tuple[str, str, str]
) -> MongoCacheStore:
    """A MongoCacheStore on the session database with its own collections and indexes."""
    store = MongoCacheStore(store_mongo_db, *store_collections)
    store.ensure_indexes()
    return store


@pytest.fixture
def command_recorder() -> CommandRecorder:
    """A command command_recorder for a monitored client."""
    return CommandRecorder()


@pytest.fixture
def monitored_mongo_db(
    store_mongo_uri: str, store_mongo_db: Database[dict[str, Any]], command_recorder: CommandRecorder
) -> Iterator[Database[dict[str, Any]]]:
    """The session database through a dedicated client (built by ``connect``) whose commands are recorded."""
    database = connect(store_mongo_uri, store_mongo_db.name, event_listeners=[command_recorder])
    try:
        yield database
    finally:
        database.client.close()


@pytest.fixture
def monitored_cache_store(
    monitored_mongo_db: Database[dict[str, Any]],
    store_collections: tuple[str, str, str],
    mongo_cache_store: MongoCacheStore,
    command_recorder: CommandRecorder,
) -> MongoCacheStore:
    """A MongoCacheStore on the same collections as ``mongo_cache_store``, through the recorded client."""
    store = MongoCacheStore(monitored_mongo_db, *store_collections)
    command_recorder.clear()
    return store


# -- MySQL (MariaDB locally) ----------------------------------------------------------------------


def mysql_settings() -> dict[str, Any]:
    """Connection arguments of the MySQL server under test (without a database)."""
    return {
        "host": setting("MYSQL_HOST"),
        "port": int(setting("MYSQL_PORT")),
        "user": setting("MYSQL_USER"),
        "password": os.environ.get("MYSQL_PASSWORD", _defaults().get("MYSQL_PASSWORD", "")),
    }


def mysql_admin_connection(database: str | None = None) -> pymysql.connections.Connection[Any]:
    """A plain autocommit connection for test set-up (fails the test when the server is unreachable)."""
    settings = mysql_settings()
    try:
        return pymysql.connect(
            **settings, database=database, autocommit=True, connect_timeout=5, read_timeout=10
        )
    except pymysql.MySQLError as exc:
        pytest.fail(
            f"MySQL is not reachable at {settings['host']}:{settings['port']} as {settings['user']} "
            f"(start it: local/services.sh up mariadb): {exc}"
        )


@pytest.fixture(scope="session")
def store_mysql_settings() -> dict[str, Any]:
    """Host, port, user and password of the MySQL server under test."""
    return mysql_settings()


@pytest.fixture(scope="session")
def store_mysql_db() -> Iterator[str]:
    """A fresh, uniquely named database holding the SPEC §3 ``bytemark_tokens`` table; dropped afterwards."""
    name = unique_name("btc_test_")
    connection = mysql_admin_connection()
    try:
        with connection.cursor() as cursor:
            try:
                cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            except pymysql.MySQLError as exc:
                pytest.fail(
                    f"cannot create the test database {name} as {mysql_settings()['user']}: {exc}. "
                    "The test user needs: GRANT ALL ON `btc\\_test\\_%`.* TO <user>"
                )
            cursor.execute(f"USE `{name}`")
            cursor.execute(TABLE_DDL)
        yield name
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()


@pytest.fixture
def store_mysql_admin(store_mysql_db: str) -> Iterator[pymysql.connections.Connection[Any]]:
    """A separate autocommit connection to the test database, for set-up and for killing connections."""
    connection = mysql_admin_connection(store_mysql_db)
    try:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM bytemark_tokens")
        yield connection
    finally:
        connection.close()


# -- SQS (moto locally) ---------------------------------------------------------------------------


def make_sqs_client() -> Any:
    """A boto3 SQS client for the endpoint under test (region and dummy credentials from the settings)."""
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=setting("AWS_ENDPOINT_URL"),
        region_name=setting("AWS_DEFAULT_REGION"),
        aws_access_key_id=setting("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=setting("AWS_SECRET_ACCESS_KEY"),
    )


@pytest.fixture
def store_sqs_client() -> Any:
    """A boto3 SQS client of its own for the test (to read what the adapter sent)."""
    return make_sqs_client()


@pytest.fixture
def store_queue_url() -> Iterator[str]:
    """A uniquely named standard queue for one test; deleted afterwards."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = make_sqs_client()
    try:
        url: str = client.create_queue(QueueName=unique_name("btc-test-"))["QueueUrl"]
    except (BotoCoreError, ClientError) as exc:
        pytest.fail(f"SQS is not reachable at {setting('AWS_ENDPOINT_URL')} (start moto): {exc}")
    try:
        yield url
    finally:
        client.delete_queue(QueueUrl=url)
