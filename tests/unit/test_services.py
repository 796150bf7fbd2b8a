"""The use cases on in-memory fakes: build, sync, TTL, stale serving, single flight, back-fill."""

from __future__ import annotations

import threading

import pytest

from bytemark_cache.adapters.clock import SystemClock
from bytemark_cache.domain.model import REVISION_FIELD
from bytemark_cache.errors import (
    InvalidInput,
    NoBytemarkAccount,
    StoreError,
    SyncInProgress,
    TokenRevoked,
    UpstreamError,
)
from bytemark_cache.services import TicketCacheService
from tests.fakes import (
    FakeClock,
    InMemoryCacheStore,
    InMemoryPassSource,
    InMemoryTokenStore,
    InMemoryUpdateQueue,
    make_pass,
)

USER = 42
TOKEN = "tok-42"


class World:
    """One service over fresh fakes."""

    def __init__(self, clock: FakeClock | SystemClock | None = None, wait_seconds: float = 5.0) -> None:
        self.tokens = InMemoryTokenStore({USER: TOKEN})
        self.source = InMemoryPassSource()
        self.cache = InMemoryCacheStore()
        self.queue = InMemoryUpdateQueue()
        self.clock = clock or FakeClock()
        self.service = TicketCacheService(
            tokens=self.tokens,
            source=self.source,
            cache=self.cache,
            queue=self.queue,
            clock=self.clock,
            ttl_seconds=3600,
            passes4_limit=50,
            lease_seconds=30,
            wait_seconds=wait_seconds,
        )
        self.source.set_passes(
            TOKEN,
            [
                make_pass("b", time_created="2024-06-02T10:00:00Z"),
                make_pass("a", time_created="2024-06-01T10:00:00.000Z"),
            ],
            [
                make_pass("x", status="EXPIRED", time_created="2024-05-01T10:00:00Z"),
                make_pass("y", status="EXPIRED", time_created="2024-05-02T10:00:00Z"),
            ],
        )


@pytest.fixture
def world() -> World:
    return World()


def uuids(elements: list[dict[str, object]]) -> list[object]:
    return [element["pass_uuid"] for element in elements]


def test_first_check_builds_sorted_cache_and_logs_every_pass(world: World) -> None:
    result = world.service.check_with_ttl(USER)

    assert result.source == "built"
    document = world.cache.documents[USER]
    assert uuids(document["passes"]) == ["a", "b"]
    assert uuids(document["passes4"]) == ["x", "y"]
    assert {(entry["uuid"], entry["action"]) for entry in world.cache.log} == {
        ("a", "created"),
        ("b", "created"),
        ("x", "created"),
        ("y", "created"),
    }
    assert result.changed_passes == 4


@pytest.mark.parametrize("token", [None, "", "   "])
def test_user_without_token_gets_no_account_and_nothing_is_written(world: World, token: str | None) -> None:
    world.tokens.tokens[USER] = token

    with pytest.raises(NoBytemarkAccount):
        world.service.check_with_ttl(USER)

    assert world.cache.documents == {}
    assert world.cache.log == []
    assert world.source.fetches == []


def test_fresh_cache_is_served_without_upstream_call(world: World) -> None:
    world.service.check_with_ttl(USER)
    world.clock.advance(3599)

    result = world.service.check_with_ttl(USER)

    assert result.source == "cache"
    assert result.age_seconds == 3599
    assert len(world.source.fetches) == 1


def test_cache_exactly_at_ttl_is_stale_and_synced(world: World) -> None:
    world.service.check_with_ttl(USER)
    world.clock.advance(3600)

    result = world.service.check_with_ttl(USER)

    assert result.source == "synced"
    assert len(world.source.fetches) == 2
    assert world.cache.documents[USER]["timestamp"] == int(world.clock.now())


def test_noop_sync_writes_no_log_but_refreshes_timestamp(world: World) -> None:
    world.service.check(USER)
    log_before = list(world.cache.log)
    elements_before = world.cache.documents[USER]["passes"]
    world.clock.advance(10)

    result = world.service.check(USER)

    assert result.source == "synced"
    assert result.changed_passes == 0
    assert world.cache.log == log_before
    assert world.cache.documents[USER]["passes"] == elements_before
    assert world.cache.documents[USER]["timestamp"] == int(world.clock.now())


