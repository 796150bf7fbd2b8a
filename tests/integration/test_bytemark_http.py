"""BytemarkHttpSource against the real Bytemark simulator over real HTTP: paging, retries, faults, secrecy."""

from __future__ import annotations

import json
import logging
import math
import random
import traceback
from collections.abc import Callable

import pytest
import requests
from requests.adapters import HTTPAdapter

from bytemark_cache.errors import DeadlineExceeded, TokenRevoked, UpstreamError
from bytemark_simulator import AdminClient, SimulatorServer
from tests.fakes import RecordingSleep
from tests.integration.conftest import SourceFactory, user_request_counts

pytestmark = pytest.mark.integration

USER = 42
TOKEN = "tok-42-Zq7xW3secretvalue"
MAX_RETRIES = 3
BACKOFF_BASE = 0.2
BACKOFF_CAP = 5.0


@pytest.fixture
def admin(simulator: SimulatorServer) -> AdminClient:
    """The admin client of the session's simulator (reset for this test by the ``simulator`` fixture)."""
    return simulator.admin


@pytest.fixture
def make_source(source_factory: Callable[..., SourceFactory]) -> SourceFactory:
    """Sources on the simulator with this file's retry and backoff settings."""
    return source_factory(max_retries=MAX_RETRIES, backoff_base=BACKOFF_BASE, backoff_cap=BACKOFF_CAP)


def _deadline(seconds: float = 10.0) -> float:
    """The whole fetch's time budget in seconds."""
    return seconds


def _assert_secret_free(exc: BaseException) -> None:
    """Neither the message, the repr nor the whole chained traceback may carry the token."""
    assert TOKEN not in str(exc)
    assert TOKEN not in repr(exc)
    assert TOKEN not in "".join(traceback.format_exception(exc))


def _assert_within_backoff(delays: list[float]) -> None:
    for attempt, delay in enumerate(delays):
        assert 0.0 <= delay <= min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)


# --- paging ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 2, 3, 5, 7, 50])
def test_every_page_of_both_lists_is_followed(
    admin: AdminClient, make_source: SourceFactory, page_size: int
) -> None:
    admin.seed_user(USER, TOKEN, current=7, expired=5)

    fetched = make_source(page_size=page_size).fetch_passes(TOKEN, _deadline())

    expected = admin.passes(USER)
    assert fetched.current == expected["current"]
    assert fetched.expired == expected["expired"]
    # Exactly the pages needed: no call after the last page (next is null there).
    assert user_request_counts(admin, USER) == (math.ceil(7 / page_size), math.ceil(5 / page_size))


def test_empty_lists_take_one_request_each(admin: AdminClient, make_source: SourceFactory) -> None:
    admin.seed_user(USER, TOKEN, current=0, expired=0)

    fetched = make_source().fetch_passes(TOKEN, _deadline())

    assert (fetched.current, fetched.expired) == ([], [])
    assert user_request_counts(admin, USER) == (1, 1)


def test_empty_object_pagination_ends_the_list(admin: AdminClient, make_source: SourceFactory) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2, empty_pagination_style="object")

    fetched = make_source(page_size=10).fetch_passes(TOKEN, _deadline())

    expected = admin.passes(USER)
    assert (fetched.current, fetched.expired) == (expected["current"], expected["expired"])
    assert user_request_counts(admin, USER) == (1, 1)


def test_exactly_max_pages_is_still_fine(admin: AdminClient, make_source: SourceFactory) -> None:
    admin.seed_user(USER, TOKEN, current=6, expired=1)

    fetched = make_source(page_size=2, max_pages=3).fetch_passes(TOKEN, _deadline())

    assert fetched.current == admin.passes(USER)["current"]
    assert user_request_counts(admin, USER) == (3, 1)


def test_more_than_max_pages_fails_instead_of_truncating(
    admin: AdminClient, make_source: SourceFactory
) -> None:
    admin.seed_user(USER, TOKEN, current=7, expired=1)

    with pytest.raises(UpstreamError, match="more than max_pages=3 pages") as info:
        make_source(page_size=2, max_pages=3).fetch_passes(TOKEN, _deadline())

    assert info.value.transient is False
    assert user_request_counts(admin, USER) == (3, 0)
    _assert_secret_free(info.value)


def test_one_session_reuses_its_connection_across_pages_and_calls(
    admin: AdminClient, make_source: SourceFactory, simulator: SimulatorServer
) -> None:
    admin.seed_user(USER, TOKEN, current=5, expired=5)
    session = requests.Session()
    source = make_source(page_size=2, session=session)

    source.fetch_passes(TOKEN, _deadline())
    source.fetch_passes(TOKEN, _deadline())

    assert user_request_counts(admin, USER) == (6, 6)
    adapter = session.get_adapter(simulator.url)
    assert isinstance(adapter, HTTPAdapter)
    pools = adapter.poolmanager.pools
    opened = [pools[key].num_connections for key in pools.keys()]  # noqa: SIM118 - not a dict
    assert opened == [1]


