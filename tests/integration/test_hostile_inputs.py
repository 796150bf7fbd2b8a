"""Hostile inputs at every boundary, against the real servers: each gets a clear 4xx / error or a correct
ignore, nothing is written, never a 500 and never an exception out of a handler.

Boundaries (each parametrized case is one input; the ids say which): the API (identities, event shapes,
paths and methods, headers, bodies, spoofed user ids), SQS bodies and events, the back-fill's schedule input,
Bytemark's answers (envelopes, passes, encodings, statuses; served by a programmable stub), and
configuration (``Settings.from_env``: every problem reported at once, no secret echoed).

Rider 42 has a fresh cache; rider 43 has a token and passes at Bytemark but no cache, so an input that
reached rider 43's data in any way would show as a document, a log entry or a Bytemark request for 43.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest
from pymongo import MongoClient
from pymongo.database import Database

from bytemark_cache.adapters.bytemark_http import BytemarkHttpSource
from bytemark_cache.adapters.mongo_indexes import ensure_indexes
from bytemark_cache.adapters.mysql_tokens import MySqlTokenStore
from bytemark_cache.bootstrap import Services, indexed_collections
from bytemark_cache.config import Settings
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.errors import ConfigError, TokenRevoked, UpstreamError
from bytemark_simulator import AdminClient, SimulatorServer
from tests.fakes import FakeClock, make_pass
from tests.integration.conftest import aws_client
from tests.reliability.rig import (
    SIM_EPOCH,
    SIM_NOW,
    Queues,
    api_event,
    assert_cache_matches,
    assert_log_replays,
    call_api,
    call_backfill,
    call_updates,
    clear_collections,
    delete_queues,
    drain,
    header,
    make_queues,
    queue_counts,
    services_on,
    settings_for,
    snapshot,
    sqs_record,
    with_collections,
)
from tests.reliability.stub_bytemark import V1, V4, Answer, StubBytemark, envelope, json_answer

pytestmark = pytest.mark.integration

CALLER = 42
OTHER = 43
"""Has a token and passes at Bytemark, never a cache: any input that reached it would leave a trace."""
NO_ACCOUNT = 999


@dataclass
class World:
    database: Database[dict[str, Any]]
    settings: Settings
    services: Services
    admin: AdminClient
    sqs: Any
    queues: Queues
    tokens: MySqlTokenStore

    def state(self) -> dict[str, Any]:
        """Everything an input could have changed (the forced-sync rate-limit slots aside)."""
        database, settings = self.database, self.settings
        return {
            "cache": sorted(database[settings.cache_collection].find(), key=lambda d: str(d["user_id"])),
            "log": sorted(database[settings.log_collection].find(), key=lambda d: str(d["_id"])),
            "claims": list(
                database[settings.claim_collection].find({"_id": {"$not": {"$regex": "^throttle:"}}})
            ),
            "runs": list(database[settings.backfill_run_collection].find()),
            "queue": queue_counts(self.sqs, self.queues.url),
            "dead_letters": queue_counts(self.sqs, self.queues.dlq_url),
            "bytemark": self.admin.request_counts()["by_user"],
        }

    def others(self) -> dict[str, Any]:
        """What an input for the caller must never touch: everyone else's documents and Bytemark calls."""
        database, settings = self.database, self.settings
        return {
            "cache": list(database[settings.cache_collection].find({"user_id": {"$nin": [CALLER]}})),
            "log": list(database[settings.log_collection].find({"user_id": {"$nin": [CALLER]}})),
            "bytemark": {
                user: counts
                for user, counts in self.admin.request_counts()["by_user"].items()
                if user != str(CALLER)
            },
        }


@pytest.fixture(scope="module")
def world(
    local_env: dict[str, str],
    mongo_client: MongoClient[dict[str, Any]],
    run_id: str,
    mysql_database: str,
    mysql_connect_args: dict[str, Any],
    simulator_server: SimulatorServer,
    aws_endpoint: str,
) -> Iterator[World]:
    name = f"btc_test_{run_id}_hostile"
    mongo_client.drop_database(name)
    database = mongo_client[name]
    sqs = aws_client("sqs", local_env)
    queues = make_queues(sqs)
    settings = settings_for(
        local_env,
        database=name,
        suffix="hostile",
        MYSQL_DATABASE=mysql_database,
        BYTEMARK_API_URL=simulator_server.url,
        UPDATE_QUEUE_URL=queues.url,
        UPDATE_DLQ_URL=queues.dlq_url,
    )
    ensure_indexes(database, indexed_collections(settings))
    mysql = pymysql.connect(**mysql_connect_args, database=mysql_database, autocommit=True)
    with mysql.cursor() as cursor:
        for user_id in (CALLER, OTHER):
            cursor.execute(
                "INSERT INTO bytemark_tokens (user_id, token, status) VALUES (%s, %s, 'ACTIVE') "
                "ON DUPLICATE KEY UPDATE token = VALUES(token)",
                (user_id, f"tok-hostile-{user_id}"),
            )
        cursor.execute("DELETE FROM bytemark_tokens WHERE user_id = %s", (NO_ACCOUNT,))
    admin = simulator_server.admin
    admin.reset()
    admin.set_time(SIM_NOW)
    for user_id in (CALLER, OTHER):
        admin.seed_user(user_id, f"tok-hostile-{user_id}", current=3, expired=1, seed=user_id)
    tokens = MySqlTokenStore(
        settings.mysql_host, settings.mysql_port, settings.mysql_user, settings.mysql_password, mysql_database
    )
    services = services_on(settings, database=database, clock=FakeClock(SIM_EPOCH), tokens=tokens, sqs=sqs)
    assert services.tickets.sync(CALLER, deadline=Deadline.never()).source == "built"
    try:
        yield World(database, settings, services, admin, sqs, queues, tokens)
    finally:
        tokens.close()
        with mysql.cursor() as cursor:
            cursor.execute("DELETE FROM bytemark_tokens WHERE user_id IN (%s, %s)", (CALLER, OTHER))
        mysql.close()
        delete_queues(sqs, queues)
        mongo_client.drop_database(name)


