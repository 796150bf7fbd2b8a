"""The Bytemark HTTP client's pure parts: envelope validation, paging, Retry-After, backoff (no sockets)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from bytemark_cache.adapters.bytemark_http import (
    BytemarkHttpSource,
    backoff_delay,
    has_next_page,
    is_revocation,
    parse_pass_page,
    parse_retry_after,
)
from bytemark_cache.errors import TokenRevoked, UpstreamError

ENDPOINT = "/passes"


def _pass(uuid: str, **extra: Any) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "status": "USABLE",
        "first_use": None,
        "time_created": "2024-06-15T04:30:00Z",
        "time_modified": "2024-06-15T04:30:00.000Z",
        **extra,
    }


def _envelope(
    passes: list[Any], *, total: Any = None, pagination: Any = None, **data_extra: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "passes": passes,
        "page_count": len(passes),
        "total_count": len(passes) if total is None else total,
        "pagination": {} if pagination is None else pagination,
    }
    data.update(data_extra)
    return {"server_time": "2024-06-15T04:30:00.000Z", "data": data, "errors": []}


def _assert_unusable(body: object, fragment: str) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        parse_pass_page(body, endpoint=ENDPOINT)
    assert not isinstance(info.value, TokenRevoked)
    assert info.value.transient is False
    assert ENDPOINT in str(info.value)
    assert fragment in str(info.value)
    return info.value


# --- envelope validation -------------------------------------------------------------------------------


def test_valid_page_keeps_passes_verbatim_and_in_order() -> None:
    raw = (
        '{"data":{"passes":['
        '{"uuid":"b","status":"USABLE","time_modified":"2024-06-15T04:30:00Z","price":2.0},'
        '{"uuid":"a","status":"EXPIRED","time_modified":"2024-06-15T04:30:00.123Z"}],'
        '"page_count":2,"total_count":7,'
        '"pagination":{"page":1,"per_page":2,"next":"/passes?page=2"}},"errors":[]}'
    )

    page = parse_pass_page(json.loads(raw), endpoint=ENDPOINT)

    assert [p["uuid"] for p in page.passes] == ["b", "a"]
    assert list(page.passes[0]) == ["uuid", "status", "time_modified", "price"]
    assert page.passes[0]["time_modified"] == "2024-06-15T04:30:00Z"
    assert page.passes[1]["time_modified"] == "2024-06-15T04:30:00.123Z"
    assert (page.page_count, page.total_count, page.next_link) == (2, 7, "/passes?page=2")


@pytest.mark.parametrize("body", [[], None, "passes", 3, True])
def test_non_object_envelope_is_unusable(body: object) -> None:
    _assert_unusable(body, "not a JSON object")


@pytest.mark.parametrize("data", [None, [], "x"])
def test_missing_or_non_object_data_is_unusable(data: object) -> None:
    _assert_unusable({"data": data, "errors": []}, "'data'")


@pytest.mark.parametrize("passes", [None, {"uuid": "a"}, "a,b"])
def test_passes_not_a_list_is_unusable(passes: object) -> None:
    _assert_unusable({"data": {"passes": passes, "total_count": 1}, "errors": []}, "'data.passes'")


@pytest.mark.parametrize("total", ["7", 7.0, True, None])
def test_non_int_total_count_is_unusable(total: object) -> None:
    body = _envelope([_pass("a")])
    body["data"]["total_count"] = total
    _assert_unusable(body, "'data.total_count'")


def test_missing_total_count_is_unusable() -> None:
    body = _envelope([_pass("a")])
    del body["data"]["total_count"]
    _assert_unusable(body, "'data.total_count'")


def test_page_count_disagreeing_with_the_list_is_unusable() -> None:
    body = _envelope([_pass("a")])
    body["data"]["page_count"] = 3
    _assert_unusable(body, "page_count")


def test_missing_page_count_defaults_to_the_list_length() -> None:
    body = _envelope([_pass("a"), _pass("b")], total=5)
    del body["data"]["page_count"]
    assert parse_pass_page(body, endpoint=ENDPOINT).page_count == 2


@pytest.mark.parametrize("pagination", [{}, None, {"next": None}, {"page": 1, "per_page": 5}])
def test_empty_or_null_pagination_means_no_next_link(pagination: object) -> None:
    body = _envelope([_pass("a")], total=9)
    body["data"]["pagination"] = pagination
    assert not parse_pass_page(body, endpoint=ENDPOINT).next_link


def test_missing_pagination_means_no_next_link() -> None:
    body = _envelope([_pass("a")], total=9)
    del body["data"]["pagination"]
    assert not parse_pass_page(body, endpoint=ENDPOINT).next_link


@pytest.mark.parametrize("pagination", [["next"], "next", 1])
def test_non_object_pagination_is_unusable(pagination: object) -> None:
    _assert_unusable(_envelope([_pass("a")], pagination=pagination), "'data.pagination'")


@pytest.mark.parametrize(
    "bad_pass", [{"status": "USABLE"}, {"uuid": 5, "status": "USABLE"}, {"uuid": "a"}, "a-uuid", None]
)
def test_a_pass_failing_validation_is_unusable_and_named_by_index(bad_pass: object) -> None:
    _assert_unusable(_envelope([_pass("ok"), bad_pass]), "pass #1")


@pytest.mark.parametrize("code", [50020, "50020"])
def test_error_50020_is_token_revoked_even_with_data(code: object) -> None:
    body = _envelope([_pass("a")])
    body["errors"] = [{"code": code, "message": "session expired"}]
    with pytest.raises(TokenRevoked):
        parse_pass_page(body, endpoint=ENDPOINT)
    assert is_revocation(body)


def test_other_error_codes_are_unusable_without_leaking_the_message() -> None:
    body = {"errors": [{"code": 40001, "message": "customer jane.doe@example.com not found"}]}
    error = _assert_unusable(body, "40001")
    assert "jane.doe" not in str(error)
    assert not is_revocation(body)


def test_error_entries_without_codes_are_unusable() -> None:
    _assert_unusable({"errors": [{"message": "boom"}], "data": _envelope([])["data"]}, "errors")


@pytest.mark.parametrize("body", [None, [], {"errors": None}, {"errors": "50020"}, {"errors": [50020]}])
def test_is_revocation_ignores_odd_shapes(body: object) -> None:
    assert not is_revocation(body)


# --- the "is there another page" decision ---------------------------------------------------------------


def test_empty_pagination_stops_even_when_counts_say_more() -> None:
    assert not has_next_page(page=1, per_page=5, page_count=5, total_count=12, next_link=None)
    assert not has_next_page(page=1, per_page=5, page_count=5, total_count=12, next_link="")


def test_next_link_with_more_items_continues() -> None:
    assert has_next_page(page=1, per_page=5, page_count=5, total_count=12, next_link="/passes?page=2")
    assert has_next_page(page=2, per_page=5, page_count=5, total_count=12, next_link="/passes?page=3")


def test_stale_next_link_on_the_last_page_stops() -> None:
    # (3-1)*5 + 2 == 12: everything has been read although Bytemark still sent a link.
    assert not has_next_page(page=3, per_page=5, page_count=2, total_count=12, next_link="/passes?page=4")
    # Exactly full last page.
    assert not has_next_page(page=2, per_page=5, page_count=5, total_count=10, next_link="/passes?page=3")


def test_short_page_below_total_still_continues_when_linked() -> None:
    assert has_next_page(page=2, per_page=5, page_count=4, total_count=12, next_link="x")


def test_empty_list_has_no_next_page() -> None:
    assert not has_next_page(page=1, per_page=5, page_count=0, total_count=0, next_link="/passes?page=2")


# --- Retry-After ----------------------------------------------------------------------------------------

NOW = datetime(2024, 6, 15, 4, 30, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("header", "expected"), [("5", 5.0), (" 7 ", 7.0), ("0", 0.0), ("120", 120.0)])
def test_retry_after_in_seconds(header: str, expected: float) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def test_retry_after_as_http_date() -> None:
    header = format_datetime(datetime(2024, 6, 15, 4, 30, 42, tzinfo=UTC), usegmt=True)
    assert header == "Sat, 15 Jun 2024 04:30:42 GMT"
    assert parse_retry_after(header, now=NOW) == pytest.approx(42.0)


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Sat, 15 Jun 2024 04:00:00 GMT", now=NOW) == 0.0


@pytest.mark.parametrize("header", [None, "", "  ", "soon", "-3", "1.5", "5s", "\u0663", "Sat, 99 Foo 2024"])
def test_retry_after_garbage_is_none(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


# --- backoff --------------------------------------------------------------------------------------------


def test_backoff_stays_within_the_growing_capped_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(5.0, 0.2 * 2**attempt)
        samples = [backoff_delay(attempt, base=0.2, cap=5.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        # Full jitter spreads over the whole window, not only its top.
        assert min(samples) < ceiling * 0.2
        assert max(samples) > ceiling * 0.8


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff_delay(a, base=0.2, cap=5.0, rng=random.Random(1)) for a in range(5)]
    second = [backoff_delay(a, base=0.2, cap=5.0, rng=random.Random(1)) for a in range(5)]
    assert first == second


# --- the client without a network -----------------------------------------------------------------------


def _source() -> BytemarkHttpSource:
    return BytemarkHttpSource(
        "http://127.0.0.1:9/", timeout_seconds=1.0, page_size=5, max_pages=3, sleep=_no_sleep
    )


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"nothing may be retried here (asked to sleep {seconds})")


@pytest.mark.parametrize("token", ["", "tok en", "tok\r\nX-Evil: 1", "t\u00f6ken"])
def test_malformed_token_is_refused_before_any_request_and_not_echoed(token: str) -> None:
    # Sockets are disabled here: reaching the network would fail with a different error.
    with pytest.raises(TokenRevoked) as info:
        _source().fetch_passes(token)
    if token:
        assert token not in str(info.value)
        assert token not in repr(info.value)


def test_repr_names_the_endpoint_but_no_secret() -> None:
    text = repr(_source())
    assert "http://127.0.0.1:9" in text
    assert "page_size=5" in text


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout_seconds": 0}, {"page_size": 0}, {"max_pages": 0}, {"max_retries": -1}],
)
def test_constructor_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"timeout_seconds": 1.0, "page_size": 5, "max_pages": 3, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BytemarkHttpSource("http://127.0.0.1:9", **settings)
