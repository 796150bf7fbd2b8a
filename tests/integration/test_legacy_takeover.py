"""Taking over from the Node service: its documents, loaded into FerretDB as Node wrote them, through the
real service and the API handler — no 500, no duplicated pass, converged by one sync, unknown fields kept;
and a cold start over a collection whose indexes the Node service named serves requests.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from bytemark_cache.bootstrap import build_services
from bytemark_cache.config import Settings
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.hashing import payload_hash
from bytemark_simulator import SimulatorServer
from tests.fakes import FakeClock
from tests.integration.conftest import MongoDatabase, SeedToken
from tests.lambda_harness import FakeLambdaContext, load_event, load_function
from tests.legacy.fixtures import LegacyFixtures, LegacyUser, serve_truth, shared_fixtures

pytestmark = pytest.mark.integration

api = load_function("on_demand_check")
ELEMENT_KEYS = {"pass_uuid", "timestamp", "status", "free_ticket_status", "payload", "payload_hash"}
UNKNOWN_FIELDS = ("__v", "passesLog", "createdAt")
"""Document fields the service does not know (left by the Node service and Mongoose): a sync keeps them."""


@pytest.fixture(scope="module")
def legacy() -> LegacyFixtures:
    return shared_fixtures()


@pytest.fixture
def node_world(
    legacy: LegacyFixtures,
    integration_env: dict[str, str],
    collection_names: tuple[str, str, str],
    mongo_db: MongoDatabase,
    simulator: SimulatorServer,
    seed_token: SeedToken,
) -> tuple[Any, Settings]:
    """Every Node-written document in a fresh collection WITHOUT our indexes (as found before the cutover),
    each user's Bytemark truth served by the simulator and their token in MySQL."""
    cache, log, claims = collection_names
    legacy.insert_into(mongo_db[cache])
    simulator.admin.set_time(legacy.truth_at.isoformat().replace("+00:00", "Z"), frozen=True)
    for user in legacy.users.values():
        serve_truth(simulator.admin, user)
        seed_token(user.user_id, user.token)
    settings = Settings.from_env(
        {**integration_env, "CACHE_COLLECTION": cache, "LOG_COLLECTION": log, "CLAIM_COLLECTION": claims}
    )
    clock = FakeClock(legacy.truth_at.timestamp())
    return build_services(settings, clock=clock), settings


def get_tickets(services: Any, user_id: int) -> dict[str, Any]:
    event = load_event("apigw_get_tickets.json")
    event["requestContext"]["authorizer"]["claims"]["custom:user_id"] = str(user_id)
    answer: dict[str, Any] = api.lambda_handler(event, FakeLambdaContext(), services=services)
    return answer


def test_every_legacy_shape_is_read_without_a_500(
    legacy: LegacyFixtures, node_world: tuple[Any, Settings]
) -> None:
    services, _settings = node_world

    answers = {user.user_id: get_tickets(services, user.user_id) for user in legacy.users.values()}

    assert {answer["statusCode"] for answer in answers.values()} == {200}, answers
    for user_id, answer in answers.items():
        shown = [element["pass_uuid"] for element in json.loads(answer["body"])["passes"]]
        assert len(shown) == len(set(shown)), f"{user_id}: a pass shown twice"


def converged(document: dict[str, Any], user: LegacyUser) -> None:
    """The contract's shape: int user id, seconds, canonical elements, Bytemark's lists, nothing twice."""
    assert document["user_id"] == user.user_id
    assert isinstance(document["timestamp"], int)
    for name in ("passes", "passes4"):
        uuids = [element["pass_uuid"] for element in document[name]]
        assert len(uuids) == len(set(uuids)), f"{user.user_id} {name}: duplicated pass"
        for element in document[name]:
            assert set(element) >= ELEMENT_KEYS, element.keys()
            assert "uuid" not in element
            assert isinstance(element["timestamp"], int)
            assert (
                element["payload_hash"] == payload_hash(element["payload"])
                or element["payload_hash"] == user.truth.hashes[element["pass_uuid"]]
            )
    current = [element["pass_uuid"] for element in document["passes"]]
    assert sorted(current) == sorted(p["uuid"] for p in user.truth.current if p["status"] != "EXPIRED")
    assert not set(current) & {element["pass_uuid"] for element in document["passes4"]}


