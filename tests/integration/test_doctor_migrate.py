"""The cutover from the Node service on the real server: doctor, migrate, ensure-indexes on Node's documents.

The legacy fixtures (written by Node.js, ``tests/legacy``) go into a fresh collection WITHOUT indexes, as
the Node service left ``BytemarkTicketsCache``. Then, as docs/migration.md tells the operator: ``doctor``
(each shape counted, exit 7 for the duplicates, nothing written), ``migrate`` dry (nothing changed),
``migrate --apply`` (every document in the contract's shape, duplicates aside, unknown fields kept, indexes
made, the migration log written), ``migrate --apply`` again (no change at all), ``doctor`` again (clean).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from bytemark_cache.adapters.mongo_indexes import REQUIRED_INDEXES
from bytemark_cache.adapters.mongo_migration import MongoMaintenanceStore
from bytemark_cache.adapters.mongo_runs import MongoBackfillRunStore
from bytemark_cache.adapters.mongo_store import MongoCacheStore, connect
from bytemark_cache.adapters.mysql_tokens import MySqlTokenStore
from bytemark_cache.bootstrap import Services, build_services
from bytemark_cache.config import Settings
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.document import read_cache
from bytemark_cache_ops.cli import main
from tests.integration.conftest import CommandRecorder, unique_id
from tests.integration.console import console
from tests.legacy.fixtures import (
    LegacyFixtures,
    LegacyFixturesError,
    Shape,
    serve_truth,
    shared_fixtures,
    typed,
)

if TYPE_CHECKING:
    from bytemark_simulator import SimulatorServer
    from tests.integration.conftest import MongoDatabase, SeedToken

pytestmark = pytest.mark.integration

WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findAndModify", "createIndexes", "create", "drop"})

SHAPE_NAMES: dict[Shape, str | None] = {
    Shape.SPEC_CONTROL: None,
    Shape.TIMESTAMP_MS_INT64: "timestamp_milliseconds",
    Shape.TIMESTAMP_MS_DOUBLE: "timestamp_milliseconds",
    Shape.TIMESTAMP_DOUBLE_FRACTION: "timestamp_double",
    Shape.TIMESTAMP_DATE: "timestamp_date",
    Shape.TIMESTAMP_STRING_ISO: "timestamp_string",
    Shape.TIMESTAMP_STRING_NUMERIC: "timestamp_string",
    Shape.TIMESTAMP_MISSING: "timestamp_missing",
    Shape.ELEMENT_UUID_KEY: "element_uuid_key",
    Shape.ELEMENT_NO_PAYLOAD_HASH: "element_payload_hash_missing",
    Shape.USER_ID_STRING: "user_id_string",
    Shape.DUPLICATE_USER: None,  # counted as duplicate users
    Shape.MONGOOSE_EXTRAS: None,  # unknown fields: createdAt, updatedAt, __v, element _id
    Shape.PASSES_LOG: None,  # unknown field: passesLog
    Shape.ELEMENT_TIMESTAMP_MS: "element_timestamp_milliseconds",
    Shape.ELEMENT_TIMESTAMP_MISSING: "element_timestamp_missing",
    Shape.ELEMENT_STATUS_MISSING: "element_status_missing",
    Shape.PASSES4_MISSING: "list_missing",
}
"""The reader's name (``StoredCache.legacy``) of each fixture shape."""

CONTRACT_FIELDS = {"_id", "user_id", "timestamp", "passes", "passes4", "sync_revision"}


@pytest.fixture(scope="module")
def legacy() -> LegacyFixtures:
    try:
        return shared_fixtures()
    except LegacyFixturesError as exc:
        pytest.fail(str(exc), pytrace=False)


