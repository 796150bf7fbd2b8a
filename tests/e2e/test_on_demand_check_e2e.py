"""on_demand_check end to end: every ``events/apigw_*.json`` through the built function, on real servers.

Each test adapts a copy of an event file to a user of its own (the authorizer's identity, never anything
else), invokes the artifact of ``sam build`` under the Lambda runtime emulator, and checks the answer
against what the Bytemark simulator served and what landed in MongoDB. Upstream traffic is read from the
simulator's per-user request counters, so "served from the cache" means zero requests, not "fast".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from bytemark_simulator import SimulatorServer

from .lambda_emulator import Account, Accounts, E2eStores, EmulatorPool, load_event

pytestmark = pytest.mark.e2e

FUNCTION = "OnDemandCheckFunction"
LIVE_STATUSES = {"USABLE", "USING", "EXPIRED", "USES_GONE"}
ELEMENT_FIELDS = {"pass_uuid", "timestamp", "status", "payload_hash", "effective_status", "payload"}


@dataclass(frozen=True)
class ApiAnswer:
    """An API Gateway proxy answer, with case-insensitive header access."""

    raw: dict[str, Any]

    @property
    def status(self) -> int:
        """The HTTP status code."""
        return int(self.raw["statusCode"])

    def header(self, name: str) -> str | None:
        """One header (from ``headers`` or ``multiValueHeaders``), or None."""
        wanted = name.lower()
        for key, value in (self.raw.get("headers") or {}).items():
            if key.lower() == wanted:
                return str(value)
        for key, values in (self.raw.get("multiValueHeaders") or {}).items():
            if key.lower() == wanted and values:
                return ", ".join(str(value) for value in values)
        return None

    def json(self) -> dict[str, Any]:
        """The body as a JSON object."""
        body = json.loads(self.raw["body"])
        assert isinstance(body, dict), self.raw
        return body


def api_event(name: str, user_id: int | None) -> dict[str, Any]:
    """A copy of ``events/<name>`` whose authorizer identity (JWT ``sub`` or ``user_id``) is ``user_id``."""
    event = load_event(name)
    authorizer = event["requestContext"].get("authorizer")
    if user_id is not None:
        assert authorizer is not None, f"{name} carries no identity to adapt"
        if "claims" in authorizer:
            authorizer["claims"]["sub"] = str(user_id)
        else:
            authorizer["user_id"] = str(user_id)
    return event


def invoke(pool: EmulatorPool, event: dict[str, Any], *secrets: str) -> ApiAnswer:
    """Invoke the built function; ``secrets`` (tokens) must appear nowhere in its answer."""
    raw = pool.invoke(FUNCTION, event)
    if raw.get("statusCode") == 500:
        # Shown with the failure: the function's own log says what went wrong.
        print(pool.emulator(FUNCTION).log_tail(60))
    text = json.dumps(raw)
    for secret in secrets:
        assert secret not in text, "a Bytemark token leaked into the API answer"
    return ApiAnswer(raw)


def upstream_requests(simulator: SimulatorServer, user_id: int) -> int:
    """How many Bytemark API requests the simulator has seen for ``user_id`` (v1 + v4)."""
    counts = simulator.admin.request_counts()["by_user"].get(str(user_id), {})
    return sum(int(value) for value in counts.values())


def uuids(elements: list[dict[str, Any]]) -> list[str]:
    """The pass uuids of a list of cache elements, in order."""
    return [str(element["pass_uuid"]) for element in elements]


Passes = list[dict[str, Any]]


def bytemark_lists(simulator: SimulatorServer, user_id: int) -> tuple[Passes, Passes]:
    """What the simulator serves the user now: (current passes, expired history)."""
    lists = simulator.admin.passes(user_id)
    return lists["current"], lists["expired"]


def assert_tickets_body(body: dict[str, Any], user_id: int) -> None:
    """The SPEC §7 200 body: the caller's id; every element with wrapper fields and effective status."""
    assert body["user_id"] == user_id
    assert {"synced_at", "age_seconds", "stale", "passes", "passes4"} <= set(body)
    assert isinstance(body["stale"], bool)
    assert isinstance(body["age_seconds"], int)
    assert body["age_seconds"] >= 0
    datetime.fromisoformat(body["synced_at"].replace("Z", "+00:00"))
    for element in [*body["passes"], *body["passes4"]]:
        assert set(element) >= ELEMENT_FIELDS, element
        assert element["effective_status"] in LIVE_STATUSES, element
        assert isinstance(element["payload"], dict)
        assert element["payload"]["uuid"] == element["pass_uuid"]
        assert len(str(element["payload_hash"])) == 32


