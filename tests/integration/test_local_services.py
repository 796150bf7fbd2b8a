"""The local servers are real and provisioned as the stack expects (what local/services.sh promises).

FerretDB: answers the wire protocol and supports exactly the update features the cache store relies on;
the features FerretDB 1.x silently ignores are pinned down too, so an upgrade that changes them shows.
MariaDB: the contract §3 schema is in the configured database, put there by the recorded migrations.
moto: the update queue redrives to its DLQ and both secrets hold the local settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymongo import DeleteOne, InsertOne, ReturnDocument, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from bytemark_cache.config import Settings
from tests.integration.conftest import MIGRATIONS_DIR, MySqlConnection, QueuePair, SeedToken, connect_mysql

REPO_ROOT = Path(__file__).resolve().parents[2]
SIXTEEN_MIB = 16 * 1024 * 1024


def pinned_ferretdb_version() -> str:
    """The FerretDB version the installer builds (local/services/common.sh)."""
    text = (REPO_ROOT / "local" / "services" / "common.sh").read_text(encoding="utf-8")
    match = re.search(r'^BTC_FERRETDB_VERSION="([^"]+)"', text, flags=re.MULTILINE)
    assert match, "BTC_FERRETDB_VERSION not found in local/services/common.sh"
    return match.group(1)


def is_ferretdb(database: Database[dict[str, Any]]) -> bool:
    """Whether the server is FerretDB (it adds ``ferretdbVersion`` to buildInfo)."""
    return "ferretdbVersion" in database.client.admin.command("buildInfo")


def cache_document(database: Database[dict[str, Any]], uuids: list[str]) -> Any:
    """A cache-like collection holding user 42's document with one element per uuid."""
    collection = database["cache"]
    collection.insert_one(
        {
            "user_id": 42,
            "passes": [
                {"pass_uuid": uuid, "status": "USABLE", "n": index} for index, uuid in enumerate(uuids)
            ],
        }
    )
    return collection


def pass_uuids(collection: Any) -> list[str]:
    """The pass uuids of user 42's document, in stored order."""
    return [element["pass_uuid"] for element in collection.find_one({"user_id": 42})["passes"]]


# -- FerretDB -------------------------------------------------------------------------------------


def test_mongodb_answers_ping_and_build_info(mongo_db: Database[dict[str, Any]]) -> None:
    admin = mongo_db.client.admin

    assert admin.command("ping")["ok"] == 1.0
    build_info = admin.command("buildInfo")
    assert build_info["ok"] == 1.0
    assert build_info["maxBsonObjectSize"] == SIXTEEN_MIB  # the limit passes4's bound protects against
    if "ferretdbVersion" in build_info:
        assert build_info["ferretdbVersion"] == pinned_ferretdb_version()


def test_unique_index_rejects_a_second_document_for_the_same_user(mongo_db: Database[dict[str, Any]]) -> None:
    collection = mongo_db["cache"]
    collection.create_index("user_id", unique=True)
    collection.insert_one({"user_id": 7})

    with pytest.raises(DuplicateKeyError):
        collection.insert_one({"user_id": 7})
    assert collection.count_documents({"user_id": 7}) == 1


def test_set_on_an_index_path_changes_only_that_element(mongo_db: Database[dict[str, Any]]) -> None:
    collection = cache_document(mongo_db, ["a", "b", "c"])

    result = collection.update_one({"user_id": 42}, {"$set": {"passes.1.status": "USING", "passes.1.n": 99}})

    assert result.modified_count == 1
    passes = collection.find_one({"user_id": 42})["passes"]
    assert [(p["pass_uuid"], p["status"], p["n"]) for p in passes] == [
        ("a", "USABLE", 0),
        ("b", "USING", 99),
        ("c", "USABLE", 2),
    ]


def test_push_with_each_appends_every_element_in_order(mongo_db: Database[dict[str, Any]]) -> None:
    collection = cache_document(mongo_db, ["a"])

    collection.update_one(
        {"user_id": 42}, {"$push": {"passes": {"$each": [{"pass_uuid": "b"}, {"pass_uuid": "c"}]}}}
    )

    assert pass_uuids(collection) == ["a", "b", "c"]