@dataclass
class Stack:
    """The CLI's parts on the test's collections; ``cli(...)`` runs one command in-process."""

    database: MongoDatabase
    names: dict[str, str]
    services: Services
    tokens: MySqlTokenStore
    maintenance: MongoMaintenanceStore
    recorder: CommandRecorder

    @property
    def cache(self) -> Any:
        return self.database[self.names["cache"]]

    def cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(
            list(argv),
            services=self.services,
            tokens=self.tokens,
            maintenance=self.maintenance,
            stdout=out,
            stderr=err,
        )
        return code, out.getvalue(), err.getvalue()

    def snapshot(self) -> dict[str, list[Any]]:
        """Every collection of the database, typed, in ``_id`` order."""
        return {
            name: [typed(document) for document in self.database[name].find({}).sort("_id", 1)]
            for name in sorted(self.database.list_collection_names())
        }


@pytest.fixture
def stack(
    local_env: dict[str, str], mongo_db: MongoDatabase, settings: Settings, mysql_database: str
) -> Iterator[Stack]:
    """Everything on collections of this test alone, through a client whose commands are recorded."""
    suffix = unique_id()
    names = {
        "cache": f"cache_{suffix}",
        "log": f"log_{suffix}",
        "claims": f"claims_{suffix}",
        "runs": f"runs_{suffix}",
        "aside": f"aside_{suffix}",
        "migrations": f"migrations_{suffix}",
    }
    recorder = CommandRecorder()
    database = connect(local_env["MONGODB_URI"], mongo_db.name, event_listeners=[recorder])
    tokens = MySqlTokenStore(
        settings.mysql_host, settings.mysql_port, settings.mysql_user, settings.mysql_password, mysql_database
    )
    services = build_services(
        settings,
        tokens=tokens,
        cache=MongoCacheStore(database, names["cache"], names["log"], names["claims"]),
        runs=MongoBackfillRunStore(database, names["runs"]),
        check_indexes=False,
    )
    maintenance = MongoMaintenanceStore(
        database,
        {"cache": names["cache"], "log": names["log"], "claims": names["claims"]},
        duplicates_collection=names["aside"],
        migration_log_collection=names["migrations"],
    )
    try:
        yield Stack(mongo_db, names, services, tokens, maintenance, recorder)
    finally:
        tokens.close()
        database.client.close()


def expected_shape_counts(legacy: LegacyFixtures) -> Counter[str]:
    counts: Counter[str] = Counter()
    for document in legacy.documents:
        counts.update({name for shape in document.shapes if (name := SHAPE_NAMES[shape]) is not None})
    return counts


def loaded(stack: Stack, legacy: LegacyFixtures) -> Stack:
    legacy.insert_into(stack.cache)
    assert stack.cache.index_information().keys() == {"_id_"}
    stack.recorder.clear()
    return stack


# -- doctor ---------------------------------------------------------------------------------------


def test_doctor_counts_every_legacy_shape_and_fails_on_the_duplicates(
    stack: Stack, legacy: LegacyFixtures, seed_token: SeedToken
) -> None:
    loaded(stack, legacy)
    seed_token(71001, "tok-71001")
    seed_token(99, "tok-99")
    before = stack.snapshot()
    stack.recorder.clear()

    code, out, err = stack.cli("doctor", "--json", "--batch-size", "5")

    assert code == 7, err
    assert err.startswith("bytemark-cache: error: doctor found 2 problems that would break the service")
    report = json.loads(out)
    assert report["documents"] == len(legacy.documents) == 24
    assert report["legacy"] == dict(sorted(expected_shape_counts(legacy).items()))
    mongoose = len(legacy.with_shape(Shape.MONGOOSE_EXTRAS))
    assert report["unknown_fields"] == {
        "__v": mongoose,
        "createdAt": mongoose,
        "updatedAt": mongoose,
        "passesLog": len(legacy.with_shape(Shape.PASSES_LOG)),
    }
    assert report["unknown_element_fields"] == {"_id": mongoose}
    duplicated = sorted(user.user_id for user in legacy.users.values() if Shape.DUPLICATE_USER in user.shapes)
    assert report["duplicates"] == {"users": 2, "documents": 4, "examples": duplicated}
    assert report["timestamp_kinds"] == {
        "date": 2, "double": 2, "milliseconds": 4, "missing": 1, "seconds": 13, "string": 2,
    }  # fmt: skip
    newest = max(document.synced_at for document in legacy.documents)
    assert report["sync_times"]["newest"] == newest.isoformat().replace("+00:00", "Z")
    assert report["sync_times"]["unknown"]["count"] == len(legacy.with_shape(Shape.TIMESTAMP_MISSING))
    assert report["tokens"]["without_cache"] == {"count": 1, "examples": ["99"]}
    assert {index["status"] for index in report["indexes"]} == {"missing"}
    assert any("2 users with more than one document" in error for error in report["errors"])
    assert stack.snapshot() == before
    written = [name for name, _body, _size in stack.recorder.commands if name in WRITE_COMMANDS]
    assert written == []
    assert {name for name, _body, _size in stack.recorder.commands} >= {"find", "aggregate", "listIndexes"}


