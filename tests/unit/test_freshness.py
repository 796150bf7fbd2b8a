"""The freshness policy pinned with explicit times: each rule of ``next_sync_at`` and ``read_action``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bytemark_cache.domain.freshness import (
    ACTIVE_INTERVAL_SECONDS,
    ACTIVE_WINDOW_SECONDS,
    DORMANT_FLOOR_SECONDS,
    RIDE_TICKET_VALIDITY_SECONDS,
    RIDING_INTERVAL_SECONDS,
    TRANSITION_GRACE_SECONDS,
    FreshnessPolicy,
)
from bytemark_cache.domain.passes import wrap_pass
from tests.fakes import make_pass

POLICY = FreshnessPolicy(ttl_seconds=300, day_pass_label="Day Pass", timezone="America/Chicago")


def at(text: str) -> int:
    """Unix seconds of an ISO-8601 UTC time."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


NOW = at("2024-06-15T15:00:00")  # 10:00 CDT


def element(**fields: Any) -> dict[str, Any]:
    """A cache element as a sync writes it (the policy reads elements, or bare passes)."""
    return wrap_pass(make_pass("p", time_created="2024-06-01T10:00:00Z", **fields), NOW - 3600)


def usable(expiration: str | None = None) -> dict[str, Any]:
    return element(expiration=expiration)


def riding(expiration: str | None = None) -> dict[str, Any]:
    """A USABLE single ride with a first use: effectively USING, a ride ticket (no end, or a short one)."""
    return element(first_use="2024-06-15T14:00:00Z", expiration=expiration)


def period_pass(first_use: str = "2024-06-15T14:00:00Z", days: int = 7) -> dict[str, Any]:
    """A 7-day pass in use: rides consume nothing until it expires."""
    end = datetime.fromisoformat(first_use.replace("Z", "+00:00")).timestamp() + days * 86400
    expiration = datetime.fromtimestamp(end, UTC).isoformat().replace("+00:00", "Z")
    return element(label_name="Regional 7-Day Pass", first_use=first_use, expiration=expiration)


def day_pass(first_use: str, status: str = "USABLE") -> dict[str, Any]:
    return element(label_name="Regional Day Pass", first_use=first_use, status=status)


def test_the_constants_are_the_documented_ones() -> None:
    assert TRANSITION_GRACE_SECONDS == 120
    assert RIDING_INTERVAL_SECONDS == 30 * 60
    assert RIDE_TICKET_VALIDITY_SECONDS == 6 * 3600
    assert ACTIVE_WINDOW_SECONDS == 24 * 3600
    assert ACTIVE_INTERVAL_SECONDS == 24 * 3600
    assert DORMANT_FLOOR_SECONDS == 48 * 3600


# --- next_sync_at ---------------------------------------------------------------------------------


def test_dormant_floor_without_passes_or_activity() -> None:
    assert POLICY.next_sync_at([], now=NOW, active_at=None) == NOW + DORMANT_FLOOR_SECONDS


def test_dormant_floor_with_passes_that_change_by_no_clock() -> None:
    passes = [
        usable(),
        element(status="USES_GONE"),
        element(status="EXPIRED", expiration="2024-06-14T00:00:00Z"),
    ]
    assert POLICY.next_sync_at(passes, now=NOW, active_at=None) == NOW + DORMANT_FLOOR_SECONDS


def test_a_usable_pass_expiring_is_synced_just_after_its_expiration() -> None:
    passes = [usable(expiration="2024-06-15T21:00:00Z")]
    assert POLICY.next_sync_at(passes, now=NOW, active_at=None) == at("2024-06-15T21:00:00") + 120


def test_a_bare_pass_is_read_like_an_element() -> None:
    bare = make_pass("p", expiration="2024-06-15T21:00:00Z")
    assert POLICY.next_sync_at([bare], now=NOW, active_at=None) == at("2024-06-15T21:00:00") + 120


def test_the_earliest_transition_of_several_passes_wins() -> None:
    passes = [usable("2024-06-16T10:00:00Z"), usable("2024-06-15T18:30:00Z"), usable("2024-06-15T20:00:00Z")]
    assert POLICY.next_sync_at(passes, now=NOW, active_at=None) == at("2024-06-15T18:30:00") + 120


