"""The day-pass rule in America/Chicago (midnight, both DST days) and the effective status (contract §6)."""

# The en dash and typographic quotes are deliberate: non-ASCII text Bytemark really sends.
# ruff: noqa: RUF001

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import bytemark_cache
from bytemark_cache.domain.expiry import day_pass_expiration, effective_status, is_day_pass
from bytemark_cache.domain.passes import wrap_pass


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("first_use", "expires"),
    [
        # contract §6 examples.
        ("2024-06-15T04:30:00Z", "2024-06-15T04:59:59Z"),
        ("2024-03-10T08:00:00Z", "2024-03-11T04:59:59Z"),  # spring forward: a 23-hour local day
        ("2024-11-03T04:30:00Z", "2024-11-03T04:59:59Z"),  # 23:30 CDT Nov 2, the night before fall back
        # Across local midnight: 00:30 CDT is already the next local day.
        ("2024-06-15T05:30:00Z", "2024-06-16T04:59:59Z"),
        ("2024-06-15T04:59:59Z", "2024-06-15T04:59:59Z"),
        ("2024-06-15T05:00:00Z", "2024-06-16T04:59:59Z"),
        # Spring forward day: before the jump (CST) and after it (CDT), same local day.
        ("2024-03-10T05:30:00Z", "2024-03-10T05:59:59Z"),  # 23:30 CST Mar 9
        ("2024-03-10T07:30:00Z", "2024-03-11T04:59:59Z"),  # 01:30 CST Mar 10
        # Fall back day: a 25-hour local day that ends in CST.
        ("2024-11-03T06:30:00Z", "2024-11-04T05:59:59Z"),  # 01:30 CDT, first 01:30
        ("2024-11-03T07:30:00Z", "2024-11-04T05:59:59Z"),  # 01:30 CST, second 01:30
        ("2024-11-03T12:00:00Z", "2024-11-04T05:59:59Z"),
    ],
)
def test_day_pass_expiration_in_chicago(first_use: str, expires: str) -> None:
    result = day_pass_expiration(utc(first_use))
    assert result == utc(expires)
    assert result.utcoffset() == timedelta(0)
    assert day_pass_expiration(first_use) == utc(expires)


def test_day_pass_expiration_public_api_and_string_formats() -> None:
    assert bytemark_cache.day_pass_expiration is day_pass_expiration
    expected = utc("2024-06-15T04:59:59Z")
    assert day_pass_expiration("2024-06-15T04:30:00.000Z") == expected
    assert day_pass_expiration("2024-06-14T23:30:00-05:00") == expected
    # A naive datetime is Bytemark's UTC.
    assert day_pass_expiration(datetime(2024, 6, 15, 4, 30)) == expected


def test_day_pass_expiration_other_time_zone() -> None:
    assert day_pass_expiration("2024-06-15T21:30:00Z", tz="Europe/Berlin") == utc("2024-06-15T21:59:59Z")
    assert day_pass_expiration("2024-06-15T22:30:00Z", tz="Europe/Berlin") == utc("2024-06-16T21:59:59Z")


@pytest.mark.parametrize("bad", ["", "not a time"])
def test_day_pass_expiration_rejects_unusable_text(bad: str) -> None:
    with pytest.raises(ValueError, match=r"first_use is empty|ISO-8601"):
        day_pass_expiration(bad)


@pytest.mark.parametrize(
    ("label_name", "label", "expected"),
    [
        ("Local Day Pass – Adult", "Day Pass", True),
        ("LOCAL DAY PASS", "Day Pass", True),
        ("local day pass", "DAY PASS", True),
        ("Local Single Ride", "Day Pass", False),
        ("Local 3-Day Pass", "3-Day", True),
        ("Day Pass", "Day Pass", True),
        ("Adult Day Pass (reduced)", "Day Pass", True),
        pytest.param("Regional 7-Day Pass", "Day Pass", False, id="a 7-day pass is valid seven days"),
        pytest.param("Holiday Pass", "Day Pass", False, id="not inside a longer word"),
        pytest.param("Day Passenger Card", "Day Pass", False, id="nor at the start of one"),
        pytest.param("Regional 1-Day Pass", "1-Day Pass", True, id="an agency's own label"),
        pytest.param("Regional 31-Day Pass", "1-Day Pass", False, id="not the tail of another count"),
        pytest.param("Local Day.Pass", "Day.Pass", True, id="the label is text, not a pattern"),
        pytest.param("Local DayXPass", "Day.Pass", False, id="a dot in the label is a dot"),
        (None, "Day Pass", False),
        (42, "Day Pass", False),
        ("Local Day Pass", "", False),
    ],
)
def test_is_day_pass(label_name: Any, label: str, expected: bool) -> None:
    assert is_day_pass({"label_name": label_name}, label) is expected


def _pass(status: str, **fields: Any) -> dict[str, Any]:
    base = {
        "uuid": "p-1",
        "status": status,
        "first_use": None,
        "expiration": None,
        "label_name": "Local Single Ride",
    }
    return {**base, **fields}