def test_activation_changes_one_element_and_one_log_entry(world: World) -> None:
    world.service.check(USER)
    world.clock.advance(60)
    current = world.source.accounts[TOKEN].current
    current[1] = make_pass(
        "a",
        status="USING",
        time_created="2024-06-01T10:00:00.000Z",
        time_modified="2024-06-15T04:30:00Z",
        first_use="2024-06-15T04:30:00Z",
    )
    world.source.set_passes(TOKEN, current, world.source.accounts[TOKEN].expired)
    log_before = len(world.cache.log)

    result = world.service.check(USER)

    plan = world.cache.applied[-1]
    assert [index for index, _ in plan.passes.updated] == [0]
    assert result.changed_passes == 1
    new_entries = world.cache.log[log_before:]
    assert [(entry["uuid"], entry["action"]) for entry in new_entries] == [("a", "updated")]
    element = world.cache.documents[USER]["passes"][0]
    assert element["status"] == "USING"
    assert element["timestamp"] == int(world.clock.now())


def test_upstream_failure_with_cache_serves_it_stale_and_untouched(world: World) -> None:
    world.service.check(USER)
    before = world.cache.load(USER)
    world.clock.advance(4000)
    world.source.fail_next(TOKEN, UpstreamError("bytemark 503"))

    result = world.service.check_with_ttl(USER)

    assert result.stale
    assert result.document == before
    assert world.cache.documents[USER] == before


def test_upstream_failure_without_cache_raises_and_writes_nothing(world: World) -> None:
    world.source.fail_next(TOKEN, UpstreamError("bytemark 503"))

    with pytest.raises(UpstreamError):
        world.service.check_with_ttl(USER)

    assert world.cache.documents == {}
    assert world.cache.log == []


def test_token_revoked_mid_life_keeps_cache_and_surfaces_error(world: World) -> None:
    world.service.check(USER)
    before = world.cache.load(USER)
    world.source.fail_next(TOKEN, TokenRevoked())

    served = world.service.check(USER)

    assert served.stale
    assert isinstance(served.upstream_error, TokenRevoked)
    world.source.fail_next(TOKEN, TokenRevoked())
    with pytest.raises(TokenRevoked):
        world.service.sync(USER)
    assert world.cache.documents[USER] == before


def test_lease_released_after_failure(world: World) -> None:
    world.source.fail_next(TOKEN, UpstreamError("boom"))
    with pytest.raises(UpstreamError):
        world.service.sync(USER)

    assert world.cache.leases == {}
    assert world.service.sync(USER).source == "built"


def test_lost_race_replans_on_winners_document_without_second_fetch(world: World) -> None:
    world.service.check(USER)
    world.clock.advance(5)

    def concurrent_writer(_token: str) -> None:
        # Another writer (e.g. an activation mark) bumps the revision between our read and our write.
        document = world.cache.documents[USER]
        document[REVISION_FIELD] = document.get(REVISION_FIELD, 0) + 1
        document["passesLog"] = ["written by someone else"]
        world.source.before_fetch = None

    world.source.before_fetch = concurrent_writer
    fetches_before = len(world.source.fetches)

    result = world.service.check(USER)

    assert result.source == "synced"
    assert len(world.source.fetches) == fetches_before + 1
    assert world.cache.documents[USER]["passesLog"] == ["written by someone else"]


def test_two_concurrent_syncs_make_one_upstream_fetch() -> None:
    world = World(clock=SystemClock())
    fetch_started = threading.Event()
    release_fetch = threading.Event()

    def hold_fetch(_token: str) -> None:
        fetch_started.set()
        assert release_fetch.wait(10)

    world.source.before_fetch = hold_fetch
    results: list[str] = []

    def run() -> None:
        results.append(world.service.check(USER).source)

    first = threading.Thread(target=run)
    first.start()
    assert fetch_started.wait(10)
    second = threading.Thread(target=run)
    second.start()
    release_fetch.set()
    first.join(10)
    second.join(10)

    assert len(world.source.fetches) == 1
    assert sorted(results) == ["built", "shared"]
    assert world.cache.leases == {}


