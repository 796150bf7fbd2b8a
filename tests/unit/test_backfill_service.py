"""BackfillService on in-memory fakes: missing, stale, due and prune; runs resumable per run id."""

from __future__ import annotations

import pytest

from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.freshness import FAILED_SYNC_RETRY_SECONDS
from bytemark_cache.domain.messages import BackfillRequest
from bytemark_cache.domain.model import NEXT_SYNC_FIELD
from bytemark_cache.errors import InvalidInput, StoreError
from bytemark_cache.services import BackfillService
from tests.fakes import FakeWorld

RETENTION_DAYS = 30


class World(FakeWorld):
    """Users 1..n with tokens (user 5 without), the back-fill over the same fakes."""

    def __init__(self, users: int) -> None:
        tokens: dict[int, str | None] = {uid: f"tok-{uid}" for uid in range(1, users + 1)}
        tokens[5] = ""
        super().__init__(env={"CHANGE_LOG_RETENTION_DAYS": str(RETENTION_DAYS)}, users=tokens)
        for uid in range(1, users + 1):
            self.source.set_passes(f"tok-{uid}", [])
        assert self.services.backfill is not None
        self.backfill: BackfillService = self.services.backfill

    def build(self, *user_ids: int) -> None:
        for uid in user_ids:
            self.services.tickets.sync(uid, deadline=Deadline.after(self.clock.now(), 10))

    def enqueued(self) -> list[int]:
        return [body["user_id"] for body in self.queue.messages]


def test_missing_enqueues_users_with_a_token_and_no_cache() -> None:
    world = World(12)
    world.build(2, 3)

    result = world.backfill.scan("missing", page_size=4)

    assert world.enqueued() == [uid for uid in range(1, 13) if uid not in (2, 3, 5)]
    assert {body["reason"] for body in world.queue.messages} == {"backfill"}
    assert result.to_dict() == {"mode": "missing", "scanned": 11, "enqueued": 9, "cursor": None}


def test_stale_enqueues_caches_at_least_a_ttl_old_and_unreadable_ones() -> None:
    world = World(5)
    for uid in (1, 2, 3):
        world.build(uid)
        world.clock.advance(1800)
    world.cache.put({"user_id": 4, "timestamp": "not a time", "passes": []})
    # ages now: user 1 → 5400 s, user 2 → 3600 s (exactly the TTL: stale), user 3 → 1800 s, user 4 unreadable.

    world.backfill.scan("stale")

    assert world.enqueued() == [1, 2, 4]


def test_missing_resumes_from_its_cursor_without_skipping_or_repeating() -> None:
    world = World(23)
    cursor = None
    runs = 0
    while True:
        result = world.backfill.scan("missing", cursor, max_users=6, page_size=3)
        runs += 1
        cursor = result.cursor
        if cursor is None:
            break

    assert world.enqueued() == [uid for uid in range(1, 24) if uid != 5]
    assert runs == 4


def test_missing_stops_when_told_with_a_resumable_cursor() -> None:
    world = World(10)
    pages: list[int | None] = []

    result = world.backfill.scan(
        "missing", page_size=2, should_stop=lambda: len(pages) >= 2, on_page=lambda r: pages.append(r.cursor)
    )

    assert (result.cursor, result.scanned) == (4, 4)
    assert world.enqueued() == [1, 2, 3, 4]


def test_a_queue_failure_keeps_the_cursor_at_the_last_complete_page() -> None:
    world = World(10)
    world.queue.fail_after = 3
    progress: list[int | None] = []

    with pytest.raises(StoreError):
        world.backfill.scan("missing", page_size=2, on_page=lambda r: progress.append(r.cursor))

    assert progress == [2]


def test_dry_runs_count_without_enqueueing_or_taking_anyone() -> None:
    world = World(6)
    world.build(1, 2)
    world.clock.advance(3 * 86400)

    assert world.backfill.scan("missing", dry_run=True).enqueued == 3
    due = world.backfill.scan("due", dry_run=True)

    assert due.enqueued == 2
    assert world.queue.messages == []
    assert all(doc[NEXT_SYNC_FIELD] < world.clock.now() for doc in world.cache.documents.values())


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(InvalidInput):
        World(1).backfill.scan("everything")  # type: ignore[arg-type]


def test_due_enqueues_exactly_the_users_whose_next_sync_passed_and_holds_them() -> None:
    world = World(6)
    world.build(1, 2, 3, 4)
    now = int(world.clock.now())
    next_syncs = {1: now - 10, 2: now + 600, 3: now - 5, 4: now + 86_400}
    for uid, at in next_syncs.items():
        world.cache.set_next_sync(uid, at)
    world.cache.put({"user_id": 6, "timestamp": now, "passes": []})  # a Node document: no next_sync_at

    result = world.backfill.scan("due", page_size=2)

    assert sorted(world.enqueued()) == [1, 3, 6]
    assert result.scanned == result.enqueued == 3
    held = {uid: world.cache.document_of(uid)[NEXT_SYNC_FIELD] for uid in (1, 3, 6)}  # type: ignore[index]
    assert set(held.values()) == {now + FAILED_SYNC_RETRY_SECONDS}
    # A second run right away takes nobody again: they are held until their syncs land.
    world.queue.messages.clear()
    assert world.backfill.scan("due").enqueued == 0


def test_prune_deletes_change_log_entries_older_than_the_retention() -> None:
    world = World(3)
    world.source.set_passes("tok-1", [{"uuid": "p", "status": "USABLE"}])
    world.build(1)
    world.clock.advance(RETENTION_DAYS * 86400 + 1)
    world.source.set_passes("tok-1", [{"uuid": "q", "status": "USABLE"}])
    world.build(1)
    old_and_new = len(world.cache.log_entries(1))

    result = world.backfill.scan("prune")

    assert result.pruned == 1
    assert len(world.cache.log_entries(1)) == old_and_new - 1
    assert result.to_dict()["pruned"] == 1


def test_a_run_resumes_where_it_stopped_and_a_finished_run_does_nothing_again() -> None:
    world = World(1200)  # three pages of 500
    everyone = [uid for uid in range(1, 1201) if uid != 5]
    request = BackfillRequest(mode="missing", cursor=None, run_id="missing:2024-06-15T08:15:00Z")
    stops = iter([False, True])

    first = world.backfill.run(request, should_stop=lambda: next(stops, False))
    assert first.cursor == 1001
    assert world.enqueued() == everyone[:1000]

    second = world.backfill.run(request)
    assert (second.cursor, second.scanned, second.enqueued) == (None, 1199, 1199)
    assert world.enqueued() == everyone

    third = world.backfill.run(request)
    assert third.already_done
    assert world.enqueued() == everyone