def body_of(response: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response["body"]) if response.get("body") else {}
    return body


# == the API ==============================================================================================


def event_with_claim(value: Any) -> dict[str, Any]:
    return api_event(user=value)


def event_with_authorizer(authorizer: Any) -> dict[str, Any]:
    event = api_event()
    event["requestContext"]["authorizer"] = authorizer
    return event


def event_without_authorizer() -> dict[str, Any]:
    event = api_event()
    del event["requestContext"]["authorizer"]
    return event


def event_with_claims_only(claims: Any) -> dict[str, Any]:
    return event_with_authorizer({"claims": claims})


UNAUTHENTICATED: dict[str, Callable[[], dict[str, Any]]] = {
    "no-authorizer": event_without_authorizer,
    "authorizer-null": lambda: event_with_authorizer(None),
    "authorizer-list": lambda: event_with_authorizer(["42"]),
    "authorizer-string": lambda: event_with_authorizer("42"),
    "claims-empty": lambda: event_with_claims_only({}),
    "claims-sub-only": lambda: event_with_claims_only({"sub": "68ffc102-30ba-56dc-9512-07c38d81e89c"}),
    "claims-string": lambda: event_with_claims_only("custom:user_id=42"),
    "claims-list": lambda: event_with_claims_only([["custom:user_id", "42"]]),
    "claim-empty": lambda: event_with_claim(""),
    "claim-leading-space": lambda: event_with_claim(" 42"),
    "claim-trailing-newline": lambda: event_with_claim("42\n"),
    "claim-plus": lambda: event_with_claim("+42"),
    "claim-minus": lambda: event_with_claim("-42"),
    "claim-zero": lambda: event_with_claim("0"),
    "claim-over-int32": lambda: event_with_claim("2147483648"),
    "claim-eleven-digits": lambda: event_with_claim("00000000042"),
    "claim-arabic-indic-digits": lambda: event_with_claim("٤٢"),
    "claim-fullwidth-digits": lambda: event_with_claim("\uff14\uff12"),
    "claim-underscore": lambda: event_with_claim("4_2"),
    "claim-decimal": lambda: event_with_claim("42.0"),
    "claim-exponent": lambda: event_with_claim("4.2e1"),
    "claim-hex": lambda: event_with_claim("0x2a"),
    "claim-nul": lambda: event_with_claim("42\x00"),
    "claim-sql": lambda: event_with_claim("42 OR 1=1"),
    "claim-float": lambda: event_with_claim(42.0),
    "claim-bool": lambda: event_with_claim(True),
    "claim-list": lambda: event_with_claim(["42"]),
    "claim-object": lambda: event_with_claim({"$gt": 0}),
    "claim-null": lambda: event_with_claim(None),
    "lambda-authorizer-text": lambda: event_with_authorizer({"user_id": "abc"}),
    "lambda-authorizer-negative": lambda: event_with_authorizer({"user_id": -42}),
    "lambda-authorizer-huge": lambda: event_with_authorizer({"user_id": 2**64}),
}


@pytest.mark.parametrize("name", sorted(UNAUTHENTICATED), ids=lambda name: f"api-identity:{name}")
def test_api_identity_refused(world: World, name: str) -> None:
    before = world.state()
    response = call_api(world.services, UNAUTHENTICATED[name]())
    assert response["statusCode"] == 401, response
    assert body_of(response)["error"] == "unauthenticated"
    assert world.state() == before


def not_an_api_event(mutate: Callable[[dict[str, Any]], Any]) -> Callable[[], Any]:
    def build() -> Any:
        event = api_event()
        changed = mutate(event)
        return event if changed is None else changed

    return build