# -- migrate --------------------------------------------------------------------------------------


def test_migrate_dry_run_changes_nothing(stack: Stack, legacy: LegacyFixtures) -> None:
    loaded(stack, legacy)
    before = stack.snapshot()

    code, out, err = stack.cli("migrate", "--json", "--batch-size", "7")

    assert code == 0, err
    report = json.loads(out)
    assert (report["scanned"], report["converged"], report["moved"]) == (24, 18, 2)
    assert report["actions"]["duplicate_moved"] == 2
    assert stack.snapshot() == before
    assert set(stack.database.list_collection_names()) == {stack.names["cache"]}
    assert len(err.splitlines()) == 4  # one progress line per batch


def test_migrate_apply_converges_every_document_then_changes_nothing_and_doctor_is_clean(
    stack: Stack, legacy: LegacyFixtures
) -> None:
    loaded(stack, legacy)
    originals = {document.object_id: document.document for document in legacy.documents}

    print_run("doctor", stack.cli("doctor", "--token-scan-limit", "0"))
    print_run("migrate", stack.cli("migrate"))
    code, out, err = stack.cli("migrate", "--apply", "--batch-size", "10")
    print_run("migrate --apply", (code, out, err))

    assert code == 0, err
    assert "converged 18 documents; moved 2 duplicates" in out
    kept = {user.newest.object_id for user in legacy.users.values()}
    moved = set(originals) - kept
    stored = {document["_id"]: document for document in stack.cache.find({})}
    assert set(stored) == kept
    for user in legacy.users.values():
        assert_contract_shape(stored[user.newest.object_id], user.newest, legacy)
    aside = {document["_id"]: document for document in stack.database[stack.names["aside"]].find({})}
    assert set(aside) == moved
    for object_id in moved:
        assert typed(aside[object_id]) == typed(originals[object_id])
    assert stack.database[stack.names["log"]].count_documents({}) == 0  # the pass change log
    entries = list(stack.database[stack.names["migrations"]].find({}))
    assert len(entries) == 18 + 2
    converged = {document.object_id for document in legacy.documents if needs_change(document)} & kept
    assert {entry["document_id"] for entry in entries} == converged | moved
    for entry in entries:
        assert set(entry) >= {"_id", "document_id", "user_id", "actions", "timestamp"}
        if entry["actions"] == ["duplicate_moved"]:
            assert entry["kept_document_id"] == legacy.user(entry["user_id"]).newest.object_id
    assert {finding.status for finding in stack.maintenance.check_indexes()} == {"present"}

    before = stack.snapshot()
    print_run("migrate --apply (again)", stack.cli("migrate", "--apply", "-q"))
    assert stack.snapshot() == before
    code, out, err = stack.cli("migrate", "--apply", "--json", "-q")
    assert code == 0, err
    again = json.loads(out)
    assert (again["converged"], again["moved"], again["unchanged"]) == (0, 0, 22)
    assert stack.snapshot() == before

    code, out, err = stack.cli("doctor", "--token-scan-limit", "0")
    print_run("doctor after migrate --apply", (code, out, err))
    assert code == 0, err
    assert "LEGACY SHAPES (0 documents)" in out
    assert "duplicate users: 0 (0 documents)" in out
    assert "ERRORS" not in out


