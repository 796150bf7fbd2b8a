"""BytemarkHttpSource against the simulator's hostile faults: every one ends in bounded time and memory.

Time is bounded by the call's deadline (a budget of about a second where the fault would otherwise never
end), memory by the answer bounds; nothing here sleeps to synchronise. Measured figures (elapsed time, peak
memory) are printed with ``-s``.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from bytemark_cache.adapters.bytemark_http import BytemarkHttpSource
from bytemark_cache.domain.bounds import MAX_ANSWER_BYTES, MAX_FETCH_BYTES, MAX_PASSES_PER_LIST
from bytemark_cache.errors import DeadlineExceeded, TokenRevoked, UpstreamError
from bytemark_simulator import UNSTORABLE_PASS_VARIANTS, AdminClient, SimulatorServer
from tests.fakes import RecordingSleep
from tests.integration.conftest import SourceFactory, user_request_counts

pytestmark = pytest.mark.integration

USER = 42
TOKEN = "tok-42-hostile-Zq7xW3secret"
MAX_RETRIES = 2
MIB = 1 << 20
BUDGET = 1.0
"""Seconds of deadline for the faults that would never end on their own."""
OVERSHOOT = 0.5
"""How much later than its deadline a call may return."""


@pytest.fixture
def admin(simulator: SimulatorServer) -> AdminClient:
    """The reset simulator's admin client, user 42 seeded with 3 current and 2 expired passes."""
    simulator.admin.seed_user(USER, TOKEN, current=3, expired=2)
    return simulator.admin


@pytest.fixture
def make_source(source_factory: Callable[..., SourceFactory]) -> SourceFactory:
    """Sources on the simulator retrying ``MAX_RETRIES`` times."""
    return source_factory(max_retries=MAX_RETRIES)


def _fetch_failing(source: BytemarkHttpSource, seconds: float = 10.0) -> tuple[UpstreamError, float]:
    """The error ``fetch_passes`` raises within a deadline ``seconds`` away, and the seconds it took."""
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        source.fetch_passes(TOKEN, seconds)
    elapsed = time.monotonic() - started
    error = info.value
    assert not isinstance(error, TokenRevoked)
    assert TOKEN not in str(error)
    return error, elapsed


def _assert_permanent(error: UpstreamError, fragment: str) -> None:
    assert error.transient is False, error
    assert not isinstance(error, DeadlineExceeded)
    assert fragment in str(error)


# --- time: answers that never end --------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["v1", "v4"])
def test_a_bytemark_that_never_answers_costs_no_more_than_the_deadline(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep, endpoint: str
) -> None:
    # Headers would come after 30 s; the read timeout alone (5 s) would wait far past the deadline.
    admin.set_fault("timeout", user_id=USER, endpoint=endpoint, latency_ms=30_000)

    error, elapsed = _fetch_failing(make_source(), BUDGET)

    print(f"\nnever answering ({endpoint}): {elapsed:.3f}s for a {BUDGET}s deadline")
    assert isinstance(error, DeadlineExceeded)
    assert error.transient is True
    assert elapsed <= BUDGET + OVERSHOOT
    assert sleeps.calls == []
    # The deadline covers the whole call: on v4 the v1 list has used part of it already.
    assert user_request_counts(admin, USER) == ((1, 0) if endpoint == "v1" else (1, 1))


