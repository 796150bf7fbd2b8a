"""The use cases over the real adapters: FerretDB, MariaDB, moto's SQS and the Bytemark simulator (HTTP).

Each scenario of the engine is run end to end through ``build_services`` with only the clock replaced.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from bytemark_cache.adapters.clock import SystemClock
from bytemark_cache.bootstrap import Services, build_services
from bytemark_cache.config import Settings
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.errors import NoBytemarkAccount, TokenRevoked, UpstreamError
from bytemark_simulator import AdminClient, SimulatorServer
from tests.fakes import FakeClock
from tests.integration.conftest import MongoDatabase, MySqlConnection, QueuePair

pytestmark = pytest.mark.integration

USER = 42
TOKEN = "tok-integration-42"
SIMULATOR_NOW = "2024-06-15T04:30:00Z"


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, local_env: dict[str, str]) -> None:
    """What Lambda's runtime provides and boto3 reads: region and (dummy, for moto) credentials."""
    for name in ("AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, local_env[name])


@pytest.fixture
def admin(simulator: SimulatorServer) -> AdminClient:
    """The reset simulator's admin client, its clock frozen at ``SIMULATOR_NOW``."""
    simulator.admin.set_time(SIMULATOR_NOW)
    return simulator.admin


class WithDeadline:
    """The service's calls with a 30 s deadline on the stack's clock unless the test gives one."""

    def __init__(self, service: Any, clock: FakeClock | SystemClock) -> None:
        self._service = service
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._service, name)
        if name == "now":
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("deadline", Deadline.after(self._clock.now(), 30))
            return method(*args, **kwargs)

        return call


class Stack:
    """The service wired to the real servers, with a clock the test moves."""

    def __init__(
        self,
        settings: Settings,
        mysql: MySqlConnection,
        database: MongoDatabase,
        clock: FakeClock | SystemClock,
    ) -> None:
        self.settings = settings
        self.mysql = mysql
        self.database = database
        self.clock = clock
        self.services: Services = build_services(settings, clock=clock)
        self.tickets = WithDeadline(self.services.tickets, clock)

    def set_token(self, user_id: int, token: str | None) -> None:
        with self.mysql.cursor() as cursor:
            cursor.execute(
                "INSERT INTO bytemark_tokens (user_id, token, status) VALUES (%s, %s, 'active') "
                "ON DUPLICATE KEY UPDATE token = VALUES(token)",
                (user_id, token),
            )

    def document(self, user_id: int = USER) -> dict[str, Any] | None:
        return self.database[self.settings.cache_collection].find_one(
            {"user_id": user_id}, {"_id": 0, "log_pending": 0}
        )

    def log(self, user_id: int = USER) -> list[dict[str, Any]]:
        return list(self.database[self.settings.log_collection].find({"user_id": user_id}, {"_id": 0}))


type StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack(
    admin: AdminClient,
    integration_env: dict[str, str],
    collection_names: tuple[str, str, str],
    mysql_conn: MySqlConnection,
    mongo_db: MongoDatabase,
) -> StackFactory:
    """``make_stack(clock, **env)``: a Stack on this test's resources, ``env`` overriding settings."""
    cache, log, claims = collection_names

    def make(clock: FakeClock | SystemClock, **env: str) -> Stack:
        settings = Settings.from_env(
            {
                **integration_env,
                "CACHE_COLLECTION": cache,
                "LOG_COLLECTION": log,
                "CLAIM_COLLECTION": claims,
                "BACKFILL_RUN_COLLECTION": f"runs_{cache}",
                "BYTEMARK_TIMEOUT_SECONDS": "2",
                "BYTEMARK_PAGE_SIZE": "2",
                "BYTEMARK_MAX_RETRIES": "1",
                **env,
            }
        )
        return Stack(settings, mysql_conn, mongo_db, clock)

    return make


@pytest.fixture
def stack(make_stack: StackFactory, admin: AdminClient) -> Stack:
    """A Stack on a fake clock with user ``USER`` holding a token and seeded passes."""
    stack = make_stack(FakeClock(), PASSES4_LIMIT="5")
    stack.set_token(USER, TOKEN)
    admin.seed_user(USER, TOKEN, current=4, expired=2, seed=3)
    return stack


