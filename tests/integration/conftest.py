"""Fixtures of the integration tests: the real local servers, each test starting from a clean state.

Endpoints come from ``local_env`` (local/defaults.env overridden by the environment). A server that does
not answer fails the test with the command that starts it — never a skip, so a green run always means
the servers were really exercised.

Isolation: every resource is named ``btc_test_…`` / ``btc-test-…`` and removed afterwards.
- MongoDB: ``mongo_db`` is the session's database, dropped around each test; ``collection_names`` (cache,
  log, claims) are unique to the test; ``monitored_cache_store`` records what its own client sends.
- MySQL: ``mysql_database`` is created once per session from local/migrations/*.sql; ``mysql_conn``
  empties ``bytemark_tokens`` around each test (and may KILL the application's connections).
- SQS: ``update_queue`` is a queue and its dead-letter queue made for the test alone.
- Bytemark: ``simulator`` is the session's in-process simulator, reset for the test.
``integration_env`` and ``settings`` point the application at exactly these resources.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import boto3
import bson
import pymongo
import pymysql
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pymongo.database import Database
from pymongo.errors import PyMongoError
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent
from pymysql.constants import CLIENT

from bytemark_cache.adapters.bytemark_http import BytemarkHttpSource
from bytemark_cache.adapters.mongo_indexes import ensure_indexes
from bytemark_cache.adapters.mongo_store import MongoCacheStore, connect
from bytemark_cache.config import Settings
from bytemark_cache.errors import StoreError
from bytemark_simulator import AdminClient, SimulatorServer
from tests.fakes import RecordingSleep

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "local" / "migrations"
SERVER_TIMEOUT_MS = 3000

type MongoDatabase = "Database[dict[str, Any]]"
type MySqlConnection = "pymysql.connections.Connection[Any]"
type SeedToken = Callable[..., None]
type RecordedCommand = tuple[str, dict[str, Any], int]
type SourceFactory = Callable[..., BytemarkHttpSource]


@dataclass(frozen=True)
class QueuePair:
    """A test's update queue and its dead-letter queue (redrive after ``max_receive_count``)."""

    url: str
    arn: str
    dlq_url: str
    dlq_arn: str
    max_receive_count: int


def unique_id() -> str:
    """A name fragment no other test or session uses."""
    return uuid.uuid4().hex[:12]


def fail_setup(message: str) -> NoReturn:
    """Fail the test with ``message`` alone: no chained driver traceback burying the hint."""
    __tracebackhide__ = True
    raise pytest.fail.Exception(message, pytrace=False) from None


def server_down(problem: str, exc: BaseException) -> NoReturn:
    """Fail the test: ``problem`` (which server, where), the driver's reason and how to start it."""
    __tracebackhide__ = True
    fail_setup(f"{problem}: {exc}. Start it with `make up-services` (or local/services.sh up).")


def redact(uri: str) -> str:
    """``uri`` without its password, for failure messages."""
    scheme, separator, rest = uri.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not separator or not at:
        return uri
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


@pytest.fixture(scope="session")
def run_id() -> str:
    """The name fragment of this session's databases."""
    return unique_id()


# -- MongoDB (FerretDB locally) -------------------------------------------------------------------


class CommandRecorder(CommandListener):
    """Records every command a MongoClient sends: name, body and encoded size in bytes."""

    def __init__(self) -> None:
        self.commands: list[RecordedCommand] = []

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

    def named(self, *names: str) -> list[RecordedCommand]:
        """The recorded commands with one of ``names`` (ignoring handshakes, pings, endSessions …)."""
        return [command for command in self.commands if command[0] in names]


@pytest.fixture(scope="session")
def mongo_client(local_env: dict[str, str]) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    """A client of the MongoDB server under test (built like the application's), checked with a ping."""
    uri = local_env["MONGODB_URI"]
    try:
        client = connect(uri, "admin", timeout_ms=SERVER_TIMEOUT_MS).client
    except StoreError as exc:
        fail_setup(f"MONGODB_URI {redact(uri)} is unusable: {exc}")
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        client.close()
        server_down(f"MongoDB does not answer at {redact(uri)}", exc)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mongo_db(mongo_client: pymongo.MongoClient[dict[str, Any]], run_id: str) -> Iterator[MongoDatabase]:
    """The session's MongoDB database, dropped before and after the test (so always empty at start)."""
    name = f"btc_test_{run_id}"
    mongo_client.drop_database(name)
    try:
        yield mongo_client[name]
    finally:
        mongo_client.drop_database(name)


@pytest.fixture
def collection_names() -> tuple[str, str, str]:
    """Cache, log and claim collection names unique to the test."""
    suffix = unique_id()
    return f"cache_{suffix}", f"log_{suffix}", f"claims_{suffix}"