def test_an_expiration_longer_ago_than_the_grace_is_no_transition() -> None:
    for expiration in ("2024-06-15T14:57:59Z", "2024-06-15T14:58:00Z"):  # 121 s, 120 s before NOW
        assert (
            POLICY.next_sync_at([usable(expiration)], now=NOW, active_at=None) == NOW + DORMANT_FLOOR_SECONDS
        )


def test_an_expiration_within_the_grace_just_passed_is_still_synced_after_it() -> None:
    # Bytemark may not have applied it yet: sync at expiration + grace, which is still ahead.
    assert POLICY.next_sync_at([usable("2024-06-15T14:59:30Z")], now=NOW, active_at=None) == NOW - 30 + 120
    assert POLICY.next_sync_at([usable("2024-06-15T15:00:00Z")], now=NOW, active_at=None) == NOW + 120
    # One second later is a future transition.
    assert POLICY.next_sync_at([usable("2024-06-15T15:00:01Z")], now=NOW, active_at=None) == NOW + 1 + 120


def test_an_unreadable_expiration_is_ignored() -> None:
    assert POLICY.next_sync_at([usable("soon")], now=NOW, active_at=None) == NOW + DORMANT_FLOOR_SECONDS


def test_a_ride_ticket_in_use_is_synced_every_riding_interval() -> None:
    # First used 14:00, valid 90 minutes: its uses go at the validators.
    passes = [riding(expiration="2024-06-15T15:30:00Z")]
    assert POLICY.next_sync_at(passes, now=NOW, active_at=None) == NOW + RIDING_INTERVAL_SECONDS
    # No end known counts as a ride ticket too: it may be consumed.
    assert POLICY.next_sync_at([riding()], now=NOW, active_at=None) == NOW + RIDING_INTERVAL_SECONDS


def test_a_period_pass_in_use_is_synced_at_its_expiration_not_every_riding_interval() -> None:
    passes = [period_pass()]  # expires 2024-06-22T14:00Z
    assert POLICY.next_sync_at(passes, now=NOW, active_at=None) == NOW + DORMANT_FLOOR_SECONDS
    late = at("2024-06-22T13:00:00")
    assert POLICY.next_sync_at(passes, now=late, active_at=None) == at("2024-06-22T14:00:00") + 120


def test_a_day_pass_in_use_is_no_ride_ticket() -> None:
    # Its end of day (04:59:59Z) comes first; no half-hourly syncs until then.
    passes = [day_pass("2024-06-15T14:00:00Z")]
    assert POLICY.next_sync_at(passes, now=NOW, active_at=None) == at("2024-06-16T04:59:59") + 120


@pytest.mark.parametrize(
    ("expiration", "ride_ticket"),
    [("2024-06-15T20:00:00Z", True), ("2024-06-15T20:00:01Z", False)],  # 6 h after first use, and 1 s more
)
def test_the_ride_ticket_validity_boundary(expiration: str, ride_ticket: bool) -> None:
    passes = [riding(expiration=expiration)]
    expected = NOW + RIDING_INTERVAL_SECONDS if ride_ticket else at(expiration.removesuffix("Z")) + 120
    assert POLICY.next_sync_at(passes, now=NOW, active_at=None) == expected
    action = POLICY.read_action(passes, synced_at=NOW - 3600, now=NOW)
    assert action == ("sync_inline" if ride_ticket else "refresh_behind")


def test_a_local_activation_counts_as_in_use() -> None:
    activated = {**usable(), "status": "USING"}  # the wrapper says USING, the payload still USABLE
    assert POLICY.next_sync_at([activated], now=NOW, active_at=None) == NOW + RIDING_INTERVAL_SECONDS


def test_a_pass_in_use_expiring_before_the_riding_interval_syncs_at_its_expiration() -> None:
    passes = [riding(expiration="2024-06-15T15:10:00Z")]
    assert POLICY.next_sync_at(passes, now=NOW, active_at=None) == at("2024-06-15T15:10:00") + 120


def test_a_day_pass_is_synced_after_the_end_of_its_local_day() -> None:
    # First used 10:00 CDT on June 15; it ends 23:59:59 CDT = 04:59:59Z on June 16.
    passes = [day_pass("2024-06-15T15:00:00Z")]
    for now in (NOW, at("2024-06-16T04:45:00")):
        assert POLICY.next_sync_at(passes, now=now, active_at=None) == at("2024-06-16T04:59:59") + 120