def test_a_slow_drip_ends_with_the_deadline(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    # 4 bytes every 100 ms: every read returns quickly, the answer would take about a minute.
    admin.set_fault("slow_drip", user_id=USER, endpoint="v1")
    source = make_source()

    error, elapsed = _fetch_failing(source, BUDGET)

    print(f"\nslow drip: {elapsed:.3f}s for a {BUDGET}s deadline")
    assert isinstance(error, DeadlineExceeded)
    assert elapsed <= BUDGET + OVERSHOOT
    assert elapsed >= BUDGET - 0.1  # it did wait for the answer, as long as it was allowed to
    assert sleeps.calls == []
    assert user_request_counts(admin, USER) == (1, 0)
    assert source.requests_sent == 1


def test_a_pause_mid_body_longer_than_the_time_left_ends_with_the_deadline(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    # 4 bytes at 0 s, 0.9 s, 1.8 s …: the read timeout set when the request started (the 1 s then left)
    # would let the read from 0.9 s wait until 1.8 s; each read's timeout must be the time left at that read.
    admin.set_fault("slow_drip", user_id=USER, endpoint="v1", drip_interval_ms=900)

    error, elapsed = _fetch_failing(make_source(), BUDGET)

    print(f"\npause mid-body: {elapsed:.3f}s for a {BUDGET}s deadline")
    assert isinstance(error, DeadlineExceeded)
    assert elapsed <= BUDGET + OVERSHOOT
    assert sleeps.calls == []


def test_a_slow_drip_is_cut_after_timeout_seconds_and_retried(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    # A generous deadline: here the per-attempt limit (timeout_seconds for request and whole answer) acts.
    admin.set_fault("slow_drip", user_id=USER, endpoint="v1", drip_interval_ms=50)

    error, elapsed = _fetch_failing(make_source(timeout_seconds=0.3, max_retries=1), 10.0)

    assert not isinstance(error, DeadlineExceeded)
    assert error.transient is True
    assert "timed out" in str(error)
    assert 0.6 <= elapsed < 0.6 + OVERSHOOT
    assert len(sleeps.calls) == 1
    assert user_request_counts(admin, USER) == (2, 0)


# --- memory: bombs and huge answers -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gzip_bomb", "deflate_bomb"])
def test_a_one_gib_compression_bomb_is_refused_within_the_answer_bound(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep, kind: str
) -> None:
    admin.set_fault(kind, user_id=USER, endpoint="v1")  # 1 GiB inflated by default
    source = make_source()

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        error, elapsed = _fetch_failing(source)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()

    print(f"\n{kind}: peak {peak / MIB:.1f} MiB, {elapsed:.3f}s")
    _assert_permanent(error, f"larger than MAX_ANSWER_BYTES={MAX_ANSWER_BYTES} bytes after decompression")
    assert peak < 2 * MAX_ANSWER_BYTES + 16 * MIB
    assert sleeps.calls == []
    assert user_request_counts(admin, USER) == (1, 0)


def test_a_huge_body_is_refused_from_its_declared_length(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.set_fault("huge_body", user_id=USER, endpoint="v4")  # 64 MiB

    error, elapsed = _fetch_failing(make_source())

    _assert_permanent(error, f"exceeds MAX_ANSWER_BYTES={MAX_ANSWER_BYTES}")
    assert elapsed < 1.0
    assert sleeps.calls == []
    assert user_request_counts(admin, USER) == (1, 1)


def test_an_answer_of_exactly_max_answer_bytes_is_read_and_one_byte_more_is_not(
    admin: AdminClient, make_source: SourceFactory
) -> None:
    # The bound is on bytes, not on what the pass holds: a huge field is the domain's to judge later.
    admin.set_fault("huge_body", user_id=USER, endpoint="v1", count=1, body_bytes=MAX_ANSWER_BYTES)
    fetched = make_source().fetch_passes(TOKEN, 10)
    assert len(fetched.current[0]["padding"]) > MAX_ANSWER_BYTES - 64 * 1024
    assert len(fetched.current) == 3

    admin.set_fault("huge_body", user_id=USER, endpoint="v1", count=1, body_bytes=MAX_ANSWER_BYTES + 1)
    error, _ = _fetch_failing(make_source())
    _assert_permanent(error, "MAX_ANSWER_BYTES")


def test_the_decoded_bytes_of_one_fetch_are_bounded_across_both_lists(
    admin: AdminClient, make_source: SourceFactory
) -> None:
    # 7 MiB a page, one pass a page: v1's 4 pages (28 MiB) fit, v4's third page would pass 48 MiB.
    page_bytes = 7 * MIB
    admin.seed_user(USER, TOKEN, current=4, expired=4)
    admin.set_fault("huge_body", user_id=USER, body_bytes=page_bytes)

    error, _ = _fetch_failing(make_source(page_size=1))

    _assert_permanent(error, f"MAX_FETCH_BYTES={MAX_FETCH_BYTES}")
    assert "/v4.0/passes" in str(error)
    assert user_request_counts(admin, USER) == (4, 3)
    assert 6 * page_bytes <= MAX_FETCH_BYTES < 7 * page_bytes


def test_a_huge_list_is_refused(admin: AdminClient, make_source: SourceFactory) -> None:
    admin.set_fault("huge_list", user_id=USER, endpoint="v1")  # 100 000 passes, ~21 MB

    error, _ = _fetch_failing(make_source())

    _assert_permanent(error, "MAX_ANSWER_BYTES")
    assert user_request_counts(admin, USER) == (1, 0)


def test_a_list_longer_than_max_passes_per_list_is_refused_and_one_at_the_bound_is_not(
    admin: AdminClient, make_source: SourceFactory
) -> None:
    admin.set_fault("huge_list", user_id=USER, endpoint="v4", count=1, pass_count=MAX_PASSES_PER_LIST)
    fetched = make_source().fetch_passes(TOKEN, 10)
    assert len(fetched.expired) == MAX_PASSES_PER_LIST

    admin.set_fault("huge_list", user_id=USER, endpoint="v4", count=1, pass_count=MAX_PASSES_PER_LIST + 1)
    error, _ = _fetch_failing(make_source())
    _assert_permanent(error, f"more than MAX_PASSES_PER_LIST={MAX_PASSES_PER_LIST} passes")
    assert "/v4.0/passes" in str(error)


# --- endless paging -----------------------------------------------------------------------------------------


def test_a_pagination_loop_stops_at_max_pages(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.set_fault("pagination_loop", user_id=USER, endpoint="v1")

    error, _ = _fetch_failing(make_source(page_size=50, max_pages=20))

    _assert_permanent(error, "more than max_pages=20 pages")
    assert user_request_counts(admin, USER) == (20, 0)
    assert sleeps.calls == []


def test_a_pagination_loop_of_big_pages_stops_at_max_passes_per_list(
    admin: AdminClient, make_source: SourceFactory
) -> None:
    admin.set_fault("pagination_loop", user_id=USER, endpoint="v1")
    source = make_source(page_size=500, max_pages=1000)

    error, _ = _fetch_failing(source)

    _assert_permanent(error, "MAX_PASSES_PER_LIST")
    expected_pages = MAX_PASSES_PER_LIST // 500 + 1
    assert user_request_counts(admin, USER) == (expected_pages, 0)
    assert source.requests_sent == expected_pages


# --- broken answers -----------------------------------------------------------------------------------------


def test_a_truncated_body_is_transient_and_retried(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.set_fault("truncated_body", user_id=USER, endpoint="v1", count=1)

    fetched = make_source().fetch_passes(TOKEN, 10)

    assert fetched.current == admin.passes(USER)["current"]
    assert user_request_counts(admin, USER) == (2, 1)
    assert len(sleeps.calls) == 1


def test_a_body_always_truncated_ends_in_a_transient_error(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.set_fault("truncated_body", user_id=USER, endpoint="v1")

    error, _ = _fetch_failing(make_source())

    assert error.transient is True
    assert "cut short" in str(error)
    assert user_request_counts(admin, USER) == (MAX_RETRIES + 1, 0)
    assert len(sleeps.calls) == MAX_RETRIES


def test_a_content_encoding_the_client_did_not_ask_for_is_permanent(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    admin.set_fault("wrong_content_encoding", user_id=USER, endpoint="v1")

    error, _ = _fetch_failing(make_source())

    _assert_permanent(error, "unsupported Content-Encoding 'br'")
    assert sleeps.calls == []
    assert user_request_counts(admin, USER) == (1, 0)


_UNSTORABLE_VALUES: dict[str, tuple[str, Any]] = {
    "int_overflow": ("ride_counter", 2**70),
    "nul_key": ("fare\x00zone", "a key holding U+0000"),
    "dollar_key": ("$fare_zone", "a key starting with a dollar"),
    "lone_surrogate": ("rider_note", "half a surrogate pair: \ud800 ends here"),
    "dotted_key": ("fare.zone", "a key with a dot"),
}


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, dict):
        value, depth = value["level"], depth + 1
    return depth


@pytest.mark.parametrize("variant", UNSTORABLE_PASS_VARIANTS)
def test_passes_no_store_could_hold_still_come_back_as_ordinary_passes(
    admin: AdminClient, make_source: SourceFactory, variant: str
) -> None:
    """Storability is the domain's check, later: the client returns whatever JSON can say."""
    truth = admin.passes(USER)
    admin.set_fault("unstorable_pass", user_id=USER, endpoint="v1", variant=variant)

    fetched = make_source().fetch_passes(TOKEN, 10)

    first = dict(fetched.current[0])
    if variant == "deep_nesting":
        assert _depth(first.pop("nested")) == 500
    else:
        key, value = _UNSTORABLE_VALUES[variant]
        assert first.pop(key) == value
    assert first == truth["current"][0]
    assert fetched.current[1:] == truth["current"][1:]
    assert fetched.expired == truth["expired"]


def test_a_value_json_cannot_hold_makes_the_answer_unusable(
    admin: AdminClient, make_source: SourceFactory, sleeps: RecordingSleep
) -> None:
    pass_ = admin.passes(USER)["current"][0]
    text = json.dumps(pass_)[:-1] + ', "fare": NaN}'  # the simulator serves pass JSON verbatim
    admin.put_pass(USER, text, "current")

    error, _ = _fetch_failing(make_source())

    _assert_permanent(error, "not valid JSON")
    assert sleeps.calls == []
