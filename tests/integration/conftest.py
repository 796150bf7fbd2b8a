"""Fixtures of the integration tests: the real local servers, each test starting from a clean state.

Endpoints come from ``local_env`` (local/defaults.env overridden by the environment). A server that does
not answer fails the test with the command that starts it — never a skip, so a green run always means
the servers were really exercised.

Isolation: the session uses its own MongoDB database, MySQL database (schema from local/migrations) and
SQS queue pair, all named ``btc_test_<run id>`` / ``btc-test-<run id>-…`` and removed at the end. Each
test that asks for them gets them emptied: the MongoDB database is dropped, ``bytemark_tokens`` is
emptied, the queues are purged and the Bytemark simulator is reset. ``integration_env`` and
``settings`` point the application at exactly these resources.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import boto3
import pymongo
import pymysql
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pymongo.database import Database
from pymongo.errors import PyMongoError
from pymysql.constants import CLIENT

from bytemark_cache.config import Settings
from bytemark_simulator import SimulatorServer

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "local" / "migrations"
SERVER_TIMEOUT_MS = 3000
START_HINT = "start the local servers with `make up-services` (or local/services.sh up)"

MySqlConnection: TypeAlias = "pymysql.connections.Connection[Any]"
SeedToken: TypeAlias = Callable[..., None]


@dataclass(frozen=True)
class QueuePair:
    """The session's update queue and its dead-letter queue (redrive after ``max_receive_count``)."""

    url: str
    arn: str
    dlq_url: str
    dlq_arn: str
    max_receive_count: int


def fail_setup(message: str, *, pytrace: bool = False) -> NoReturn:
    """Fail the test with ``message`` alone: no chained driver traceback burying the hint."""
    __tracebackhide__ = True
    raise pytest.fail.Exception(message, pytrace=pytrace) from None


def _redact(uri: str) -> str:
    """``uri`` without a password, for failure messages."""
    scheme, separator, rest = uri.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not separator or not at:
        return uri
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


@pytest.fixture(scope="session")
def run_id() -> str:
    """A name fragment no other test session uses."""
    return uuid.uuid4().hex[:12]


# -- MongoDB (FerretDB locally) -------------------------------------------------------------------


@pytest.fixture(scope="session")
def mongo_client(local_env: dict[str, str]) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    """A client of the MongoDB server under test, checked with a ping."""
    uri = local_env["MONGODB_URI"]
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=SERVER_TIMEOUT_MS, connectTimeoutMS=SERVER_TIMEOUT_MS
    )
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        client.close()
        fail_setup(f"MongoDB does not answer at {_redact(uri)}: {exc}. {START_HINT}", pytrace=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mongo_db(
    mongo_client: pymongo.MongoClient[dict[str, Any]], run_id: str
) -> Iterator[Database[dict[str, Any]]]:
    """The session's MongoDB database, dropped before and after the test (so always empty at start)."""
    name = f"btc_test_{run_id}"
    mongo_client.drop_database(name)
    try:
        yield mongo_client[name]
    finally:
        mongo_client.drop_database(name)


# -- MySQL (MariaDB locally) ----------------------------------------------------------------------


def _mysql_connect(local_env: dict[str, str], database: str | None = None, **extra: Any) -> MySqlConnection:
    try:
        return pymysql.connect(
            host=local_env["MYSQL_HOST"],
            port=int(local_env["MYSQL_PORT"]),
            user=local_env["MYSQL_USER"],
            password=local_env.get("MYSQL_PASSWORD", ""),
            database=database,
            autocommit=True,
            connect_timeout=5,
            read_timeout=30,
            **extra,
        )
    except pymysql.MySQLError as exc:
        fail_setup(
            f"MySQL does not accept {local_env['MYSQL_USER']} at "
            f"{local_env['MYSQL_HOST']}:{local_env['MYSQL_PORT']}: {exc}. {START_HINT}",
            pytrace=False,
        )


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
def mysql_database(local_env: dict[str, str], run_id: str) -> Iterator[str]:
    """A MySQL database of this session with the schema of local/migrations; dropped at the end."""
    name = f"btc_test_{run_id}"
    connection = _mysql_connect(local_env, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with connection.cursor() as cursor:
            try:
                cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            except pymysql.MySQLError as exc:
                fail_setup(
                    f"cannot create the test database {name} as {local_env['MYSQL_USER']}: {exc}. "
                    "local/services.sh up grants it ALL on `btc\\_test\\_%`.*",
                    pytrace=False,
                )
        connection.select_db(name)
        if not apply_migrations(connection):
            fail_setup(f"no migrations in {MIGRATIONS_DIR}", pytrace=False)
        yield name
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()


@pytest.fixture
def mysql_conn(local_env: dict[str, str], mysql_database: str) -> Iterator[MySqlConnection]:
    """An autocommit connection to the session's MySQL database; ``bytemark_tokens`` emptied around it."""
    connection = _mysql_connect(local_env, mysql_database)
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
    """``seed_token(user_id, token, *, email=None, status="ACTIVE")`` upserts a ``bytemark_tokens`` row.

    The rows go when the test ends (``mysql_conn`` empties the table).
    """

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


def _aws_client(service: str, local_env: dict[str, str]) -> Any:
    return boto3.client(
        service,
        endpoint_url=local_env["AWS_ENDPOINT_URL"],
        region_name=local_env["AWS_DEFAULT_REGION"],
        aws_access_key_id=local_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=local_env["AWS_SECRET_ACCESS_KEY"],
        config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}),
    )


