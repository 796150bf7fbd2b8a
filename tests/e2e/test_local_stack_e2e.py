"""The local stack's API front end to end: real HTTP through ``LocalApiGateway`` to the built function.

``local/gateway.py`` turns an HTTP request into the API Gateway proxy event (identity from the
``X-Local-User-Id`` header in dev-identity mode, handed on as Cognito's claims: the user id in the claim the
function's ``IDENTITY_CLAIM`` names, ``sub`` a UUID) and gives it to the emulator running the artifact of
``sam build``, as ``make up`` wires it. A request without identity is refused by the gateway itself,
like an authorizer would: the function is never invoked.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from gateway import DEV_IDENTITY_HEADER, LocalApiGateway

from bytemark_simulator import SimulatorServer

from .lambda_emulator import Accounts, E2eStores, EmulatorPool

pytestmark = pytest.mark.e2e

FUNCTION = "OnDemandCheckFunction"
HTTP_TIMEOUT = (3.05, 60)


@dataclass
class RecordingInvoke:
    """The function's invoke, remembering every event the gateway handed it."""

    pool: EmulatorPool
    events: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        """Record ``event`` and invoke the built function with it."""
        with self._lock:
            self.events.append(event)
        return self.pool.invoke(FUNCTION, event)


@pytest.fixture
def recorded(pool: EmulatorPool) -> RecordingInvoke:
    """The on_demand_check emulator behind a recorder."""
    return RecordingInvoke(pool)


def identity_claim(pool: EmulatorPool) -> str:
    """The claim the built function reads the caller from (its ``IDENTITY_CLAIM``, from the template)."""
    return pool.environment(FUNCTION)["IDENTITY_CLAIM"]


def start_gateway(invoke: RecordingInvoke, *, dev_identity: bool) -> LocalApiGateway:
    """A gateway on a free port (the OS picks it), with Cognito claims named as the stack names them."""
    gateway = LocalApiGateway(
        invoke,
        host="127.0.0.1",
        port=0,
        dev_identity=dev_identity,
        identity_claim=identity_claim(invoke.pool),
    )
    gateway.start()
    return gateway


@pytest.fixture
def dev_gateway(recorded: RecordingInvoke) -> Iterator[LocalApiGateway]:
    """The gateway as the local stack runs it: identity from ``X-Local-User-Id``."""
    gateway = start_gateway(recorded, dev_identity=True)
    try:
        yield gateway
    finally:
        gateway.stop()


def test_get_tickets_over_http_answers_the_callers_tickets(
    dev_gateway: LocalApiGateway,
    recorded: RecordingInvoke,
    accounts: Accounts,
    simulator: SimulatorServer,
    stores: E2eStores,
) -> None:
    account = accounts.new(current=2, expired=1)

    answer = requests.get(
        f"{dev_gateway.url}/tickets",
        headers={DEV_IDENTITY_HEADER: str(account.user_id), "Accept": "application/json"},
        timeout=HTTP_TIMEOUT,
    )

    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers.get("ETag")
    assert account.token not in answer.text
    body = answer.json()
    assert body["user_id"] == account.user_id
    assert body["stale"] is False
    current = simulator.admin.passes(account.user_id)["current"]
    assert sorted(item["pass_uuid"] for item in body["passes"]) == sorted(
        item["uuid"] for item in current if item["status"] != "EXPIRED"
    )
    assert all("effective_status" in item for item in [*body["passes"], *body["passes4"]])
    assert stores.mongo.document(account.user_id) is not None
    # The function saw the authorizer's identity (Cognito's claims), and never the local header.
    [event] = recorded.events
    claims = event["requestContext"]["authorizer"]["claims"]
    assert claims[identity_claim(recorded.pool)] == str(account.user_id)
    assert str(uuid.UUID(claims["sub"])) == claims["sub"] != str(account.user_id), "sub is a UUID"
    assert DEV_IDENTITY_HEADER.lower() not in {name.lower() for name in event["headers"]}
    assert event["httpMethod"] == "GET"
    assert event["path"] == "/tickets"


def test_a_request_without_the_identity_header_is_401_before_the_function(
    dev_gateway: LocalApiGateway, recorded: RecordingInvoke
) -> None:
    answer = requests.get(f"{dev_gateway.url}/tickets", timeout=HTTP_TIMEOUT)

    assert answer.status_code == 401, answer.text
    assert json.loads(answer.text)
    assert recorded.events == []


def test_without_dev_identity_the_header_is_not_trusted(
    recorded: RecordingInvoke, accounts: Accounts
) -> None:
    account = accounts.new()
    gateway = start_gateway(recorded, dev_identity=False)
    try:
        answer = requests.get(
            f"{gateway.url}/tickets",
            headers={DEV_IDENTITY_HEADER: str(account.user_id)},
            timeout=HTTP_TIMEOUT,
        )
    finally:
        gateway.stop()

    assert answer.status_code == 401, answer.text
    assert recorded.events == []
