"""on_demand_check through its handler with fake services: identity, deadline, TTL, ETag, the error table."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bytemark_cache.errors import (
    ConfigError,
    DeadlineExceeded,
    StoreError,
    SyncInProgress,
    TokenRevoked,
    UpstreamError,
)
from tests.fakes import FakeWorld, make_pass
from tests.lambda_harness import FakeLambdaContext, load_event, load_function

handler = load_function("on_demand_check")


@pytest.fixture
def world() -> FakeWorld:
    world = FakeWorld(users={42: "tok-42", 7: "tok-7"})
    world.source.set_passes(
        "tok-42",
        [
            make_pass("day-1", label_name="Local Day Pass", first_use="2024-06-15T02:00:00Z"),
            make_pass("single-1", time_created="2024-06-02T10:00:00Z"),
        ],
        [make_pass("old-1", status="EXPIRED", time_created="2024-01-01T00:00:00Z")],
    )
    world.source.set_passes("tok-7", [make_pass("seven-1")])
    return world


def invoke(world: FakeWorld, event: Any, context: FakeLambdaContext | None = None) -> dict[str, Any]:
    result: dict[str, Any] = handler.lambda_handler(
        event, context or FakeLambdaContext(), services=world.services
    )
    return result


def header(response: dict[str, Any], name: str) -> str:
    """One response header, whichever of the REST proxy's two header maps carries it."""
    if name in response.get("headers", {}):
        return str(response["headers"][name])
    values = response.get("multiValueHeaders", {}).get(name, [])
    assert len(values) == 1, f"{name}: {values}"
    return str(values[0])