def test_pull_of_exact_elements_removes_them(mongo_db: Database[dict[str, Any]]) -> None:
    collection = cache_document(mongo_db, ["a", "b", "c"])
    stored = collection.find_one({"user_id": 42})["passes"]

    collection.update_one({"user_id": 42}, {"$pull": {"passes": stored[0]}})
    collection.update_one({"user_id": 42}, {"$pull": {"passes": stored[2]}})

    assert pass_uuids(collection) == ["b"]


@pytest.mark.parametrize(
    ("update", "expected_on_mongodb"),
    [
        pytest.param(
            {"$pull": {"passes": {"pass_uuid": {"$in": ["a", "c"]}}}}, ["b"], id="pull-by-condition-in"
        ),
        pytest.param({"$pull": {"passes": {"pass_uuid": "b"}}}, ["a", "c"], id="pull-by-partial-element"),
        pytest.param(
            {"$push": {"passes": {"$each": [{"pass_uuid": "d"}], "$slice": -2}}}, ["c", "d"], id="push-slice"
        ),
        pytest.param(
            {"$push": {"passes": {"$each": [{"pass_uuid": "d"}], "$position": 0}}},
            ["d", "a", "b", "c"],
            id="push-position",
        ),
    ],
)
def test_update_forms_ferretdb_1x_silently_ignores(
    mongo_db: Database[dict[str, Any]], update: dict[str, Any], expected_on_mongodb: list[str]
) -> None:
    # The cache store must not use these: FerretDB 1.x answers "ok" and leaves the array as it was
    # ($pull by condition) or appends without the modifier ($slice, $position). If an upgraded server
    # starts honouring them, this test fails and the store's workarounds can be revisited.
    collection = cache_document(mongo_db, ["a", "b", "c"])

    result = collection.update_one({"user_id": 42}, update)

    if not is_ferretdb(mongo_db):
        assert pass_uuids(collection) == expected_on_mongodb
    elif "$pull" in update:
        assert result.modified_count == 0
        assert pass_uuids(collection) == ["a", "b", "c"]
    else:
        assert pass_uuids(collection) == ["a", "b", "c", "d"]