@pytest.fixture
def mongo_cache_store(mongo_db: MongoDatabase, collection_names: tuple[str, str, str]) -> MongoCacheStore:
    """A MongoCacheStore on ``mongo_db`` and the test's collections, its indexes made (the deploy step)."""
    cache, log, claims = collection_names
    ensure_indexes(mongo_db, {"cache": cache, "log": log, "claims": claims})
    return MongoCacheStore(mongo_db, *collection_names)


@pytest.fixture
def command_recorder() -> CommandRecorder:
    """The recorder of every command ``monitored_cache_store``'s client sends."""
    return CommandRecorder()


@pytest.fixture
def monitored_cache_store(
    local_env: dict[str, str],
    mongo_cache_store: MongoCacheStore,
    mongo_db: MongoDatabase,
    collection_names: tuple[str, str, str],
    command_recorder: CommandRecorder,
) -> Iterator[MongoCacheStore]:
    """``mongo_cache_store``'s collections through a client of its own (built by ``connect``), recorded."""
    database = connect(local_env["MONGODB_URI"], mongo_db.name, event_listeners=[command_recorder])
    try:
        store = MongoCacheStore(database, *collection_names)
        command_recorder.clear()
        yield store
    finally:
        database.client.close()


# -- MySQL (MariaDB locally) ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def mysql_connect_args(local_env: dict[str, str]) -> dict[str, Any]:
    """Host, port, user and password of the MySQL server under test (``pymysql.connect`` keywords)."""
    return {
        "host": local_env["MYSQL_HOST"],
        "port": int(local_env["MYSQL_PORT"]),
        "user": local_env["MYSQL_USER"],
        "password": local_env.get("MYSQL_PASSWORD", ""),
    }


def connect_mysql(connect_args: dict[str, Any], database: str | None = None, **extra: Any) -> MySqlConnection:
    """An autocommit connection (to ``database`` if given); a refusing server fails the test."""
    try:
        return pymysql.connect(
            **connect_args,
            database=database,
            autocommit=True,
            connect_timeout=5,
            read_timeout=30,
            **extra,
        )
    except pymysql.MySQLError as exc:
        where = f"{connect_args['host']}:{connect_args['port']}/{database or ''}"
        server_down(f"MySQL does not accept {connect_args['user']} at {where}", exc)


def apply_migrations(connection: MySqlConnection) -> list[str]:
    """Run local/migrations/*.sql in name order on the connection's database; return the file names."""
    applied: list[str] = []
    with connection.cursor() as cursor:
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            cursor.execute(path.read_text(encoding="utf-8"))
            while cursor.nextset():
                pass
            applied.append(path.name)
    return applied


@pytest.fixture(scope="session")
def mysql_database(mysql_connect_args: dict[str, Any], run_id: str) -> Iterator[str]:
    """A MySQL database of this session with the schema of local/migrations; dropped at the end."""
    name = f"btc_test_{run_id}"
    connection = connect_mysql(mysql_connect_args, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with connection.cursor() as cursor:
            try:
                cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            except pymysql.MySQLError as exc:
                fail_setup(
                    f"cannot create the test database {name} as {mysql_connect_args['user']}: {exc}. "
                    "local/services.sh up grants it ALL on `btc\\_test\\_%`.*"
                )
        connection.select_db(name)
        if not apply_migrations(connection):
            fail_setup(f"no migrations in {MIGRATIONS_DIR}")
        yield name
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()


@pytest.fixture
def mysql_conn(mysql_connect_args: dict[str, Any], mysql_database: str) -> Iterator[MySqlConnection]:
    """A test-side autocommit connection to ``mysql_database``; ``bytemark_tokens`` emptied around it."""
    connection = connect_mysql(mysql_connect_args, mysql_database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM bytemark_tokens")
        yield connection
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM bytemark_tokens")
    finally:
        connection.close()


@pytest.fixture
def seed_token(mysql_conn: MySqlConnection) -> SeedToken:
    """``seed_token(user_id, token, *, email=None, status="ACTIVE")`` upserts a ``bytemark_tokens`` row."""

    def seed(
        user_id: int, token: str | None, *, email: str | None = None, status: str | None = "ACTIVE"
    ) -> None:
        with mysql_conn.cursor() as cursor:
            cursor.execute(
                "INSERT INTO bytemark_tokens (user_id, email, token, status) VALUES (%s, %s, %s, %s) "
                "ON DUPLICATE KEY UPDATE "
                "email = VALUES(email), token = VALUES(token), status = VALUES(status)",
                (user_id, email, token, status),
            )

    return seed


# -- SQS and Secrets Manager (moto locally) -------------------------------------------------------


def aws_client(service: str, local_env: dict[str, str]) -> Any:
    """A boto3 client of the local endpoint with the local region and (dummy) credentials."""
    return boto3.client(
        service,
        endpoint_url=local_env["AWS_ENDPOINT_URL"],
        region_name=local_env["AWS_DEFAULT_REGION"],
        aws_access_key_id=local_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=local_env["AWS_SECRET_ACCESS_KEY"],
        config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}),
    )