def wait_until(condition: Any, seconds: float = 10.0) -> None:
    """Poll a condition with a deadline (a readiness check, not a sleep standing in for one)."""
    deadline = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        deadline.wait(0.01)
    raise AssertionError("condition not met in time")


def uuids(elements: list[dict[str, Any]]) -> list[str]:
    return [element["pass_uuid"] for element in elements]


def log_actions(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((entry["uuid"], entry["action"], entry["list"]) for entry in entries)


def test_fresh_build_sorts_v1_and_keeps_history(stack: Stack, admin: AdminClient) -> None:
    served = admin.passes(USER)

    result = stack.tickets.check_with_ttl(USER)

    document = stack.document()
    assert document is not None
    assert result.source == "built"
    expected = sorted(served["current"], key=lambda p: p["time_created"].replace("Z", ".000Z")[:23])
    assert uuids(document["passes"]) == [p["uuid"] for p in expected]
    assert sorted(uuids(document["passes4"])) == sorted(p["uuid"] for p in served["expired"])
    assert len(stack.log()) == 6
    # Payloads are stored untouched and hashed exactly as Node would.
    by_uuid = {p["uuid"]: p for p in served["current"]}
    for element in document["passes"]:
        assert element["payload"] == by_uuid[element["pass_uuid"]]
        assert element["payload_hash"] == payload_hash(by_uuid[element["pass_uuid"]])


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_writes_nothing_and_calls_nobody(
    stack: Stack, admin: AdminClient, token: str | None
) -> None:
    stack.set_token(USER, token)

    with pytest.raises(NoBytemarkAccount):
        stack.tickets.check(USER)

    assert stack.document() is None
    assert admin.request_counts()["total"] == 0


def test_noop_sync_touches_only_the_timestamp(stack: Stack) -> None:
    stack.tickets.check(USER)
    before = stack.document()
    stack.clock.advance(30)

    result = stack.tickets.check(USER)

    after = stack.document()
    assert before is not None
    assert after is not None
    assert result.changed_passes == 0
    assert after["passes"] == before["passes"]
    assert after["passes4"] == before["passes4"]
    assert after["timestamp"] == before["timestamp"] + 30
    assert len(stack.log()) == 6


def test_activation_changes_one_element_and_logs_once(stack: Stack, admin: AdminClient) -> None:
    stack.tickets.check(USER)
    target = next(p for p in admin.passes(USER)["current"] if p["status"] == "USABLE")
    stack.clock.advance(60)
    admin.activate(USER, target["uuid"])

    result = stack.tickets.check(USER)

    document = stack.document()
    assert document is not None
    changed = [e for e in document["passes"] if e["timestamp"] == int(stack.clock.now())]
    assert uuids(changed) == [target["uuid"]]
    assert changed[0]["status"] == "USING"
    assert result.changed_passes == 1
    newest = [entry for entry in stack.log() if entry["timestamp"] == int(stack.clock.now())]
    assert log_actions(newest) == [(target["uuid"], "updated", "passes")]


def test_purchase_is_appended(stack: Stack, admin: AdminClient) -> None:
    stack.tickets.check(USER)
    bought = admin.purchase(USER, "Local Single Ride")

    stack.tickets.check(USER)

    document = stack.document()
    assert document is not None
    assert uuids(document["passes"])[-1] == bought["uuid"]
    assert (bought["uuid"], "created", "passes") in log_actions(stack.log())


def test_pass_moving_to_history_is_removed_once_and_created_once(stack: Stack, admin: AdminClient) -> None:
    stack.tickets.check(USER)
    moving = admin.passes(USER)["current"][0]["uuid"]
    admin.expire(USER, moving)

    stack.tickets.check(USER)

    document = stack.document()
    assert document is not None
    assert moving not in uuids(document["passes"])
    assert uuids(document["passes4"]).count(moving) == 1
    actions = log_actions(stack.log())
    assert (moving, "removed", "passes") in actions
    assert (moving, "created", "passes4") in actions


def test_pass_in_both_lists_in_one_fetch_is_kept_once_in_history(stack: Stack, admin: AdminClient) -> None:
    current = admin.passes(USER)["current"][0]
    admin.put_pass(USER, {**current, "status": "EXPIRED"}, "expired")

    stack.tickets.check(USER)

    document = stack.document()
    assert document is not None
    assert current["uuid"] not in uuids(document["passes"])
    assert uuids(document["passes4"]).count(current["uuid"]) == 1


def test_duplicate_uuids_across_pages_collapse_to_the_latest(stack: Stack, admin: AdminClient) -> None:
    original = admin.passes(USER)["current"][0]
    newer = {**original, "status": "USING", "time_modified": "2030-01-01T00:00:00Z"}
    admin.put_pass(USER, newer, "current", replace=False)

    stack.tickets.check(USER)

    document = stack.document()
    assert document is not None
    assert uuids(document["passes"]).count(original["uuid"]) == 1
    element = next(e for e in document["passes"] if e["pass_uuid"] == original["uuid"])
    assert element["status"] == "USING"


def test_empty_account_with_object_pagination(stack: Stack, admin: AdminClient) -> None:
    admin.seed_user(USER, TOKEN, current=0, expired=0, empty_pagination_style="object")

    result = stack.tickets.check(USER)

    document = stack.document()
    assert result.source == "built"
    assert document is not None
    assert (document["passes"], document["passes4"]) == ([], [])


def test_ttl_boundary_exactly_at_ttl_is_stale(stack: Stack, admin: AdminClient) -> None:
    stack.tickets.check_with_ttl(USER)
    stack.clock.advance(3599)
    assert stack.tickets.check_with_ttl(USER).source == "cache"
    requests_before = admin.request_counts()["total"]
    stack.clock.advance(1)

    # At the TTL the cache is stale: no pass is in use, so it is served with a refresh queued behind the
    # rider; the contract's plain check (refresh_behind off) syncs first.
    assert stack.tickets.check_with_ttl(USER).source == "refresh_queued"
    assert admin.request_counts()["total"] == requests_before
    assert stack.tickets.check_with_ttl(USER, refresh_behind=False).source == "synced"
    assert admin.request_counts()["total"] > requests_before


def test_token_revoked_mid_life_keeps_the_cache(stack: Stack, admin: AdminClient) -> None:
    stack.tickets.check(USER)
    before = stack.document()
    admin.revoke(USER)

    served = stack.tickets.check(USER)
    with pytest.raises(TokenRevoked):
        stack.tickets.sync(USER)

    assert served.stale
    assert isinstance(served.upstream_error, TokenRevoked)
    after = stack.document()
    assert after is not None
    assert before is not None
    # Only the next background sync moved (asking a revoked token again soon cannot help); the cache stays.
    assert after.pop("next_sync_at") > before.pop("next_sync_at")
    assert after == before


@pytest.mark.parametrize("failing", ["v1", "v4"])
def test_one_list_failing_writes_nothing(stack: Stack, admin: AdminClient, failing: str) -> None:
    stack.tickets.check(USER)
    before = stack.document()
    admin.purchase(USER)
    admin.set_fault("http_500", endpoint=failing)

    with pytest.raises(UpstreamError):
        stack.tickets.sync(USER)

    assert stack.document() == before


def test_paging_follows_every_page(stack: Stack, admin: AdminClient) -> None:
    admin.seed_user(USER, TOKEN, current=7, expired=3, seed=11)

    stack.tickets.check(USER)

    document = stack.document()
    assert document is not None
    assert len(document["passes"]) + len(document["passes4"]) == 10
    counts = admin.request_counts()["by_user"][str(USER)]
    assert counts == {"v1": 4, "v4": 2}  # per_page 2: 7 → 4 pages, 3 → 2 pages


def test_time_formats_and_empty_expiration_are_kept_verbatim(stack: Stack, admin: AdminClient) -> None:
    odd = {
        **admin.passes(USER)["current"][0],
        "uuid": "odd-times",
        "time_created": "2024-06-01T10:00:00Z",
        "time_modified": "2024-06-01T10:00:00.123Z",
        "expiration": "",
    }
    admin.put_pass(USER, odd, "current")

    stack.tickets.check(USER)

    document = stack.document()
    assert document is not None
    element = next(e for e in document["passes"] if e["pass_uuid"] == "odd-times")
    assert element["payload"]["expiration"] == ""
    assert element["payload"]["time_modified"] == "2024-06-01T10:00:00.123Z"


def test_history_stays_bounded_over_many_syncs(stack: Stack, admin: AdminClient) -> None:
    stack.tickets.check(USER)
    for _ in range(6):
        bought = admin.purchase(USER)
        admin.expire(USER, bought["uuid"])
        stack.clock.advance(10)
        stack.tickets.check(USER)

    document = stack.document()
    assert document is not None
    assert len(document["passes4"]) == 5  # PASSES4_LIMIT


def test_two_concurrent_syncs_make_one_upstream_fetch(make_stack: StackFactory, admin: AdminClient) -> None:
    stacks = [make_stack(SystemClock()) for i in range(2)]
    stacks[0].set_token(USER, TOKEN)
    admin.seed_user(USER, TOKEN, current=3, expired=1, seed=5)
    # The first fetch is held by the simulator, so the second sync surely arrives while it is in flight.
    admin.set_fault("latency", user_id=USER, endpoint="v1", count=1, latency_ms=1500)
    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(stacks[0].tickets.check(USER).source))
    first.start()
    wait_until(lambda: admin.request_counts()["total"] > 0)
    second = threading.Thread(target=lambda: results.append(stacks[1].tickets.check(USER).source))
    second.start()
    first.join(20)
    second.join(20)

    assert sorted(results) == ["built", "shared"]
    assert admin.request_counts()["by_user"][str(USER)]["v1"] == 2  # one fetch: 2 pages of v1
    assert len(stacks[0].log()) == 4


