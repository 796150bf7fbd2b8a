"""Who the caller is: the user id from what the authorizer vouched for, and nothing else (contract §7)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bytemark_cache.domain.identity import (
    DEFAULT_IDENTITY_CLAIM,
    MAX_USER_ID,
    caller_id,
    is_user_id,
    parse_user_id_text,
)

HOSTILE: list[Any] = [
    # Other scripts' digits: str.isdigit() accepts them, int() converts them.
    pytest.param("\u0663", id="arabic-indic 3"),
    pytest.param("\u06f3", id="extended arabic-indic 3"),
    pytest.param("\u0969", id="devanagari 3"),
    pytest.param("\uff13", id="fullwidth 3"),
    pytest.param("\uff11\uff12\uff13", id="fullwidth 123"),
    pytest.param("\U0001d7d1", id="mathematical bold 3"),
    pytest.param("3\u0663", id="ascii then arabic-indic"),
    # Lookalikes that are digits to isdigit() or numeric to isnumeric().
    pytest.param("\u00b3", id="superscript 3"),
    pytest.param("\u2460", id="circled 1"),
    pytest.param("\u2162", id="roman numeral 3"),
    pytest.param("l", id="lowercase L"),
    pytest.param("O", id="capital o"),
    # Signs, spaces, separators: int() accepts them.
    pytest.param("+3", id="plus sign"),
    pytest.param("-3", id="minus sign"),
    pytest.param(" 3", id="leading space"),
    pytest.param("3 ", id="trailing space"),
    pytest.param("\t3", id="leading tab"),
    pytest.param("3\n", id="trailing newline"),
    pytest.param("\u00a03", id="no-break space"),
    pytest.param("3\u200b", id="zero-width space"),
    pytest.param("1_000", id="underscore"),
    pytest.param("1,000", id="comma"),
    # Other number spellings.
    pytest.param("3.0", id="decimal point"),
    pytest.param("1e3", id="exponent"),
    pytest.param("0x10", id="hex"),
    pytest.param("0b11", id="binary"),
    pytest.param("NaN", id="NaN text"),
    # Out of range.
    pytest.param("0", id="zero"),
    pytest.param("0000000000", id="ten zeros"),
    pytest.param("2147483648", id="MAX_USER_ID + 1"),
    pytest.param("9999999999", id="ten nines"),
    pytest.param("99999999999", id="eleven digits"),
    pytest.param("00000000001", id="eleven digits, value 1"),
    pytest.param("9" * 10_000, id="very long digits"),
    pytest.param("x" * 1_000_000, id="very long text"),
    # Empty, NUL.
    pytest.param("", id="empty"),
    pytest.param("3\x00", id="trailing NUL"),
    pytest.param("\x003", id="leading NUL"),
    # Not text.
    pytest.param(None, id="None"),
    pytest.param(True, id="True"),
    pytest.param(False, id="False"),
    pytest.param(3.0, id="float"),
    pytest.param(math.nan, id="float NaN"),
    pytest.param(0, id="int 0"),
    pytest.param(-3, id="negative int"),
    pytest.param(MAX_USER_ID + 1, id="int MAX_USER_ID + 1"),
    pytest.param(b"3", id="bytes"),
    pytest.param({"user_id": 3}, id="object"),
    pytest.param(["3"], id="list"),
    pytest.param(("3",), id="tuple"),
]


def cognito(value: Any, claim: str = DEFAULT_IDENTITY_CLAIM) -> dict[str, Any]:
    """``requestContext.authorizer`` of a REST API with a Cognito authorizer."""
    return {"claims": {"sub": "6f1d0c5e-0000-4000-8000-000000000000", claim: value}}


def lambda_authorizer(value: Any) -> dict[str, Any]:
    """``requestContext.authorizer`` of a REST API with a Lambda authorizer (its context, flattened)."""
    return {"principalId": "someone", "integrationLatency": 12, "user_id": value}


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_refused_everywhere(value: Any) -> None:
    assert len(HOSTILE) >= 30
    assert parse_user_id_text(value) is None
    assert caller_id(cognito(value), DEFAULT_IDENTITY_CLAIM) is None
    assert caller_id(lambda_authorizer(value), DEFAULT_IDENTITY_CLAIM) is None
    assert not is_user_id(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", 1),
        ("42", 42),
        ("0000000042", 42),  # ten ASCII digits
        ("2147483647", MAX_USER_ID),
        (1, 1),
        (42, 42),
        (MAX_USER_ID, MAX_USER_ID),
    ],
)
def test_valid_values_are_accepted_everywhere(value: Any, expected: int) -> None:
    assert parse_user_id_text(value) == expected
    assert caller_id(cognito(value), DEFAULT_IDENTITY_CLAIM) == expected
    assert caller_id(lambda_authorizer(value), DEFAULT_IDENTITY_CLAIM) == expected


def test_is_user_id_is_an_int_in_range() -> None:
    assert is_user_id(1)
    assert is_user_id(MAX_USER_ID)
    assert not is_user_id(0)
    assert not is_user_id(MAX_USER_ID + 1)
    assert not is_user_id(True)
    assert not is_user_id("1")
    assert MAX_USER_ID == 2**31 - 1


# --- which authorizer value is read ------------------------------------------------------------------


def test_cognito_reads_the_configured_claim_only() -> None:
    authorizer = {"claims": {"sub": "42", "custom:user_id": "7", "custom:uid": "8"}, "user_id": "9"}
    assert caller_id(authorizer, "custom:user_id") == 7
    assert caller_id(authorizer, "custom:uid") == 8
    assert caller_id(authorizer, "sub") == 42  # only when configured so (Cognito's sub is a UUID)
    assert caller_id(authorizer, "custom:other") is None


def test_cognito_never_falls_back_to_another_field() -> None:
    # Claims present: the authorizer's user_id (a Lambda authorizer's field) is not read.
    assert caller_id({"claims": {"sub": "abc"}, "user_id": "9"}, DEFAULT_IDENTITY_CLAIM) is None
    assert caller_id({"claims": {}, "user_id": "9"}, DEFAULT_IDENTITY_CLAIM) is None


@pytest.mark.parametrize("claims", ["custom:user_id=7", ["7"], 7, True, ""])
def test_claims_that_are_not_an_object_identify_nobody(claims: Any) -> None:
    assert caller_id({"claims": claims, "user_id": "9"}, DEFAULT_IDENTITY_CLAIM) is None


def test_a_lambda_authorizer_context_is_read_when_there_are_no_claims() -> None:
    assert caller_id({"user_id": "9"}, DEFAULT_IDENTITY_CLAIM) == 9
    assert caller_id({"user_id": 9, "principalId": "10"}, DEFAULT_IDENTITY_CLAIM) == 9
    assert caller_id({"claims": None, "user_id": "9"}, DEFAULT_IDENTITY_CLAIM) == 9
    # The claim name does not apply to a Lambda authorizer.
    assert caller_id({"custom:user_id": "9"}, DEFAULT_IDENTITY_CLAIM) is None


def test_a_lambda_authorizer_without_user_id_identifies_nobody() -> None:
    assert caller_id({"principalId": "9"}, DEFAULT_IDENTITY_CLAIM) is None
    assert caller_id({"lambda": {"user_id": "9"}}, DEFAULT_IDENTITY_CLAIM) is None  # an HTTP API shape
    assert caller_id({"jwt": {"claims": {"custom:user_id": "9"}}}, DEFAULT_IDENTITY_CLAIM) is None
    assert caller_id({}, DEFAULT_IDENTITY_CLAIM) is None


@pytest.mark.parametrize("authorizer", [None, "user_id=9", ["9"], 9, True])
def test_an_authorizer_that_is_not_an_object_identifies_nobody(authorizer: Any) -> None:
    assert caller_id(authorizer, DEFAULT_IDENTITY_CLAIM) is None