def assert_contract_shape(document: dict[str, Any], info: Any, legacy: LegacyFixtures) -> None:
    original = info.document
    assert type(document["user_id"]) is int
    assert document["user_id"] == info.user_id
    assert type(document["timestamp"]) is int
    expected_time = 0 if info.has(Shape.TIMESTAMP_MISSING) else int(info.synced_at.timestamp())
    assert document["timestamp"] == expected_time
    assert document.get("sync_revision") == (1 if needs_change(info) else None)
    for name in set(original) - CONTRACT_FIELDS:
        assert typed(document[name]) == typed(original[name]), name
    for list_name in ("passes", "passes4"):
        elements = document[list_name]
        assert isinstance(elements, list)
        uuids = [element["pass_uuid"] for element in elements]
        assert len(uuids) == len(set(uuids)), "a pass is duplicated"
        assert set(uuids) == {element.uuid for element in info.elements if element.list == list_name}
        hashes = {element.uuid: element.payload_hash for element in info.elements}
        originals = {
            (item.get("pass_uuid") or item.get("uuid")): item for item in original.get(list_name, [])
        }
        for element in elements:
            assert "uuid" not in element
            assert element["pass_uuid"] == element["payload"]["uuid"]
            assert element["status"] == element["payload"]["status"]
            assert type(element["timestamp"]) is int
            assert 0 <= element["timestamp"] < 10**11
            assert element["free_ticket_status"] == 0
            assert element["payload_hash"] == hashes[element["pass_uuid"]]  # Node's md5
            assert element.get("_id") == originals[element["pass_uuid"]].get("_id")
            assert typed(element["payload"]) == typed(originals[element["pass_uuid"]]["payload"])
    stored = read_cache([document], info.user_id, legacy.truth_at.timestamp() + 3600)
    assert stored is not None
    assert stored.legacy == ()


def needs_change(info: Any) -> bool:
    """Whether the document carries a shape the reader names (others are in the contract's shape)."""
    return any(SHAPE_NAMES[shape] is not None for shape in info.shapes)


def print_run(title: str, result: tuple[int, str, str]) -> None:
    """Shown by ``pytest -rP``: the output docs/migration.md quotes."""
    code, out, err = result
    print(f"$ bytemark-cache {title}\n{out}{err}(exit {code})\n")


def test_migrate_waits_for_nobody_and_leaves_a_user_whose_sync_holds_the_claim(
    stack: Stack, legacy: LegacyFixtures
) -> None:
    loaded(stack, legacy)
    user = legacy.user(71002)
    assert stack.services.cache.claim(user.user_id, 0, "a-running-sync", 1e12, 60)

    code, out, err = stack.cli("migrate", "--apply", "--json", "-q")

    assert code == 7
    assert "left 1 document as they were" in err
    assert json.loads(out)["busy"] == {"count": 1, "examples": [str(user.newest.object_id)]}
    assert typed(stack.cache.find_one({"_id": user.newest.object_id})) == typed(user.newest.document)
    stack.database[stack.names["claims"]].delete_many({})

    code, out, err = stack.cli("migrate", "--apply", "--json", "-q")

    assert code == 0, err
    assert json.loads(out)["converged"] == 1


def test_the_next_sync_of_a_migrated_document_logs_only_what_bytemark_changed(
    stack: Stack, legacy: LegacyFixtures, simulator: SimulatorServer, seed_token: SeedToken
) -> None:
    loaded(stack, legacy)
    assert stack.cli("migrate", "--apply", "-q")[0] == 0
    for user_id in (71010, 71018, 71019):  # without payload hashes, uuid keys, both
        user = legacy.user(user_id)
        serve_truth(simulator.admin, user)
        seed_token(user.user_id, user.token)

        result = stack.services.tickets.sync(user.user_id, deadline=Deadline.never())

        assert result.source == "synced"
        entries = stack.services.cache.read_log(user.user_id, 100)
        logged = Counter((entry["action"], entry["list"]) for entry in entries)
        truth = user.truth
        assert (
            logged
            == Counter(
                {
                    ("created", "passes"): len(truth.passes.new),
                    ("updated", "passes"): len(truth.passes.changed),
                    ("removed", "passes"): len(truth.passes.gone),
                    ("created", "passes4"): len(truth.passes4.new),
                    ("updated", "passes4"): len(truth.passes4.changed),
                }
            )
            - Counter()
        ), user_id  # (- Counter() drops the zeros) unchanged passes are not "updated"