# --- pass content ---------------------------------------------------------------------------------------


def test_duplicate_uuids_across_pages_keep_the_latest_modification(
    admin: AdminClient, make_source: SourceFactory
) -> None:
    seeded = admin.seed_user(USER, TOKEN, current=4, expired=3)
    first, second = seeded["current"][0], seeded["current"][1]
    newer_first = {**first, "status": "USING", "time_modified": "2099-01-01T00:00:00Z"}
    older_second = {**second, "status": "USES_GONE", "time_modified": "2000-01-01T00:00:00.000Z"}
    # Appended: with two passes a page they land on page 3, far from the originals on page 1.
    admin.put_pass(USER, newer_first, "current", replace=False)
    admin.put_pass(USER, older_second, "current", replace=False)
    expired_dup = {**seeded["expired"][2], "time_modified": "2099-01-01T00:00:00.000Z", "note": "newer"}
    admin.put_pass(USER, expired_dup, "expired", position=0, replace=False)

    fetched = make_source(page_size=2).fetch_passes(TOKEN, _deadline())

    assert user_request_counts(admin, USER) == (3, 2)
    assert fetched.current == [newer_first, second, *seeded["current"][2:]]
    assert fetched.expired == [expired_dup, seeded["expired"][0], seeded["expired"][1]]


def test_pass_json_and_time_formats_are_kept_verbatim(admin: AdminClient, make_source: SourceFactory) -> None:
    admin.seed_user(USER, TOKEN, current=0, expired=0)
    raw = (
        '{"uuid":"p-verbatim","status":"USABLE","first_use":null,"expiration":"",'
        '"time_created":"2024-03-10T05:30:00.000Z","time_modified":"2024-03-10T05:30:00Z",'
        '"label_name":"Pase de día \u2013 Niño","price":2.50,"n":{"b":1,"a":[1,2.0]}}'
    )
    admin.put_pass(USER, raw, "current")

    fetched = make_source().fetch_passes(TOKEN, _deadline())

    assert fetched.current == [json.loads(raw)]
    received = fetched.current[0]
    assert list(received) == list(json.loads(raw))
    assert received["time_created"] == "2024-03-10T05:30:00.000Z"
    assert received["time_modified"] == "2024-03-10T05:30:00Z"
    assert received["expiration"] == ""
    assert received["label_name"] == "Pase de día \u2013 Niño"