def test_a_7_day_pass_is_no_day_pass() -> None:
    # "Day Pass" is inside "Regional 7-Day Pass" only as the tail of a count: it is valid seven days.
    assert POLICY.next_transition([period_pass()], NOW) == at("2024-06-22T14:00:00")


@pytest.mark.parametrize(
    ("first_use", "day_end"),
    [
        pytest.param("2024-03-10T07:30:00Z", "2024-03-11T04:59:59", id="spring forward, 01:30 CST"),
        pytest.param("2024-03-10T15:00:00Z", "2024-03-11T04:59:59", id="spring forward, 10:00 CDT"),
        pytest.param("2024-11-03T06:30:00Z", "2024-11-04T05:59:59", id="fall back, first 01:30 CDT"),
        pytest.param("2024-11-03T07:30:00Z", "2024-11-04T05:59:59", id="fall back, second 01:30 CST"),
        pytest.param("2024-11-03T16:00:00Z", "2024-11-04T05:59:59", id="fall back, 10:00 CST"),
        pytest.param("2024-06-15T04:30:00Z", "2024-06-15T04:59:59", id="23:30 CDT: the local day is June 14"),
    ],
)
def test_a_day_pass_ends_at_local_midnight_on_dst_days(first_use: str, day_end: str) -> None:
    # USES_GONE: the pass is not in use, so only its end of day counts (and the floor).
    passes = [day_pass(first_use, status="USES_GONE")]
    just_after_first_use = at(first_use.removesuffix("Z")) + 1
    expected = min(at(day_end) + 120, just_after_first_use + DORMANT_FLOOR_SECONDS)
    assert POLICY.next_sync_at(passes, now=just_after_first_use, active_at=None) == expected
    assert POLICY.next_transition(passes, just_after_first_use) == at(day_end)


def test_a_day_pass_with_an_earlier_expiration_transitions_at_both() -> None:
    passes = [
        element(label_name="Day Pass", first_use="2024-06-15T14:00:00Z", expiration="2024-06-15T16:00:00Z")
    ]
    assert POLICY.next_transition(passes, NOW) == at("2024-06-15T16:00:00")
    assert POLICY.next_transition(passes, at("2024-06-15T16:00:00")) == at("2024-06-16T04:59:59")


def test_the_label_of_another_product_is_no_day_pass() -> None:
    passes = [element(label_name="Local Single Ride", first_use="2024-06-15T14:00:00Z", status="USES_GONE")]
    assert POLICY.next_transition(passes, NOW) is None


def test_an_active_rider_is_synced_every_active_interval() -> None:
    assert POLICY.next_sync_at([], now=NOW, active_at=NOW - 3600) == NOW + ACTIVE_INTERVAL_SECONDS
    assert POLICY.next_sync_at([], now=NOW, active_at=NOW) == NOW + ACTIVE_INTERVAL_SECONDS


def test_the_activity_window_ends_after_exactly_a_day() -> None:
    inside = NOW - ACTIVE_WINDOW_SECONDS + 1
    assert POLICY.next_sync_at([], now=NOW, active_at=inside) == NOW + ACTIVE_INTERVAL_SECONDS
    edge = NOW - ACTIVE_WINDOW_SECONDS
    assert POLICY.next_sync_at([], now=NOW, active_at=edge) == NOW + DORMANT_FLOOR_SECONDS


def test_the_minimum_of_every_rule_applies() -> None:
    expiring = usable("2024-06-15T17:00:00Z")  # +2 h: before the active interval
    assert POLICY.next_sync_at([expiring], now=NOW, active_at=NOW) == at("2024-06-15T17:00:00") + 120
    later = usable("2024-06-16T21:00:00Z")  # +30 h: after the active interval
    assert POLICY.next_sync_at([later], now=NOW, active_at=NOW) == NOW + ACTIVE_INTERVAL_SECONDS
    assert POLICY.next_sync_at([later, riding()], now=NOW, active_at=NOW) == NOW + RIDING_INTERVAL_SECONDS
    far = usable("2024-06-20T00:00:00Z")
    assert POLICY.next_sync_at([far], now=NOW, active_at=None) == NOW + DORMANT_FLOOR_SECONDS


def test_an_expired_pass_in_use_no_longer_counts_as_in_use() -> None:
    over = riding(expiration="2024-06-15T14:30:00Z")  # first used, but expired 30 min ago
    assert POLICY.next_sync_at([over], now=NOW, active_at=None) == NOW + DORMANT_FLOOR_SECONDS