def test_one_sync_converges_each_document_keeping_unknown_fields_and_logging_what_changed(
    legacy: LegacyFixtures, node_world: tuple[Any, Settings], mongo_db: MongoDatabase
) -> None:
    services, settings = node_world
    cache = mongo_db[settings.cache_collection]
    log = mongo_db[settings.log_collection]
    unknown_kept: Counter[str] = Counter()

    for user in legacy.users.values():
        services.tickets.sync(user.user_id, deadline=Deadline.after(services.tickets.now(), 30))
        newest = cache.find_one({"_id": user.newest.object_id})
        assert newest is not None, user.user_id
        converged(newest, user)
        # Fields the service does not know survive (Mongoose's __v, passesLog, element _id).
        for key in UNKNOWN_FIELDS:
            if key in user.newest.document:
                assert newest[key] == user.newest.document[key], (user.user_id, key)
                unknown_kept[key] += 1
        old_ids = {
            element.get("_id")
            for name in ("passes", "passes4")
            for element in user.newest.document.get(name) or []
            if isinstance(element, dict) and element.get("_id") is not None
        }
        new_ids = {element.get("_id") for name in ("passes", "passes4") for element in newest[name]}
        kept_uuids = set(user.truth.passes.unchanged) | set(user.truth.passes.changed)
        assert old_ids - new_ids <= _ids_of_gone(user, kept_uuids), user.user_id
        actions = {(entry["uuid"], entry["action"]) for entry in log.find({"user_id": user.user_id})}
        for uuid in user.truth.passes.new:
            assert (uuid, "created") in actions, (user.user_id, uuid)
        for uuid in user.truth.passes.gone:
            assert (uuid, "removed") in actions, (user.user_id, uuid)

    # Each unknown field was in some fixture, so its survival was checked at least once.
    assert [key for key in UNKNOWN_FIELDS if unknown_kept[key] == 0] == [], unknown_kept

    # A second sync changes nothing: converged means stable.
    before = {document["_id"]: document for document in cache.find({})}
    for user in legacy.users.values():
        services.tickets.sync(user.user_id, deadline=Deadline.after(services.tickets.now(), 30))
    after = {document["_id"]: document for document in cache.find({})}
    for document_id, document in after.items():
        for name in ("passes", "passes4"):
            assert document.get(name) == before[document_id].get(name)


def _ids_of_gone(user: LegacyUser, kept: set[str]) -> set[Any]:
    """Element ``_id``s of passes that legitimately left the arrays (gone from Bytemark)."""
    return {
        element.get("_id")
        for name in ("passes", "passes4")
        for element in user.newest.document.get(name) or []
        if isinstance(element, dict) and (element.get("pass_uuid") or element.get("uuid")) not in kept
    }


def test_a_cold_start_over_foreign_indexes_serves_requests(
    legacy: LegacyFixtures,
    integration_env: dict[str, str],
    collection_names: tuple[str, str, str],
    mongo_db: MongoDatabase,
    simulator: SimulatorServer,
    seed_token: SeedToken,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache, log, claims = collection_names
    user = next(u for u in legacy.users.values() if len(u.documents) == 1)
    legacy.insert_into(mongo_db[cache], users=[user.user_id])
    # The Node service's own index names (and no unique index: it could not have one with duplicates).
    mongo_db[cache].create_index([("user_id", 1)], name="userIdIdx")
    mongo_db[log].create_index([("user_id", 1), ("timestamp", -1)], name="logByUser")
    serve_truth(simulator.admin, user)
    seed_token(user.user_id, user.token)
    settings = Settings.from_env(
        {**integration_env, "CACHE_COLLECTION": cache, "LOG_COLLECTION": log, "CLAIM_COLLECTION": claims}
    )

    services = build_services(settings, clock=FakeClock(datetime.now().timestamp()))  # a cold start
    answer = get_tickets(services, user.user_id)

    assert answer["statusCode"] == 200
    warnings = [record for record in caplog.records if "index is missing" in record.getMessage()]
    assert warnings, "missing indexes are reported"
    assert "userIdIdx" in mongo_db[cache].index_information()
    assert set(mongo_db[cache].index_information()) == {"_id_", "userIdIdx"}  # nothing created or dropped
