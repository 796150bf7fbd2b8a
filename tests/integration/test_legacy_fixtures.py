"""The legacy fixtures are what they claim, on the real server (FerretDB locally).

``tests/legacy/make_fixtures.mjs`` writes, with Node.js, the cache documents the old Node/Mongoose service
left in ``BytemarkTicketsCache``. Inserted into a fresh collection and read back, every document must show
exactly the legacy shapes its manifest names (and no other), keep its BSON types and key order, carry
payload hashes that Node computed and Python reproduces, and come with a Bytemark "truth" whose
unchanged / changed / gone / new passes are really that against the stored document.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from bson import ObjectId
from bson.int64 import Int64

from bytemark_cache.domain.hashing import payload_hash
from tests.legacy.fixtures import (
    LegacyDocument,
    LegacyFixtures,
    LegacyFixturesError,
    ListExpectation,
    Shape,
    generate,
    load,
    serve_truth,
    typed,
)

if TYPE_CHECKING:
    from bytemark_simulator import SimulatorServer
    from tests.integration.conftest import MongoDatabase

pytestmark = pytest.mark.integration

type Stored = dict[ObjectId, dict[str, Any]]
type Detector = Callable[[dict[str, Any], LegacyDocument, Stored], bool]

CONTRACT_KEYS = ["_id", "user_id", "timestamp", "passes", "passes4"]
CONTRACT_ELEMENT_KEYS = ["pass_uuid", "timestamp", "status", "free_ticket_status", "payload", "payload_hash"]
MD5_HEX = re.compile(r"[0-9a-f]{32}")
MS_FLOOR = 10**12
SECONDS_CEILING = 10**11


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the Node script wrote this module's fixtures into."""
    folder = tmp_path_factory.mktemp("legacy")
    try:
        generate(folder)
    except LegacyFixturesError as exc:
        pytest.fail(str(exc), pytrace=False)
    return folder


@pytest.fixture(scope="module")
def legacy(legacy_dir: Path) -> LegacyFixtures:
    """The loaded fixtures."""
    return load(legacy_dir)


@pytest.fixture
def stored(legacy: LegacyFixtures, mongo_db: MongoDatabase, collection_names: tuple[str, str, str]) -> Stored:
    """Every legacy document inserted into a collection of the test alone and read back, by ``_id``."""
    collection = mongo_db[collection_names[0]]
    assert legacy.insert_into(collection) == [document.object_id for document in legacy.documents]
    return {document["_id"]: document for document in collection.find({})}


# -- detecting each shape in a stored document ----------------------------------------------------


def elements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The elements of both arrays (an absent array counts as empty)."""
    return [*document.get("passes", []), *document.get("passes4", [])]


def uuid_of(element: dict[str, Any]) -> str:
    """An element's pass uuid, whichever key holds it."""
    return str(element["pass_uuid"] if "pass_uuid" in element else element["uuid"])


def seconds(info: LegacyDocument) -> int:
    return int(info.synced_at.timestamp())


def is_spec_element(element: dict[str, Any]) -> bool:
    return (
        list(element) == CONTRACT_ELEMENT_KEYS
        and type(element["timestamp"]) is int
        and 0 < element["timestamp"] < SECONDS_CEILING
        and type(element["free_ticket_status"]) is int
        and type(element["payload"]) is dict
        and element["pass_uuid"] == element["payload"]["uuid"]
        and element["status"] == element["payload"]["status"]
        and MD5_HEX.fullmatch(element["payload_hash"]) is not None
    )


def spec_control(document: dict[str, Any], info: LegacyDocument, stored: Stored) -> bool:
    return (
        not duplicate_user(document, info, stored)
        and list(document) == CONTRACT_KEYS
        and type(document["user_id"]) is int
        and type(document["timestamp"]) is int
        and document["timestamp"] == seconds(info)
        and all(is_spec_element(element) for element in elements(document))
        and all(element["status"] == "EXPIRED" for element in document["passes4"])
    )


def timestamp_ms_int64(document: dict[str, Any], info: LegacyDocument, _: Stored) -> bool:
    stamp = document.get("timestamp")
    return type(stamp) is Int64 and stamp > MS_FLOOR and stamp == seconds(info) * 1000


def timestamp_ms_double(document: dict[str, Any], info: LegacyDocument, _: Stored) -> bool:
    stamp = document.get("timestamp")
    return type(stamp) is float and stamp.is_integer() and stamp > MS_FLOOR and stamp == seconds(info) * 1000


