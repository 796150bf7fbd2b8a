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
        ('{"user_id": 7, "reason": "refresh"}', UpdateMessage(7, "refresh")),
        # Fields a producer adds later are ignored (forward compatible), whatever their value.
        ('{"user_id": 42, "reason": "purchase", "token": "x"}', UpdateMessage(42, "purchase")),
        (
            '{"user_id": 42, "reason": "purchase", "sent_at": 1, "trace": {"id": [1]}}',
            UpdateMessage(42, "purchase"),
        ),
        (
            '{"user_id": 42, "reason": "activation", "pass_uuid": "p", "version": 2}',
            UpdateMessage(42, "activation", "p"),
        ),
        (
            json.dumps({"user_id": 1, "reason": "manual", "pass_uuid": "u" * 128}),
            UpdateMessage(1, "manual", "u" * 128),
        ),
        (
            json.dumps({"user_id": 1, "reason": "manual", "pass_uuid": "día"}),
            UpdateMessage(1, "manual", "día"),
        ),
    ],
)
def test_valid_bodies(body: str, expected: UpdateMessage) -> None:
    assert parse_update_message(body) == expected


def test_a_message_round_trips_through_its_body() -> None:
    for message in (UpdateMessage(42, "purchase"), UpdateMessage(1, "activation", "p-1")):
        assert parse_update_message(json.dumps(message.to_body())) == message


def test_the_body_bound_counts_bytes() -> None:
    base = {"user_id": 42, "reason": "purchase", "pad": ""}
    room = 4096 - len(json.dumps(base).encode())
    assert parse_update_message(json.dumps({**base, "pad": "x" * room})) == UpdateMessage(42, "purchase")
    with pytest.raises(InvalidInput, match="larger than"):
        parse_update_message(json.dumps({**base, "pad": "x" * (room + 1)}))
    # Two bytes per character in UTF-8: half as many fit.
    with pytest.raises(InvalidInput, match="larger than"):
        parse_update_message(json.dumps({**base, "pad": "é" * (room // 2 + 1)}, ensure_ascii=False))


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
        ('{"user_id": 42, "reason": "activation", "pass_uuid": "   "}', "pass_uuid"),
        ('{"user_id": 42, "reason": "activation", "pass_uuid": ["p"]}', "pass_uuid"),
        (json.dumps({"user_id": 1, "reason": "manual", "pass_uuid": "u" * 129}), "pass_uuid"),
        ('{"user_id": -1, "reason": "purchase"}', "user_id"),
        ('{"user_id": null, "reason": "purchase"}', "user_id"),
        ('{"user_id": 1e400, "reason": "purchase"}', "user_id"),
        ('{"user_id": 42, "reason": "PURCHASE"}', "reason"),
        ('{"user_id": 42, "reason": ["purchase"]}', "reason"),
        ('{"user_id": 42, "reason": null}', "reason"),
        ('"purchase"', "JSON object"),
        ("null", "JSON object"),
        ("", "not JSON"),
        ('{"user_id": 42, "reason": "purchase"} trailing', "not JSON"),
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
    assert parse_backfill_request({"mode": "due"}) == BackfillRequest("due", None, None)
    assert parse_backfill_request({"mode": "prune", "cursor": 0}) == BackfillRequest("prune", 0, None)
    assert parse_backfill_request({"mode": "due", "run_id": "r" * 200}).run_id == "r" * 200


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
        {"mode": "missing", "run_id": "r" * 201},
        {"mode": "missing", "run_id": 5},
        {"mode": "missing", "cursor": 1.0},
        {"mode": "Missing"},
        # The schedule's input is this stack's own configuration: a field it does not know is a mistake.
        {"mode": "missing", "extra": 1},
    ],
)
def test_bad_backfill_input(event: object) -> None:
    with pytest.raises(InvalidInput):
        parse_backfill_request(event)