# --- transient faults: retried with backoff -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http_500", "http_503"])
def test_server_errors_below_the_retry_budget_succeed(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep, kind: str
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault(kind, user_id=USER, endpoint="v1", count=MAX_RETRIES - 1)

    fetched = make_source().fetch_passes(TOKEN, _deadline())

    assert fetched.current == admin.passes(USER)["current"]
    assert user_request_counts(admin, USER) == (MAX_RETRIES, 1)
    assert len(sleeps.calls) == MAX_RETRIES - 1
    _assert_within_backoff(sleeps.calls)


@pytest.mark.parametrize("kind", ["http_500", "http_503"])
def test_server_errors_beyond_the_retry_budget_are_transient(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep, kind: str
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault(kind, user_id=USER, count=MAX_RETRIES + 2)

    with pytest.raises(UpstreamError) as info:
        make_source().fetch_passes(TOKEN, _deadline())

    assert info.value.transient is True
    assert not isinstance(info.value, TokenRevoked)
    assert "HTTP 5" in str(info.value)
    assert user_request_counts(admin, USER) == (MAX_RETRIES + 1, 0)
    assert len(sleeps.calls) == MAX_RETRIES
    _assert_within_backoff(sleeps.calls)
    _assert_secret_free(info.value)


def test_a_timeout_is_retried(admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("timeout", user_id=USER, endpoint="v1", count=1, latency_ms=5000)

    fetched = make_source(timeout_seconds=0.3).fetch_passes(TOKEN, _deadline())

    assert fetched.current == admin.passes(USER)["current"]
    assert user_request_counts(admin, USER) == (2, 1)
    assert len(sleeps.calls) == 1


def test_persistent_timeouts_end_in_a_transient_error(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("timeout", user_id=USER, latency_ms=5000)

    with pytest.raises(UpstreamError, match="timed out") as info:
        make_source(timeout_seconds=0.3, max_retries=1).fetch_passes(TOKEN, _deadline())

    assert info.value.transient is True
    assert user_request_counts(admin, USER) == (2, 0)
    assert len(sleeps.calls) == 1
    _assert_secret_free(info.value)


def test_a_connection_reset_is_retried(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("reset", user_id=USER, endpoint="v4", count=2)

    fetched = make_source().fetch_passes(TOKEN, _deadline())

    assert fetched.expired == admin.passes(USER)["expired"]
    assert user_request_counts(admin, USER) == (1, 3)
    assert len(sleeps.calls) == 2


def test_persistent_resets_end_in_a_transient_error(admin: AdminClient, make_source: SourceFactory) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("reset", user_id=USER)

    with pytest.raises(UpstreamError, match="reset") as info:
        make_source().fetch_passes(TOKEN, _deadline())

    assert info.value.transient is True
    assert user_request_counts(admin, USER) == (MAX_RETRIES + 1, 0)
    _assert_secret_free(info.value)


def test_rate_limit_waits_exactly_retry_after(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("rate_limit", user_id=USER, endpoint="v1", count=1, retry_after=2)

    fetched = make_source().fetch_passes(TOKEN, _deadline())

    assert fetched.current == admin.passes(USER)["current"]
    assert sleeps.calls == [2.0]
    assert user_request_counts(admin, USER) == (2, 1)


def test_persistent_rate_limit_is_transient_and_carries_retry_after(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("rate_limit", user_id=USER, retry_after=1)

    with pytest.raises(UpstreamError, match="HTTP 429") as info:
        make_source().fetch_passes(TOKEN, _deadline())

    assert info.value.transient is True
    assert info.value.retry_after == 1.0
    assert sleeps.calls == [1.0] * MAX_RETRIES
    assert user_request_counts(admin, USER) == (MAX_RETRIES + 1, 0)


def test_retry_after_beyond_the_cap_fails_fast(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("rate_limit", user_id=USER, retry_after=120)

    with pytest.raises(UpstreamError, match="Retry-After") as info:
        make_source(max_retry_after=10.0).fetch_passes(TOKEN, _deadline())

    assert info.value.transient is True
    assert info.value.retry_after == 120.0
    assert sleeps.calls == []
    assert user_request_counts(admin, USER) == (1, 0)


class _TopOfWindow(random.Random):
    """Backoff that always picks the longest delay its window allows."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_a_backoff_that_would_end_after_the_deadline_is_never_started(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("http_500", user_id=USER)
    source = make_source(backoff_base=2.0, backoff_cap=2.0, rng=_TopOfWindow())

    with pytest.raises(UpstreamError, match="no time left before the deadline") as info:
        source.fetch_passes(TOKEN, _deadline(1.5))

    assert info.value.transient is True
    assert "HTTP 500" in str(info.value)
    assert sleeps.calls == []
    assert user_request_counts(admin, USER) == (1, 0)
    _assert_secret_free(info.value)


def test_retry_after_longer_than_the_time_left_fails_fast(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("rate_limit", user_id=USER, retry_after=3)

    with pytest.raises(UpstreamError, match="Retry-After 3s exceeds the time left") as info:
        make_source(max_retry_after=10.0).fetch_passes(TOKEN, _deadline(2.0))

    assert info.value.transient is True
    assert not isinstance(info.value, DeadlineExceeded)
    assert info.value.retry_after == 3.0
    assert sleeps.calls == []
    assert user_request_counts(admin, USER) == (1, 0)


def test_requests_sent_counts_every_attempt_of_every_page(
    admin: AdminClient, make_source: SourceFactory, simulator: SimulatorServer
) -> None:
    admin.seed_user(USER, TOKEN, current=5, expired=3)
    admin.set_fault("http_500", user_id=USER, endpoint="v4", count=2)
    source = make_source(page_size=2)

    source.fetch_passes(TOKEN, _deadline())
    assert source.requests_sent == 3 + 2 + 2 == admin.request_counts()["total"]

    source.fetch_passes(TOKEN, _deadline())
    assert source.requests_sent == 7 + 5 == admin.request_counts()["total"]


def test_latency_below_the_timeout_is_no_failure(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("latency", user_id=USER, latency_ms=150)

    fetched = make_source(timeout_seconds=2.0).fetch_passes(TOKEN, _deadline())

    assert fetched.current == admin.passes(USER)["current"]
    assert user_request_counts(admin, USER) == (1, 1)
    assert sleeps.calls == []


def test_retries_are_logged_without_the_token(
    admin: AdminClient, make_source: SourceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    admin.seed_user(USER, TOKEN, current=1, expired=1)
    admin.set_fault("http_503", user_id=USER, count=1)
    caplog.set_level(logging.DEBUG)

    make_source().fetch_passes(TOKEN, _deadline())

    retried = [r for r in caplog.records if r.getMessage() == "bytemark request retried"]
    assert len(retried) == 1
    assert retried[0].__dict__["reason"] == "HTTP 503"
    assert TOKEN not in caplog.text
    assert all(TOKEN not in json.dumps(r.__dict__, default=str) for r in caplog.records)


# --- permanent faults: never retried ---------------------------------------------------------------------


def test_malformed_json_is_permanent_and_not_retried(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("malformed_json", user_id=USER, endpoint="v1")

    with pytest.raises(UpstreamError, match="not valid JSON") as info:
        make_source().fetch_passes(TOKEN, _deadline())

    assert info.value.transient is False
    assert user_request_counts(admin, USER) == (1, 0)
    assert sleeps.calls == []
    _assert_secret_free(info.value)


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("passes_not_list", "'data.passes'"),
        ("pass_without_uuid", "pass #0 is invalid"),
        ("data_not_object", "'data'"),
    ],
)
def test_schema_breaks_are_permanent_and_not_retried(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep, variant: str, reason: str
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("schema_break", user_id=USER, endpoint="v1", variant=variant)

    with pytest.raises(UpstreamError) as info:
        make_source().fetch_passes(TOKEN, _deadline())

    assert info.value.transient is False
    assert reason in str(info.value)
    assert "/passes" in str(info.value)
    assert user_request_counts(admin, USER) == (1, 0)
    assert sleeps.calls == []
    _assert_secret_free(info.value)


def test_other_4xx_is_permanent_and_not_retried(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)

    # The simulator, like Bytemark, refuses per_page above 500 with HTTP 400.
    with pytest.raises(UpstreamError, match="HTTP 400") as info:
        make_source(page_size=501).fetch_passes(TOKEN, _deadline())

    assert info.value.transient is False
    assert not isinstance(info.value, TokenRevoked)
    assert user_request_counts(admin, USER) == (1, 0)
    assert sleeps.calls == []


def test_a_revoked_token_is_token_revoked_after_one_request(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.revoke(USER)

    with pytest.raises(TokenRevoked) as info:
        make_source().fetch_passes(TOKEN, _deadline())

    assert info.value.transient is False
    assert admin.request_counts()["total"] == 1
    assert sleeps.calls == []
    _assert_secret_free(info.value)


def test_an_unknown_token_gets_401_and_is_token_revoked(
    admin: AdminClient, make_source: SourceFactory
) -> None:
    admin.seed_user(USER, TOKEN, current=1, expired=1)

    with pytest.raises(TokenRevoked):
        make_source().fetch_passes("tok-nobody-knows", _deadline())

    assert admin.request_counts()["total"] == 1


@pytest.mark.parametrize(("endpoint", "expected_counts"), [("v1", (1, 0)), ("v4", (1, 1))])
def test_error_50020_with_http_200_is_token_revoked(
    admin: AdminClient,
    make_source: SourceFactory,
    sleeps: RecordingSleep,
    endpoint: str,
    expected_counts: tuple[int, int],
) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("error_200_50020", user_id=USER, endpoint=endpoint)

    with pytest.raises(TokenRevoked) as info:
        make_source().fetch_passes(TOKEN, _deadline())

    assert user_request_counts(admin, USER) == expected_counts
    assert sleeps.calls == []
    _assert_secret_free(info.value)


# --- all or nothing ------------------------------------------------------------------------------------


def test_v1_fine_but_v4_failing_returns_nothing(admin: AdminClient, make_source: SourceFactory) -> None:
    admin.seed_user(USER, TOKEN, current=3, expired=2)
    admin.set_fault("http_500", user_id=USER, endpoint="v4")

    with pytest.raises(UpstreamError) as info:
        make_source().fetch_passes(TOKEN, _deadline())

    assert info.value.transient is True
    assert "/v4.0/passes" in str(info.value)
    assert user_request_counts(admin, USER) == (1, MAX_RETRIES + 1)


def test_a_bad_pass_on_a_later_page_returns_nothing(admin: AdminClient, make_source: SourceFactory) -> None:
    admin.seed_user(USER, TOKEN, current=4, expired=1)
    # Index 4: with two passes a page it is alone on page 3, after two good pages.
    admin.put_pass(USER, {"status": "USABLE", "label_name": "Local Day Pass"}, "current")

    with pytest.raises(UpstreamError, match="pass #0 is invalid") as info:
        make_source(page_size=2).fetch_passes(TOKEN, _deadline())

    assert info.value.transient is False
    assert user_request_counts(admin, USER) == (3, 0)


def test_source_repr_never_shows_the_token(admin: AdminClient, make_source: SourceFactory) -> None:
    admin.seed_user(USER, TOKEN, current=1, expired=1)
    source = make_source()

    source.fetch_passes(TOKEN, _deadline())

    assert TOKEN not in repr(source)
    assert TOKEN not in str(source)
