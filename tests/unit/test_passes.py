"""Pass values: Bytemark time parsing, validation, wrapping, creation order and duplicate collapsing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bytemark_cache.domain.hashing import payload_hash
from bytemark_cache.domain.passes import (
    collapse_duplicates,
    creation_key,
    parse_bytemark_time,
    validate_pass,
    wrap_pass,
)
from bytemark_cache.errors import UpstreamError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-06-15T04:30:00.000Z", datetime(2024, 6, 15, 4, 30, tzinfo=UTC)),
        ("2024-06-15T04:30:00Z", datetime(2024, 6, 15, 4, 30, tzinfo=UTC)),
        ("2024-06-15T04:30:00.123Z", datetime(2024, 6, 15, 4, 30, 0, 123000, tzinfo=UTC)),
        ("2024-06-14T23:30:00-05:00", datetime(2024, 6, 15, 4, 30, tzinfo=UTC)),
        ("2024-06-15T06:30:00.000+02:00", datetime(2024, 6, 15, 4, 30, tzinfo=UTC)),
        ("2024-06-15T04:30:00", datetime(2024, 6, 15, 4, 30, tzinfo=UTC)),
    ],
)
def test_parse_bytemark_time_formats(text: str, expected: datetime) -> None:
    parsed = parse_bytemark_time(text)
    assert parsed == expected
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_parse_bytemark_time_empty_is_none(empty: str | None) -> None:
    assert parse_bytemark_time(empty) is None


@pytest.mark.parametrize(
    "garbage", ["yesterday", "2024-13-01T00:00:00Z", "2024-06-15T25:00:00Z", 1718425800, {}]
)
def test_parse_bytemark_time_garbage_raises(garbage: object) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_bytemark_time(garbage)


def test_wrap_pass_builds_the_spec_element() -> None:
    pass_ = json.loads('{"uuid":"p-1","status":"USABLE","price":2.0,"extra":{"k":[1,2]}}')
    element = wrap_pass(pass_, 1718425800)
    assert list(element) == [
        "pass_uuid",
        "timestamp",
        "status",
        "free_ticket_status",
        "payload",
        "payload_hash",
    ]
    assert element["pass_uuid"] == "p-1"
    assert element["timestamp"] == 1718425800
    assert element["status"] == "USABLE"
    assert element["free_ticket_status"] == 0
    assert element["payload"] is pass_
    assert element["payload_hash"] == payload_hash(pass_)
    assert pass_ == {"uuid": "p-1", "status": "USABLE", "price": 2.0, "extra": {"k": [1, 2]}}


def test_wrap_pass_uses_a_given_hash() -> None:
    element = wrap_pass({"uuid": "p-1", "status": "USING"}, 5, payload_hash="0" * 32)
    assert element["payload_hash"] == "0" * 32


def test_validate_pass_returns_the_same_object() -> None:
    pass_ = {"uuid": "p-1", "status": "USABLE", "anything": [1]}
    assert validate_pass(pass_) is pass_


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "p-1",
        ["uuid", "status"],
        {"status": "USABLE"},
        {"uuid": "", "status": "USABLE"},
        {"uuid": 7, "status": "USABLE"},
        {"uuid": "p-1"},
        {"uuid": "p-1", "status": None},
        {"uuid": "p-1", "status": ""},
    ],
)
def test_validate_pass_rejects_schema_breaks_as_permanent(bad: object) -> None:
    with pytest.raises(UpstreamError) as raised:
        validate_pass(bad)
    assert raised.value.transient is False


def _pass(uuid: str, created: Any = None, modified: Any = None, **extra: Any) -> dict[str, Any]:
    return {"uuid": uuid, "status": "USABLE", "time_created": created, "time_modified": modified, **extra}


def test_creation_key_orders_oldest_first_with_unparseable_first_and_uuid_ties() -> None:
    passes = [
        _pass("d", "2024-06-15T10:00:00Z"),
        _pass("c", "2024-06-15T04:30:00.000Z"),
        _pass("b", "2024-06-14T23:30:00-05:00"),  # the same instant as c
        _pass("z", "not a time"),
        _pass("y", None),
        _pass("a", "2024-06-15T04:30:00.001Z"),
        {"uuid": "x", "status": "USABLE"},
    ]
    ordered = [p["uuid"] for p in sorted(passes, key=creation_key)]
    assert ordered == ["x", "y", "z", "b", "c", "a", "d"]


def test_collapse_duplicates_keeps_latest_time_modified_in_either_order() -> None:
    older = _pass("p", modified="2024-06-15T04:30:00Z", v=1)
    newer = _pass("p", modified="2024-06-15T04:31:00.000Z", v=2)
    other = _pass("q", v=3)
    assert collapse_duplicates([older, other, newer]) == [newer, other]
    assert collapse_duplicates([newer, other, older]) == [newer, other]


def test_collapse_duplicates_tie_keeps_the_later_occurrence() -> None:
    first = _pass("p", modified="2024-06-15T04:30:00Z", v=1)
    second = _pass("p", modified="2024-06-15T04:30:00.000Z", v=2)
    assert collapse_duplicates([first, second]) == [second]
    no_time_a = _pass("n", v=1)
    no_time_b = _pass("n", v=2)
    assert collapse_duplicates([no_time_a, no_time_b]) == [no_time_b]


def test_collapse_duplicates_parseable_time_beats_missing_or_garbage() -> None:
    dated = _pass("p", modified="2020-01-01T00:00:00Z", v=1)
    garbage = _pass("p", modified="garbage", v=2)
    missing = _pass("p", v=3)
    assert collapse_duplicates([dated, garbage, missing]) == [dated]


def test_collapse_duplicates_without_duplicates_is_identity() -> None:
    passes = [_pass("a"), _pass("b"), _pass("c")]
    assert collapse_duplicates(passes) == passes
    assert collapse_duplicates([]) == []
