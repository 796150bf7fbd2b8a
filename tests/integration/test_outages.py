"""FerretDB and MariaDB killed (SIGKILL) while purchase messages are being synced, then started again.

The servers are PRIVATE (tests/reliability/servers.py: own port, own data under .local-data/reliability/);
the shared ones other suites use are never touched. One ``build_services`` instance serves the whole run:
recovery must come from the adapters (pymongo's pool and server monitor, MySqlTokenStore's ping and
reconnect), never from rebuilding the services.

Messages travel through a real (moto) SQS queue and the ``user_updates`` handler, with Lambda's event source
played by ``SqsPump``: a transient failure is reported, hidden for the handler's redelivery delay (1-2 s
here) and received again. Proven: no message lost (every purchased pass ends up in its rider's cache
without any extra sync, nothing in the DLQ), no exception out of a handler, the API never answers 500
while a store is down (503 while FerretDB is; 200 from the fresh cache while MariaDB is, no token needed),
the caches equal Bytemark's lists and their logs replay; the time from the server being back to the first
acknowledged sync is printed (``-s``) and bounded.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pymongo
import pymysql
import pytest

from bytemark_cache.adapters.mongo_indexes import ensure_indexes
from bytemark_cache.bootstrap import Services, build_services, indexed_collections
from bytemark_cache.config import Settings
from bytemark_cache.domain.deadline import Deadline
from bytemark_simulator import AdminClient, SimulatorServer
from tests.integration.conftest import aws_client
from tests.reliability.rig import (
    Queues,
    SqsPump,
    api_event,
    assert_cache_matches,
    assert_log_replays,
    call_api,
    delete_queues,
    make_queues,
    purchase_body,
    queue_counts,
    receive,
    snapshot,
)
from tests.reliability.servers import (
    APP_DATABASE,
    APP_PASSWORD,
    APP_USER,
    DATA_ROOT,
    PrivateFerretDB,
    PrivateMariaDB,
)

pytestmark = pytest.mark.integration

USERS = tuple(range(7001, 7009))
PURCHASES = 32
"""Purchase messages per run, one every ``PURCHASE_INTERVAL`` seconds, round robin over USERS."""
PURCHASE_INTERVAL = 0.05
KILL_AT = 10
"""The server is killed right after this many purchases were sent (syncs are in flight then)."""
OUTAGE_SECONDS = 5.0
"""From the kill to the restart (the API call made meanwhile takes up to MongoDB's 3 s selection timeout)."""
LATENCY_MS = 150
"""Bytemark's answers take this long, so a batch's syncs are surely in flight when the server dies."""
DRAIN_TIMEOUT = 120.0
RECOVERY_BOUND = 30.0
"""Seconds from the server being back to the first acknowledged sync, at most."""


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, local_env: dict[str, str]) -> None:
    """What Lambda's runtime provides and boto3 reads: region and (dummy, for moto) credentials."""
    for name in ("AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, local_env[name])


@dataclass
class Servers:
    ferretdb: PrivateFerretDB
    mariadb: PrivateMariaDB


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    ferretdb = PrivateFerretDB(DATA_ROOT / "ferretdb")
    mariadb = PrivateMariaDB(DATA_ROOT / "mariadb")
    try:
        ferretdb.start()
        mariadb.start()
        yield Servers(ferretdb, mariadb)
    finally:
        ferretdb.stop()
        mariadb.stop()


@dataclass
class Run:
    """One outage run's world: the services (built once), the queues, the pump, the purchases made."""

    settings: Settings
    services: Services
    database: Any
    queues: Queues
    sqs: Any
    pump: SqsPump
    admin: AdminClient
    bought: list[tuple[int, str]]


@pytest.fixture
def run(
    servers: Servers, local_env: dict[str, str], simulator: SimulatorServer, aws_endpoint: str
) -> Iterator[Run]:
    sqs = aws_client("sqs", local_env)
    queues = make_queues(sqs, visibility=2, max_receive_count=1000)
    name = f"outage_{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(
        {
            **local_env,
            "MONGODB_URI": servers.ferretdb.uri,
            "MONGODB_DATABASE": name,
            "MYSQL_HOST": "127.0.0.1",
            "MYSQL_PORT": str(servers.mariadb.port),
            "MYSQL_USER": APP_USER,
            "MYSQL_PASSWORD": APP_PASSWORD,
            "MYSQL_DATABASE": APP_DATABASE,
            "BYTEMARK_API_URL": simulator.url,
            "BYTEMARK_TIMEOUT_SECONDS": "2",
            "UPDATE_QUEUE_URL": queues.url,
            "UPDATE_DLQ_URL": queues.dlq_url,
            "REDELIVERY_BASE_SECONDS": "1",
            "REDELIVERY_CAP_SECONDS": "2",
        }
    )
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(servers.ferretdb.uri)
    database = client[name]
    ensure_indexes(database, indexed_collections(settings))
    mysql = pymysql.connect(**servers.mariadb.connect_args(), database=APP_DATABASE, autocommit=True)
    with mysql.cursor() as cursor:
        cursor.execute("DELETE FROM bytemark_tokens")
        for user_id in USERS:
            cursor.execute(
                "INSERT INTO bytemark_tokens (user_id, token, status) VALUES (%s, %s, 'ACTIVE')",
                (user_id, f"tok-outage-{user_id}"),
            )
    mysql.close()
    admin = simulator.admin
    for user_id in USERS:
        admin.seed_user(user_id, f"tok-outage-{user_id}", current=2, expired=1, seed=user_id)
    services = build_services(settings, check_indexes=False)
    for user_id in USERS:
        services.tickets.sync(user_id, deadline=Deadline.after(time.time(), 10))
    try:
        yield Run(settings, services, database, queues, sqs, SqsPump(sqs, queues, services), admin, [])
    finally:
        for server in (servers.ferretdb, servers.mariadb):
            if not server.running():
                server.start()
        client.drop_database(name)
        client.close()
        delete_queues(sqs, queues)