NOW = utc("2024-06-15T12:00:00Z")


@pytest.mark.parametrize(
    ("pass_", "expected"),
    [
        (_pass("USABLE"), "USABLE"),
        (_pass("USABLE", first_use="2024-06-15T10:00:00Z"), "USING"),
        (_pass("USABLE", first_use="2024-06-15T10:00:00.000Z", expiration="2024-06-16T10:00:00Z"), "USING"),
        (_pass("USING", first_use="2024-06-10T10:00:00Z", expiration="2024-06-15T11:59:59Z"), "EXPIRED"),
        (_pass("USING", first_use="2024-06-10T10:00:00Z", expiration="2024-06-15T11:59:59.999Z"), "EXPIRED"),
        (_pass("USING", expiration="2024-06-15T06:59:59-05:00"), "EXPIRED"),
        (_pass("USING", expiration="2024-06-15T12:00:00Z"), "USING"),  # at the instant, not yet past it
        (_pass("USABLE", expiration="2024-06-01T00:00:00Z"), "EXPIRED"),
        (_pass("USABLE", expiration=""), "USABLE"),
        (_pass("USABLE", first_use="2024-06-15T10:00:00Z", expiration=""), "USING"),
        (_pass("USABLE", first_use="", expiration=""), "USABLE"),
        (
            _pass("USES_GONE", first_use="2024-06-01T10:00:00Z", expiration="2024-06-02T00:00:00Z"),
            "USES_GONE",
        ),
        (_pass("EXPIRED"), "EXPIRED"),
        (_pass("EXPIRED", expiration="2030-01-01T00:00:00Z"), "EXPIRED"),
        (_pass("USABLE", first_use="garbage", expiration="garbage"), "USABLE"),
        # Day passes: first use yesterday (local) is over, first use this morning (local) is running.
        (_pass("USABLE", label_name="Local Day Pass", first_use="2024-06-14T15:00:00Z"), "EXPIRED"),
        (_pass("USING", label_name="Local Day Pass", first_use="2024-06-14T15:00:00Z"), "EXPIRED"),
        (_pass("USABLE", label_name="Local Day Pass", first_use="2024-06-15T11:00:00Z"), "USING"),
        # The day-pass end wins over a later Bytemark expiration.
        (
            _pass(
                "USING",
                label_name="Local Day Pass",
                first_use="2024-06-14T15:00:00Z",
                expiration="2024-07-01T00:00:00Z",
            ),
            "EXPIRED",
        ),
        # A non-day pass activated long ago with no expiration is still in use.
        (_pass("USING", first_use="2024-01-01T00:00:00Z"), "USING"),
    ],
)
def test_effective_status_of_a_pass(pass_: dict[str, Any], expected: str) -> None:
    before = copy.deepcopy(pass_)
    assert effective_status(pass_, NOW) == expected
    assert pass_ == before


def test_effective_status_of_an_element_uses_wrapper_status_and_never_mutates() -> None:
    payload = _pass("USABLE", label_name="Local Day Pass")
    element = wrap_pass(payload, 1)
    before = copy.deepcopy(element)
    assert effective_status(element, NOW) == "USABLE"
    # A local activation sets only the wrapper status; the payload and its hash stay Bytemark's.
    element["status"] = "USING"
    assert effective_status(element, NOW) == "USING"
    before["status"] = "USING"
    assert element == before


def test_effective_status_day_pass_in_chicago_across_midnight_and_dst() -> None:
    day_pass = _pass("USABLE", label_name="Local Day Pass", first_use="2024-03-10T07:30:00Z")
    # 23-hour local day: valid until 23:59:59 CDT (04:59:59Z), not 24 h after local midnight.
    assert effective_status(day_pass, utc("2024-03-11T04:59:59Z")) == "USING"
    assert effective_status(day_pass, utc("2024-03-11T05:00:00Z")) == "EXPIRED"
    fall_back = _pass("USABLE", label_name="Local Day Pass", first_use="2024-11-03T07:30:00Z")
    assert effective_status(fall_back, utc("2024-11-04T05:59:59Z")) == "USING"
    assert effective_status(fall_back, utc("2024-11-04T06:00:00Z")) == "EXPIRED"


def test_effective_status_configurable_label_and_zone() -> None:
    pass_ = _pass("USABLE", label_name="Tageskarte", first_use="2024-06-15T21:30:00Z")
    at = utc("2024-06-15T22:30:00Z")
    assert effective_status(pass_, at, day_pass_label="Tageskarte", tz="Europe/Berlin") == "EXPIRED"
    assert effective_status(pass_, at, tz="Europe/Berlin") == "USING"


def test_effective_status_naive_now_is_utc() -> None:
    pass_ = _pass("USING", expiration="2024-06-15T11:59:59Z")
    assert effective_status(pass_, datetime(2024, 6, 15, 12, 0)) == "EXPIRED"
    assert effective_status(pass_, datetime(2024, 6, 15, 11, 0, tzinfo=UTC)) == "USING"