def body(response: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(response["body"])
    return parsed


def test_get_tickets_builds_then_serves_from_cache(world: FakeWorld) -> None:
    first = invoke(world, load_event("apigw_get_tickets.json"))
    world.clock.advance(120)
    second = invoke(world, load_event("apigw_get_tickets.json"))

    assert first["statusCode"] == 200
    payload = body(second)
    assert payload["user_id"] == 42
    assert payload["stale"] is False
    assert payload["age_seconds"] == 120
    assert [element["pass_uuid"] for element in payload["passes"]] == ["day-1", "single-1"]
    assert [element["pass_uuid"] for element in payload["passes4"]] == ["old-1"]
    assert len(world.source.fetches) == 1
    assert header(second, "Cache-Control").startswith("private")


def test_elements_carry_wrapper_fields_effective_status_and_payload(world: FakeWorld) -> None:
    payload = body(invoke(world, load_event("apigw_get_tickets.json")))

    day_pass = payload["passes"][0]
    assert set(day_pass) == {
        "pass_uuid",
        "timestamp",
        "status",
        "free_ticket_status",
        "payload_hash",
        "effective_status",
        "payload",
    }
    assert day_pass["status"] == "USABLE"
    assert day_pass["effective_status"] == "USING"  # activated 02:00Z, the clock says 04:30Z same local day
    assert day_pass["payload"]["uuid"] == "day-1"


def test_lambda_authorizer_identity_is_used(world: FakeWorld) -> None:
    assert body(invoke(world, load_event("apigw_get_tickets_lambda_authorizer.json")))["user_id"] == 42


def test_no_identity_is_401(world: FakeWorld) -> None:
    response = invoke(world, load_event("apigw_no_identity.json"))

    assert response["statusCode"] == 401
    assert body(response)["error"] == "unauthenticated"
    assert world.source.fetches == []


def test_cognitos_sub_is_not_the_user_id(world: FakeWorld) -> None:
    response = invoke(world, load_event("apigw_cognito_sub_only.json"))

    assert response["statusCode"] == 401
    assert world.source.fetches == []


def test_the_identity_claim_is_configurable(world: FakeWorld) -> None:
    other = FakeWorld(env={"IDENTITY_CLAIM": "portal_user"}, users={42: "tok-42"})
    other.source.set_passes("tok-42", [])
    event = load_event("apigw_cognito_sub_only.json")
    event["requestContext"]["authorizer"]["claims"]["portal_user"] = "42"

    assert invoke(other, event)["statusCode"] == 200


@pytest.mark.parametrize(
    "claim",
    [
        "",
        "abc",
        "-3",
        "0",
        "4.2",
        "\u0663",
        "+42",
        " 42",
        "42 ",
        "4e1",
        "2147483648",
        "00000000042",
        True,
        42.0,
    ],
)
def test_unusable_identity_is_401_and_touches_nothing(world: FakeWorld, claim: object) -> None:
    event = load_event("apigw_get_tickets.json")
    event["requestContext"]["authorizer"]["claims"]["custom:user_id"] = claim

    response = invoke(world, event)

    assert response["statusCode"] == 401
    assert world.source.fetches == []
    assert world.cache.documents == {}


@pytest.mark.parametrize(
    "event",
    [
        None,
        [],
        "GET /tickets",
        {},
        {"Records": [{"body": "{}"}]},
        {"httpMethod": "GET", "path": "/tickets"},
        {"httpMethod": 5, "path": "/tickets", "requestContext": {}},
        {"httpMethod": "GET", "path": "/tickets", "requestContext": {}, "headers": ["x"]},
        {"httpMethod": "GET", "path": "/tickets", "requestContext": {}, "body": {"not": "text"}},
    ],
)
def test_an_event_that_is_not_an_api_request_gets_400(world: FakeWorld, event: object) -> None:
    response = invoke(world, event)

    assert response["statusCode"] == 400
    assert body(response)["error"] == "invalid_event"
    assert world.source.fetches == []


def test_user_id_in_query_header_or_body_is_ignored(world: FakeWorld) -> None:
    response = invoke(world, load_event("apigw_spoofed_identity.json"))

    assert body(response)["user_id"] == 42
    assert world.source.fetches == ["tok-42"]


def test_etag_and_if_none_match_give_304(world: FakeWorld) -> None:
    first = invoke(world, load_event("apigw_get_tickets.json"))
    event = load_event("apigw_get_tickets_if_none_match.json")
    event["headers"]["If-None-Match"] = header(first, "ETag")

    second = invoke(world, event)

    assert second["statusCode"] == 304
    assert second["body"] == ""
    assert header(second, "ETag") == header(first, "ETag")


def test_etag_changes_when_a_pass_changes(world: FakeWorld) -> None:
    first = invoke(world, load_event("apigw_get_tickets.json"))
    world.source.accounts["tok-42"].current.append(make_pass("new-1", time_created="2024-06-14T00:00:00Z"))
    world.clock.advance(20)
    invoke(world, load_event("apigw_sync.json"))
    event = load_event("apigw_get_tickets_if_none_match.json")
    event["headers"]["If-None-Match"] = header(first, "ETag")

    second = invoke(world, event)

    assert second["statusCode"] == 200
    assert header(second, "ETag") != header(first, "ETag")


def test_forced_sync_is_rate_limited_per_user(world: FakeWorld) -> None:
    first = invoke(world, load_event("apigw_sync.json"))
    second = invoke(world, load_event("apigw_sync.json"))
    world.clock.advance(10)
    third = invoke(world, load_event("apigw_sync.json"))

    assert first["statusCode"] == 200
    assert second["statusCode"] == 429
    assert body(second)["error"] == "rate_limited"
    assert header(second, "Retry-After") == "10"
    assert third["statusCode"] == 200
    assert len(world.source.fetches) == 2


def test_forced_sync_fetches_even_when_cache_is_fresh(world: FakeWorld) -> None:
    invoke(world, load_event("apigw_get_tickets.json"))
    world.clock.advance(11)

    response = invoke(world, load_event("apigw_sync.json"))

    assert response["statusCode"] == 200
    assert len(world.source.fetches) == 2


def test_an_old_cache_is_served_at_once_and_refreshed_behind(world: FakeWorld) -> None:
    invoke(world, load_event("apigw_get_tickets.json"))
    world.source.accounts["tok-42"].current.pop(0)  # only the single ride left: nothing in use
    world.cache.documents[next(iter(world.cache.documents))]["passes"].pop(0)
    world.clock.advance(4000)

    response = invoke(world, load_event("apigw_get_tickets.json"))

    assert response["statusCode"] == 200
    assert body(response)["refreshing"] is True
    assert world.queue.messages == [{"user_id": 42, "reason": "refresh"}]
    assert len(world.source.fetches) == 1


def test_upstream_down_with_cache_serves_stale(world: FakeWorld) -> None:
    invoke(world, load_event("apigw_get_tickets.json"))
    world.clock.advance(20)
    world.source.fail_next("tok-42", UpstreamError("503"))

    response = invoke(world, load_event("apigw_sync.json"))

    assert response["statusCode"] == 200
    assert body(response)["stale"] is True
    assert body(response)["upstream_error"] == "unavailable"


def test_upstream_down_without_cache_is_503_with_retry_after(world: FakeWorld) -> None:
    world.source.fail_next("tok-42", UpstreamError("503", retry_after=7))

    response = invoke(world, load_event("apigw_get_tickets.json"))

    assert response["statusCode"] == 503
    assert header(response, "Retry-After") == "7"
    assert body(response)["error"] == "upstream_unavailable"


def test_revoked_token_with_cache_is_flagged_and_without_cache_is_409(world: FakeWorld) -> None:
    world.source.fail_next("tok-42", TokenRevoked())
    without_cache = invoke(world, load_event("apigw_get_tickets.json"))
    invoke(world, load_event("apigw_get_tickets.json"))
    world.clock.advance(20)
    world.source.fail_next("tok-42", TokenRevoked())
    with_cache = invoke(world, load_event("apigw_sync.json"))

    assert without_cache["statusCode"] == 409
    assert body(without_cache)["error"] == "bytemark_token_revoked"
    assert body(with_cache)["upstream_error"] == "token_revoked"
    assert body(with_cache)["stale"] is True


def test_user_without_bytemark_token_is_404(world: FakeWorld) -> None:
    world.tokens.tokens[42] = None

    response = invoke(world, load_event("apigw_get_tickets.json"))

    assert response["statusCode"] == 404
    assert body(response) == {
        "error": "no_bytemark_account",
        "message": "this user has no linked Bytemark account",
    }


def test_unknown_route_is_json_404(world: FakeWorld) -> None:
    response = invoke(world, load_event("apigw_unknown_route.json"))

    assert response["statusCode"] == 404
    assert body(response)["error"] == "not_found"


def test_token_never_appears_in_response(world: FakeWorld) -> None:
    response = invoke(world, load_event("apigw_get_tickets.json"))

    assert "tok-42" not in json.dumps(response)


def test_events_are_not_mutated(world: FakeWorld) -> None:
    event = load_event("apigw_get_tickets.json")
    original = copy.deepcopy(event)

    invoke(world, event)

    assert event == original


def emitted_metrics(captured: str) -> set[str]:
    """Metric names in the CloudWatch EMF documents Powertools printed."""
    names: set[str] = set()
    for line in captured.splitlines():
        if '"_aws"' in line:
            document = json.loads(line)
            for directive in document["_aws"]["CloudWatchMetrics"]:
                names.update(metric["Name"] for metric in directive["Metrics"])
    return names


def test_metrics_tell_cache_hits_from_upstream_syncs(
    world: FakeWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    invoke(world, load_event("apigw_get_tickets.json"))
    first = emitted_metrics(capsys.readouterr().out)
    invoke(world, load_event("apigw_get_tickets.json"))
    second = emitted_metrics(capsys.readouterr().out)

    assert {"TicketsBuilt", "BytemarkRequests", "SyncLatency", "ChangedPasses"} <= first
    assert "TicketsFromCache" in second
    assert not {"BytemarkRequests", "SyncLatency"} & second


def test_the_deadline_is_the_remaining_time_less_a_margin_and_never_past_api_gateways_limit(
    world: FakeWorld,
) -> None:
    invoke(world, load_event("apigw_get_tickets.json"), FakeLambdaContext(remaining_ms=[12_000]))
    world.clock.advance(20)
    invoke(world, load_event("apigw_sync.json"), FakeLambdaContext(remaining_ms=[900_000]))

    short, long = world.source.budgets
    assert short == pytest.approx(12 - handler.SAFETY_MARGIN_SECONDS)
    assert long == pytest.approx(handler.API_GATEWAY_LIMIT_SECONDS - handler.SAFETY_MARGIN_SECONDS)


def test_bytemark_past_the_deadline_serves_the_cache_or_503(world: FakeWorld) -> None:
    world.source.fail_next("tok-42", DeadlineExceeded())
    without_cache = invoke(world, load_event("apigw_get_tickets.json"))
    invoke(world, load_event("apigw_get_tickets.json"))
    world.clock.advance(20)
    world.source.fail_next("tok-42", DeadlineExceeded())
    with_cache = invoke(world, load_event("apigw_sync.json"))

    assert without_cache["statusCode"] == 503
    assert with_cache["statusCode"] == 200
    assert body(with_cache)["stale"] is True


@pytest.mark.parametrize(
    ("error", "status", "code", "metric"),
    [
        (StoreError("mongo down"), 503, "cache_unavailable", "StoreUnavailable"),
        (SyncInProgress("busy"), 503, "sync_in_progress", None),
        (ConfigError(["MONGODB_URI is required"]), 500, "misconfigured", None),
        (RuntimeError("a bug"), 500, "internal_error", None),
        (UpstreamError("schema break", transient=False), 503, "upstream_unavailable", "UpstreamFailure"),
    ],
)
def test_every_failure_is_answered_from_the_one_table(
    world: FakeWorld,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    status: int,
    code: str,
    metric: str | None,
) -> None:
    def fail(_token: str) -> None:
        raise error

    world.source.before_fetch = fail

    response = invoke(world, load_event("apigw_get_tickets.json"))

    assert response["statusCode"] == status
    assert body(response)["error"] == code
    assert "Traceback" not in response["body"]
    assert str(error) not in response["body"] or code == "upstream_unavailable"
    if metric is not None:
        assert metric in emitted_metrics(capsys.readouterr().out)
