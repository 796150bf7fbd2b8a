"""TicketCacheService on in-memory fakes: build, sync, TTL, refresh behind, stale serving, the claims."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from bytemark_cache.adapters.clock import SystemClock
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.expiry import effective_status
from bytemark_cache.domain.freshness import REVOKED_RECHECK_SECONDS, FreshnessPolicy
from bytemark_cache.domain.model import NEXT_SYNC_FIELD, PENDING_LOG_FIELD, REVISION_FIELD
from bytemark_cache.errors import (
    ConcurrentModification,
    DeadlineExceeded,
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
            policy=FreshnessPolicy(ttl_seconds=3600, day_pass_label="Day Pass", timezone="America/Chicago"),
            history_limit=50,
            claim_seconds=30,
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

    def deadline(self, seconds: float = 10) -> Deadline:
        return Deadline.after(self.clock.now(), seconds)

    @property
    def document(self) -> dict[str, Any]:
        document = self.cache.document_of(USER)
        assert document is not None
        return document

    def actions(self) -> set[tuple[str, str]]:
        return {(entry["uuid"], entry["action"]) for entry in self.cache.log_entries(USER)}


@pytest.fixture
def world() -> World:
    return World()


def uuids(elements: list[dict[str, Any]]) -> list[object]:
    return [element["pass_uuid"] for element in elements]


# -- build, serve, sync ----------------------------------------------------------------------------


def test_first_check_builds_sorted_cache_and_logs_every_pass(world: World) -> None:
    result = world.service.check_with_ttl(USER, deadline=world.deadline())

    assert result.source == "built"
    assert uuids(world.document["passes"]) == ["a", "b"]
    assert uuids(world.document["passes4"]) == ["x", "y"]
    assert world.actions() == {("a", "created"), ("b", "created"), ("x", "created"), ("y", "created")}
    assert result.changed_passes == 4
    assert world.document[REVISION_FIELD] == 1


class CountingTokenStore(InMemoryTokenStore):
    def __init__(self, tokens: dict[int, str | None]) -> None:
        super().__init__(tokens)
        self.reads = 0

    def token_for(self, user_id: int) -> str | None:
        self.reads += 1
        return super().token_for(user_id)


def test_a_build_and_a_sync_each_read_the_token_once(world: World) -> None:
    counting = CountingTokenStore({USER: TOKEN})
    service = dataclasses.replace(world.service, tokens=counting)

    assert service.check(USER, deadline=world.deadline()).source == "built"
    assert counting.reads == 1
    assert service.check(USER, deadline=world.deadline()).source == "synced"
    assert counting.reads == 2


@pytest.mark.parametrize("token", [None, "", "   "])
def test_user_without_token_gets_no_account_and_nothing_is_written(world: World, token: str | None) -> None:
    world.tokens.tokens[USER] = token

    with pytest.raises(NoBytemarkAccount):
        world.service.check_with_ttl(USER, deadline=world.deadline())

    assert world.cache.documents == {}
    assert world.cache.log == {}
    assert world.source.fetches == []


def test_fresh_cache_is_served_without_upstream_call(world: World) -> None:
    world.service.check_with_ttl(USER, deadline=world.deadline())
    world.clock.advance(3599)

    result = world.service.check_with_ttl(USER, deadline=world.deadline())

    assert result.source == "cache"
    assert result.cache.age(world.clock.now()) == 3599
    assert len(world.source.fetches) == 1
    assert world.queue.messages == []


def test_cache_exactly_at_ttl_is_refreshed_behind_the_rider(world: World) -> None:
    world.service.check_with_ttl(USER, deadline=world.deadline())
    world.clock.advance(3600)

    result = world.service.check_with_ttl(USER, deadline=world.deadline())

    assert result.source == "refresh_queued"
    assert world.queue.messages == [{"user_id": USER, "reason": "refresh"}]
    assert len(world.source.fetches) == 1  # the rider did not wait for Bytemark


def test_cache_at_ttl_without_refresh_behind_is_synced_first(world: World) -> None:
    world.service.check_with_ttl(USER, deadline=world.deadline())
    world.clock.advance(3600)

    result = world.service.check_with_ttl(USER, deadline=world.deadline(), refresh_behind=False)

    assert result.source == "synced"
    assert len(world.source.fetches) == 2
    assert world.document["timestamp"] == int(world.clock.now())


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def test_a_ride_ticket_in_use_makes_an_old_cache_sync_before_answering(world: World) -> None:
    # A single ride first used 10 minutes ago, valid 90: a validator may have taken its use since.
    now = world.clock.now()
    world.source.set_passes(TOKEN, [make_pass("a", first_use=_iso(now - 600), expiration=_iso(now + 4800))])
    world.service.check_with_ttl(USER, deadline=world.deadline())
    world.clock.advance(3600)

    result = world.service.check_with_ttl(USER, deadline=world.deadline())

    assert result.source == "synced"
    assert world.queue.messages == []


def test_a_transition_since_the_sync_is_shown_at_once_and_refreshed_behind(world: World) -> None:
    # The pass expired 30 minutes after the build: the clock shows it EXPIRED; the refresh moves it.
    world.source.set_passes(TOKEN, [make_pass("a", expiration=_iso(world.clock.now() + 1800))])
    world.service.check_with_ttl(USER, deadline=world.deadline())
    world.clock.advance(3600)

    result = world.service.check_with_ttl(USER, deadline=world.deadline())

    assert result.source == "refresh_queued"
    shown_at = datetime.fromtimestamp(world.clock.now(), UTC)
    assert [effective_status(element, shown_at) for element in result.cache.passes] == ["EXPIRED"]
    assert len(world.queue.messages) == 1


def test_an_unavailable_queue_makes_the_read_sync_itself(world: World) -> None:
    world.service.check_with_ttl(USER, deadline=world.deadline())
    world.clock.advance(3600)
    world.queue.fail_after = 0

    assert world.service.check_with_ttl(USER, deadline=world.deadline()).source == "synced"


def test_noop_sync_writes_no_log_but_refreshes_timestamp(world: World) -> None:
    world.service.check(USER, deadline=world.deadline())
    log_before = world.cache.log_entries(USER)
    elements_before = world.document["passes"]
    world.clock.advance(10)

    result = world.service.check(USER, deadline=world.deadline())

    assert result.source == "synced"
    assert result.changed_passes == 0
    assert world.cache.log_entries(USER) == log_before
    assert world.document["passes"] == elements_before
    assert world.document["timestamp"] == int(world.clock.now())
    assert not world.cache.writes[-1].passes.changed


def test_activation_changes_one_element_in_place_and_one_log_entry(world: World) -> None:
    world.service.check(USER, deadline=world.deadline())
    world.clock.advance(60)
    world.source.set_passes(
        TOKEN,
        [
            make_pass(
                "a", status="USING", time_created="2024-06-01T10:00:00.000Z", first_use="2024-06-15T04:30:00Z"
            ),
            make_pass("b", time_created="2024-06-02T10:00:00Z"),
        ],
        world.source.accounts[TOKEN].expired,
    )

    result = world.service.check(USER, deadline=world.deadline())

    plan = world.cache.writes[-1]
    assert [index for index, _ in plan.passes.updated] == [0]
    assert not plan.passes.rewrite
    assert result.changed_passes == 1
    assert [(entry.uuid, entry.action) for entry in plan.log] == [("a", "updated")]
    element = world.document["passes"][0]
    assert (element["status"], element["timestamp"]) == ("USING", int(world.clock.now()))


def test_every_sync_schedules_the_next_one_and_records_the_riders_activity(world: World) -> None:
    world.service.sync(USER, deadline=world.deadline(), reason="backfill")
    assert world.document[NEXT_SYNC_FIELD] > world.clock.now()
    assert "active_at" not in world.document

    world.service.sync(USER, deadline=world.deadline(), reason="purchase")
    assert world.document["active_at"] == int(world.clock.now())


# -- failures --------------------------------------------------------------------------------------


def test_upstream_failure_with_cache_serves_it_stale_and_untouched(world: World) -> None:
    world.service.check(USER, deadline=world.deadline())
    before = world.cache.documents.copy()
    world.clock.advance(4000)
    world.source.fail_next(TOKEN, UpstreamError("bytemark 503"))

    result = world.service.check_with_ttl(USER, deadline=world.deadline(), refresh_behind=False)

    assert result.stale
    assert world.cache.documents == before


def test_upstream_failure_without_cache_raises_and_writes_nothing(world: World) -> None:
    world.source.fail_next(TOKEN, UpstreamError("bytemark 503"))

    with pytest.raises(UpstreamError):
        world.service.check_with_ttl(USER, deadline=world.deadline())

    assert world.cache.documents == {}
    assert world.cache.log == {}


def test_an_answer_that_cannot_be_stored_is_refused_whole_and_the_cache_served(world: World) -> None:
    world.service.check(USER, deadline=world.deadline())
    before = world.cache.documents.copy()
    world.source.set_passes(TOKEN, [make_pass("a", huge=2**70), make_pass("c")])

    result = world.service.check(USER, deadline=world.deadline())

    assert result.stale
    assert result.upstream_error is not None
    assert not result.upstream_error.transient
    assert world.cache.documents == before
    with pytest.raises(UpstreamError, match="cannot be stored"):
        world.service.sync(USER, deadline=world.deadline())


def test_the_deadline_reaches_bytemark_and_its_expiry_serves_the_cache(world: World) -> None:
    world.service.check(USER, deadline=world.deadline())
    world.source.fail_next(TOKEN, DeadlineExceeded())
    deadline = world.deadline(7)

    result = world.service.check(USER, deadline=deadline)

    assert world.source.budgets[-1] == deadline.remaining(world.clock.now())
    assert result.stale
    assert isinstance(result.upstream_error, DeadlineExceeded)


def test_token_revoked_keeps_the_cache_and_postpones_the_users_next_sync(world: World) -> None:
    world.service.check(USER, deadline=world.deadline())
    passes_before = world.document["passes"]
    world.source.fail_next(TOKEN, TokenRevoked())

    served = world.service.check(USER, deadline=world.deadline())

    assert served.stale
    assert isinstance(served.upstream_error, TokenRevoked)
    assert world.document[NEXT_SYNC_FIELD] == int(world.clock.now()) + REVOKED_RECHECK_SECONDS
    world.source.fail_next(TOKEN, TokenRevoked())
    with pytest.raises(TokenRevoked):
        world.service.sync(USER, deadline=world.deadline())
    assert world.document["passes"] == passes_before


def test_a_failed_sync_gives_its_claim_back_at_once(world: World) -> None:
    world.source.fail_next(TOKEN, UpstreamError("boom"))
    with pytest.raises(UpstreamError):
        world.service.sync(USER, deadline=world.deadline())

    assert all(claim["expires_at"] == 0 for claim in world.cache.claims.values())
    assert world.service.sync(USER, deadline=world.deadline()).source == "built"


# -- the concurrency story (docs/architecture.md): each mechanism has a test that fails without it ----


def test_claim_two_concurrent_syncs_make_one_upstream_fetch() -> None:
    """Without the claim both callers would fetch (single flight is the claim's first job)."""
    world = World(clock=SystemClock())
    fetch_started = threading.Event()
    release_fetch = threading.Event()

    def hold_fetch(_token: str) -> None:
        fetch_started.set()
        assert release_fetch.wait(10)

    world.source.before_fetch = hold_fetch
    results: list[str] = []

    def run() -> None:
        results.append(world.service.check(USER, deadline=Deadline.after(world.clock.now(), 10)).source)

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


def test_claim_held_by_another_serves_the_cache_or_reports_in_progress(world: World) -> None:
    assert world.cache.claim(USER, 0, "someone-else", world.clock.now(), 30)

    with pytest.raises(SyncInProgress):
        world.service.check(USER, deadline=world.deadline())
    assert world.source.fetches == []

    world.cache.release(USER, 0, "someone-else")
    world.service.check(USER, deadline=world.deadline())
    assert world.cache.claim(USER, 1, "someone-else", world.clock.now(), 30)
    assert world.service.check(USER, deadline=world.deadline()).source == "cache"


def test_claim_of_a_crashed_holder_is_taken_over_by_the_next_generation(world: World) -> None:
    """Without the takeover a holder that died would block the user for good."""
    assert world.cache.claim(USER, 0, "crashed", world.clock.now() - 60, 30)

    assert world.service.check(USER, deadline=world.deadline()).source == "built"
    assert {claim["generation"] for claim in world.cache.claims.values()} == {0, 1}


def test_guard_a_write_outside_the_claims_makes_the_sync_replan_not_overwrite(world: World) -> None:
    """Without the guard the sync would write its plan over the Node service's newer document."""
    world.service.check(USER, deadline=world.deadline())
    world.clock.advance(5)

    def node_writes(_token: str) -> None:
        # The Node service (no claims, no revision) rewrites the document while Bytemark answers.
        document = world.cache.documents[world.document["_id"]]
        document["timestamp"] = int(world.clock.now()) - 1
        document["passesLog"] = ["written by the Node service"]
        world.source.before_fetch = None

    world.source.before_fetch = node_writes
    fetches_before = len(world.source.fetches)

    result = world.service.check(USER, deadline=world.deadline())

    assert result.source == "synced"
    assert len(world.source.fetches) == fetches_before + 1  # re-planned without a second fetch
    assert world.document["passesLog"] == ["written by the Node service"]
    assert world.document["timestamp"] == int(world.clock.now())


def test_pending_log_a_failure_between_the_document_and_the_log_loses_no_entry(world: World) -> None:
    """Without ``log_pending`` the entries of a write whose log insert failed would be lost for good."""
    world.service.check(USER, deadline=world.deadline())
    world.source.set_passes(TOKEN, [make_pass("a", time_created="2024-06-01T10:00:00.000Z"), make_pass("c")])
    world.cache.fail_next("log")

    with pytest.raises(StoreError):
        world.service.sync(USER, deadline=world.deadline())

    # The document was written (one statement), its entries wait in it...
    assert [entry["uuid"] for entry in world.document[PENDING_LOG_FIELD]] == ["b", "c"]
    assert ("c", "created") not in world.actions()
    # ...and the next write flushes them before replacing them.
    world.clock.advance(10)
    world.service.sync(USER, deadline=world.deadline())
    assert {("b", "removed"), ("c", "created")} <= world.actions()
    assert PENDING_LOG_FIELD not in world.document


def test_a_failed_document_write_changes_nothing(world: World) -> None:
    world.service.check(USER, deadline=world.deadline())
    before = world.cache.documents.copy()
    log_before = world.cache.log_entries()
    world.source.set_passes(TOKEN, [make_pass("c")])
    world.cache.fail_next("write")

    with pytest.raises(StoreError):
        world.service.sync(USER, deadline=world.deadline())

    assert world.cache.documents == before
    assert world.cache.log_entries() == log_before


# -- activation ------------------------------------------------------------------------------------


def test_mark_activation_sets_status_only(world: World) -> None:
    world.service.check(USER, deadline=world.deadline())
    before = world.document["passes"][0]

    assert world.service.mark_activation(USER, "a", deadline=world.deadline()) is True
    assert world.service.mark_activation(USER, "unknown", deadline=world.deadline()) is False
    assert world.service.mark_activation(999, "a", deadline=world.deadline()) is False

    after = world.document["passes"][0]
    assert after["status"] == "USING"
    assert (after["payload"], after["payload_hash"]) == (before["payload"], before["payload_hash"])
    assert world.cache.writes[-1].log == []
    with pytest.raises(InvalidInput):
        world.service.mark_activation(USER, "", deadline=world.deadline())


def test_mark_activation_waits_for_a_sync_in_flight_then_gives_up(world: World) -> None:
    world.service.check(USER, deadline=world.deadline())
    assert world.cache.claim(USER, 1, "a-sync-in-flight", world.clock.now(), 30)

    with pytest.raises(ConcurrentModification):
        world.service.mark_activation(USER, "a", deadline=world.deadline(1))
    assert world.document["passes"][0]["status"] == "USABLE"


# -- legacy documents ------------------------------------------------------------------------------


def test_a_legacy_document_is_served_and_converged_by_the_next_sync(world: World) -> None:
    legacy_element = {
        "uuid": "a",
        "status": "USABLE",
        "payload": make_pass("a", time_created="2024-06-01T10:00:00.000Z"),
        "_id": "element-oid",
    }
    world.cache.put(
        {"user_id": str(USER), "timestamp": world.clock.now() * 1000, "passes": [legacy_element], "__v": 0}
    )

    served = world.service.check_with_ttl(USER, deadline=world.deadline())
    assert served.source == "cache"
    assert uuids(served.cache.passes) == ["a"]

    world.service.sync(USER, deadline=world.deadline())
    document = world.document
    assert document["user_id"] == USER
    assert isinstance(document["timestamp"], int)
    assert uuids(document["passes"]) == ["a", "b"]  # "a" matched by its legacy key, not added twice
    assert "uuid" not in document["passes"][0]
    assert document["passes"][0]["_id"] == "element-oid"
    assert document["__v"] == 0


def test_opening_the_app_again_before_the_refresh_landed_queues_no_second_one(world: World) -> None:
    world.service.check_with_ttl(USER, deadline=world.deadline())
    world.clock.advance(3600)

    first = world.service.check_with_ttl(USER, deadline=world.deadline())
    world.clock.advance(30)
    second = world.service.check_with_ttl(USER, deadline=world.deadline())
    world.clock.advance(300)
    third = world.service.check_with_ttl(USER, deadline=world.deadline())

    assert [first.source, second.source, third.source] == ["refresh_queued"] * 3
    assert (
        world.queue.messages == [{"user_id": USER, "reason": "refresh"}] * 2
    )  # the first and, 5 min on, the third
