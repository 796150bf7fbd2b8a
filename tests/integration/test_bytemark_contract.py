"""BytemarkHttpSource against every envelope variant the simulator serves, plain and gzip-compressed.

Each variant must give both lists exactly (every pass, in order, nothing twice) in the fewest requests the
variant allows: the request counts below are the contract (docs/contract.md §2), not an observation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from bytemark_cache.adapters.bytemark_http import BytemarkHttpSource
from bytemark_cache.errors import UpstreamError
from bytemark_simulator import ENVELOPE_STYLES, AdminClient, SimulatorServer

pytestmark = pytest.mark.integration

USER = 42
TOKEN = "tok-42-contract-Zq7xW3"


class Wire:
    """What went over the wire: each request's Accept-Encoding and each answer's Content-Encoding."""

    def __init__(self) -> None:
        self.accept_encoding: list[str | None] = []
        self.content_encoding: list[str | None] = []

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.accept_encoding.append(response.request.headers.get("Accept-Encoding"))
        self.content_encoding.append(response.headers.get("Content-Encoding"))


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
def source(simulator: SimulatorServer, wire: Wire) -> Iterator[BytemarkHttpSource]:
    session = requests.Session()
    session.hooks["response"].append(wire)
    client = BytemarkHttpSource(
        simulator.url, timeout_seconds=5.0, page_size=5, max_pages=20, max_retries=0, session=session
    )
    yield client
    client.close()


def _deadline() -> float:
    """The whole fetch's time budget in seconds."""
    return 10.0


def _expected_requests(style: str, count: int, per_page: int = 5) -> int:
    """The fewest requests that can prove a list of ``count`` passes complete in ``style``."""
    if style == "short_page":
        # Only a page shorter than per_page ends the list: a full last page is followed by an empty one.
        return count // per_page + 1
    if style == "next_only" and count == per_page:
        # One full page with neither a link nor a total: only the empty page after it can end the list.
        return 2
    return max(1, math.ceil(count / per_page))


def _counts(admin: AdminClient) -> tuple[int, int]:
    per_user = admin.request_counts()["by_user"].get(str(USER), {"v1": 0, "v4": 0})
    return per_user["v1"], per_user["v4"]


# 12 current: two full pages and a short one; 10 expired: two full pages (the last one full); 5 and 0: one
# exactly full page and an empty list; 3 and 1: single short pages.
SIZES = [(12, 10), (5, 0), (3, 1)]


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(("current", "expired"), SIZES)
@pytest.mark.parametrize("style", ENVELOPE_STYLES)
def test_each_envelope_variant_gives_both_lists_exactly_in_the_fewest_requests(
    simulator: SimulatorServer,
    source: BytemarkHttpSource,
    wire: Wire,
    style: str,
    current: int,
    expired: int,
    compressed: bool,
) -> None:
    admin = simulator.admin
    admin.seed_user(
        USER, TOKEN, current=current, expired=expired, envelope_style=style, compress_answers=compressed
    )

    fetched = source.fetch_passes(TOKEN, _deadline())

    truth = admin.passes(USER)
    assert fetched.current == truth["current"]
    assert fetched.expired == truth["expired"]
    assert len({p["uuid"] for p in fetched.current}) == current
    expected = (_expected_requests(style, current), _expected_requests(style, expired))
    assert _counts(admin) == expected
    assert source.requests_sent == sum(expected) == len(wire.content_encoding)
    assert set(wire.accept_encoding) == {"gzip, deflate"}
    assert set(wire.content_encoding) == {"gzip" if compressed else None}


@pytest.mark.parametrize("style", ENVELOPE_STYLES)
def test_server_wide_variant_and_compression_apply_too(
    simulator: SimulatorServer, source: BytemarkHttpSource, wire: Wire, style: str
) -> None:
    admin = simulator.admin
    admin.set_envelope(style)
    admin.set_compression(True)
    admin.seed_user(USER, TOKEN, current=7, expired=11)

    fetched = source.fetch_passes(TOKEN, _deadline())

    truth = admin.passes(USER)
    assert (fetched.current, fetched.expired) == (truth["current"], truth["expired"])
    assert _counts(admin) == (_expected_requests(style, 7), _expected_requests(style, 11))
    assert set(wire.content_encoding) == {"gzip"}


def test_variants_may_differ_between_users_of_one_client(
    simulator: SimulatorServer, source: BytemarkHttpSource
) -> None:
    admin = simulator.admin
    tokens = {}
    for offset, style in enumerate(ENVELOPE_STYLES):
        tokens[style] = f"tok-{USER + offset}-contract"
        admin.seed_user(USER + offset, tokens[style], current=6, expired=5, envelope_style=style)

    for offset, style in enumerate(ENVELOPE_STYLES):
        fetched = source.fetch_passes(tokens[style], _deadline())
        truth = admin.passes(USER + offset)
        assert (fetched.current, fetched.expired) == (truth["current"], truth["expired"]), style


def test_empty_object_pagination_on_a_single_page_ends_the_list(
    simulator: SimulatorServer, source: BytemarkHttpSource
) -> None:
    admin = simulator.admin
    admin.seed_user(USER, TOKEN, current=3, expired=5, empty_pagination_style="object")

    fetched = source.fetch_passes(TOKEN, _deadline())

    truth = admin.passes(USER)
    assert (fetched.current, fetched.expired) == (truth["current"], truth["expired"])
    assert _counts(admin) == (1, 1)


def test_an_absolute_next_link_to_another_host_is_never_followed(simulator: SimulatorServer) -> None:
    """The simulator builds absolute links from the Host header: a forged one makes them point elsewhere."""
    admin = simulator.admin
    admin.seed_user(USER, TOKEN, current=12, expired=0, envelope_style="absolute_next")
    session = requests.Session()
    session.headers["Host"] = "bytemark.evil.example"
    source = BytemarkHttpSource(
        simulator.url, timeout_seconds=5.0, page_size=5, max_pages=20, max_retries=0, session=session
    )

    with pytest.raises(UpstreamError, match="leads off the Bytemark origin") as info:
        source.fetch_passes(TOKEN, _deadline())

    assert info.value.transient is False
    assert "bytemark.evil.example" in str(info.value)
    assert TOKEN not in str(info.value)
    assert _counts(admin) == (1, 0)
    assert source.requests_sent == 1
    source.close()