# -- ensure-indexes -------------------------------------------------------------------------------


def test_ensure_indexes_keeps_a_differently_named_user_id_index(stack: Stack) -> None:
    stack.cache.create_index([("user_id", 1)], unique=True, name="user_id_1")
    stack.cache.insert_one({"user_id": 1, "timestamp": 1, "passes": [], "passes4": []})

    code, out, err = stack.cli("ensure-indexes")

    assert code == 0, err
    rows = {line.split()[2]: line.split() for line in out.splitlines()[2:]}
    assert rows["user_id_unique"][0] == "present"
    assert rows["user_id_unique"][-1] == "user_id_1"
    assert {rows[spec.name][0] for spec in REQUIRED_INDEXES if spec.name != "user_id_unique"} == {"created"}
    assert "user_id_unique" not in stack.cache.index_information()
    assert "user_id_1" in stack.cache.index_information()

    assert stack.cli("ensure-indexes")[1].count("present") == len(REQUIRED_INDEXES)


def test_ensure_indexes_reports_a_non_unique_user_id_index_as_a_conflict(stack: Stack) -> None:
    stack.cache.create_index([("user_id", 1)], name="user_id_1")

    code, out, err = stack.cli("ensure-indexes", "--json")

    assert code == 7
    assert "user_id_unique (conflict)" in err
    unique = next(index for index in json.loads(out)["indexes"] if index["name"] == "user_id_unique")
    assert (unique["status"], unique["found_as"], unique["detail"]) == (
        "conflict",
        "user_id_1",
        "same keys, but not unique",
    )


def test_ensure_indexes_blocked_by_duplicates_says_run_migrate_first(
    stack: Stack, legacy: LegacyFixtures
) -> None:
    loaded(stack, legacy)

    code, out, err = stack.cli("ensure-indexes")

    assert code == 7
    assert "user_id_unique (failed)" in err
    assert (
        "user_id_unique: 2 users with more than one document: run `bytemark-cache migrate --apply` first"
        in out
    )


# -- the installed console script -----------------------------------------------------------------


def test_the_console_script_runs_doctor_and_migrate_on_the_settings(
    integration_env: dict[str, str], stack: Stack, legacy: LegacyFixtures
) -> None:
    loaded(stack, legacy)
    env = {
        **integration_env,
        "CACHE_COLLECTION": stack.names["cache"],
        "LOG_COLLECTION": stack.names["log"],
        "CLAIM_COLLECTION": stack.names["claims"],
    }

    doctor = console("doctor", "--json", env=env)
    migrate = console("migrate", "--apply", "--duplicates-collection", stack.names["aside"], env=env)

    assert doctor.returncode == 7, doctor.stderr
    assert json.loads(doctor.stdout)["duplicates"]["users"] == 2
    assert migrate.returncode == 0, migrate.stderr
    assert migrate.stderr.splitlines()[-1].startswith("migrate: scanned 24 documents, converged 18, moved 2")
    assert stack.database[stack.names["aside"]].count_documents({}) == 2
    assert stack.database["BytemarkMigrationLog"].count_documents({}) == 20


def test_ensure_indexes_needs_only_the_mongodb_settings(local_env: dict[str, str], stack: Stack) -> None:
    env = {
        "MONGODB_URI": local_env["MONGODB_URI"],
        "MONGODB_DATABASE": stack.database.name,
        "CACHE_COLLECTION": stack.names["cache"],
        "LOG_COLLECTION": stack.names["log"],
        "CLAIM_COLLECTION": stack.names["claims"],
    }

    result = console("ensure-indexes", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("created") == len(REQUIRED_INDEXES)
    assert {finding.status for finding in stack.maintenance.check_indexes()} == {"present"}