NOT_API_EVENTS: dict[str, Callable[[], Any]] = {
    "none": lambda: None,
    "list": lambda: [api_event()],
    "string": lambda: "GET /tickets",
    "number": lambda: 42,
    "empty-object": lambda: {},
    "sqs-event": lambda: {"Records": [sqs_record('{"user_id": 42, "reason": "purchase"}')]},
    "schedule-event": lambda: {"mode": "due"},
    "http-api-v2": lambda: {
        "version": "2.0",
        "rawPath": "/tickets",
        "requestContext": {"http": {"method": "GET", "path": "/tickets"}, "authorizer": {"jwt": {}}},
    },
    "no-http-method": not_an_api_event(lambda e: e.pop("httpMethod")),
    "http-method-number": not_an_api_event(lambda e: e.update(httpMethod=7)),
    "path-null": not_an_api_event(lambda e: e.update(path=None)),
    "request-context-string": not_an_api_event(lambda e: e.update(requestContext="x")),
    "headers-list": not_an_api_event(lambda e: e.update(headers=[["Accept", "*/*"]])),
    "multi-value-headers-string": not_an_api_event(lambda e: e.update(multiValueHeaders="x")),
    "query-list": not_an_api_event(lambda e: e.update(queryStringParameters=["user_id=43"])),
    "body-object": not_an_api_event(lambda e: e.update(body={"user_id": 43})),
}


@pytest.mark.parametrize("name", sorted(NOT_API_EVENTS), ids=lambda name: f"api-event:{name}")
def test_api_event_shape_refused(world: World, name: str) -> None:
    before = world.state()
    response = call_api(world.services, NOT_API_EVENTS[name]())
    assert response["statusCode"] == 400, response
    assert body_of(response)["error"] == "invalid_event"
    assert world.state() == before


NO_ROUTE: dict[str, tuple[str, str]] = {
    "delete": ("DELETE", "/tickets"),
    "put-sync": ("PUT", "/tickets/sync"),
    "get-sync": ("GET", "/tickets/sync"),
    "options": ("OPTIONS", "/tickets"),
    "patch": ("PATCH", "/tickets"),
    "upper-case-path": ("GET", "/TICKETS"),
    "path-with-id": ("GET", f"/tickets/{OTHER}"),
    "dot-dot": ("GET", "/tickets/../admin"),
    "encoded-nul": ("GET", "/tickets%00"),
    "long-path": ("GET", "/tickets/" + "x" * 10_000),
    "admin-path": ("GET", "/__admin/users"),
    "root": ("GET", "/"),
}


@pytest.mark.parametrize("name", sorted(NO_ROUTE), ids=lambda name: f"api-route:{name}")
def test_api_unknown_route(world: World, name: str) -> None:
    method, path = NO_ROUTE[name]
    before = world.state()
    response = call_api(world.services, api_event(method, path))
    assert response["statusCode"] == 404, response
    assert body_of(response)["error"] == "not_found"
    assert world.state() == before


def etag_of(world: World) -> str:
    response = call_api(world.services, api_event())
    etag = header(response, "ETag")
    assert etag is not None
    return etag


def with_headers(headers: dict[str, Any]) -> Callable[[World], dict[str, Any]]:
    return lambda _world: api_event(headers={"Accept": "application/json", **headers})


SERVED: dict[str, Callable[[World], dict[str, Any]]] = {
    "query-user-id": lambda _w: api_event(query={"user_id": str(OTHER)}),
    "path-parameter-user-id": lambda _w: {**api_event(), "pathParameters": {"user_id": str(OTHER)}},
    "header-user-id": with_headers({"X-User-Id": str(OTHER)}),
    "header-forwarded-identity": with_headers({"X-Amzn-Oidc-Identity": str(OTHER)}),
    "leading-zeros-claim": lambda _w: event_with_claim("0042"),
    "get-with-json-body": lambda _w: api_event(body=json.dumps({"user_id": OTHER})),
    "get-with-broken-body": lambda _w: api_event(body="{"),
    "get-with-bad-base64": lambda _w: {**api_event(body="!!!not base64"), "isBase64Encoded": True},
    "headers-null": lambda _w: {**api_event(), "headers": None, "multiValueHeaders": None},
    "if-none-match-star": with_headers({"If-None-Match": "*"}),
    "if-none-match-weak": with_headers({"If-None-Match": 'W/"x"'}),
    "if-none-match-garbage-10kb": with_headers({"If-None-Match": "\x7f" * 10_000}),
    "if-none-match-crlf": with_headers({"If-None-Match": '"a"\r\nX-Injected: 1'}),
    "if-none-match-unicode": with_headers({"If-None-Match": '"ÿ✓"'}),
    "if-none-match-right-tag-1000-times": lambda w: api_event(
        headers={"If-None-Match": ", ".join([etag_of(w)] * 1000)}
    ),
    "if-none-match-lower-case-header": lambda w: api_event(headers={"if-none-match": etag_of(w)}),
    "huge-header-100kb": with_headers({"X-Junk": "j" * 100_000}),
    "lower-case-method": lambda _w: api_event("get", "/tickets"),
    "trailing-slash": lambda _w: api_event("GET", "/tickets/"),
}