class Pumping:
    """The pump on a thread of its own until stopped (Lambda polling the queue)."""

    def __init__(self, pump: SqsPump) -> None:
        self.pump = pump
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sqs-pump", daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            if self.pump.pump() == 0:
                self.stop.wait(0.05)

    def __enter__(self) -> Pumping:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the pump did not stop"


def api_status_during_outage(run: Run, user_id: int) -> int:
    response = call_api(run.services, api_event("GET", "/tickets", user=str(user_id)), 15_000)
    assert response["statusCode"] != 500, response
    return int(response["statusCode"])


def outage(
    run: Run,
    server: PrivateFerretDB | PrivateMariaDB,
    kind: Literal["ferretdb", "mariadb"],
    api_answer: int,
) -> None:
    """Send purchases while the pump syncs; kill ``server`` mid-flight, start it again, drain the queue,
    then check nothing was lost and that the API answered ``api_answer`` while the server was down."""
    statuses: list[int] = []
    run.admin.set_fault("latency", latency_ms=LATENCY_MS)
    with Pumping(run.pump):
        back_at = 0.0
        for number in range(PURCHASES):
            user_id = USERS[number % len(USERS)]
            bought = run.admin.purchase(user_id, "Local Single Ride")
            run.bought.append((user_id, bought["uuid"]))
            run.sqs.send_message(QueueUrl=run.queues.url, MessageBody=purchase_body(user_id))
            time.sleep(PURCHASE_INTERVAL)
            if number + 1 == KILL_AT:
                assert run.pump.in_batch.wait(10), "no batch in flight to kill the server under"
                server.kill()
                down_at = time.monotonic()
                # A rider opening the app meanwhile gets an answer, never a 500 (FerretDB down fails the
                # cache read itself: 503; MariaDB down leaves the rider's fresh cache servable: 200).
                statuses.append(api_status_during_outage(run, USERS[0]))
                time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
                server.start()
                back_at = time.monotonic()
        drained_at = wait_for_empty_queue(run)
    run.admin.clear_faults()
    first_ack = min((at for at in run.pump.acknowledged_at if at > back_at), default=None)
    assert first_ack is not None, "nothing was acknowledged after the server came back"
    recovery = first_ack - back_at
    print(
        f"\n{kind} killed after {KILL_AT} purchases, down {OUTAGE_SECONDS}s: first sync "
        f"{recovery:.2f}s after it was back, queue drained {drained_at - back_at:.2f}s after; "
        f"{run.pump.received} receives, {run.pump.failed} reported failures, API during the outage "
        f"{statuses}"
    )
    assert statuses == [api_answer]
    assert recovery < RECOVERY_BOUND
    assert run.pump.failed > 0, "the outage was never felt"
    assert_nothing_lost(run)


def wait_for_empty_queue(run: Run) -> float:
    """Until no message is left (visible or in flight); when that was."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        if queue_counts(run.sqs, run.queues.url) == (0, 0):
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"the queue still holds {queue_counts(run.sqs, run.queues.url)} after the outage")


def assert_nothing_lost(run: Run) -> None:
    """Every purchase is in its rider's cache without any extra sync; nothing dead-lettered or escaped."""
    assert run.pump.escaped == []
    assert receive(run.sqs, run.queues.dlq_url) == []
    missing = []
    for user_id in USERS:
        state = snapshot(run.database, run.settings, user_id, time.time())
        assert state.document is not None
        cached = {element["pass_uuid"] for element in state.document["passes"]}
        missing += [
            (uid, pass_uuid) for uid, pass_uuid in run.bought if uid == user_id and pass_uuid not in cached
        ]
    assert missing == [], f"{len(missing)} of {len(run.bought)} purchases never reached the cache: {missing}"
    for user_id in USERS:
        state = snapshot(run.database, run.settings, user_id, time.time())
        assert_cache_matches(state.document, run.admin.passes(user_id))
        assert_log_replays(state.document, state.log)
    # The very services object that lived through the outage still answers.
    response = call_api(run.services, api_event("POST", "/tickets/sync", user=str(USERS[-1])))
    assert response["statusCode"] == 200, response


def test_ferretdb_killed_mid_flight_loses_nothing(run: Run, servers: Servers) -> None:
    outage(run, servers.ferretdb, "ferretdb", 503)  # the cache read itself fails: cache_unavailable


def test_mariadb_killed_mid_flight_loses_nothing(run: Run, servers: Servers) -> None:
    outage(run, servers.mariadb, "mariadb", 200)  # the rider's cache is fresh: served without a token