def timestamp_double_fraction(document: dict[str, Any], info: LegacyDocument, _: Stored) -> bool:
    stamp = document.get("timestamp")
    return (
        type(stamp) is float
        and not stamp.is_integer()
        and stamp < SECONDS_CEILING
        and math.floor(stamp) == seconds(info)
    )


def timestamp_date(document: dict[str, Any], info: LegacyDocument, _: Stored) -> bool:
    stamp = document.get("timestamp")
    return type(stamp) is datetime and stamp.replace(tzinfo=UTC) == info.synced_at


def timestamp_string_iso(document: dict[str, Any], info: LegacyDocument, _: Stored) -> bool:
    stamp = document.get("timestamp")
    return (
        type(stamp) is str
        and not stamp.isdigit()
        and datetime.fromisoformat(stamp.replace("Z", "+00:00")) == info.synced_at
    )


def timestamp_string_numeric(document: dict[str, Any], info: LegacyDocument, _: Stored) -> bool:
    stamp = document.get("timestamp")
    return type(stamp) is str and stamp.isdigit() and int(stamp) == seconds(info)


def timestamp_missing(document: dict[str, Any], _info: LegacyDocument, _: Stored) -> bool:
    return "timestamp" not in document


def element_uuid_key(document: dict[str, Any], _info: LegacyDocument, _: Stored) -> bool:
    found = elements(document)
    return bool(found) and all(
        "pass_uuid" not in element and element.get("uuid") == element["payload"]["uuid"] for element in found
    )


def element_no_payload_hash(document: dict[str, Any], _info: LegacyDocument, _: Stored) -> bool:
    found = elements(document)
    return bool(found) and all("payload_hash" not in element for element in found)


def user_id_string(document: dict[str, Any], info: LegacyDocument, _: Stored) -> bool:
    return type(document["user_id"]) is str and document["user_id"] == str(info.user_id)


def duplicate_user(document: dict[str, Any], _info: LegacyDocument, stored: Stored) -> bool:
    same_user = [other for other in stored.values() if str(other["user_id"]) == str(document["user_id"])]
    return len(same_user) == 2


def mongoose_extras(document: dict[str, Any], _info: LegacyDocument, _: Stored) -> bool:
    subdocuments = [*elements(document), *document.get("passesLog", [])]
    return (
        list(document)[-3:] == ["createdAt", "updatedAt", "__v"]
        and type(document["__v"]) is int
        and document["__v"] == 0
        and type(document["createdAt"]) is datetime
        and type(document["updatedAt"]) is datetime
        and document["createdAt"] <= document["updatedAt"]
        and all(type(item.get("_id")) is ObjectId and next(iter(item)) == "_id" for item in subdocuments)
    )


def passes_log(document: dict[str, Any], _info: LegacyDocument, _: Stored) -> bool:
    log = document.get("passesLog")
    if not isinstance(log, list) or not log:
        return False
    created = {entry["uuid"] for entry in log if entry["action"] == "created"}
    changed = {entry["uuid"] for entry in log if entry["action"] == "status_changed"}
    using = {uuid_of(element) for element in elements(document) if element["payload"]["status"] == "USING"}
    return (
        all(type(entry["at"]) is datetime for entry in log)
        and created == {uuid_of(element) for element in elements(document)}
        and changed == using
    )


def element_timestamp_ms(document: dict[str, Any], _info: LegacyDocument, _: Stored) -> bool:
    stamps = [element.get("timestamp") for element in elements(document)]
    return (
        len(stamps) > 1
        and type(stamps[0]) is Int64
        and all(type(stamp) is float and stamp.is_integer() for stamp in stamps[1:])
        and all(stamp is not None and stamp > MS_FLOOR for stamp in stamps)
    )


def element_timestamp_missing(document: dict[str, Any], _info: LegacyDocument, _: Stored) -> bool:
    passes, history = document.get("passes", []), document.get("passes4", [])
    return (
        bool(passes)
        and len(history) > 1
        and all("timestamp" not in element for element in [*passes, history[0]])
        and all("timestamp" in element for element in history[1:])
    )


def element_status_missing(document: dict[str, Any], _info: LegacyDocument, _: Stored) -> bool:
    found = elements(document)
    return bool(found) and all("status" not in element for element in found)


def passes4_missing(document: dict[str, Any], _info: LegacyDocument, _: Stored) -> bool:
    return "passes4" not in document and bool(document.get("passes"))


