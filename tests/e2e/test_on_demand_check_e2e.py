"""on_demand_check end to end: every ``events/apigw_*.json`` through the built function, on real servers.

Each test adapts a copy of an event file to a user of its own (the authorizer's identity: the Cognito claim
the template names in ``IDENTITY_CLAIM``, or a Lambda authorizer's ``user_id``; never anything else),
invokes the artifact of ``sam build`` under the Lambda runtime emulator, and checks the answer against what
the Bytemark simulator served, what landed in MongoDB and what was queued on the session's update queue.
Upstream traffic is read from the simulator's per-user request counters, so "served from the cache" means
zero requests, not "fast".

A cache older than the TTL is answered at once with a refresh queued behind the rider, unless a ride ticket
is in use (its uses may have gone at a validator since): then the read syncs first. Tests that need one or
the other use riders whose passes decide it (``new_idle`` / ``new_riding``), never a random mix.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqs_poller import sqs_event

from bytemark_cache.domain.freshness import REVOKED_RECHECK_SECONDS
from bytemark_simulator import SimulatorServer

from .lambda_emulator import Account, Accounts, E2eStores, EmulatorPool, load_event, take_messages

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


def identity_claim(pool: EmulatorPool) -> str:
    """The Cognito claim the built function reads the caller from (the template's ``IDENTITY_CLAIM``)."""
    return pool.environment(FUNCTION)["IDENTITY_CLAIM"]


def api_event(pool: EmulatorPool, name: str, user_id: int | None) -> dict[str, Any]:
    """A copy of ``events/<name>`` whose authorizer identity is ``user_id``: the ``IDENTITY_CLAIM`` claim
    of Cognito's claims (``sub`` stays a UUID, as Cognito's is), or a Lambda authorizer's ``user_id``."""
    event = load_event(name)
    authorizer = event["requestContext"].get("authorizer")
    if user_id is not None:
        assert authorizer is not None, f"{name} carries no identity to adapt"
        if "claims" in authorizer:
            claims = authorizer["claims"]
            assert identity_claim(pool) in claims, f"{name} has no {identity_claim(pool)} claim to adapt"
            claims[identity_claim(pool)] = str(user_id)
            uuid.UUID(claims["sub"])  # a UUID, never a user id
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
    """docs/contract.md §7's 200 body: the caller's id; each element with wrapper fields, effective status."""
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
    """``passes`` is Bytemark's current list (no EXPIRED, oldest first, ties by uuid), ``passes4`` its
    history."""
    current, expired = bytemark_lists(simulator, user_id)
    live = sorted(
        (item for item in current if item["status"] != "EXPIRED"),
        key=lambda item: (created_at(item), str(item["uuid"])),
    )
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


def iso_utc(timestamp: int) -> str:
    """Unix seconds as the body's ``synced_at`` spells them."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def age_cache(stores: E2eStores, user_id: int, seconds: int) -> int:
    """Make the user's cache ``seconds`` old; returns the timestamp written."""
    timestamp = int(time.time()) - seconds
    stores.mongo.set_timestamp(user_id, timestamp)
    return timestamp


def get_tickets(pool: EmulatorPool, account: Account, name: str = "apigw_get_tickets.json") -> ApiAnswer:
    """GET /tickets as ``account``."""
    return invoke(pool, api_event(pool, name, account.user_id), account.token)


def sync_tickets(pool: EmulatorPool, account: Account) -> ApiAnswer:
    """POST /tickets/sync as ``account``."""
    return invoke(pool, api_event(pool, "apigw_sync.json", account.user_id), account.token)


def take_refreshes(stores: E2eStores, user_id: int) -> list[dict[str, Any]]:
    """The update-queue messages naming ``user_id`` (taken off the session's queue), oldest first."""

    def names_user(message: dict[str, Any]) -> bool:
        body = json.loads(message["Body"])
        return isinstance(body, dict) and body.get("user_id") == user_id

    messages = take_messages(stores.sqs, stores.queues.url, names_user)
    return sorted(messages, key=lambda message: int(message["Attributes"]["SentTimestamp"]))


def assert_answered_from_the_cache(answer: ApiAnswer, cached: dict[str, Any], *, refreshing: bool) -> None:
    """A 200 with the cached tickets as they were (not stale), flagged ``refreshing`` or not at all."""
    assert answer.status == 200, answer.raw
    body = answer.json()
    assert body["stale"] is False
    assert body["passes"] == cached["passes"]
    assert body["passes4"] == cached["passes4"]
    assert body["synced_at"] == cached["synced_at"]
    if refreshing:
        assert body.get("refreshing") is True, body
    else:
        assert "refreshing" not in body, body


def assert_synced_first(answer: ApiAnswer, simulator: SimulatorServer, user_id: int) -> dict[str, Any]:
    """A 200 that mirrors Bytemark now, synced just now, no refresh pending; returns the body."""
    assert answer.status == 200, answer.raw
    body = answer.json()
    assert_tickets_body(body, user_id)
    assert body["stale"] is False
    assert "refreshing" not in body, body
    assert body["age_seconds"] < 60
    assert_mirrors_bytemark(body, simulator, user_id)
    return body


# -- GET /tickets: build, then served from MongoDB ---------------------------------------------------


def test_first_get_builds_from_bytemark_and_the_second_is_served_from_mongodb(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new(current=4, expired=3)
    assert stores.mongo.document(account.user_id) is None
    before = int(time.time())

    first = get_tickets(pool, account)

    assert first.status == 200, first.raw
    assert first.header("Content-Type") == "application/json"
    body = first.json()
    assert_tickets_body(body, account.user_id)
    assert body["stale"] is False
    assert "refreshing" not in body
    assert_mirrors_bytemark(body, simulator, account.user_id)
    built_with = upstream_requests(simulator, account.user_id)
    assert built_with > 0, "a missing cache must be built from Bytemark"
    document = stores.mongo.document(account.user_id)
    assert document is not None
    assert uuids(document["passes"]) == uuids(body["passes"])
    assert account.token not in json.dumps(document, default=str), "the token must never reach MongoDB"
    # The freshness policy's fields: the rider opened the app (active now), next sync within a day.
    assert before <= document["active_at"] <= int(time.time())
    assert document["timestamp"] < document["next_sync_at"] <= document["timestamp"] + 86400
    created = [entry for entry in stores.mongo.log_entries(account.user_id) if entry["action"] == "created"]
    every_pass = uuids(body["passes"]) + uuids(body["passes4"])
    assert sorted(entry["uuid"] for entry in created) == sorted(every_pass)

    second = get_tickets(pool, account)

    assert_answered_from_the_cache(second, body, refreshing=False)
    assert upstream_requests(simulator, account.user_id) == built_with, "a fresh cache must not call Bytemark"
    assert_tickets_body(second.json(), account.user_id)
    assert take_refreshes(stores, account.user_id) == [], "a fresh cache queues no refresh"


def test_lambda_authorizer_identity_is_the_caller(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts
) -> None:
    account = accounts.new()

    answer = get_tickets(pool, account, "apigw_get_tickets_lambda_authorizer.json")

    assert answer.status == 200, answer.raw
    body = answer.json()
    assert_tickets_body(body, account.user_id)
    assert_mirrors_bytemark(body, simulator, account.user_id)


# -- an old cache: refreshed behind the rider, or synced first -------------------------------------------


def test_a_ttl_old_cache_is_answered_at_once_and_refreshed_behind_the_rider(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new_idle()
    built = get_tickets(pool, account)
    assert built.status == 200, built.raw
    bought = simulator.admin.purchase(account.user_id, "Local Day Pass")
    aged_to = age_cache(stores, account.user_id, stores.mongo.settings.cache_ttl_seconds + 60)
    before = upstream_requests(simulator, account.user_id)

    answer = get_tickets(pool, account)

    # Answered from the cache at once, without asking Bytemark: the purchase is not seen yet.
    cached = {**built.json(), "synced_at": iso_utc(aged_to)}
    assert_answered_from_the_cache(answer, cached, refreshing=True)
    assert_tickets_body(answer.json(), account.user_id)
    assert upstream_requests(simulator, account.user_id) == before
    assert bought["uuid"] not in uuids(answer.json()["passes"])
    assert answer.json()["age_seconds"] >= stores.mongo.settings.cache_ttl_seconds + 60
    # Exactly one refresh behind the rider, as the contract's update message.
    [refresh] = take_refreshes(stores, account.user_id)
    assert json.loads(refresh["Body"]) == {"user_id": account.user_id, "reason": "refresh"}

    # Delivered to user_updates (as the event source mapping would), the refresh syncs the cache ...
    answer_of_updates = pool.invoke(
        "UserUpdatesFunction", sqs_event([refresh], "arn:aws:sqs:e2e", "us-east-1")
    )
    assert answer_of_updates == {"batchItemFailures": []}
    assert upstream_requests(simulator, account.user_id) > before
    document = stores.mongo.document(account.user_id)
    assert document is not None
    assert document["timestamp"] > aged_to

    # ... so the next read is fresh, shows the purchase and queues nothing.
    after = upstream_requests(simulator, account.user_id)
    fresh = get_tickets(pool, account)
    assert fresh.status == 200, fresh.raw
    assert "refreshing" not in fresh.json()
    assert bought["uuid"] in uuids(fresh.json()["passes"])
    assert_mirrors_bytemark(fresh.json(), simulator, account.user_id)
    assert upstream_requests(simulator, account.user_id) == after
    assert take_refreshes(stores, account.user_id) == []


def test_an_old_cache_with_a_ride_ticket_in_use_is_synced_before_answering(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new_riding()
    assert get_tickets(pool, account).status == 200
    bought = simulator.admin.purchase(account.user_id, "Local Day Pass")
    aged_to = age_cache(stores, account.user_id, stores.mongo.settings.cache_ttl_seconds + 60)
    before = upstream_requests(simulator, account.user_id)

    answer = get_tickets(pool, account)

    body = assert_synced_first(answer, simulator, account.user_id)
    assert bought["uuid"] in uuids(body["passes"])
    assert upstream_requests(simulator, account.user_id) > before
    document = stores.mongo.document(account.user_id)
    assert document is not None
    assert document["timestamp"] > aged_to
    assert take_refreshes(stores, account.user_id) == [], "a read that synced queues no refresh"


def test_an_old_cache_whose_pass_expired_since_shows_it_expired_at_once_and_refreshes_behind(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    # A single ride (90 minutes) activated 100 minutes ago expired 10 minutes ago: after a cache synced
    # two hours ago was written. The clock alone shows it expired; nothing needs Bytemark before answering.
    account = accounts.new_idle(unused=1)
    ride = simulator.admin.purchase(account.user_id, "Local Single Ride")
    first_use = datetime.now(UTC) - timedelta(minutes=100)
    simulator.admin.activate(account.user_id, ride["uuid"], at=first_use.isoformat())
    assert get_tickets(pool, account).status == 200
    age_cache(stores, account.user_id, 2 * 3600)
    before = upstream_requests(simulator, account.user_id)

    answer = get_tickets(pool, account)

    assert answer.status == 200, answer.raw
    body = answer.json()
    assert body.get("refreshing") is True, body
    assert upstream_requests(simulator, account.user_id) == before
    shown = {e["pass_uuid"]: e["effective_status"] for e in body["passes"] + body["passes4"]}
    assert shown[ride["uuid"]] == "EXPIRED"
    [refresh] = take_refreshes(stores, account.user_id)
    assert json.loads(refresh["Body"]) == {"user_id": account.user_id, "reason": "refresh"}


def test_a_cache_is_refreshed_once_it_is_ttl_old_and_the_ttl_comes_from_the_setting(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    ttl = stores.mongo.settings.cache_ttl_seconds
    account = accounts.new_riding()  # a ride ticket in use: a TTL-old cache is synced before answering
    assert get_tickets(pool, account).status == 200
    new_pass = simulator.admin.purchase(account.user_id, "Local Single Ride")

    # Just inside the TTL: served as it is, Bytemark not asked, nothing queued.
    age_cache(stores, account.user_id, ttl - 60)
    before = upstream_requests(simulator, account.user_id)
    inside = get_tickets(pool, account)
    assert inside.status == 200, inside.raw
    assert "refreshing" not in inside.json()
    assert upstream_requests(simulator, account.user_id) == before
    assert new_pass["uuid"] not in uuids(inside.json()["passes"])
    assert inside.json()["age_seconds"] >= ttl - 60
    assert take_refreshes(stores, account.user_id) == []

    # A TTL-old cache is synchronised: the new pass appears and the age starts again.
    aged_to = age_cache(stores, account.user_id, ttl)
    body = assert_synced_first(get_tickets(pool, account), simulator, account.user_id)
    assert upstream_requests(simulator, account.user_id) > before
    assert new_pass["uuid"] in uuids(body["passes"])
    document = stores.mongo.document(account.user_id)
    assert document is not None
    assert document["timestamp"] > aged_to

    # The same 5-minute-old cache: fresh for the configured TTL, due for a function set to 120 s.
    newer = simulator.admin.purchase(account.user_id, "Local Day Pass")
    age_cache(stores, account.user_id, 300)
    before = upstream_requests(simulator, account.user_id)
    assert "refreshing" not in get_tickets(pool, account).json()
    assert upstream_requests(simulator, account.user_id) == before
    short_ttl = pool.derive({"CACHE_TTL_SECONDS": "120"})
    try:
        answer = get_tickets(short_ttl, account)
    finally:
        short_ttl.close()
    body = assert_synced_first(answer, simulator, account.user_id)
    assert upstream_requests(simulator, account.user_id) > before
    assert newer["uuid"] in uuids(body["passes"])
    assert take_refreshes(stores, account.user_id) == []


# -- POST /tickets/sync ------------------------------------------------------------------------------


def test_forced_sync_reaches_bytemark_then_is_rate_limited(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    # A rider whose old cache a GET would answer at once (refresh behind): the forced sync still syncs first.
    account = accounts.new_idle()
    assert get_tickets(pool, account).status == 200
    age_cache(stores, account.user_id, stores.mongo.settings.cache_ttl_seconds + 60)
    bought = simulator.admin.purchase(account.user_id, "Local Day Pass")
    before = upstream_requests(simulator, account.user_id)

    first = sync_tickets(pool, account)

    # Bytemark was asked before answering, and the answer has the new pass.
    body = assert_synced_first(first, simulator, account.user_id)
    assert bought["uuid"] in uuids(body["passes"])
    after_first = upstream_requests(simulator, account.user_id)
    assert after_first > before
    assert take_refreshes(stores, account.user_id) == []

    second = sync_tickets(pool, account)

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

    conditional = api_event(pool, "apigw_get_tickets_if_none_match.json", account.user_id)
    placeholder = conditional["headers"]["If-None-Match"]
    conditional["headers"]["If-None-Match"] = etag
    conditional["multiValueHeaders"]["If-None-Match"] = [etag]
    not_modified = invoke(pool, conditional, account.token)

    assert not_modified.status == 304, not_modified.raw
    assert not_modified.raw.get("body") in (None, "")
    assert not_modified.header("ETag") == etag
    assert upstream_requests(simulator, account.user_id) == before

    # The file as it is (an ETag that never matches) gets the full answer.
    as_filed = api_event(pool, "apigw_get_tickets_if_none_match.json", account.user_id)
    unmatched = invoke(pool, as_filed, account.token)
    assert placeholder != etag
    assert unmatched.status == 200, unmatched.raw
    assert unmatched.header("ETag") == etag

    # Once the tickets change, the old ETag no longer matches.
    simulator.admin.purchase(account.user_id, "Local Single Ride")
    assert sync_tickets(pool, account).status == 200
    changed = invoke(pool, conditional, account.token)
    assert changed.status == 200, changed.raw
    assert changed.header("ETag") not in (None, etag)


# -- Bytemark failures ---------------------------------------------------------------------------------


def test_bytemark_outage_with_a_cache_serves_it_flagged_stale(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new_riding()  # so the old cache is synced before answering
    built = get_tickets(pool, account)
    assert built.status == 200, built.raw
    aged_to = age_cache(stores, account.user_id, stores.mongo.settings.cache_ttl_seconds + 60)
    stored = stores.mongo.document(account.user_id)
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
    assert document == stored


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
    account = accounts.new_riding()  # so the old cache is synced before answering
    built = get_tickets(pool, account)
    assert built.status == 200, built.raw
    aged_to = age_cache(stores, account.user_id, stores.mongo.settings.cache_ttl_seconds + 60)
    stored = stores.mongo.document(account.user_id)
    assert stored is not None
    simulator.admin.revoke(account.user_id)

    answer = get_tickets(pool, account)

    assert answer.status == 200, answer.raw
    body = answer.json()
    assert_tickets_body(body, account.user_id)
    assert body["stale"] is True
    assert body["upstream_error"] == "token_revoked"
    assert body["passes"] == built.json()["passes"]
    # Nothing synced; only the next background sync moved a day ahead (asking again soon cannot help).
    document = stores.mongo.document(account.user_id)
    assert document is not None
    assert document["timestamp"] == aged_to
    postponed = document.pop("next_sync_at")
    assert abs(postponed - (int(time.time()) + REVOKED_RECHECK_SECONDS)) <= 60, postponed
    assert document == {key: value for key, value in stored.items() if key != "next_sync_at"}


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

    answer = invoke(pool, api_event(pool, "apigw_get_tickets.json", user_id))

    assert answer.status == 404, answer.raw
    assert answer.json()["error"] == "no_bytemark_account"
    assert upstream_requests(simulator, user_id) == 0
    assert stores.mongo.document(user_id) is None


def test_a_request_without_identity_is_401_and_touches_nothing(
    pool: EmulatorPool, simulator: SimulatorServer
) -> None:
    before = simulator.admin.request_counts()["total"]

    answer = invoke(pool, api_event(pool, "apigw_no_identity.json", None))

    assert answer.status == 401, answer.raw
    assert answer.json()["error"] == "unauthenticated"
    assert simulator.admin.request_counts()["total"] == before


def test_cognito_claims_without_the_identity_claim_are_401_even_when_sub_names_a_user(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    account = accounts.new()
    event = api_event(pool, "apigw_cognito_sub_only.json", None)
    claims = event["requestContext"]["authorizer"]["claims"]
    assert identity_claim(pool) not in claims
    # Cognito's sub is a UUID; were it ever read as the user id, this one would name a real user.
    claims["sub"] = str(account.user_id)

    answer = invoke(pool, event, account.token)

    assert answer.status == 401, answer.raw
    assert answer.json()["error"] == "unauthenticated"
    assert upstream_requests(simulator, account.user_id) == 0
    assert stores.mongo.document(account.user_id) is None


def test_spoofed_user_ids_in_query_header_body_and_sub_are_ignored(
    pool: EmulatorPool, simulator: SimulatorServer, accounts: Accounts, stores: E2eStores
) -> None:
    caller = accounts.new(current=2, expired=1)
    victim = accounts.new(current=5, expired=2)

    get = api_event(pool, "apigw_spoofed_identity.json", caller.user_id)
    # Point every spoofed place of the file (query, multi-value query, X-User-Id) at a real other user,
    # and Cognito's sub too.
    spoofed = get["queryStringParameters"]["user_id"]
    assert get["headers"]["X-User-Id"] == spoofed
    get["queryStringParameters"]["user_id"] = str(victim.user_id)
    get["multiValueQueryStringParameters"]["user_id"] = [str(victim.user_id)]
    get["headers"]["X-User-Id"] = str(victim.user_id)
    get["multiValueHeaders"]["X-User-Id"] = [str(victim.user_id)]
    post = api_event(pool, "apigw_sync.json", caller.user_id)
    assert json.loads(post["body"]) == {"user_id": int(spoofed)}
    post["body"] = json.dumps({"user_id": victim.user_id})

    for event in (get, post):
        event["requestContext"]["authorizer"]["claims"]["sub"] = str(victim.user_id)
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

    answer = invoke(pool, api_event(pool, "apigw_unknown_route.json", account.user_id), account.token)

    assert answer.status == 404, answer.raw
    assert answer.json()["error"] == "not_found"
    assert upstream_requests(simulator, account.user_id) == 0
    assert stores.mongo.document(account.user_id) is None