@pytest.mark.parametrize("name", sorted(SERVED), ids=lambda name: f"api-served:{name}")
def test_api_serves_only_the_caller(world: World, name: str) -> None:
    event = SERVED[name](world)
    before = world.state()
    response = call_api(world.services, event)
    assert response["statusCode"] in (200, 304), response
    if response["statusCode"] == 200:
        assert body_of(response)["user_id"] == CALLER
    assert world.state() == before  # a fresh cache: served as it is, nothing fetched or written


FORCED: dict[str, Callable[[], dict[str, Any]]] = {
    "body-user-id": lambda: api_event("POST", "/tickets/sync", body=json.dumps({"user_id": OTHER})),
    "body-1mb": lambda: api_event("POST", "/tickets/sync", body="x" * 1_000_000),
    "body-binary": lambda: {**api_event("POST", "/tickets/sync", body="//79/A=="), "isBase64Encoded": True},
    "query-user-id": lambda: api_event("POST", "/tickets/sync", query={"user_id": str(OTHER)}),
    "header-user-id": lambda: api_event("POST", "/tickets/sync", headers={"X-User-Id": str(OTHER)}),
}


@pytest.mark.parametrize("name", sorted(FORCED), ids=lambda name: f"api-forced:{name}")
def test_api_forced_sync_touches_only_the_caller(world: World, name: str) -> None:
    # The world's clock never moves, so free the caller's forced-sync slot (the store keeps it in the claims
    # collection as "throttle:<key>"): every case then gets a real sync instead of an earlier case's 429.
    world.database[world.settings.claim_collection].delete_one({"_id": f"throttle:forced-sync:{CALLER}"})
    before = world.others()
    response = call_api(world.services, FORCED[name]())
    assert response["statusCode"] == 200, response
    assert body_of(response)["user_id"] == CALLER
    assert world.others() == before


# == SQS ==================================================================================================


MALFORMED_BODIES: dict[str, str] = {
    "not-json": "purchase for 42",
    "json-null": "null",
    "json-list": "[]",
    "json-string": '"42"',
    "json-number": "42",
    "empty-object": "{}",
    "user-id-string": '{"user_id": "42", "reason": "purchase"}',
    "user-id-float": '{"user_id": 42.0, "reason": "purchase"}',
    "user-id-bool": '{"user_id": true, "reason": "purchase"}',
    "user-id-zero": '{"user_id": 0, "reason": "purchase"}',
    "user-id-negative": '{"user_id": -42, "reason": "purchase"}',
    "user-id-over-int32": '{"user_id": 2147483648, "reason": "purchase"}',
    "user-id-2-pow-64": '{"user_id": 18446744073709551616, "reason": "purchase"}',
    "user-id-1e308": '{"user_id": 1e308, "reason": "purchase"}',
    "user-id-1e400": '{"user_id": 1e400, "reason": "purchase"}',
    "user-id-nan": '{"user_id": NaN, "reason": "purchase"}',
    "user-id-operator": '{"user_id": {"$gt": 0}, "reason": "purchase"}',
    "user-id-list": '{"user_id": [42], "reason": "purchase"}',
    "user-id-missing": '{"reason": "purchase"}',
    "reason-missing": '{"user_id": 42}',
    "reason-upper-case": '{"user_id": 42, "reason": "PURCHASE"}',
    "reason-unknown": '{"user_id": 42, "reason": "refund"}',
    "reason-null": '{"user_id": 42, "reason": null}',
    "reason-zero-width": '{"user_id": 42, "reason": "purchase\\u200b"}',
    "reason-lone-surrogate": '{"user_id": 42, "reason": "\\ud800"}',
    "pass-uuid-empty": '{"user_id": 42, "reason": "activation", "pass_uuid": ""}',
    "pass-uuid-blank": '{"user_id": 42, "reason": "activation", "pass_uuid": "   "}',
    "pass-uuid-129-chars": json.dumps({"user_id": 42, "reason": "activation", "pass_uuid": "u" * 129}),
    "pass-uuid-number": '{"user_id": 42, "reason": "activation", "pass_uuid": 12345}',
    "pass-uuid-operator": '{"user_id": 42, "reason": "activation", "pass_uuid": {"$ne": null}}',
    "over-4096-bytes": json.dumps({"user_id": 42, "reason": "purchase", "note": "n" * 5000}),
    "utf8-bom": '\ufeff{"user_id": 42, "reason": "purchase"}',
    "truncated": '{"user_id": 42, "reason": "purch',
}