@pytest.fixture(scope="session")
def aws_endpoint(local_env: dict[str, str]) -> str:
    """The local AWS endpoint (moto), checked once with ListQueues."""
    endpoint = local_env["AWS_ENDPOINT_URL"]
    try:
        aws_client("sqs", local_env).list_queues()
    except (BotoCoreError, ClientError) as exc:
        server_down(f"SQS does not answer at {endpoint}", exc)
    return endpoint


@pytest.fixture
def sqs_client(local_env: dict[str, str], aws_endpoint: str) -> Any:
    """A boto3 SQS client of the test's own (event hooks the test registers on it go with it)."""
    return aws_client("sqs", local_env)


@pytest.fixture(scope="session")
def secrets_client(local_env: dict[str, str], aws_endpoint: str) -> Any:
    """A boto3 Secrets Manager client of the local endpoint."""
    return aws_client("secretsmanager", local_env)


@pytest.fixture
def update_queue(sqs_client: Any) -> Iterator[QueuePair]:
    """An update queue and DLQ of the test alone, wired like the real pair; deleted afterwards."""
    name = f"btc-test-{unique_id()}"
    max_receive_count = 3

    def arn_of(queue_url: str) -> str:
        attributes = sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        return str(attributes["Attributes"]["QueueArn"])

    with ExitStack() as cleanup:
        dlq_url = sqs_client.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        cleanup.callback(sqs_client.delete_queue, QueueUrl=dlq_url)
        dlq_arn = arn_of(dlq_url)
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
        url = sqs_client.create_queue(
            QueueName=f"{name}-updates",
            Attributes={"VisibilityTimeout": "30", "RedrivePolicy": json.dumps(redrive)},
        )["QueueUrl"]
        cleanup.callback(sqs_client.delete_queue, QueueUrl=url)
        yield QueuePair(
            url=url, arn=arn_of(url), dlq_url=dlq_url, dlq_arn=dlq_arn, max_receive_count=max_receive_count
        )


# -- Bytemark simulator ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[SimulatorServer]:
    """The in-process Bytemark simulator, one per session on a free port."""
    server = SimulatorServer(host="127.0.0.1", port=0, seed=1).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def simulator(simulator_server: SimulatorServer) -> SimulatorServer:
    """The session's simulator, reset (no users, no faults, its own clock) for this test."""
    simulator_server.admin.reset()
    return simulator_server


@pytest.fixture
def sleeps() -> RecordingSleep:
    """The waits of the sources ``source_factory`` makes (they never really sleep)."""
    return RecordingSleep()


@pytest.fixture
def source_factory(
    simulator: SimulatorServer, sleeps: RecordingSleep
) -> Iterator[Callable[..., SourceFactory]]:
    """``source_factory(**defaults)`` is a ``make_source(**overrides)``: BytemarkHttpSources on ``simulator``
    (5 s timeout, pages of 50, at most 20, waits recorded in ``sleeps``, seeded jitter), ``defaults`` then
    ``overrides`` winning; every source made is closed after the test."""
    created: list[BytemarkHttpSource] = []

    def with_defaults(**defaults: Any) -> SourceFactory:
        def make_source(**overrides: Any) -> BytemarkHttpSource:
            options: dict[str, Any] = {
                "timeout_seconds": 5.0,
                "page_size": 50,
                "max_pages": 20,
                "sleep": sleeps,
                "rng": random.Random(3),
                **defaults,
                **overrides,
            }
            source = BytemarkHttpSource(simulator.url, **options)
            created.append(source)
            return source

        return make_source

    yield with_defaults
    for source in created:
        source.close()


def user_request_counts(admin: AdminClient, user_id: int) -> tuple[int, int]:
    """How many v1 and v4 requests the simulator answered for ``user_id``."""
    per_user = admin.request_counts()["by_user"].get(str(user_id), {"v1": 0, "v4": 0})
    return per_user["v1"], per_user["v4"]


# -- The application's view -----------------------------------------------------------------------


@pytest.fixture
def integration_env(
    local_env: dict[str, str],
    mongo_db: MongoDatabase,
    mysql_database: str,
    mysql_conn: MySqlConnection,
    update_queue: QueuePair,
    simulator: SimulatorServer,
) -> dict[str, str]:
    """The application's environment aimed at this test's clean resources and the simulator."""
    return {
        **local_env,
        "MONGODB_DATABASE": mongo_db.name,
        "MYSQL_DATABASE": mysql_database,
        "UPDATE_QUEUE_URL": update_queue.url,
        "BYTEMARK_API_URL": simulator.url,
    }


@pytest.fixture
def settings(integration_env: dict[str, str]) -> Settings:
    """``Settings.from_env`` of ``integration_env``."""
    return Settings.from_env(integration_env)