def test_backfill_resumes_from_its_cursor_without_skips_or_repeats(
    stack: Stack, sqs_client: Any, update_queue: QueuePair
) -> None:
    for user_id in range(1000, 1023):
        stack.set_token(user_id, f"tok-{user_id}")
    stack.set_token(1005, "")
    seen_cursor: int | None = None
    runs = 0
    while True:
        assert stack.services.backfill is not None
        result = stack.services.backfill.scan("missing", seen_cursor, max_users=6, page_size=4)
        runs += 1
        seen_cursor = result.cursor
        if seen_cursor is None:
            break

    bodies: list[dict[str, Any]] = []
    while True:
        messages = sqs_client.receive_message(
            QueueUrl=update_queue.url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            break
        bodies.extend(json.loads(message["Body"]) for message in messages)
        sqs_client.delete_message_batch(
            QueueUrl=update_queue.url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    enqueued = sorted(body["user_id"] for body in bodies)
    expected = sorted([USER, *[uid for uid in range(1000, 1023) if uid != 1005]])
    assert enqueued == expected
    assert runs > 1
    assert {body["reason"] for body in bodies} == {"backfill"}


def drain(sqs_client: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message body on the queue (deleted as read)."""
    bodies: list[dict[str, Any]] = []
    while messages := sqs_client.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages", []):
        bodies.extend(json.loads(message["Body"]) for message in messages)
        sqs_client.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return bodies


def test_due_enqueues_exactly_the_due_users_of_a_seeded_collection(
    stack: Stack, sqs_client: Any, update_queue: QueuePair
) -> None:
    now = int(stack.clock.now())
    cache = stack.database[stack.settings.cache_collection]
    cache.insert_many(
        [
            {"user_id": 2001, "timestamp": now - 9000, "passes": [], "next_sync_at": now - 1},  # due
            {"user_id": 2002, "timestamp": now - 60, "passes": [], "next_sync_at": now + 3600},  # not yet
            {"user_id": 2003, "timestamp": now - 9000, "passes": [], "next_sync_at": now},  # due exactly now
            {"user_id": "2004", "timestamp": now - 9000, "passes": []},  # a Node document: due
            {"user_id": 2005, "timestamp": now - 60, "passes": [], "next_sync_at": now + 1},  # not yet
            *(
                {"user_id": 3000 + n, "timestamp": now, "passes": [], "next_sync_at": now - n}
                for n in range(1, 26)
            ),
        ]
    )
    assert stack.services.backfill is not None

    first = stack.services.backfill.scan("due", page_size=7)
    again = stack.services.backfill.scan("due", page_size=7)

    bodies = drain(sqs_client, update_queue.url)
    assert sorted(body["user_id"] for body in bodies) == sorted(
        [2001, 2003, 2004, *(3000 + n for n in range(1, 26))]
    )
    assert {body["reason"] for body in bodies} == {"backfill"}
    assert (first.enqueued, again.enqueued) == (28, 0)  # the taken users are held until their syncs land