@pytest.mark.parametrize("name", sorted(MALFORMED_BODIES), ids=lambda name: f"sqs-body:{name}")
def test_sqs_malformed_body_goes_to_the_dlq_at_once(world: World, name: str) -> None:
    body = MALFORMED_BODIES[name]
    record = sqs_record(body)
    before = world.state()
    response = call_updates(world.services, {"Records": [record]})
    assert response == {"batchItemFailures": []}
    letters = drain(world.sqs, world.queues.dlq_url)
    assert [letter["Body"] for letter in letters] == [body]
    attributes = letters[0]["MessageAttributes"]
    assert attributes["failure_reason"]["StringValue"].startswith("malformed message")
    assert attributes["original_message_id"]["StringValue"] == record["messageId"]
    assert world.state() == before


ACCEPTED_BODIES: dict[str, str] = {
    "extra-fields": json.dumps({"user_id": CALLER, "reason": "purchase", "source": "web", "v": 2}),
    "extra-nested-1000-deep": '{"user_id": 42, "reason": "purchase", "x": ' + "[" * 1000 + "]" * 1000 + "}",
    "extra-huge-number": '{"user_id": 42, "reason": "purchase", "amount": 1e999}',
    "extra-unicode": json.dumps({"user_id": CALLER, "reason": "manual", "note": "ÿ✓🚇\u202e"}),
    "pass-uuid-null": '{"user_id": 42, "reason": "activation", "pass_uuid": null}',
    "activation-unknown-pass": json.dumps({"user_id": CALLER, "reason": "activation", "pass_uuid": "nope"}),
    "duplicate-user-id-key-last-wins": '{"user_id": 43, "user_id": 42, "reason": "purchase"}',
}


@pytest.mark.parametrize("name", sorted(ACCEPTED_BODIES), ids=lambda name: f"sqs-accepted:{name}")
def test_sqs_body_with_ignorable_parts_syncs_the_named_user_only(world: World, name: str) -> None:
    before = world.others()
    response = call_updates(world.services, {"Records": [sqs_record(ACCEPTED_BODIES[name])]})
    assert response == {"batchItemFailures": []}
    assert drain(world.sqs, world.queues.dlq_url) == []
    assert world.others() == before
    state = snapshot(world.database, world.settings, CALLER, SIM_EPOCH)
    assert_cache_matches(state.document, world.admin.passes(CALLER))
    assert_log_replays(state.document, state.log)


SQS_EVENTS: dict[str, Any] = {
    "none": None,
    "empty-object": {},
    "records-string": {"Records": "x"},
    "records-object": {"Records": {"0": {}}},
}


@pytest.mark.parametrize("name", sorted(SQS_EVENTS), ids=lambda name: f"sqs-event:{name}")
def test_sqs_event_ignored(world: World, name: str) -> None:
    before = world.state()
    response = call_updates(world.services, SQS_EVENTS[name])
    assert response == {"batchItemFailures": []}
    assert world.state() == before


def test_sqs_message_for_a_rider_without_an_account_is_acknowledged(world: World) -> None:
    before = world.state()
    body = json.dumps({"user_id": NO_ACCOUNT, "reason": "purchase"})
    response = call_updates(world.services, {"Records": [sqs_record(body)]})
    assert response == {"batchItemFailures": []}
    after = world.state()
    # Nothing moves, not even a claim: the token is read before claiming when there is no cache.
    assert after == before


def test_a_rider_without_an_account_leaves_no_claims_behind(world: World) -> None:
    for _ in range(3):
        call_api(world.services, api_event(user=str(NO_ACCOUNT + 1)))
    claims = world.database[world.settings.claim_collection]
    assert claims.count_documents({"user_id": NO_ACCOUNT + 1}) <= 1


IMPOSSIBLE_RECORDS: dict[str, Any] = {
    "record-empty-object": {"Records": [{}]},
    "record-null": {"Records": [None]},
}
"""Records Lambda's SQS source never makes (no messageId): the handler lets the exception out (reported)."""


@pytest.mark.parametrize("name", sorted(IMPOSSIBLE_RECORDS), ids=lambda name: f"sqs-event:{name}")
def test_sqs_record_without_message_id(world: World, name: str) -> None:
    before = world.state()
    response = call_updates(world.services, IMPOSSIBLE_RECORDS[name])
    assert response == {"batchItemFailures": []}
    assert world.state() == before


# == the schedule ==========================================================================================


SCHEDULE_INPUTS: dict[str, Any] = {
    "none": None,
    "list": ["due"],
    "string": "due",
    "number": 1,
    "empty-object": {},
    "mode-upper-case": {"mode": "DUE"},
    "mode-unknown": {"mode": "all"},
    "mode-list": {"mode": ["due"]},
    "mode-null": {"mode": None},
    "cursor-negative": {"mode": "missing", "cursor": -1},
    "cursor-string": {"mode": "missing", "cursor": "10"},
    "cursor-float": {"mode": "missing", "cursor": 1.5},
    "cursor-bool": {"mode": "missing", "cursor": True},
    "cursor-object": {"mode": "missing", "cursor": {"$gt": 0}},
    "run-id-empty": {"mode": "due", "run_id": ""},
    "run-id-201-chars": {"mode": "due", "run_id": "r" * 201},
    "run-id-number": {"mode": "due", "run_id": 7},
    "unknown-field": {"mode": "due", "dry_run": False},
    "eventbridge-envelope": {"version": "0", "detail-type": "Scheduled Event", "detail": {"mode": "due"}},
}