def created_at(item: dict[str, Any]) -> datetime:
    """A pass's ``time_created`` (ISO-8601 UTC, with or without milliseconds)."""
    return datetime.fromisoformat(str(item["time_created"]).replace("Z", "+00:00"))


def assert_mirrors_bytemark(body: dict[str, Any], simulator: SimulatorServer, user_id: int) -> None:
    """``passes`` is Bytemark's current list (no EXPIRED, oldest first), ``passes4`` its history."""
    current, expired = bytemark_lists(simulator, user_id)
    live = sorted((item for item in current if item["status"] != "EXPIRED"), key=created_at)
    assert uuids(body["passes"]) == [item["uuid"] for item in live]
    assert sorted(uuids(body["passes4"])) == sorted(item["uuid"] for item in expired)
    payloads = {item["uuid"]: item for item in [*current, *expired]}
    for element in [*body["passes"], *body["passes4"]]:
        assert element["payload"] == payloads[element["pass_uuid"]]


def assert_retry_after(answer: ApiAnswer) -> None:
    """A ``Retry-After`` header of whole seconds, at least 1."""
    retry_after = answer.header("Retry-After")
    assert retry_after is not None, answer.raw
    assert retry_after.isdigit(), answer.raw
    assert int(retry_after) >= 1, answer.raw


def age_cache(stores: E2eStores, user_id: int, seconds: int) -> int:
    """Make the user's cache ``seconds`` old; returns the timestamp written."""
    timestamp = int(time.time()) - seconds
    stores.mongo.set_timestamp(user_id, timestamp)
    return timestamp


def get_tickets(pool: EmulatorPool, account: Account, name: str = "apigw_get_tickets.json") -> ApiAnswer:
    """GET /tickets as ``account``."""
    return invoke(pool, api_event(name, account.user_id), account.token)


# -- GET /tickets: build, then served from MongoDB ---------------------------------------------------