def test_waiting_for_a_stuck_lease_serves_current_cache_or_reports_in_progress(world: World) -> None:
    world.cache.acquire_lease(USER, "someone-else", world.clock.now(), 30)

    with pytest.raises(SyncInProgress):
        world.service.check(USER)
    assert world.source.fetches == []

    world.cache.release_lease(USER, "someone-else")
    world.service.check(USER)
    world.cache.acquire_lease(USER, "someone-else", world.clock.now(), 30)
    assert world.service.check(USER).source == "cache"


def test_expired_lease_of_a_crashed_holder_is_taken_over(world: World) -> None:
    world.cache.acquire_lease(USER, "crashed", world.clock.now() - 60, 30)

    assert world.service.check(USER).source == "built"


def test_mark_activation_sets_status_only(world: World) -> None:
    world.service.check(USER)
    before = world.cache.load(USER)
    assert before is not None

    assert world.service.mark_activation(USER, "a") is True
    assert world.service.mark_activation(USER, "unknown") is False

    after = world.cache.documents[USER]["passes"][0]
    assert after["status"] == "USING"
    assert after["payload"] == before["passes"][0]["payload"]
    assert after["payload_hash"] == before["passes"][0]["payload_hash"]
    with pytest.raises(InvalidInput):
        world.service.mark_activation(USER, "")


# -- back-fill -------------------------------------------------------------------------------------


def backfill_world(users: int) -> World:
    world = World()
    world.tokens.tokens = {uid: f"tok-{uid}" for uid in range(1, users + 1)}
    world.tokens.tokens[5] = ""  # no token: never enqueued
    return world


def test_backfill_missing_enqueues_users_without_cache() -> None:
    world = backfill_world(12)
    for uid in (2, 3):
        world.source.set_passes(f"tok-{uid}", [])
        world.service.check(uid)

    result = world.service.backfill("missing", page_size=4)

    expected = [uid for uid in range(1, 13) if uid not in (2, 3, 5)]
    assert [body["user_id"] for body in world.queue.messages] == expected
    assert {body["reason"] for body in world.queue.messages} == {"backfill"}
    assert result.to_dict() == {"mode": "missing", "scanned": 11, "enqueued": 9, "cursor": None}


def test_backfill_stale_enqueues_only_caches_older_than_ttl() -> None:
    world = backfill_world(4)
    for uid in (1, 2, 3):
        world.source.set_passes(f"tok-{uid}", [])
        world.service.check(uid)
        world.clock.advance(1800)
    # ages now: user 1 → 5400 s, user 2 → 3600 s (exactly TTL: stale), user 3 → 1800 s; user 4 has none.

    world.service.backfill("stale")

    assert [body["user_id"] for body in world.queue.messages] == [1, 2]


def test_backfill_resumes_from_cursor_without_skipping_or_repeating() -> None:
    world = backfill_world(23)
    cursor = None
    runs = 0
    while True:
        result = world.service.backfill("missing", cursor, max_users=6, page_size=3)
        runs += 1
        cursor = result.cursor
        if cursor is None:
            break

    enqueued = [body["user_id"] for body in world.queue.messages]
    assert enqueued == [uid for uid in range(1, 24) if uid != 5]
    assert runs == 4


def test_backfill_stops_when_told_and_returns_resumable_cursor() -> None:
    world = backfill_world(10)
    pages: list[int | None] = []

    result = world.service.backfill(
        "missing", page_size=2, should_stop=lambda: len(pages) >= 2, on_page=lambda r: pages.append(r.cursor)
    )

    assert result.cursor == 4
    assert result.scanned == 4
    assert [body["user_id"] for body in world.queue.messages] == [1, 2, 3, 4]


def test_backfill_queue_failure_keeps_cursor_at_last_complete_page() -> None:
    world = backfill_world(10)
    world.queue.fail_after = 3
    progress: list[int | None] = []

    with pytest.raises(StoreError):
        world.service.backfill("missing", page_size=2, on_page=lambda r: progress.append(r.cursor))

    assert progress == [2]


def test_backfill_dry_run_counts_without_enqueueing() -> None:
    world = backfill_world(6)

    result = world.service.backfill("missing", dry_run=True)

    assert result.enqueued == 5
    assert world.queue.messages == []


def test_backfill_rejects_unknown_mode(world: World) -> None:
    with pytest.raises(InvalidInput):
        world.service.backfill("everything")  # type: ignore[arg-type]
