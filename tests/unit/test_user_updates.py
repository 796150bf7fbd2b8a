"""user_updates through its handler with fake services: exact partial failures, classified and delayed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bytemark_cache.domain.backoff import REDELIVERY_BASE_SECONDS, REDELIVERY_CAP_SECONDS
from bytemark_cache.errors import StoreError, TokenRevoked, UpstreamError
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


def record(message_id: str, body: str, receive_count: int = 1) -> dict[str, Any]:
    template = load_event("sqs_purchase.json")["Records"][0]
    attributes = {**template["attributes"], "ApproximateReceiveCount": str(receive_count)}
    return {
        **template,
        "messageId": message_id,
        "receiptHandle": f"rh-{message_id}",
        "body": body,
        "attributes": attributes,
    }


def cached_users(world: FakeWorld) -> set[int]:
    return {document["user_id"] for document in world.cache.documents.values()}


def test_purchase_message_syncs_the_user(world: FakeWorld) -> None:
    response = invoke(world, load_event("sqs_purchase.json"))

    assert response == {"batchItemFailures": []}
    assert [element["pass_uuid"] for element in world.cache.document_of(42)["passes"]] == ["p-42"]  # type: ignore[index]


def test_malformed_records_go_to_the_dlq_at_once_and_the_rest_are_synced(world: FakeWorld) -> None:
    event = load_event("sqs_mixed_batch.json")
    malformed = [event["Records"][i] for i in (1, 3, 4)]

    response = invoke(world, event)

    assert response == {"batchItemFailures": []}
    letters = sorted(world.redelivery.dead_letters, key=lambda letter: letter["message_id"])
    assert [(letter["message_id"], letter["body"]) for letter in letters] == [
        (r["messageId"], r["body"]) for r in malformed
    ]
    assert all(letter["reason"].startswith("malformed message") for letter in world.redelivery.dead_letters)
    assert cached_users(world) == {42, 43}


def test_a_malformed_record_is_retried_when_the_dlq_cannot_take_it(world: FakeWorld) -> None:
    world.redelivery.fail = True
    event = {
        "Records": [record("bad", "[]"), record("good", json.dumps({"user_id": 42, "reason": "purchase"}))]
    }

    response = invoke(world, event)

    assert failed_ids(response) == ["bad"]
    assert cached_users(world) == {42}


def test_unknown_message_fields_are_ignored(world: FakeWorld) -> None:
    body = json.dumps({"user_id": 42, "reason": "purchase", "order_id": "o-1", "channel": {"app": "ios"}})

    assert invoke(world, {"Records": [record("m", body)]}) == {"batchItemFailures": []}
    assert cached_users(world) == {42}


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
    assert cached_users(world) == {42, 44}
    assert REDELIVERY_BASE_SECONDS / 2 <= world.redelivery.delays["rh-retry-43"] <= REDELIVERY_BASE_SECONDS


@pytest.mark.parametrize(("receive_count", "ceiling"), [(1, 60), (2, 120), (4, 480), (8, 7200), (12, 7200)])
def test_transient_failures_come_back_after_growing_delays(
    world: FakeWorld, receive_count: int, ceiling: int
) -> None:
    world.source.fail_next("tok-42", UpstreamError("bytemark 503"))

    invoke(
        world, {"Records": [record("m", json.dumps({"user_id": 42, "reason": "purchase"}), receive_count)]}
    )

    assert ceiling / 2 <= world.redelivery.delays["rh-m"] <= min(ceiling, REDELIVERY_CAP_SECONDS)


def test_a_permanent_sync_failure_goes_to_the_dlq_at_once(world: FakeWorld) -> None:
    world.source.fail_next("tok-42", UpstreamError("more than max_pages=50 pages", transient=False))

    response = invoke(world, load_event("sqs_purchase.json"))

    assert response == {"batchItemFailures": []}
    assert "max_pages" in world.redelivery.dead_letters[0]["reason"]
    assert len(world.source.fetches) == 1


def test_a_store_outage_is_retried_later(world: FakeWorld) -> None:
    world.cache.fail_next("claim", StoreError("mongo down"))

    response = invoke(world, load_event("sqs_purchase.json"))

    assert len(response["batchItemFailures"]) == 1
    assert world.redelivery.dead_letters == []
    assert len(world.redelivery.delays) == 1


def test_revoked_token_is_acknowledged_not_retried(world: FakeWorld) -> None:
    world.source.fail_next("tok-42", TokenRevoked())

    response = invoke(world, load_event("sqs_purchase.json"))

    assert response == {"batchItemFailures": []}
    assert world.cache.documents == {}
    assert world.redelivery.dead_letters == []


def test_user_without_account_is_acknowledged(world: FakeWorld) -> None:
    world.tokens.tokens[42] = ""

    assert invoke(world, load_event("sqs_purchase.json")) == {"batchItemFailures": []}
    assert world.source.fetches == []


def test_activation_marks_pass_using_before_syncing(world: FakeWorld) -> None:
    invoke(world, load_event("sqs_purchase.json"))
    hash_before = world.cache.document_of(42)["passes"][0]["payload_hash"]  # type: ignore[index]
    seen_during_fetch: list[str] = []
    world.source.before_fetch = lambda _token: seen_during_fetch.append(
        world.cache.document_of(42)["passes"][0]["status"]  # type: ignore[index]
    )
    event = load_event("sqs_activation.json")
    event["Records"][0]["body"] = json.dumps({"user_id": 42, "reason": "activation", "pass_uuid": "p-42"})

    response = invoke(world, event)

    assert response == {"batchItemFailures": []}
    assert seen_during_fetch == ["USING"]
    element = world.cache.document_of(42)["passes"][0]  # type: ignore[index]
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
    assert cached_users(world) == {uid for uid in users if uid % 3}


def test_an_event_that_is_not_from_sqs_is_refused_without_an_exception(world: FakeWorld) -> None:
    for event in (None, {}, {"Records": "x"}, "text"):
        assert invoke(world, event) == {"batchItemFailures": []}  # type: ignore[arg-type]
    assert world.source.fetches == []