DETECTORS: dict[Shape, Detector] = {
    Shape.SPEC_CONTROL: spec_control,
    Shape.TIMESTAMP_MS_INT64: timestamp_ms_int64,
    Shape.TIMESTAMP_MS_DOUBLE: timestamp_ms_double,
    Shape.TIMESTAMP_DOUBLE_FRACTION: timestamp_double_fraction,
    Shape.TIMESTAMP_DATE: timestamp_date,
    Shape.TIMESTAMP_STRING_ISO: timestamp_string_iso,
    Shape.TIMESTAMP_STRING_NUMERIC: timestamp_string_numeric,
    Shape.TIMESTAMP_MISSING: timestamp_missing,
    Shape.ELEMENT_UUID_KEY: element_uuid_key,
    Shape.ELEMENT_NO_PAYLOAD_HASH: element_no_payload_hash,
    Shape.USER_ID_STRING: user_id_string,
    Shape.DUPLICATE_USER: duplicate_user,
    Shape.MONGOOSE_EXTRAS: mongoose_extras,
    Shape.PASSES_LOG: passes_log,
    Shape.ELEMENT_TIMESTAMP_MS: element_timestamp_ms,
    Shape.ELEMENT_TIMESTAMP_MISSING: element_timestamp_missing,
    Shape.ELEMENT_STATUS_MISSING: element_status_missing,
    Shape.PASSES4_MISSING: passes4_missing,
}


# -- the tests ------------------------------------------------------------------------------------


def test_node_writes_the_same_bytes_every_run(legacy_dir: Path, tmp_path: Path) -> None:
    generate(tmp_path)
    for name in ("documents.json", "manifest.json"):
        assert (tmp_path / name).read_bytes() == (legacy_dir / name).read_bytes(), name


def test_manifest_covers_every_shape_alone_and_in_combinations(legacy: LegacyFixtures) -> None:
    assert set(DETECTORS) == set(Shape)
    for shape in Shape:
        assert legacy.pure(shape), f"no document carries {shape} alone"
    assert sum(len(document.shapes) >= 3 for document in legacy.documents) >= 3
    for user in legacy.users.values():
        assert {document.user_id for document in user.documents} == {user.user_id}
        duplicated = Shape.DUPLICATE_USER in user.shapes
        assert len(user.documents) == (2 if duplicated else 1), user.user_id
        if duplicated:
            assert {document.variant for document in user.documents} == {"older", "newer"}
            assert user.newest.variant == "newer"


def test_documents_come_back_with_their_types_and_key_order(legacy: LegacyFixtures, stored: Stored) -> None:
    assert len(stored) == len(legacy.documents)
    for document in legacy.documents:
        assert typed(stored[document.object_id]) == typed(document.document), document.user_id


@pytest.mark.parametrize("shape", list(Shape), ids=str)
def test_each_shape_is_where_the_manifest_says_and_nowhere_else(
    shape: Shape, legacy: LegacyFixtures, stored: Stored
) -> None:
    detect = DETECTORS[shape]
    wrong = []
    for info in legacy.documents:
        document = stored[info.object_id]
        if detect(document, info, stored) != info.has(shape):
            summary = {key: type(value).__name__ for key, value in document.items() if key != "_id"}
            wrong.append(f"user {info.user_id} #{info.index} (manifest: {info.has(shape)}): {summary}")
    assert not wrong, "\n".join(wrong)


def test_documents_without_a_timestamp_shape_store_int32_seconds(
    legacy: LegacyFixtures, stored: Stored
) -> None:
    timestamp_shapes = {shape for shape in Shape if shape.value.startswith("timestamp_")}
    plain = [info for info in legacy.documents if not timestamp_shapes & set(info.shapes)]
    assert plain
    for info in plain:
        stamp = stored[info.object_id]["timestamp"]
        assert type(stamp) is int, info.user_id
        assert stamp == seconds(info)
        assert -(2**31) <= stamp < 2**31  # an Int32, as the Node driver stores a small integer