@pytest.fixture(scope="session")
def sqs_client(local_env: dict[str, str]) -> Any:
    """A boto3 SQS client of the local endpoint, checked with ListQueues."""
    client = _aws_client("sqs", local_env)
    try:
        client.list_queues()
    except (BotoCoreError, ClientError) as exc:
        fail_setup(
            f"SQS does not answer at {local_env['AWS_ENDPOINT_URL']}: {exc}. {START_HINT}", pytrace=False
        )
    return client


@pytest.fixture(scope="session")
def secrets_client(local_env: dict[str, str], sqs_client: Any) -> Any:
    """A boto3 Secrets Manager client of the local endpoint (reachability checked through SQS)."""
    return _aws_client("secretsmanager", local_env)


@pytest.fixture(scope="session")
def session_queues(sqs_client: Any, run_id: str) -> Iterator[QueuePair]:
    """An update queue and DLQ of this session, wired like the real pair; deleted at the end."""
    dlq_url = sqs_client.create_queue(QueueName=f"btc-test-{run_id}-dlq")["QueueUrl"]
    dlq_arn = sqs_client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    max_receive_count = 3
    url = sqs_client.create_queue(
        QueueName=f"btc-test-{run_id}-updates",
        Attributes={
            "VisibilityTimeout": "30",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
            ),
        },
    )["QueueUrl"]
    arn = sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    try:
        yield QueuePair(
            url=url, arn=arn, dlq_url=dlq_url, dlq_arn=dlq_arn, max_receive_count=max_receive_count
        )
    finally:
        sqs_client.delete_queue(QueueUrl=url)
        sqs_client.delete_queue(QueueUrl=dlq_url)


@pytest.fixture
def update_queue(sqs_client: Any, session_queues: QueuePair) -> QueuePair:
    """The session's queue pair, purged so the test starts with no messages."""
    for queue_url in (session_queues.url, session_queues.dlq_url):
        sqs_client.purge_queue(QueueUrl=queue_url)
    return session_queues


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
    """The session's simulator, reset (no users, no faults) for this test."""
    simulator_server.admin.reset()
    return simulator_server


# -- The application's view -----------------------------------------------------------------------


@pytest.fixture
def integration_env(
    local_env: dict[str, str],
    mongo_db: Database[dict[str, Any]],
    mysql_database: str,
    mysql_conn: MySqlConnection,
    update_queue: QueuePair,
    simulator: SimulatorServer,
) -> dict[str, str]:
    """The application's environment aimed at this session's clean resources and the simulator."""
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