def test_find_one_and_update_with_upsert_creates_then_updates_one_document(
    mongo_db: Database[dict[str, Any]],
) -> None:
    collection = mongo_db["leases"]
    collection.create_index("key", unique=True)

    created = collection.find_one_and_update(
        {"key": "user:42"},
        {"$set": {"owner": "first"}, "$setOnInsert": {"created": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    before = collection.find_one_and_update(
        {"key": "user:42"}, {"$set": {"owner": "second"}}, upsert=True, return_document=ReturnDocument.BEFORE
    )

    assert created is not None
    assert (created["owner"], created["created"]) == ("first", 1)
    assert before is not None
    assert before["owner"] == "first"
    assert collection.count_documents({}) == 1
    assert collection.find_one({"key": "user:42"}, {"_id": 0}) == {
        "key": "user:42",
        "owner": "second",
        "created": 1,
    }


def test_ordered_bulk_write_applies_in_order_and_stops_at_the_first_error(
    mongo_db: Database[dict[str, Any]],
) -> None:
    collection = mongo_db["cache"]
    collection.create_index("user_id", unique=True)
    collection.insert_many([{"user_id": 1, "v": 0}, {"user_id": 2, "v": 0}])

    result = collection.bulk_write(
        [
            UpdateOne({"user_id": 1}, {"$inc": {"v": 1}}),
            UpdateOne({"user_id": 1}, {"$inc": {"v": 10}}),
            DeleteOne({"user_id": 2}),
        ],
        ordered=True,
    )
    assert (result.matched_count, result.modified_count, result.deleted_count) == (2, 2, 1)
    assert collection.find_one({"user_id": 1}, {"_id": 0}) == {"user_id": 1, "v": 11}

    with pytest.raises(BulkWriteError) as failure:
        collection.bulk_write(
            [
                UpdateOne({"user_id": 1}, {"$set": {"v": 100}}),
                InsertOne({"user_id": 1}),  # duplicate key: the batch stops here
                UpdateOne({"user_id": 1}, {"$set": {"v": 200}}),
            ],
            ordered=True,
        )

    assert [error["index"] for error in failure.value.details["writeErrors"]] == [1]
    assert collection.find_one({"user_id": 1}, {"_id": 0}) == {"user_id": 1, "v": 100}


# -- MariaDB --------------------------------------------------------------------------------------


@pytest.fixture
def portal_connection(
    mysql_connect_args: dict[str, Any], local_env: dict[str, str]
) -> Iterator[MySqlConnection]:
    """A connection to the configured database (``portal``), as the application user."""
    connection = connect_mysql(mysql_connect_args, local_env["MYSQL_DATABASE"])
    try:
        yield connection
    finally:
        connection.close()


def test_portal_database_has_the_spec_bytemark_tokens_table(
    portal_connection: MySqlConnection, local_env: dict[str, str]
) -> None:
    with portal_connection.cursor() as cursor:
        cursor.execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, EXTRA FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'bytemark_tokens' ORDER BY ORDINAL_POSITION",
            (local_env["MYSQL_DATABASE"],),
        )
        columns = [
            (name, column_type.lower(), nullable, extra)
            for name, column_type, nullable, extra in cursor.fetchall()
        ]
        cursor.execute(
            "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'bytemark_tokens' ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (local_env["MYSQL_DATABASE"],),
        )
        indexes = set(cursor.fetchall())

    assert columns == [
        ("id", "int(11)", "NO", "auto_increment"),
        ("user_id", "int(11)", "NO", ""),
        ("email", "varchar(255)", "YES", ""),
        ("password", "varchar(255)", "YES", ""),
        ("token", "text", "YES", ""),
        ("status", "varchar(32)", "YES", ""),
    ]
    assert indexes == {("PRIMARY", 0, "id"), ("user_id_unique_idx__001", 0, "user_id")}


def _statements_checksum(path: Path) -> str:
    """sha256 of the file without its ``--`` comment lines, as local/services/mariadb.sh records it."""
    lines = path.read_text().splitlines(keepends=True)
    kept = [
        line if line.endswith("\n") else line + "\n" for line in lines if not line.lstrip().startswith("--")
    ]
    return hashlib.sha256("".join(kept).encode()).hexdigest()


def test_every_migration_is_recorded_with_its_checksum(
    portal_connection: MySqlConnection, local_env: dict[str, str]
) -> None:
    expected = {path.name: _statements_checksum(path) for path in MIGRATIONS_DIR.glob("*.sql")}

    with portal_connection.cursor() as cursor:
        cursor.execute("SELECT filename, checksum FROM schema_migrations")
        recorded = dict(cursor.fetchall())

    assert expected
    assert recorded == expected


def test_migrations_run_once_ignore_comment_edits_and_refuse_a_changed_statement(
    mysql_connect_args: dict[str, Any], run_id: str, tmp_path: Path
) -> None:
    # local/services.sh's own migrator (mariadb_migrate), on a scratch database and a copy of the files.
    database = f"btc_test_{run_id}_migrations"
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    migration = migrations / "001_bytemark_tokens.sql"
    migration.write_text((MIGRATIONS_DIR / "001_bytemark_tokens.sql").read_text())
    script = (
        "set -euo pipefail; source local/services/common.sh; source local/services/mariadb.sh; "
        'MARIADB_HOST="$MYSQL_HOST"; MARIADB_PORT="$MYSQL_PORT"; MARIADB_MIGRATIONS_DIR="$1"; mariadb_migrate'
    )
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "BTC_DATA_DIR": str(tmp_path / "data"),
        "MYSQL_HOST": mysql_connect_args["host"],
        "MYSQL_PORT": str(mysql_connect_args["port"]),
        "MYSQL_USER": mysql_connect_args["user"],
        "MYSQL_PASSWORD": mysql_connect_args["password"],
        "MYSQL_DATABASE": database,
    }

    def migrate() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", script, "migrate", str(migrations)],
            cwd=REPO_ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    admin = connect_mysql(mysql_connect_args)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{database}`")
        first = migrate()
        assert first.returncode == 0, first.stderr
        assert "(1 migration(s) applied now)" in first.stderr

        migration.write_text("-- a comment added after the file was applied\n" + migration.read_text())
        comment_only = migrate()
        assert comment_only.returncode == 0, comment_only.stderr
        assert "(0 migration(s) applied now)" in comment_only.stderr

        migration.write_text(migration.read_text().replace("VARCHAR(32)", "VARCHAR(64)"))
        changed = migrate()
        assert changed.returncode != 0
        assert "migration 001_bytemark_tokens.sql changed after it was applied" in changed.stderr
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()


def test_the_unique_user_index_refuses_a_second_row_and_seed_token_upserts(
    mysql_conn: MySqlConnection, seed_token: SeedToken
) -> None:
    seed_token(42, "tok-old")
    seed_token(42, "tok-new", email="u42@example.test")

    with mysql_conn.cursor() as cursor:
        cursor.execute("SELECT user_id, email, token, status FROM bytemark_tokens")
        assert cursor.fetchall() == ((42, "u42@example.test", "tok-new", "ACTIVE"),)
        with pytest.raises(pymysql.err.IntegrityError) as duplicate:
            cursor.execute("INSERT INTO bytemark_tokens (user_id, token) VALUES (42, 'other')")
    assert duplicate.value.args[0] == 1062  # ER_DUP_ENTRY


# -- moto -----------------------------------------------------------------------------------------


def test_update_queue_has_a_redrive_policy_to_its_dlq(sqs_client: Any, local_env: dict[str, str]) -> None:
    queue_url = sqs_client.get_queue_url(QueueName=local_env["UPDATE_QUEUE_NAME"])["QueueUrl"]
    dlq_url = sqs_client.get_queue_url(QueueName=local_env["UPDATE_DLQ_NAME"])["QueueUrl"]
    attributes = sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs_client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]

    assert queue_url == local_env["UPDATE_QUEUE_URL"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn
    assert int(redrive["maxReceiveCount"]) == 10  # as template.yaml
    assert int(attributes["VisibilityTimeout"]) >= 6 * 30  # at least 6 times the user_updates timeout


def test_a_message_received_max_receive_count_times_moves_to_the_dlq(
    sqs_client: Any, update_queue: QueuePair
) -> None:
    sqs_client.send_message(QueueUrl=update_queue.url, MessageBody='{"user_id": "not-a-number"}')

    for _ in range(update_queue.max_receive_count):
        # VisibilityTimeout=0: the message is back at once, as after a failed Lambda invocation.
        received = sqs_client.receive_message(
            QueueUrl=update_queue.url, WaitTimeSeconds=1, VisibilityTimeout=0
        )
        assert len(received.get("Messages", [])) == 1
    after_limit = sqs_client.receive_message(QueueUrl=update_queue.url, WaitTimeSeconds=1)

    dead: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not dead and time.monotonic() < deadline:
        dead = sqs_client.receive_message(QueueUrl=update_queue.dlq_url, WaitTimeSeconds=1).get(
            "Messages", []
        )
    assert after_limit.get("Messages", []) == []
    assert [message["Body"] for message in dead] == ['{"user_id": "not-a-number"}']


def test_the_secrets_hold_the_local_connection_settings(
    secrets_client: Any, local_env: dict[str, str]
) -> None:
    mysql = json.loads(
        secrets_client.get_secret_value(SecretId=local_env["MYSQL_SECRET_NAME"])["SecretString"]
    )
    mongodb = json.loads(
        secrets_client.get_secret_value(SecretId=local_env["MONGODB_SECRET_NAME"])["SecretString"]
    )

    assert mysql == {
        "engine": "mysql",
        "host": local_env["MYSQL_HOST"],
        "port": int(local_env["MYSQL_PORT"]),
        "username": local_env["MYSQL_USER"],
        "password": local_env["MYSQL_PASSWORD"],
        "dbname": local_env["MYSQL_DATABASE"],
    }
    assert mongodb == {"uri": local_env["MONGODB_URI"]}


# -- the fixtures' view of them -------------------------------------------------------------------


def test_settings_point_at_the_sessions_own_resources(
    settings: Settings,
    integration_env: dict[str, str],
    mongo_db: Database[dict[str, Any]],
    update_queue: QueuePair,
) -> None:
    assert settings.mongodb_database == mongo_db.name
    assert settings.mongodb_database.startswith("btc_test_")
    assert settings.mysql_database == integration_env["MYSQL_DATABASE"]
    assert settings.mysql_database.startswith("btc_test_")
    assert settings.update_queue_url == update_queue.url
    assert settings.bytemark_api_url == integration_env["BYTEMARK_API_URL"]
