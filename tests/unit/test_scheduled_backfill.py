"""scheduled_backfill through its handler: modes, validation, continuation near the time limit, retries."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bytemark_cache.bootstrap import build_services
from tests.fakes import FakeWorld, RecordingContinuation
from tests.lambda_harness import FakeLambdaContext, load_event, load_function

handler = load_function("scheduled_backfill")


@pytest.fixture
def world() -> FakeWorld:
    return FakeWorld(users={uid: f"tok-{uid}" for uid in range(1, 1201)})


def invoke(
    world: FakeWorld, event: dict[str, Any], context: FakeLambdaContext | None = None
) -> tuple[dict[str, Any], RecordingContinuation]:
    continuation = RecordingContinuation()
    result: dict[str, Any] = handler.lambda_handler(
        event, context or FakeLambdaContext(), services=world.services, continuation=continuation
    )
    return result, continuation


def enqueued_ids(world: FakeWorld) -> list[int]:
    return [body["user_id"] for body in world.queue.messages]


def test_missing_mode_enqueues_every_user_without_cache(world: FakeWorld) -> None:
    summary, continuation = invoke(world, load_event("schedule_missing.json"))

    assert summary["enqueued"] == 1200
    assert summary["scanned"] == 1200
    assert summary["cursor"] is None
    assert continuation.requests == []
    assert enqueued_ids(world) == list(range(1, 1201))


def test_invalid_input_is_answered_not_raised_and_enqueues_nothing(world: FakeWorld) -> None:
    summary, _ = invoke(world, load_event("schedule_invalid.json"))

    assert summary["error"] == "invalid_input"
    assert "mode" in summary["message"]
    assert world.queue.messages == []


def test_near_time_limit_hands_the_cursor_on_and_continuation_finishes(world: FakeWorld) -> None:
    # Checked after every page of 500: time left after the first, nearly none after the second.
    context = FakeLambdaContext(remaining_ms=[300_000, 10_000])
    summary, continuation = invoke(world, load_event("schedule_missing.json"), context)

    assert summary["continued"] is True
    assert summary["cursor"] == 1000
    assert continuation.requests == [{"mode": "missing", "cursor": 1000, "run_id": summary["run_id"]}]

    final, again = invoke(world, continuation.requests[0])

    assert final["cursor"] is None
    assert final["enqueued"] == 1200
    assert again.requests == []
    assert enqueued_ids(world) == list(range(1, 1201))


def test_retry_of_a_finished_run_enqueues_nobody_twice(world: FakeWorld) -> None:
    first, _ = invoke(world, load_event("schedule_missing.json"))
    retry, _ = invoke(world, load_event("schedule_missing.json"))

    assert first["enqueued"] == 1200
    assert retry["already_done"] is True
    assert len(world.queue.messages) == 1200


def test_stale_mode_with_no_caches_enqueues_nothing(world: FakeWorld) -> None:
    summary, _ = invoke(world, load_event("schedule_stale.json"))

    assert summary["enqueued"] == 0
    assert summary["run_id"] == "stale:2024-06-15T04:00:00Z"


def test_retry_after_a_crash_resumes_from_recorded_progress(world: FakeWorld) -> None:
    world.queue.fail_after = 700  # the queue breaks during the second page
    with pytest.raises(handler.BackfillFailed) as raised:
        invoke(world, load_event("schedule_missing.json"))
    assert "StoreError" in str(raised.value)
    assert raised.value.__cause__ is None  # no driver detail or stack of ours reaches EventBridge
    world.queue.fail_after = None

    summary, _ = invoke(world, load_event("schedule_missing.json"))

    assert summary["cursor"] is None
    ids = enqueued_ids(world)
    assert sorted(set(ids)) == list(range(1, 1201))
    # Only the page that was interrupted is sent again (at-least-once inside that page).
    assert len(ids) - len(set(ids)) == 200


def test_due_mode_enqueues_the_users_whose_next_sync_passed(world: FakeWorld) -> None:
    now = int(world.clock.now())
    for uid, at in ((3, now - 60), (4, now + 60), (5, now - 1)):
        world.cache.put({"user_id": uid, "timestamp": now - 3600, "passes": [], "next_sync_at": at})

    summary, _ = invoke(world, load_event("schedule_due.json"))

    assert sorted(enqueued_ids(world)) == [3, 5]
    assert summary["enqueued"] == 2


def test_prune_mode_reports_what_it_deleted(world: FakeWorld, capsys: pytest.CaptureFixture[str]) -> None:
    world.cache.log["old"] = {"_id": "old", "user_id": 1, "timestamp": 0, "uuid": "p"}

    summary, _ = invoke(world, load_event("schedule_prune.json"))

    assert summary["pruned"] == 1
    assert "ChangeLogPruned" in capsys.readouterr().out


def test_every_run_publishes_its_heartbeat_even_when_nothing_is_due(
    world: FakeWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    invoke(world, load_event("schedule_due.json"))

    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [document["BackfillScanned"] for document in documents] == [[0.0]]


def test_without_an_update_queue_the_run_fails_with_a_clear_answer() -> None:
    world = FakeWorld(env={"UPDATE_QUEUE_URL": ""})
    services = build_services(
        world.settings,
        tokens=world.tokens,
        source=world.source,
        cache=world.cache,
        clock=world.clock,
        runs=world.runs,
    )

    summary = handler.lambda_handler(
        load_event("schedule_due.json"),
        FakeLambdaContext(),
        services=services,
        continuation=RecordingContinuation(),
    )

    assert summary["error"] == "failed"
    assert "UPDATE_QUEUE_URL" in summary["message"]
