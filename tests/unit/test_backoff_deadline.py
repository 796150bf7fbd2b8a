"""Backoff with jitter and the call deadline: the two small rules every wait is bounded by."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from bytemark_cache.domain.backoff import (
    REDELIVERY_BASE_SECONDS,
    REDELIVERY_CAP_SECONDS,
    SQS_MAX_VISIBILITY_SECONDS,
    backoff_delay,
    redelivery_delay,
)
from bytemark_cache.domain.deadline import Deadline


class Lowest(random.Random):
    """Draws the lowest value ``uniform`` may return."""

    def uniform(self, a: float, b: float) -> float:
        return a


class Highest(random.Random):
    """Draws the highest value ``uniform`` may return."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --- backoff_delay --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(-5, 1.0), (-1, 1.0), (0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (50, 10.0), (5000, 10.0)],
)
def test_the_ceiling_doubles_from_base_up_to_cap(attempt: int, ceiling: float) -> None:
    assert backoff_delay(attempt, base=1, cap=10, rng=Highest()) == ceiling
    assert backoff_delay(attempt, base=1, cap=10, rng=Lowest(), floor=1.0) == ceiling


@pytest.mark.parametrize("floor", [0.0, 0.25, 0.5, 1.0])
def test_the_delay_is_uniform_between_floor_times_ceiling_and_the_ceiling(floor: float) -> None:
    rng = random.Random(7)
    for attempt in range(8):
        ceiling = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, base=0.5, cap=30, rng=rng, floor=floor) for _ in range(200)]
        assert all(floor * ceiling <= delay <= ceiling for delay in delays)
        if floor < 1.0:
            assert len(set(delays)) > 100  # jittered, not one value
    assert backoff_delay(3, base=0.5, cap=30, rng=Lowest(), floor=floor) == floor * 4.0


def test_full_jitter_can_be_zero() -> None:
    assert backoff_delay(0, base=1, cap=10, rng=Lowest()) == 0.0


def test_the_same_seed_gives_the_same_delays() -> None:
    first = [backoff_delay(n, base=1, cap=60, rng=random.Random(3)) for n in range(6)]
    again = [backoff_delay(n, base=1, cap=60, rng=random.Random(3)) for n in range(6)]
    assert first == again


@pytest.mark.parametrize("floor", [-0.01, 1.01, math.nan, math.inf])
def test_a_floor_outside_zero_to_one_is_refused(floor: float) -> None:
    with pytest.raises(ValueError, match="floor"):
        backoff_delay(0, base=1, cap=10, rng=random.Random(0), floor=floor)


# --- redelivery_delay -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("receive_count", "ceiling"),
    [(0, 60), (1, 60), (2, 120), (3, 240), (4, 480), (5, 960), (6, 1920), (7, 3840), (8, 7200), (10, 7200)],
)
def test_redelivery_doubles_from_a_minute_to_two_hours_with_equal_jitter(
    receive_count: int, ceiling: int
) -> None:
    assert redelivery_delay(receive_count, Highest()) == ceiling
    assert redelivery_delay(receive_count, Lowest()) == ceiling // 2
    rng = random.Random(receive_count)
    for _ in range(100):
        delay = redelivery_delay(receive_count, rng)
        assert isinstance(delay, int)
        assert ceiling // 2 <= delay <= ceiling


def test_redelivery_defaults_are_the_documented_settings() -> None:
    assert REDELIVERY_BASE_SECONDS == 60
    assert REDELIVERY_CAP_SECONDS == 2 * 3600
    assert SQS_MAX_VISIBILITY_SECONDS == 12 * 3600


def test_a_message_outlives_a_four_hour_outage_before_the_dead_letter_queue() -> None:
    # maxReceiveCount 10: a message is delayed after each of its first 10 receives.
    shortest = sum(redelivery_delay(count, Lowest()) for count in range(1, 11))
    longest = sum(redelivery_delay(count, Highest()) for count in range(1, 11))
    assert shortest >= 4 * 3600
    assert shortest * 2 == longest
    assert longest == (1 + 2 + 4 + 8 + 16 + 32 + 64 + 120 + 120 + 120) * 60


def test_redelivery_is_at_least_a_second_and_at_most_the_sqs_visibility_limit() -> None:
    assert redelivery_delay(1, Lowest(), base=0.1, cap=1) == 1
    assert redelivery_delay(20, Highest(), base=3600, cap=10 * 24 * 3600) == SQS_MAX_VISIBILITY_SECONDS


def test_redelivery_with_other_settings() -> None:
    assert redelivery_delay(3, Highest(), base=10, cap=1000) == 40
    assert redelivery_delay(3, Lowest(), base=10, cap=1000) == 20
    assert redelivery_delay(9, Highest(), base=10, cap=1000) == 1000


# --- Deadline -------------------------------------------------------------------------------------


def test_a_deadline_after_a_budget() -> None:
    deadline = Deadline.after(100.0, 30.0)
    assert deadline.at == 130.0
    assert deadline.remaining(100.0) == 30.0
    assert deadline.remaining(125.5) == 4.5
    assert not deadline.expired(129.999)


def test_a_deadline_is_over_at_its_instant_and_never_negative() -> None:
    deadline = Deadline.after(100.0, 30.0)
    assert deadline.expired(130.0)
    assert deadline.remaining(130.0) == 0.0
    assert deadline.remaining(500.0) == 0.0
    assert deadline.expired(500.0)


def test_a_negative_budget_is_already_over() -> None:
    deadline = Deadline.after(100.0, -1.0)
    assert deadline.expired(100.0)
    assert deadline.remaining(100.0) == 0.0
    assert deadline.cap(5.0, 100.0) == 0.0


def test_never_has_no_limit() -> None:
    never = Deadline.never()
    assert never.remaining(1e12) == math.inf
    assert not never.expired(1e12)
    assert never.cap(5.0, 1e12) == 5.0


def test_cap_is_the_step_timeout_bounded_by_what_is_left() -> None:
    deadline = Deadline.after(0.0, 10.0)
    assert deadline.cap(3.0, 0.0) == 3.0
    assert deadline.cap(3.0, 8.0) == 2.0
    assert deadline.cap(3.0, 11.0) == 0.0


def test_earlier_is_the_sooner_deadline() -> None:
    soon, late, never = Deadline(10.0), Deadline(20.0), Deadline.never()
    assert soon.earlier(late) is soon
    assert late.earlier(soon) is soon
    assert never.earlier(late) is late
    assert late.earlier(never) is late
    same = Deadline(10.0)
    assert soon.earlier(same) is soon  # a tie keeps the receiver


def test_a_deadline_cannot_be_moved() -> None:
    deadline = Deadline(10.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        deadline.at = 20.0  # type: ignore[misc]