@pytest.mark.parametrize("name", sorted(SCHEDULE_INPUTS), ids=lambda name: f"schedule:{name}")
def test_schedule_input_refused(world: World, name: str) -> None:
    before = world.state()
    answer = call_backfill(world.services, SCHEDULE_INPUTS[name])
    assert answer["error"] == "invalid_input", answer
    assert isinstance(answer["message"], str)
    assert answer["message"]
    assert world.state() == before


# == Bytemark's answers ====================================================================================


@dataclass
class StubWorld:
    stub: StubBytemark
    services: Services
    settings: Settings
    database: Database[dict[str, Any]]
    current: list[dict[str, Any]]
    expired: list[dict[str, Any]]


@pytest.fixture(scope="module")
def stub_world(world: World) -> Iterator[StubWorld]:
    stub = StubBytemark().start()
    settings = with_collections(world.settings, "stub", bytemark_api_url=stub.url)
    ensure_indexes(world.database, indexed_collections(settings))
    source = BytemarkHttpSource(stub.url, timeout_seconds=2, page_size=100, max_pages=5, max_retries=0)
    services = services_on(
        settings, database=world.database, clock=FakeClock(SIM_EPOCH), tokens=world.tokens, source=source
    )
    current = [make_pass(f"cur-{i}", time_created=f"2024-06-0{i + 1}T10:00:00.000Z") for i in range(3)]
    expired = [make_pass("old-0", status="EXPIRED", time_created="2024-01-01T10:00:00.000Z")]
    try:
        yield StubWorld(stub, services, settings, world.database, current, expired)
    finally:
        source.close()
        stub.stop()


def gzipped(value: Any) -> bytes:
    return gzip.compress(json.dumps(value).encode())


def raw_deflate(value: Any) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(json.dumps(value).encode()) + compressor.flush()


def good(passes: list[dict[str, Any]], **headers: str) -> Answer:
    return json_answer(envelope(passes), **headers)


@dataclass(frozen=True)
class BytemarkCase:
    """A hostile answer on one list, and what must come of it: refused (with its class) or accepted."""

    answer: Callable[[StubWorld], Answer]
    outcome: str  # "permanent", "transient", "revoked" or "accepted"
    endpoint: str = V1


def first_pass(stub: StubWorld, **changes: Any) -> list[dict[str, Any]]:
    return [{**stub.current[0], **changes}, *stub.current[1:]]