def test_first_get_builds_from_bytemark_and_the_second_is_served_from_mongodb(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new(current=4, expired=3)
    assert stores.mongo.document(account.user_id) is None

    first = get_tickets(pool, account)

    assert first.status == 200, first.raw
    assert first.header("Content-Type") == "application/json"
    body = first.json()
    assert_tickets_body(body, account.user_id)
    assert body["stale"] is False
    assert_mirrors_bytemark(body, simulator, account.user_id)
    built_with = upstream_requests(simulator, account.user_id)
    assert built_with > 0, "a missing cache must be built from Bytemark"
    document = stores.mongo.document(account.user_id)
    assert document is not None
    assert uuids(document["passes"]) == uuids(body["passes"])
    assert account.token not in json.dumps(document, default=str), "the token must never reach MongoDB"
    created = [entry for entry in stores.mongo.log_entries(account.user_id) if entry["action"] == "created"]
    every_pass = uuids(body["passes"]) + uuids(body["passes4"])
    assert sorted(entry["uuid"] for entry in created) == sorted(every_pass)

    second = get_tickets(pool, account)

    assert second.status == 200, second.raw
    assert upstream_requests(simulator, account.user_id) == built_with, "a fresh cache must not call Bytemark"
    again = second.json()
    assert_tickets_body(again, account.user_id)
    assert again["stale"] is False
    assert again["passes"] == body["passes"]
    assert again["passes4"] == body["passes4"]
    assert again["synced_at"] == body["synced_at"]


def test_lambda_authorizer_identity_is_the_caller(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts
) -> None:
    account = accounts.new()

    answer = get_tickets(pool, account, "apigw_get_tickets_lambda_authorizer.json")

    assert answer.status == 200, answer.raw
    body = answer.json()
    assert_tickets_body(body, account.user_id)
    assert_mirrors_bytemark(body, simulator, account.user_id)


def test_a_cache_is_synced_once_it_is_ttl_old_and_the_ttl_comes_from_the_setting(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    ttl = stores.mongo.settings.cache_ttl_seconds
    account = accounts.new()
    assert get_tickets(pool, account).status == 200
    new_pass = simulator.admin.purchase(account.user_id, "Local Single Ride")

    # Just inside the TTL: served as it is, Bytemark not asked (so the purchase is not seen yet).
    age_cache(stores, account.user_id, ttl - 60)
    before = upstream_requests(simulator, account.user_id)
    inside = get_tickets(pool, account)
    assert inside.status == 200, inside.raw
    assert upstream_requests(simulator, account.user_id) == before
    assert new_pass["uuid"] not in uuids(inside.json()["passes"])
    assert inside.json()["age_seconds"] >= ttl - 60

    # A TTL-old cache is synchronised: the new pass appears and the age starts again.
    aged_to = age_cache(stores, account.user_id, ttl)
    at_ttl = get_tickets(pool, account)
    assert at_ttl.status == 200, at_ttl.raw
    assert upstream_requests(simulator, account.user_id) > before
    body = at_ttl.json()
    assert_tickets_body(body, account.user_id)
    assert body["stale"] is False
    assert new_pass["uuid"] in uuids(body["passes"])
    assert body["age_seconds"] < 60
    document = stores.mongo.document(account.user_id)
    assert document is not None
    assert document["timestamp"] > aged_to

    # The same 5-minute-old cache: fresh for the configured TTL, due for a function set to 120 s.
    newer = simulator.admin.purchase(account.user_id, "Local Day Pass")
    age_cache(stores, account.user_id, 300)
    before = upstream_requests(simulator, account.user_id)
    assert get_tickets(pool, account).status == 200
    assert upstream_requests(simulator, account.user_id) == before
    short_ttl = pool.derive({"CACHE_TTL_SECONDS": "120"})
    try:
        answer = invoke(short_ttl, api_event("apigw_get_tickets.json", account.user_id), account.token)
    finally:
        short_ttl.close()
    assert answer.status == 200, answer.raw
    assert upstream_requests(simulator, account.user_id) > before
    assert newer["uuid"] in uuids(answer.json()["passes"])


# -- POST /tickets/sync ------------------------------------------------------------------------------


def test_forced_sync_reaches_bytemark_then_is_rate_limited(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts
) -> None:
    account = accounts.new()
    assert get_tickets(pool, account).status == 200
    bought = simulator.admin.purchase(account.user_id, "Local Day Pass")
    before = upstream_requests(simulator, account.user_id)

    first = invoke(pool, api_event("apigw_sync.json", account.user_id), account.token)

    # The cache was fresh, yet the forced sync asked Bytemark and returns the new pass.
    assert first.status == 200, first.raw
    body = first.json()
    assert_tickets_body(body, account.user_id)
    assert_mirrors_bytemark(body, simulator, account.user_id)
    assert bought["uuid"] in uuids(body["passes"])
    after_first = upstream_requests(simulator, account.user_id)
    assert after_first > before

    second = invoke(pool, api_event("apigw_sync.json", account.user_id), account.token)

    assert second.status == 429, second.raw
    assert_retry_after(second)
    assert second.json()["error"] == "rate_limited"
    assert upstream_requests(simulator, account.user_id) == after_first


# -- ETag / If-None-Match ------------------------------------------------------------------------------


def test_if_none_match_with_the_current_etag_is_answered_304(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts
) -> None:
    account = accounts.new()
    first = get_tickets(pool, account)
    assert first.status == 200, first.raw
    etag = first.header("ETag")
    assert etag, first.raw
    before = upstream_requests(simulator, account.user_id)

    conditional = api_event("apigw_get_tickets_if_none_match.json", account.user_id)
    placeholder = conditional["headers"]["If-None-Match"]
    conditional["headers"]["If-None-Match"] = etag
    conditional["multiValueHeaders"]["If-None-Match"] = [etag]
    not_modified = invoke(pool, conditional, account.token)

    assert not_modified.status == 304, not_modified.raw
    assert not_modified.raw.get("body") in (None, "")
    assert not_modified.header("ETag") == etag
    assert upstream_requests(simulator, account.user_id) == before

    # The file as it is (an ETag that never matches) gets the full answer.
    as_filed = api_event("apigw_get_tickets_if_none_match.json", account.user_id)
    unmatched = invoke(pool, as_filed, account.token)
    assert placeholder != etag
    assert unmatched.status == 200, unmatched.raw
    assert unmatched.header("ETag") == etag

    # Once the tickets change, the old ETag no longer matches.
    simulator.admin.purchase(account.user_id, "Local Single Ride")
    assert invoke(pool, api_event("apigw_sync.json", account.user_id), account.token).status == 200
    changed = invoke(pool, conditional, account.token)
    assert changed.status == 200, changed.raw
    assert changed.header("ETag") not in (None, etag)


# -- Bytemark failures ---------------------------------------------------------------------------------


def test_bytemark_outage_with_a_cache_serves_it_flagged_stale(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new()
    built = get_tickets(pool, account)
    assert built.status == 200, built.raw
    aged_to = age_cache(stores, account.user_id, stores.mongo.settings.cache_ttl_seconds + 60)
    simulator.admin.set_fault("http_503", user_id=account.user_id)
    before = upstream_requests(simulator, account.user_id)

    answer = get_tickets(pool, account)

    assert answer.status == 200, answer.raw
    body = answer.json()
    assert_tickets_body(body, account.user_id)
    assert body["stale"] is True
    assert body.get("upstream_error") == "unavailable"
    assert body["passes"] == built.json()["passes"]
    assert upstream_requests(simulator, account.user_id) > before, "the stale cache is served after trying"
    document = stores.mongo.document(account.user_id)
    assert document is not None
    assert document["timestamp"] == aged_to, "a failed sync must write nothing"


def test_bytemark_outage_without_a_cache_is_503_with_retry_after(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new()
    simulator.admin.set_fault("http_503", user_id=account.user_id)

    answer = get_tickets(pool, account)

    assert answer.status == 503, answer.raw
    assert_retry_after(answer)
    assert upstream_requests(simulator, account.user_id) > 0
    assert stores.mongo.document(account.user_id) is None


def test_revoked_token_with_a_cache_serves_it_stale_naming_the_revocation(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new()
    built = get_tickets(pool, account)
    assert built.status == 200, built.raw
    age_cache(stores, account.user_id, stores.mongo.settings.cache_ttl_seconds + 60)
    simulator.admin.revoke(account.user_id)

    answer = get_tickets(pool, account)

    assert answer.status == 200, answer.raw
    body = answer.json()
    assert_tickets_body(body, account.user_id)
    assert body["stale"] is True
    assert body["upstream_error"] == "token_revoked"
    assert body["passes"] == built.json()["passes"]


# -- who is asking -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "missing-row"], ids=["null-token", "empty-token", "no-row"])
def test_a_user_without_a_bytemark_token_gets_404(
    token: str | None, pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    user_id = accounts.new_id()
    # The user exists at Bytemark, but the portal holds no usable token for them.
    simulator.admin.seed_user(user_id, f"tok-e2e-unlinked-{user_id}")
    if token != "missing-row":
        stores.tokens.put(user_id, token)

    answer = invoke(pool, api_event("apigw_get_tickets.json", user_id))

    assert answer.status == 404, answer.raw
    assert answer.json()["error"] == "no_bytemark_account"
    assert upstream_requests(simulator, user_id) == 0
    assert stores.mongo.document(user_id) is None


def test_a_request_without_identity_is_401_and_touches_nothing(
    pool: EmulatorPool, simulator: SimulatorServer
) -> None:
    before = simulator.admin.request_counts()["total"]

    answer = invoke(pool, api_event("apigw_no_identity.json", None))

    assert answer.status == 401, answer.raw
    assert answer.json()["error"] == "unauthenticated"
    assert simulator.admin.request_counts()["total"] == before


def test_spoofed_user_ids_in_query_header_and_body_are_ignored(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    caller = accounts.new(current=2, expired=1)
    victim = accounts.new(current=5, expired=2)

    get = api_event("apigw_spoofed_identity.json", caller.user_id)
    # Point every spoofed place of the file (query, multi-value query, X-User-Id) at a real other user.
    spoofed = get["queryStringParameters"]["user_id"]
    assert get["headers"]["X-User-Id"] == spoofed
    get["queryStringParameters"]["user_id"] = str(victim.user_id)
    get["multiValueQueryStringParameters"]["user_id"] = [str(victim.user_id)]
    get["headers"]["X-User-Id"] = str(victim.user_id)
    get["multiValueHeaders"]["X-User-Id"] = [str(victim.user_id)]
    post = api_event("apigw_sync.json", caller.user_id)
    assert json.loads(post["body"]) == {"user_id": int(spoofed)}
    post["body"] = json.dumps({"user_id": victim.user_id})

    for event in (get, post):
        answer = invoke(pool, event, caller.token, victim.token)
        assert answer.status == 200, answer.raw
        body = answer.json()
        assert_tickets_body(body, caller.user_id)
        assert_mirrors_bytemark(body, simulator, caller.user_id)

    assert upstream_requests(simulator, victim.user_id) == 0
    assert stores.mongo.document(victim.user_id) is None


def test_an_unknown_route_is_404_and_syncs_nothing(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new()

    answer = invoke(pool, api_event("apigw_unknown_route.json", account.user_id), account.token)

    assert answer.status == 404, answer.raw
    assert answer.json()["error"] == "not_found"
    assert upstream_requests(simulator, account.user_id) == 0
    assert stores.mongo.document(account.user_id) is None
