"""user_updates through its handler with fake services: exact partial-batch failures and their causes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bytemark_cache.errors import TokenRevoked, UpstreamError
from tests.fakes import FakeWorld, make_pass
from tests.lambda_harness import FakeLambdaContext, load_event, load_function

handler = load_function("user_updates")


@pytest.fixture
def world() -> FakeWorld:
    world = FakeWorld(users={42: "tok-42", 43: "tok-43", 44: "tok-44"})
    for uid in (42, 43, 44):
        world.source.set_passes(f"tok-{uid}", [make_pass(f"p-{uid}")])
    return world


def invoke(world: FakeWorld, event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = handler.lambda_handler(event, FakeLambdaContext(), services=world.services)
    return result


def failed_ids(response: dict[str, Any]) -> list[str]:
    return sorted(item["itemIdentifier"] for item in response["batchItemFailures"])


def record(message_id: str, body: str) -> dict[str, Any]:
    template = load_event("sqs_purchase.json")["Records"][0]
    return {**template, "messageId": message_id, "body": body}


def test_purchase_message_syncs_the_user(world: FakeWorld) -> None:
    response = invoke(world, load_event("sqs_purchase.json"))

    assert response == {"batchItemFailures": []}
    assert [element["pass_uuid"] for element in world.cache.documents[42]["passes"]] == ["p-42"]


def test_mixed_batch_reports_exactly_the_malformed_records(world: FakeWorld) -> None:
    event = load_event("sqs_mixed_batch.json")
    malformed = [event["Records"][i]["messageId"] for i in (1, 3, 4)]

    response = invoke(world, event)

    assert failed_ids(response) == sorted(malformed)
    assert set(world.cache.documents) == {42, 43}


def test_batch_where_every_record_fails_still_answers_each_failure(world: FakeWorld) -> None:
    event = {"Records": [record(f"m-{i}", "[]") for i in range(4)]}

    response = invoke(world, event)

    assert failed_ids(response) == ["m-0", "m-1", "m-2", "m-3"]


def test_transient_failure_is_reported_for_retry_and_others_succeed(world: FakeWorld) -> None:
    world.source.fail_next("tok-43", UpstreamError("bytemark 503"))
    event = {
        "Records": [
            record("ok-42", json.dumps({"user_id": 42, "reason": "purchase"})),
            record("retry-43", json.dumps({"user_id": 43, "reason": "purchase"})),
            record("ok-44", json.dumps({"user_id": 44, "reason": "manual"})),
        ]
    }

    response = invoke(world, event)

    assert failed_ids(response) == ["retry-43"]
    assert set(world.cache.documents) == {42, 44}


def test_revoked_token_is_acknowledged_not_retried(world: FakeWorld) -> None:
    world.source.fail_next("tok-42", TokenRevoked())

    response = invoke(world, load_event("sqs_purchase.json"))

    assert response == {"batchItemFailures": []}
    assert world.cache.documents == {}


def test_user_without_account_is_acknowledged(world: FakeWorld) -> None:
    world.tokens.tokens[42] = ""

    assert invoke(world, load_event("sqs_purchase.json")) == {"batchItemFailures": []}
    assert world.source.fetches == []


def test_activation_marks_pass_using_before_syncing(world: FakeWorld) -> None:
    invoke(world, load_event("sqs_purchase.json"))
    hash_before = world.cache.documents[42]["passes"][0]["payload_hash"]
    seen_during_fetch: list[str] = []
    world.source.before_fetch = lambda _token: seen_during_fetch.append(
        world.cache.documents[42]["passes"][0]["status"]
    )
    event = load_event("sqs_activation.json")
    event["Records"][0]["body"] = json.dumps({"user_id": 42, "reason": "activation", "pass_uuid": "p-42"})

    response = invoke(world, event)

    assert response == {"batchItemFailures": []}
    assert seen_during_fetch == ["USING"]
    element = world.cache.documents[42]["passes"][0]
    assert element["payload_hash"] == hash_before
    assert element["payload"]["status"] == "USABLE"


def test_many_records_synced_concurrently_report_exactly(world: FakeWorld) -> None:
    users = {uid: f"tok-{uid}" for uid in range(100, 130)}
    world.tokens.tokens.update(users)
    for uid, token in users.items():
        world.source.set_passes(token, [make_pass(f"p-{uid}")])
        if uid % 3 == 0:
            world.source.fail_next(token, UpstreamError("503"))
    event = {
        "Records": [record(f"m-{uid}", json.dumps({"user_id": uid, "reason": "backfill"})) for uid in users]
    }

    response = invoke(world, event)

    assert failed_ids(response) == sorted(f"m-{uid}" for uid in users if uid % 3 == 0)
    assert set(world.cache.documents) == {uid for uid in users if uid % 3}