BYTEMARK: dict[str, BytemarkCase] = {
    "body-json-null": BytemarkCase(lambda s: json_answer(None), "permanent"),
    "body-json-list": BytemarkCase(lambda s: json_answer([envelope(s.current)]), "permanent"),
    "body-empty": BytemarkCase(lambda s: Answer(200, b""), "permanent"),
    "body-nan": BytemarkCase(lambda s: Answer(200, b"NaN"), "permanent"),
    "body-infinity-in-pass": BytemarkCase(
        lambda s: Answer(200, json.dumps(envelope(s.current)).replace('"USABLE"', "Infinity", 1).encode()),
        "permanent",
    ),
    "data-null": BytemarkCase(lambda s: json_answer(envelope([], data=None)), "permanent"),
    "data-list": BytemarkCase(lambda s: json_answer(envelope([], data=s.current)), "permanent"),
    "passes-object": BytemarkCase(
        lambda s: json_answer(envelope([], data={"passes": {"0": s.current[0]}})), "permanent"
    ),
    "total-count-negative": BytemarkCase(lambda s: json_answer(envelope(s.current, total=-1)), "permanent"),
    "total-count-string": BytemarkCase(lambda s: json_answer(envelope(s.current, total="3")), "permanent"),
    "page-count-float": BytemarkCase(lambda s: json_answer(envelope(s.current, page_count=1.5)), "permanent"),
    "pagination-string": BytemarkCase(
        lambda s: json_answer(envelope(s.current, pagination="next")), "permanent"
    ),
    "next-number": BytemarkCase(
        lambda s: json_answer(envelope(s.current, pagination={"next": 2})), "permanent"
    ),
    "next-foreign-host": BytemarkCase(
        lambda s: json_answer(
            envelope(s.current, total=10, pagination={"next": "http://evil.example/passes?page=2"})
        ),
        "permanent",
    ),
    "next-with-credentials": BytemarkCase(
        lambda s: json_answer(
            envelope(
                s.current,
                total=10,
                pagination={"next": f"{s.stub.url.replace('//', '//u:p@')}/passes?page=2"},
            )
        ),
        "permanent",
    ),
    "errors-unknown-code": BytemarkCase(
        lambda s: json_answer(envelope(s.current, errors=[{"code": 40000, "message": "x"}])), "permanent"
    ),
    "errors-50020-as-string": BytemarkCase(
        lambda s: json_answer(envelope([], data=None, errors=[{"code": "50020"}])), "revoked"
    ),
    "pass-not-object": BytemarkCase(lambda s: json_answer(envelope([1, 2, 3])), "permanent"),
    "pass-uuid-number": BytemarkCase(lambda s: json_answer(envelope(first_pass(s, uuid=123))), "permanent"),
    "pass-uuid-empty": BytemarkCase(lambda s: json_answer(envelope(first_pass(s, uuid=""))), "permanent"),
    "pass-status-empty": BytemarkCase(lambda s: json_answer(envelope(first_pass(s, status=""))), "permanent"),
    "pass-nested-40-deep": BytemarkCase(
        lambda s: json_answer(envelope(first_pass(s, deep=json.loads("[" * 40 + "]" * 40)))), "permanent"
    ),
    "pass-dollar-key": BytemarkCase(
        lambda s: json_answer(envelope(first_pass(s, **{"$where": "1"}))), "permanent"
    ),
    "pass-int-over-64-bits": BytemarkCase(
        lambda s: json_answer(envelope(first_pass(s, n=2**64))), "permanent"
    ),
    "status-302-redirect": BytemarkCase(
        lambda s: Answer(302, b"", {"Location": "http://evil.example/passes"}), "permanent"
    ),
    "status-404": BytemarkCase(lambda s: json_answer({"errors": [{"code": 40400}]}, status=404), "permanent"),
    "status-401": BytemarkCase(lambda s: json_answer({"errors": []}, status=401), "revoked"),
    "status-418": BytemarkCase(lambda s: json_answer(envelope(s.current), status=418), "permanent"),
    "content-length-longer-than-body": BytemarkCase(
        lambda s: Answer(200, json.dumps(envelope(s.current)).encode(), length=100_000), "transient"
    ),
    "gzip-header-plain-body": BytemarkCase(
        lambda s: good(s.current, **{"Content-Encoding": "gzip"}), "permanent"
    ),
    "gzip-twice": BytemarkCase(
        lambda s: Answer(
            200, gzip.compress(gzipped(envelope(s.current))), {"Content-Encoding": "gzip, gzip"}
        ),
        "permanent",
    ),
    "encoding-compress": BytemarkCase(
        lambda s: good(s.current, **{"Content-Encoding": "compress"}), "permanent"
    ),
    "history-list-broken": BytemarkCase(lambda s: json_answer({"data": "broken"}), "permanent", V4),
    # Tolerated (the cache must then equal what they mean):
    "accepted-utf16-body": BytemarkCase(
        lambda s: Answer(200, json.dumps(envelope(s.current)).encode("utf-16")), "accepted"
    ),
    "accepted-utf8-bom": BytemarkCase(
        lambda s: Answer(200, b"\xef\xbb\xbf" + json.dumps(envelope(s.current)).encode()), "accepted"
    ),
    "accepted-x-gzip": BytemarkCase(
        lambda s: Answer(200, gzipped(envelope(s.current)), {"Content-Encoding": "x-gzip"}), "accepted"
    ),
    "accepted-raw-deflate": BytemarkCase(
        lambda s: Answer(200, raw_deflate(envelope(s.current)), {"Content-Encoding": "deflate"}), "accepted"
    ),
    "accepted-identity-encoding": BytemarkCase(
        lambda s: good(s.current, **{"Content-Encoding": "identity"}), "accepted"
    ),
    "accepted-duplicate-uuid-newest-wins": BytemarkCase(
        lambda s: json_answer(
            envelope([*s.current, {**s.current[0], "time_modified": "2030-01-01T00:00:00Z", "note": "newer"}])
        ),
        "accepted",
    ),
    "accepted-total-count-overstated": BytemarkCase(
        lambda s: (
            lambda query: json_answer(envelope(s.current if query.get("page") == ["1"] else [], total=50))
        ),
        "accepted",
    ),
    "accepted-no-counts-no-pagination": BytemarkCase(
        lambda s: json_answer(envelope(s.current, total=None, page_count=None, pagination=None)), "accepted"
    ),
}


def meaning(stub: StubWorld, name: str) -> dict[str, list[dict[str, Any]]]:
    """The lists an accepted answer means."""
    if name == "accepted-duplicate-uuid-newest-wins":
        newer = {**stub.current[0], "time_modified": "2030-01-01T00:00:00Z", "note": "newer"}
        return {"current": [newer, *stub.current[1:]], "expired": stub.expired}
    return {"current": stub.current, "expired": stub.expired}


