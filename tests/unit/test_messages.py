"""Validation of update-queue bodies and back-fill input."""

from __future__ import annotations

import json

import pytest

from bytemark_cache.domain.messages import BackfillRequest, parse_backfill_request, parse_update_message
from bytemark_cache.domain.model import UpdateMessage
from bytemark_cache.errors import InvalidInput


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"user_id": 42, "reason": "purchase"}', UpdateMessage(42, "purchase")),
        (
            '{"user_id": 42, "reason": "activation", "pass_uuid": "p-1"}',
            UpdateMessage(42, "activation", "p-1"),
        ),
        ('{"user_id": 1, "reason": "backfill", "pass_uuid": null}', UpdateMessage(1, "backfill")),
        ('{"reason": "manual", "user_id": 2147483647}', UpdateMessage(2147483647, "manual")),
    ],
)
def test_valid_bodies(body: str, expected: UpdateMessage) -> None:
    assert parse_update_message(body) == expected


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("{not json", "not JSON"),
        ("[]", "JSON object"),
        ('{"user_id": "42", "reason": "purchase"}', "user_id"),
        ('{"user_id": true, "reason": "purchase"}', "user_id"),
        ('{"user_id": 0, "reason": "purchase"}', "user_id"),
        ('{"user_id": 2147483648, "reason": "purchase"}', "user_id"),
        ('{"user_id": 42.0, "reason": "purchase"}', "user_id"),
        ('{"user_id": 42, "reason": "refund"}', "reason"),
        ('{"user_id": 42}', "reason"),
        ('{"user_id": 42, "reason": "activation", "pass_uuid": ""}', "pass_uuid"),
        ('{"user_id": 42, "reason": "activation", "pass_uuid": 5}', "pass_uuid"),
        ('{"user_id": 42, "reason": "purchase", "token": "x"}', "unknown fields: token"),
        (json.dumps({"user_id": 42, "reason": "purchase", "pass_uuid": "x" * 5000}), "larger than"),
    ],
)
def test_malformed_bodies_name_the_problem(body: str, complaint: str) -> None:
    with pytest.raises(InvalidInput, match=complaint):
        parse_update_message(body)


def test_backfill_input() -> None:
    assert parse_backfill_request({"mode": "missing", "cursor": None}) == BackfillRequest(
        "missing", None, None
    )
    assert parse_backfill_request({"mode": "stale", "cursor": 10, "run_id": "r"}) == BackfillRequest(
        "stale", 10, "r"
    )


@pytest.mark.parametrize(
    "event",
    [
        None,
        [],
        {},
        {"mode": "all"},
        {"mode": "missing", "cursor": "10"},
        {"mode": "missing", "cursor": -1},
        {"mode": "missing", "cursor": True},
        {"mode": "missing", "run_id": ""},
        {"mode": "missing", "extra": 1},
    ],
)
def test_bad_backfill_input(event: object) -> None:
    with pytest.raises(InvalidInput):
        parse_backfill_request(event)
