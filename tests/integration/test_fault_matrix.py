"""Every simulator fault kind (and variant) against every surface that talks to Bytemark, on the real servers.

Surfaces: ``build`` (GET /tickets through on_demand_check, no cache), ``sync`` (TicketCacheService.sync, cache
present), ``ttl`` (check_with_ttl on a cache older than the TTL, refresh_behind=False), ``forced`` (POST
/tickets/sync through on_demand_check: forced_check), ``sqs`` (a real SQS message through user_updates) and
``backfill`` (a ``due`` run of scheduled_backfill, then the message it enqueued through user_updates).

The contract each case proves, with Bytemark's lists changed before the fault (a purchase, an activation, an
expiry) so that a write would show:

- the caller gets the contract's answer: the stale cache (200, ``stale``) or 503/409 from the API, the
  classified error from ``sync``; never a 500 and never an exception out of a handler;
- transient vs permanent is right: SQS reports a transient failure (retried later) and dead-letters a
  permanent one at once; a revoked token is acknowledged and its next sync postponed;
- a failed fetch writes nothing: the document, the change log and the claims are exactly as before (a revoked
  token moves ``next_sync_at`` only); bombs cost bounded memory;
- once the fault is gone the same services sync at once (no claim left behind), the cache equals Bytemark's
  lists and the change log holds each of the four changes exactly once (replaying it gives the cache).

Budgets are a second (BYTEMARK_TIMEOUT_SECONDS=0.5, one retry) so the slow faults end quickly.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pymysql
import pytest
from pymongo import MongoClient
from pymongo.database import Database

from bytemark_cache.adapters.bytemark_http import BytemarkHttpSource
from bytemark_cache.adapters.mongo_indexes import ensure_indexes
from bytemark_cache.adapters.mysql_tokens import MySqlTokenStore
from bytemark_cache.bootstrap import Services, indexed_collections
from bytemark_cache.config import Settings
from bytemark_cache.domain.bounds import MAX_ANSWER_BYTES
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.freshness import FAILED_SYNC_RETRY_SECONDS, REVOKED_RECHECK_SECONDS
from bytemark_cache.errors import TokenRevoked, UpstreamError
from bytemark_simulator import (
    FAULT_KINDS,
    SCHEMA_BREAK_VARIANTS,
    UNSTORABLE_PASS_VARIANTS,
    AdminClient,
    SimulatorServer,
)
from tests.fakes import FakeClock
from tests.integration.conftest import aws_client
from tests.reliability.rig import (
    SIM_EPOCH,
    SIM_NOW,
    Queues,
    Snapshot,
    api_event,
    assert_cache_matches,
    assert_log_replays,
    call_api,
    call_backfill,
    call_updates,
    clear_collections,
    delete_queues,
    document_of,
    expected_lists,
    header,
    log_actions,
    make_queues,
    purchase_body,
    queue_counts,
    receive,
    record_of,
    services_on,
    settings_for,
    snapshot,
    with_collections,
)

pytestmark = pytest.mark.integration

USER = 42
TOKEN = "tok-fault-matrix-42-Yq3secret"
BUDGET = 1.0
"""Seconds each faulted call may take (its deadline)."""
OVERSHOOT = 0.75
"""How much later than its budget a faulted call may return (one backoff, a socket close)."""
BOMB_PEAK_BYTES = 3 * MAX_ANSWER_BYTES
"""Python memory a bomb may cost while it is refused (the answer bound, its buffer's growth, the parse)."""

Outcome = Literal["ok", "transient", "permanent", "revoked"]
Surface = Literal["build", "sync", "ttl", "forced", "sqs", "backfill"]
SURFACES: tuple[Surface, ...] = ("build", "sync", "ttl", "forced", "sqs", "backfill")
ENDPOINT: dict[Surface, str] = {
    "build": "v1",
    "ttl": "v1",
    "sqs": "v1",
    "sync": "v4",
    "forced": "v4",
    "backfill": "v4",
}
"""Which list the fault hits: on v4 the current list was fetched fine first (and must not be written)."""


@dataclass(frozen=True)
class Fault:
    """One fault as the simulator takes it, and what the contract says comes of it."""

    kind: str
    outcome: Outcome
    variant: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    bomb: bool = False
    """Measure the memory the refusal costs."""

    @property
    def name(self) -> str:
        return self.kind if self.variant is None else f"{self.kind}:{self.variant}"


FAULTS: tuple[Fault, ...] = (
    Fault("latency", "ok", params={"latency_ms": 150}),
    Fault("http_500", "transient"),
    Fault("http_503", "transient"),
    Fault("timeout", "transient", params={"latency_ms": 5_000}),
    Fault("reset", "transient"),
    Fault("rate_limit", "transient", params={"retry_after": 120}),
    Fault("malformed_json", "permanent"),
    Fault("error_200_50020", "revoked"),
    *(Fault("schema_break", "permanent", variant) for variant in SCHEMA_BREAK_VARIANTS),
    Fault("slow_drip", "transient"),
    Fault("gzip_bomb", "permanent", bomb=True),
    Fault("deflate_bomb", "permanent", bomb=True),
    Fault("huge_body", "permanent", bomb=True),
    Fault("huge_list", "permanent", bomb=True),
    Fault("pagination_loop", "permanent", bomb=True),
    *(Fault("unstorable_pass", "permanent", variant) for variant in UNSTORABLE_PASS_VARIANTS),
    Fault("wrong_content_encoding", "permanent"),
    Fault("truncated_body", "transient"),
)


def test_the_matrix_covers_every_fault_kind_and_variant() -> None:
    kinds = {fault.kind for fault in FAULTS}
    assert kinds == set(FAULT_KINDS)
    assert {f.variant for f in FAULTS if f.kind == "schema_break"} == set(SCHEMA_BREAK_VARIANTS)
    assert {f.variant for f in FAULTS if f.kind == "unstorable_pass"} == set(UNSTORABLE_PASS_VARIANTS)


# -- the rig --------------------------------------------------------------------------------------------


@dataclass
class Matrix:
    """What every case shares: one database and set of collections, the warm adapters of one container."""

    database: Database[dict[str, Any]]
    settings: Settings
    tokens: MySqlTokenStore
    source: BytemarkHttpSource
    sqs: Any
    admin: AdminClient
    mysql: Any


@pytest.fixture(scope="module")
def matrix(
    local_env: dict[str, str],
    mongo_client: MongoClient[dict[str, Any]],
    run_id: str,
    mysql_database: str,
    mysql_connect_args: dict[str, Any],
    simulator_server: SimulatorServer,
    aws_endpoint: str,
) -> Iterator[Matrix]:
    name = f"btc_test_{run_id}_faults"
    mongo_client.drop_database(name)
    database = mongo_client[name]
    settings = settings_for(
        local_env,
        database=name,
        suffix="matrix",
        MYSQL_DATABASE=mysql_database,
        BYTEMARK_API_URL=simulator_server.url,
        BYTEMARK_TIMEOUT_SECONDS="0.5",
        BYTEMARK_MAX_RETRIES="1",
        BYTEMARK_PAGE_SIZE="2",
        BYTEMARK_MAX_PAGES="8",
        UPDATE_QUEUE_URL="",
    )
    ensure_indexes(database, indexed_collections(settings))
    source = BytemarkHttpSource(
        settings.bytemark_api_url,
        timeout_seconds=settings.bytemark_timeout_seconds,
        page_size=settings.bytemark_page_size,
        max_pages=settings.bytemark_max_pages,
        max_retries=settings.bytemark_max_retries,
    )
    tokens = MySqlTokenStore(
        settings.mysql_host,
        settings.mysql_port,
        settings.mysql_user,
        settings.mysql_password,
        settings.mysql_database,
    )
    mysql = pymysql.connect(**mysql_connect_args, database=mysql_database, autocommit=True)
    try:
        yield Matrix(
            database, settings, tokens, source, aws_client("sqs", local_env), simulator_server.admin, mysql
        )
    finally:
        source.close()
        tokens.close()
        with mysql.cursor() as cursor:
            cursor.execute("DELETE FROM bytemark_tokens WHERE user_id = %s", (USER,))
        mysql.close()
        mongo_client.drop_database(name)


@dataclass
class Case:
    """One case's services (a fresh clock, the shared adapters) and, for SQS surfaces, its queues."""

    matrix: Matrix
    services: Services
    settings: Settings
    clock: FakeClock
    queues: Queues | None

    def snapshot(self) -> Snapshot:
        return snapshot(self.matrix.database, self.settings, USER, self.clock.now())

    def deadline(self) -> Deadline:
        return Deadline.after(self.clock.now(), BUDGET)


@pytest.fixture
def make_case(matrix: Matrix) -> Iterator[Any]:
    made: list[Queues] = []

    def make(with_queues: bool) -> Case:
        clear_collections(matrix.database, matrix.settings)
        with matrix.mysql.cursor() as cursor:
            cursor.execute(
                "INSERT INTO bytemark_tokens (user_id, token, status) VALUES (%s, %s, 'ACTIVE') "
                "ON DUPLICATE KEY UPDATE token = VALUES(token)",
                (USER, TOKEN),
            )
        matrix.admin.reset()
        matrix.admin.set_time(SIM_NOW)
        matrix.admin.seed_user(USER, TOKEN, current=4, expired=2, seed=3)
        queues = make_queues(matrix.sqs) if with_queues else None
        if queues is not None:
            made.append(queues)
        settings = with_collections(
            matrix.settings,
            "matrix",
            update_queue_url=queues.url if queues else None,
            update_dlq_url=queues.dlq_url if queues else None,
        )
        clock = FakeClock(SIM_EPOCH)
        services = services_on(
            settings,
            database=matrix.database,
            clock=clock,
            tokens=matrix.tokens,
            source=matrix.source,
            sqs=matrix.sqs,
        )
        return Case(matrix, services, settings, clock, queues)

    yield make
    matrix.admin.clear_faults()
    for queues in made:
        delete_queues(matrix.sqs, queues)


def change_bytemark(admin: AdminClient) -> set[tuple[str, str, str]]:
    """A purchase, an activation and an expiry at Bytemark; the four log entries a sync must then write."""
    current = admin.passes(USER)["current"]
    bought = admin.purchase(USER, "Local Single Ride")
    usable = next(p for p in current if p["status"] == "USABLE")
    admin.activate(USER, usable["uuid"])
    leaving = next(p for p in current if p["uuid"] != usable["uuid"])
    admin.expire(USER, leaving["uuid"])
    return {
        (bought["uuid"], "created", "passes"),
        (usable["uuid"], "updated", "passes"),
        (leaving["uuid"], "removed", "passes"),
        (leaving["uuid"], "created", "passes4"),
    }


def set_fault(admin: AdminClient, fault: Fault, endpoint: str) -> None:
    admin.set_fault(fault.kind, user_id=USER, endpoint=endpoint, variant=fault.variant, **fault.params)


# -- what each surface must answer ----------------------------------------------------------------------


def expect_error(error: BaseException | None, fault: Fault) -> None:
    """The error a raising surface gave is classified as the fault's outcome says."""
    assert isinstance(error, UpstreamError), f"{fault.name}: expected an UpstreamError, got {error!r}"
    assert TOKEN not in str(error)
    if fault.outcome == "revoked":
        assert isinstance(error, TokenRevoked)
    else:
        assert not isinstance(error, TokenRevoked)
        assert error.transient is (fault.outcome == "transient"), f"{fault.name}: {error!r}"


def expect_api_failure(response: dict[str, Any], fault: Fault) -> None:
    if fault.outcome == "revoked":
        assert response["statusCode"] == 409, response
        assert '"bytemark_token_revoked"' in response["body"]
        return
    assert response["statusCode"] == 503, response
    assert '"upstream_unavailable"' in response["body"]
    retry_after = str(fault.params.get("retry_after", 30))
    assert header(response, "Retry-After") == retry_after


def expect_stale_body(response: dict[str, Any], fault: Fault) -> None:
    assert response["statusCode"] == 200, response
    body = response_json(response)
    assert body["stale"] is True
    assert body["upstream_error"] == ("token_revoked" if fault.outcome == "revoked" else "unavailable")


def response_json(response: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response["body"])
    return body


def expect_sqs(case: Case, response: dict[str, Any], message_id: str, body: str, fault: Fault) -> None:
    """user_updates acknowledged, retried or dead-lettered the message as the contract says."""
    assert case.queues is not None
    sqs = case.matrix.sqs
    failures = [item["itemIdentifier"] for item in response["batchItemFailures"]]
    letters = receive(sqs, case.queues.dlq_url)
    if fault.outcome == "transient":
        assert failures == [message_id]
        assert letters == []
        # Hidden for the redelivery delay (not visible again at once), still on the queue.
        assert queue_counts(sqs, case.queues.url) == (0, 1)
    elif fault.outcome == "permanent":
        assert failures == []
        assert [letter["Body"] for letter in letters] == [body]
        attributes = letters[0]["MessageAttributes"]
        assert attributes["original_message_id"]["StringValue"] == message_id
        assert attributes["failure_reason"]["StringValue"].startswith("UpstreamError")
        assert TOKEN not in attributes["failure_reason"]["StringValue"]
    else:  # ok, or revoked: acknowledged, nothing dead-lettered
        assert failures == []
        assert letters == []


def expect_unchanged(case: Case, before: Snapshot, fault: Fault) -> None:
    """Nothing written: the same document, log and (no) live claims; a revoked token postpones only."""
    after = case.snapshot()
    assert after.log == before.log
    assert after.live_claims == []
    if before.document is None:
        assert after.document is None
        return
    assert after.document is not None
    if fault.outcome == "revoked":
        postponed = after.document.pop("next_sync_at")
        assert postponed == int(case.clock.now()) + REVOKED_RECHECK_SECONDS
        before_document = {k: v for k, v in before.document.items() if k != "next_sync_at"}
        assert after.document == before_document
    else:
        assert after.document == before.document


# -- the matrix -----------------------------------------------------------------------------------------


def run_surface(case: Case, surface: Surface, fault: Fault) -> tuple[Snapshot, set[tuple[str, str, str]]]:
    """Bring the case to the moment before the faulted call (cache built, Bytemark changed), inject the
    fault, make the call, check its answer and that nothing was written; returns the snapshot taken
    before the call and the log entries the changes call for."""
    admin = case.matrix.admin
    tickets = case.services.tickets
    if surface != "build":
        assert tickets.sync(USER, deadline=Deadline.never()).source == "built"
    changes = change_bytemark(admin)
    record: dict[str, Any] | None = None
    body = purchase_body(USER)
    if surface == "ttl":
        case.clock.advance(case.settings.cache_ttl_seconds + 1)
    elif surface == "backfill":
        document = document_of(case.matrix.database, case.settings, USER)
        assert document is not None
        case.clock.current = float(document["next_sync_at"]) + 1
        summary = call_backfill(case.services, {"mode": "due"})
        assert (summary["scanned"], summary["enqueued"], summary["cursor"]) == (1, 1, None), summary
    else:
        case.clock.advance(60)
    if surface in ("sqs", "backfill"):
        assert case.queues is not None
        if surface == "sqs":
            case.matrix.sqs.send_message(QueueUrl=case.queues.url, MessageBody=body)
        (message,) = receive(case.matrix.sqs, case.queues.url)
        body = message["Body"]
        if surface == "backfill":
            assert response_json({"body": body}) == {"user_id": USER, "reason": "backfill"}
        record = record_of(message, case.queues.arn)
    before = case.snapshot()
    if surface == "backfill":
        assert before.document is not None
        # Taken by the run: held for the retry delay, so a failed sync makes the user due again.
        assert before.document["next_sync_at"] == int(case.clock.now()) + FAILED_SYNC_RETRY_SECONDS

    set_fault(admin, fault, ENDPOINT[surface])
    remaining_ms = int((BUDGET + 1.5) * 1000)  # the API keeps 1.5 s back
    started = time.monotonic()
    error: BaseException | None = None
    response: dict[str, Any] | None = None
    if surface == "build":
        response = call_api(case.services, api_event("GET", "/tickets", user=str(USER)), remaining_ms)
    elif surface == "forced":
        response = call_api(case.services, api_event("POST", "/tickets/sync", user=str(USER)), remaining_ms)
    elif surface in ("sqs", "backfill"):
        assert record is not None
        response = call_updates(case.services, {"Records": [record]}, int((BUDGET + 5) * 1000))
    elif surface == "sync":
        try:
            tickets.sync(USER, deadline=case.deadline())
        except UpstreamError as exc:
            error = exc
    else:
        result = tickets.check_with_ttl(USER, deadline=case.deadline(), refresh_behind=False)
        if fault.outcome != "ok":
            assert result.source == "stale", result.source
            error = result.upstream_error
        else:
            assert result.source == "synced"
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET + OVERSHOOT, f"{fault.name} on {surface} took {elapsed:.2f}s"
    admin.clear_faults()

    if fault.outcome == "ok":
        if response is not None and surface in ("build", "forced"):
            assert response["statusCode"] == 200, response
            assert response_json(response)["stale"] is False
        if response is not None and record is not None:
            expect_sqs(case, response, record["messageId"], body, fault)
        return before, changes
    if surface == "build":
        assert response is not None
        expect_api_failure(response, fault)
    elif surface == "forced":
        assert response is not None
        expect_stale_body(response, fault)
    elif surface in ("sqs", "backfill"):
        assert response is not None
        assert record is not None
        expect_sqs(case, response, record["messageId"], body, fault)
    else:
        expect_error(error, fault)
    expect_unchanged(case, before, fault)
    return before, changes


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.name)
def test_fault(make_case: Any, fault: Fault, surface: Surface) -> None:
    case: Case = make_case(surface in ("sqs", "backfill"))

    if fault.bomb:
        tracemalloc.start()
        try:
            before, changes = run_surface(case, surface, fault)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        print(f"\n{fault.name} on {surface}: peak {peak / 2**20:.1f} MiB")
        assert peak < BOMB_PEAK_BYTES, f"{fault.name} cost {peak} bytes"
    else:
        before, changes = run_surface(case, surface, fault)

    # The fault is gone: the same services sync at once and the cache catches up exactly.
    result = case.services.tickets.sync(USER, deadline=Deadline.after(case.clock.now(), 10))
    assert result.source in ("built", "synced"), result.source
    after = case.snapshot()
    served = case.matrix.admin.passes(USER)
    assert_cache_matches(after.document, served)
    assert_log_replays(after.document, after.log)
    assert after.live_claims == []
    written = [entry for entry in after.log if entry not in before.log]
    if surface == "build":
        passes, history = expected_lists(served)
        created = [(p["uuid"], "created", "passes") for p in passes]
        created += [(p["uuid"], "created", "passes4") for p in history]
        assert log_actions(written) == sorted(created)
    else:
        assert log_actions(written) == sorted(changes)