@pytest.mark.parametrize("name", sorted(BYTEMARK), ids=lambda name: f"bytemark:{name}")
def test_bytemark_answer(stub_world: StubWorld, name: str) -> None:
    case = BYTEMARK[name]
    stub, services, settings = stub_world.stub, stub_world.services, stub_world.settings
    clear_collections(stub_world.database, settings)
    stub.lists(stub_world.current, stub_world.expired)
    assert services.tickets.sync(CALLER, deadline=Deadline.never()).source == "built"
    before = snapshot(stub_world.database, settings, CALLER, SIM_EPOCH)
    hostile = case.answer(stub_world)
    stub.answer(case.endpoint, hostile)

    refused: UpstreamError | None = None
    try:
        result = services.tickets.sync(CALLER, deadline=Deadline.after(SIM_EPOCH, 5))
    except UpstreamError as exc:
        refused = exc
    after = snapshot(stub_world.database, settings, CALLER, SIM_EPOCH)
    if refused is not None:
        assert case.outcome != "accepted", f"refused: {refused!r}"
        assert isinstance(refused, TokenRevoked) is (case.outcome == "revoked"), repr(refused)
        if case.outcome != "revoked":
            assert refused.transient is (case.outcome == "transient"), repr(refused)
        assert after.log == before.log
        assert after.document is not None
        assert before.document is not None
        if case.outcome == "revoked":
            after.document.pop("next_sync_at")
            before.document.pop("next_sync_at")
        assert after.document == before.document
        return
    assert case.outcome == "accepted", f"{name} was accepted ({result.source})"
    assert_cache_matches(after.document, meaning(stub_world, name))
    assert_log_replays(after.document, after.log)


# == configuration =========================================================================================

SECRET = "S3cret-Pa55w0rd"

VALID_ENV = {
    "MONGODB_URI": f"mongodb://app:{SECRET}@127.0.0.1:27017/",
    "MYSQL_HOST": "127.0.0.1",
    "MYSQL_USER": "app",
    "MYSQL_PASSWORD": SECRET,
    "BYTEMARK_API_URL": "https://api.bytemark.example",
}

CONFIG: dict[str, dict[str, str]] = {
    "mongodb-uri-http-with-password": {"MONGODB_URI": f"http://app:{SECRET}@db.example/"},
    "mongodb-uri-no-scheme": {"MONGODB_URI": f"app:{SECRET}@db.example"},
    "mysql-port-too-big": {"MYSQL_PORT": "99999"},
    "mysql-port-text": {"MYSQL_PORT": "abc"},
    "mysql-port-negative": {"MYSQL_PORT": "-1"},
    "mysql-port-decimal": {"MYSQL_PORT": "3306.0"},
    "mysql-port-nul": {"MYSQL_PORT": "3306\x00"},
    "timeout-nan": {"BYTEMARK_TIMEOUT_SECONDS": "nan"},
    "timeout-inf": {"BYTEMARK_TIMEOUT_SECONDS": "inf"},
    "timeout-zero": {"BYTEMARK_TIMEOUT_SECONDS": "0"},
    "timeout-huge": {"BYTEMARK_TIMEOUT_SECONDS": "1e9"},
    "api-url-ftp": {"BYTEMARK_API_URL": "ftp://bytemark.example"},
    "api-url-no-host": {"BYTEMARK_API_URL": "http://"},
    "api-url-javascript": {"BYTEMARK_API_URL": "javascript:alert(1)"},
    "timezone-path-traversal": {"AGENCY_TIMEZONE": "../../../../etc/passwd"},
    "timezone-unknown": {"AGENCY_TIMEZONE": "Mars/Olympus_Mons"},
    "identity-claim-space": {"IDENTITY_CLAIM": "custom:user id"},
    "identity-claim-65-chars": {"IDENTITY_CLAIM": "c" * 65},
    "ttl-negative": {"CACHE_TTL_SECONDS": "-5"},
    "page-size-zero": {"BYTEMARK_PAGE_SIZE": "0"},
    "retries-eleven": {"BYTEMARK_MAX_RETRIES": "11"},
    "passes4-limit-exponent": {"PASSES4_LIMIT": "1e3"},
    "claim-seconds-huge": {"SYNC_CLAIM_SECONDS": "99999"},
    "redelivery-cap-nan": {"REDELIVERY_CAP_SECONDS": "NaN"},
    "required-all-blank": {"MONGODB_URI": " ", "MYSQL_HOST": "", "MYSQL_USER": "\t", "BYTEMARK_API_URL": ""},
}


@pytest.mark.parametrize("name", sorted(CONFIG), ids=lambda name: f"config:{name}")
def test_configuration_refused_without_echoing_secrets(name: str) -> None:
    hostile = CONFIG[name]
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**VALID_ENV, **hostile})
    error = info.value
    assert SECRET not in str(error)
    assert sorted(problem.split("=")[0].split(" ")[0] for problem in error.problems) == sorted(hostile)


def test_configuration_reports_every_problem_at_once() -> None:
    everything = {key: value for case in CONFIG.values() for key, value in case.items()}
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**VALID_ENV, **everything})
    names = {problem.split("=")[0].split(" ")[0] for problem in info.value.problems}
    assert names == set(everything)
    assert SECRET not in str(info.value)