def test_duplicate_users_are_two_documents_on_the_server(
    legacy: LegacyFixtures, stored: Stored, mongo_db: MongoDatabase, collection_names: tuple[str, str, str]
) -> None:
    collection = mongo_db[collection_names[0]]
    duplicated = [user for user in legacy.users.values() if Shape.DUPLICATE_USER in user.shapes]
    assert len(duplicated) >= 2
    for user in duplicated:
        found = list(collection.find({"user_id": {"$in": [user.user_id, str(user.user_id)]}}))
        assert len(found) == 2
        older, newer = sorted(user.documents, key=lambda document: document.synced_at)
        assert older.object_id != newer.object_id
        assert {document["_id"] for document in found} == {older.object_id, newer.object_id}
        assert older.synced_at < newer.synced_at
        old_hashes = {element.uuid: element.payload_hash for element in older.elements}
        new_hashes = {element.uuid: element.payload_hash for element in newer.elements}
        overlap = old_hashes.keys() & new_hashes.keys()
        assert overlap
        assert any(old_hashes[uuid] != new_hashes[uuid] for uuid in overlap), "no pass differs between them"
    # One duplicate pair stores its user_id once as a number and once as a string: a query on either
    # type finds one document only.
    mixed = legacy.user(71022)
    assert {type(document.stored_user_id) for document in mixed.documents} == {int, str}
    assert collection.count_documents({"user_id": 71022}) == 1
    assert collection.count_documents({"user_id": "71022"}) == 1


def test_stored_hashes_are_nodes_and_python_computes_the_same(legacy: LegacyFixtures, stored: Stored) -> None:
    checked = 0
    for info in legacy.documents:
        document = stored[info.object_id]
        for element_info in info.elements:
            element = document[element_info.list][element_info.index]
            assert uuid_of(element) == element_info.uuid
            assert ("payload_hash" in element) == element_info.hash_stored
            if element_info.hash_stored:
                assert element["payload_hash"] == element_info.payload_hash
            # The payload read back is Node's JSON.parse result stored by js-bson (Int32 / Double), so
            # Python's Node-compatible hash of it is Node's hash.
            assert payload_hash(element["payload"]) == element_info.payload_hash, element_info.uuid
            checked += 1
    assert checked >= 6 * len(legacy.documents) - 2 * len(legacy.with_shape(Shape.PASSES4_MISSING))


def test_truth_hashes_match_python_and_the_expected_changes_are_real(
    legacy: LegacyFixtures, stored: Stored
) -> None:
    for user in legacy.users.values():
        truth = user.truth
        for wire in (*truth.current_wire, *truth.expired_wire):
            received = json.loads(wire)
            assert payload_hash(received) == truth.hashes[received["uuid"]]
        for info in user.documents:
            document = stored[info.object_id]
            for name, fresh, expected in (
                ("passes", truth.current, info.expected_passes),
                ("passes4", truth.expired, info.expected_passes4),
            ):
                cached = {
                    uuid_of(element): payload_hash(element["payload"]) for element in document.get(name, [])
                }
                assert outcome(cached, fresh, truth.hashes) == expected, (user.user_id, info.index, name)
        assert (truth.passes, truth.passes4) == (user.newest.expected_passes, user.newest.expected_passes4)
        passes = truth.passes
        assert all((passes.unchanged, passes.changed, passes.gone, passes.new)), user.user_id
        # A pass that went from v1 to the history is gone from passes and new in passes4.
        assert set(passes.gone) <= set(truth.passes4.new)
        # The unchanged passes include the non-ASCII label: only a Node-exact hash keeps it unchanged.
        unchanged_labels = [p["label_name"] for p in truth.current if p["uuid"] in passes.unchanged]
        assert any(not label.isascii() for label in unchanged_labels)


def outcome(cached: dict[str, str], fresh: tuple[dict[str, Any], ...], hashes: Any) -> ListExpectation:
    """What a sync of ``cached`` (uuid → hash) against ``fresh`` does, per uuid, in cache/truth order."""
    fresh_uuids = [p["uuid"] for p in fresh]
    return ListExpectation(
        unchanged=tuple(uuid for uuid in cached if uuid in fresh_uuids and hashes[uuid] == cached[uuid]),
        changed=tuple(uuid for uuid in cached if uuid in fresh_uuids and hashes[uuid] != cached[uuid]),
        gone=tuple(uuid for uuid in cached if uuid not in fresh_uuids),
        new=tuple(uuid for uuid in fresh_uuids if uuid not in cached),
    )


def test_serve_truth_makes_the_simulator_answer_the_truth(
    legacy: LegacyFixtures, simulator: SimulatorServer
) -> None:
    user = legacy.user(71018)
    serve_truth(simulator.admin, user)
    served = simulator.admin.passes(user.user_id)
    assert served == {"current": list(user.truth.current), "expired": list(user.truth.expired)}