# --- read_action ----------------------------------------------------------------------------------


def test_a_cache_younger_than_the_ttl_is_served() -> None:
    assert POLICY.read_action([], synced_at=NOW - 299, now=NOW) == "serve"
    # Even when a pass is in use or a transition passed: inside the TTL nothing is synced.
    passes = [riding(), usable("2024-06-15T14:59:30Z")]
    assert POLICY.read_action(passes, synced_at=NOW - 299, now=NOW) == "serve"


def test_the_ttl_boundary_is_stale() -> None:
    assert POLICY.read_action([], synced_at=NOW - 300, now=NOW) == "refresh_behind"


def test_a_sync_time_in_the_future_is_served() -> None:
    assert POLICY.read_action([], synced_at=NOW + 60, now=NOW) == "serve"


def test_an_unknown_sync_time_syncs_first() -> None:
    assert POLICY.read_action([], synced_at=None, now=NOW) == "sync_inline"


def test_a_stale_cache_without_a_reason_is_refreshed_behind_the_rider() -> None:
    passes = [usable("2024-06-16T00:00:00Z"), element(status="USES_GONE")]
    assert POLICY.read_action(passes, synced_at=NOW - 3600, now=NOW) == "refresh_behind"


def test_a_transition_since_the_sync_is_refreshed_behind_the_rider() -> None:
    # The clock alone shows the pass EXPIRED (effective_status); the queued refresh moves it to the history.
    synced = NOW - 3600
    for expiration in ("2024-06-15T14:30:00Z", "2024-06-15T15:00:00Z", "2024-06-15T15:00:01Z"):
        assert POLICY.read_action([usable(expiration)], synced_at=synced, now=NOW) == "refresh_behind"
    ended_day_pass = [day_pass("2024-06-15T15:00:00Z", status="USES_GONE")]  # ends 04:59:59Z on June 16
    assert (
        POLICY.read_action(ended_day_pass, synced_at=at("2024-06-16T04:00:00"), now=at("2024-06-16T05:00:00"))
        == "refresh_behind"
    )


def test_a_ride_ticket_in_use_syncs_first() -> None:
    assert POLICY.read_action([riding()], synced_at=NOW - 3600, now=NOW) == "sync_inline"
    activated = {**usable(), "status": "USING"}  # a local activation, not yet confirmed: no first use
    assert POLICY.read_action([activated], synced_at=NOW - 3600, now=NOW) == "sync_inline"


def test_a_period_or_day_pass_in_use_is_refreshed_behind_the_rider() -> None:
    for in_use in (period_pass(), day_pass("2024-06-15T14:00:00Z")):
        assert POLICY.read_action([in_use], synced_at=NOW - 3600, now=NOW) == "refresh_behind"


def test_a_ride_ticket_no_longer_in_use_is_refreshed_behind_the_rider() -> None:
    used_up = element(first_use="2024-06-15T14:00:00Z", status="USES_GONE")
    expired = riding(expiration="2024-06-15T14:30:00Z")
    assert POLICY.read_action([used_up, expired], synced_at=NOW - 3600, now=NOW) == "refresh_behind"


def test_read_action_takes_any_iterable_once() -> None:
    passes = iter([usable("2024-06-16T00:00:00Z"), riding()])
    assert POLICY.read_action(passes, synced_at=NOW - 3600, now=NOW) == "sync_inline"


def test_other_ttl_label_and_zone() -> None:
    policy = FreshnessPolicy(ttl_seconds=60, day_pass_label="24h", timezone="America/New_York")
    assert policy.read_action([], synced_at=NOW - 59, now=NOW) == "serve"
    assert policy.read_action([], synced_at=NOW - 60, now=NOW) == "refresh_behind"
    pass_ = element(label_name="Metro 24H", first_use="2024-06-15T14:00:00Z", status="USES_GONE")
    assert policy.next_transition([pass_], NOW) == at("2024-06-16T03:59:59")  # 23:59:59 EDT


def test_next_sync_at_takes_any_iterable_once() -> None:
    # The transitions are read first, then the in-use check: a one-shot iterable must serve both.
    passes = iter([usable("2024-06-16T00:00:00Z"), riding()])
    assert POLICY.next_sync_at(passes, now=NOW, active_at=None) == NOW + RIDING_INTERVAL_SECONDS
