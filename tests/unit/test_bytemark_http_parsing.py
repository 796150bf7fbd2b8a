"""The Bytemark client's pure parts (no sockets): envelopes, paging per envelope variant, links, loops,
bounded decompression, content codings, Retry-After, backoff, and what the client refuses before any I/O."""

from __future__ import annotations

import gzip
import json
import math
import random
import tracemalloc
import zlib
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bytemark_cache.adapters.bytemark_envelope import (
    UNDECODABLE,
    BodyDecoder,
    ListPager,
    Paging,
    PassPage,
    content_coding,
    decode_json,
    is_revocation,
    paging_decision,
    parse_pass_page,
    parse_retry_after,
    resolve_link,
)
from bytemark_cache.adapters.bytemark_http import BytemarkHttpSource
from bytemark_cache.domain.backoff import backoff_delay
from bytemark_cache.domain.bounds import MAX_ANSWER_BYTES
from bytemark_cache.errors import DeadlineExceeded, TokenRevoked, UpstreamError

ENDPOINT = "/passes"
BASE = "http://bytemark.test:8917"
MIB = 1 << 20
STYLES = ("spec", "next_only", "absolute_next", "page_count_pages", "short_page")


def _pass(uuid: str, **extra: Any) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "status": "USABLE",
        "first_use": None,
        "time_created": "2024-06-15T04:30:00Z",
        "time_modified": "2024-06-15T04:30:00.000Z",
        **extra,
    }


def _envelope(passes: list[Any], **data: Any) -> dict[str, Any]:
    return {"server_time": "2024-06-15T04:30:00.000Z", "data": {"passes": passes, **data}, "errors": []}


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
    assert page.passes[1]["time_modified"] == "2024-06-15T04:30:00.123Z"
    assert (page.page_count, page.total_count, page.next_link, page.next_given) == (
        2,
        7,
        "/passes?page=2",
        True,
    )


@pytest.mark.parametrize("body", [[], None, "passes", 3, True])
def test_non_object_envelope_is_unusable(body: object) -> None:
    _assert_unusable(body, "not a JSON object")


@pytest.mark.parametrize("data", [None, [], "x"])
def test_missing_or_non_object_data_is_unusable(data: object) -> None:
    _assert_unusable({"data": data, "errors": []}, "'data'")


@pytest.mark.parametrize("passes", [None, {"uuid": "a"}, "a,b"])
def test_passes_not_a_list_is_unusable(passes: object) -> None:
    _assert_unusable({"data": {"passes": passes, "total_count": 1}, "errors": []}, "'data.passes'")


@pytest.mark.parametrize("key", ["total_count", "page_count"])
@pytest.mark.parametrize("value", ["7", 7.0, True, -1])
def test_counts_that_are_not_non_negative_integers_are_unusable(key: str, value: object) -> None:
    _assert_unusable(_envelope([_pass("a")], **{key: value}), f"'data.{key}'")


def test_counts_and_pagination_are_optional() -> None:
    page = parse_pass_page(_envelope([_pass("a")]), endpoint=ENDPOINT)
    assert (page.total_count, page.page_count, page.next_link, page.next_given) == (None, None, None, False)
    nulls = parse_pass_page(_envelope([_pass("a")], total_count=None, page_count=None), endpoint=ENDPOINT)
    assert (nulls.total_count, nulls.page_count) == (None, None)


def test_page_count_disagreeing_with_the_page_is_kept_not_refused() -> None:
    # page_count_pages: the number of pages, not the passes on this one.
    page = parse_pass_page(_envelope([_pass("a")], page_count=3, total_count=11), endpoint=ENDPOINT)
    assert (page.page_count, len(page.passes)) == (3, 1)


@pytest.mark.parametrize(
    ("pagination", "given"),
    [({}, False), (None, False), ({"page": 1, "per_page": 5}, False), ({"next": None}, True)],
)
def test_pagination_without_a_link(pagination: object, given: bool) -> None:
    page = parse_pass_page(_envelope([_pass("a")], total_count=9, pagination=pagination), endpoint=ENDPOINT)
    assert page.next_link is None
    assert page.next_given is given


@pytest.mark.parametrize("link", ["", "   "])
def test_a_blank_next_is_no_link(link: str) -> None:
    page = parse_pass_page(_envelope([_pass("a")], pagination={"next": link}), endpoint=ENDPOINT)
    assert (page.next_link, page.next_given) == (None, True)


@pytest.mark.parametrize("pagination", [["next"], "next", 1])
def test_non_object_pagination_is_unusable(pagination: object) -> None:
    _assert_unusable(_envelope([_pass("a")], pagination=pagination), "'data.pagination'")


@pytest.mark.parametrize("link", [2, True, {"href": "/passes?page=2"}, ["/passes?page=2"]])
def test_a_next_that_is_no_link_is_unusable(link: object) -> None:
    _assert_unusable(_envelope([_pass("a")], pagination={"next": link}), "'data.pagination.next'")


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
    _assert_unusable({"errors": [{"message": "boom"}], "data": {"passes": []}}, "errors")


@pytest.mark.parametrize("body", [None, [], {"errors": None}, {"errors": "50020"}, {"errors": [50020]}])
def test_is_revocation_ignores_odd_shapes(body: object) -> None:
    assert not is_revocation(body)


@pytest.mark.parametrize(
    "text", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1', b"\xff"]
)
def test_what_the_json_decoder_cannot_produce_is_undecodable(text: bytes) -> None:
    assert decode_json(text) is UNDECODABLE
    assert decode_json(bytearray(text)) is UNDECODABLE


def test_json_decoding_keeps_what_strict_json_can_say() -> None:
    body = b'{"n": 1180591620717411303424, "k\\u0000": "\\ud800", "$x": 1e400}'
    assert decode_json(bytearray(body)) == {"n": 2**70, "k\x00": "\ud800", "$x": math.inf}
    assert decode_json(b"null") is None


# --- the paging decision ---------------------------------------------------------------------------------


def _page(count: int, **data: Any) -> PassPage:
    return parse_pass_page(_envelope([_pass(f"p{i}") for i in range(count)], **data), endpoint=ENDPOINT)


def _decide(
    page: PassPage, *, number: int = 1, so_far: int | None = None, links_seen: bool = False
) -> Paging:
    items = len(page.passes) if so_far is None else so_far
    return paging_decision(page, page_number=number, per_page=5, items_so_far=items, links_seen=links_seen)


def test_a_stale_next_on_a_complete_list_stops() -> None:
    assert (
        _decide(_page(2, total_count=12, pagination={"next": "/passes?page=4"}), number=3, so_far=12)
        is Paging.STOP
    )
    assert _decide(_page(5, total_count=10, pagination={"next": "/x"}), number=2, so_far=10) is Paging.STOP


def test_a_link_on_an_incomplete_list_is_followed() -> None:
    assert _decide(_page(5, total_count=12, pagination={"next": "/passes?page=2"})) is Paging.FOLLOW_LINK
    assert _decide(_page(5, pagination={"next": "/passes?page=2"})) is Paging.FOLLOW_LINK


@pytest.mark.parametrize("pagination", [{}, None, {"next": None}, {"page": 1, "per_page": 5}])
def test_total_count_not_reached_goes_on_without_a_link(pagination: object) -> None:
    assert _decide(_page(5, total_count=12, pagination=pagination)) is Paging.NEXT_PAGE
    # Even a short page: the total says more follow.
    assert _decide(_page(3, total_count=12, pagination=pagination)) is Paging.NEXT_PAGE


def test_an_empty_page_always_ends_the_list() -> None:
    assert _decide(_page(0, total_count=12, pagination={"next": "/passes?page=2"}), so_far=5) is Paging.STOP
    assert _decide(_page(0, total_count=0)) is Paging.STOP
    assert _decide(_page(0)) is Paging.STOP


def test_without_total_a_list_that_gave_links_ends_at_the_first_page_without_one() -> None:
    assert _decide(_page(5, pagination={"page": 2, "per_page": 5}), number=2, links_seen=True) is Paging.STOP


def test_without_total_an_explicit_null_next_ends_the_list() -> None:
    assert _decide(_page(5, pagination={"next": None})) is Paging.STOP


def test_without_total_or_links_a_full_page_goes_on_and_a_short_one_stops() -> None:
    assert _decide(_page(5)) is Paging.NEXT_PAGE
    assert _decide(_page(4)) is Paging.STOP
    assert _decide(_page(5, pagination={"page": 1, "per_page": 5})) is Paging.NEXT_PAGE


def test_page_count_read_as_a_number_of_pages() -> None:
    # 3 passes but page_count 4: that is a page count, and page 1 of 4 is not the last.
    assert _decide(_page(3, page_count=4), number=1) is Paging.NEXT_PAGE
    assert _decide(_page(3, page_count=4), number=4) is Paging.STOP
    # page_count equal to the passes on the page is a count of items: only the page's fullness counts.
    assert _decide(_page(3, page_count=3), number=1) is Paging.STOP
    assert _decide(_page(5, page_count=5), number=1) is Paging.NEXT_PAGE


# --- whole lists per envelope variant (the simulator's styles, served from memory) ----------------------


def _serve(style: str, passes: list[dict[str, Any]], url: str) -> dict[str, Any]:
    """The page ``url`` asks for, as the simulator serves it in ``style`` (its state module docstring)."""
    query = parse_qs(urlsplit(url).query)
    page, per_page = int(query["page"][0]), int(query["per_page"][0])
    start = (page - 1) * per_page
    items = passes[start : start + per_page]
    more = start + len(items) < len(passes)
    link = f"/passes?page={page + 1}&per_page={per_page}" if more else None
    if style == "absolute_next" and link:
        link = BASE + link
    data: dict[str, Any] = {
        "page_count": math.ceil(len(passes) / per_page) if style == "page_count_pages" else len(items)
    }
    if style not in ("next_only", "short_page"):
        data["total_count"] = len(passes)
    if style != "short_page":
        data["pagination"] = {"page": page, "per_page": per_page}
        if link is not None or style != "next_only":
            data["pagination"]["next"] = link
    return _envelope(items, **data)


def _walk(style: str, count: int, per_page: int = 5, **limits: int) -> tuple[list[int], list[str]]:
    """Pages asked for and uuids returned for a list of ``count`` passes."""
    passes = [_pass(f"u{i:03d}") for i in range(count)]
    pager = ListPager(
        base_url=BASE,
        path=ENDPOINT,
        params={},
        per_page=per_page,
        max_pages=limits.get("max_pages", 50),
        max_passes=limits.get("max_passes", 10_000),
    )
    asked: list[int] = []
    url: str | None = pager.first_url
    while url is not None:
        assert url.startswith(BASE + ENDPOINT + "?")
        asked.append(int(parse_qs(urlsplit(url).query)["page"][0]))
        url = pager.add_page(_serve(style, passes, url), url)
    return asked, [p["uuid"] for p in pager.result()]


def _expected_requests(style: str, count: int, per_page: int = 5) -> int:
    if style == "short_page":
        return count // per_page + 1  # a full last page is followed by an empty one
    if style == "next_only" and count == per_page:
        return 2  # one full page without a link or a total: only an empty page can end it
    return max(1, math.ceil(count / per_page))


@pytest.mark.parametrize("count", [0, 3, 5, 10, 12])
@pytest.mark.parametrize("style", STYLES)
def test_every_variant_yields_the_whole_list_in_the_fewest_requests(style: str, count: int) -> None:
    asked, uuids = _walk(style, count)

    assert uuids == [f"u{i:03d}" for i in range(count)]
    assert asked == list(range(1, _expected_requests(style, count) + 1))


def test_the_first_page_asks_with_the_given_parameters() -> None:
    pager = ListPager(
        base_url=BASE + "/",
        path="/v4.0/passes",
        params={"status": "EXPIRED"},
        per_page=7,
        max_pages=3,
        max_passes=9,
    )
    assert pager.first_url == f"{BASE}/v4.0/passes?status=EXPIRED&per_page=7&page=1"


# --- links and loops -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("/passes?page=2&per_page=5", f"{BASE}/passes?page=2&per_page=5"),
        ("?page=2", f"{BASE}/passes?page=2"),
        (f"{BASE}/passes?page=2#top", f"{BASE}/passes?page=2"),
        ("HTTP://BYTEMARK.TEST:8917/passes?page=2", "http://BYTEMARK.TEST:8917/passes?page=2"),
    ],
)
def test_links_on_the_configured_origin_are_resolved(link: str, expected: str) -> None:
    request_url = f"{BASE}/passes?per_page=5&page=1"
    assert resolve_link(link, request_url=request_url, base_url=BASE, endpoint=ENDPOINT) == expected


def test_a_default_port_is_the_same_origin() -> None:
    resolved = resolve_link(
        "https://api.example:443/passes?page=2",
        request_url="https://api.example/passes",
        base_url="https://api.example",
        endpoint=ENDPOINT,
    )
    assert resolved == "https://api.example:443/passes?page=2"


@pytest.mark.parametrize(
    "link",
    [
        "http://evil.example/passes?page=2&secret=abc",
        "//evil.example/passes?page=2&secret=abc",
        "https://bytemark.test:8917/passes?page=2&secret=abc",
        "http://bytemark.test:8918/passes?page=2&secret=abc",
        "http://someone@bytemark.test:8917/passes?page=2&secret=abc",
        "ftp://bytemark.test:8917/passes?secret=abc",
    ],
)
def test_links_leaving_the_origin_are_refused_without_showing_the_link(link: str) -> None:
    with pytest.raises(UpstreamError) as info:
        resolve_link(link, request_url=f"{BASE}/passes?page=1", base_url=BASE, endpoint=ENDPOINT)
    assert info.value.transient is False
    assert "leads off the Bytemark origin" in str(info.value)
    assert "secret" not in str(info.value)
    assert "/passes?" not in str(info.value)


def _pager(**limits: int) -> ListPager:
    return ListPager(
        base_url=BASE,
        path=ENDPOINT,
        params={},
        per_page=2,
        max_pages=limits.get("max_pages", 10),
        max_passes=limits.get("max_passes", 100),
    )


def _linked(uuids: list[str], link: str | None) -> dict[str, Any]:
    return _envelope([_pass(u) for u in uuids], pagination={"next": link})


def _loop_error(excinfo: pytest.ExceptionInfo[UpstreamError]) -> str:
    assert excinfo.value.transient is False
    return str(excinfo.value)


def test_an_off_origin_link_is_refused_when_it_would_be_followed() -> None:
    pager = _pager()
    with pytest.raises(UpstreamError) as info:
        pager.add_page(_linked(["a", "b"], "http://evil.example/passes?page=2"), pager.first_url)
    assert "evil.example" in _loop_error(info)


def test_the_same_next_link_twice_is_a_loop() -> None:
    pager = _pager()
    url = pager.add_page(_linked(["a", "b"], "/passes?page=2&per_page=2"), pager.first_url)
    assert url == f"{BASE}/passes?page=2&per_page=2"
    with pytest.raises(UpstreamError) as info:
        pager.add_page(_linked(["c", "d"], "/passes?per_page=2&page=2"), url)
    assert "paging loop" in _loop_error(info)


def test_a_link_back_to_the_first_page_is_a_loop() -> None:
    pager = _pager()
    with pytest.raises(UpstreamError) as info:
        pager.add_page(_linked(["a", "b"], "/passes?page=1&per_page=2"), pager.first_url)
    assert "paging loop" in _loop_error(info)


def test_a_page_repeating_the_previous_one_is_a_loop() -> None:
    # A server ignoring ``page``: full pages, no total, no links.
    pager = _pager()
    url = pager.add_page(_envelope([_pass("a"), _pass("b")]), pager.first_url)
    assert url is not None
    with pytest.raises(UpstreamError) as info:
        pager.add_page(_envelope([_pass("a"), _pass("b")]), url)
    assert "repeats the previous page" in _loop_error(info)


def test_more_pages_than_max_pages_are_refused_not_truncated() -> None:
    with pytest.raises(UpstreamError) as info:
        _walk("spec", 12, max_pages=2)
    assert "more than max_pages=2 pages" in _loop_error(info)
    assert _walk("spec", 10, max_pages=2)[0] == [1, 2]


def test_more_passes_than_the_list_bound_are_refused() -> None:
    with pytest.raises(UpstreamError) as info:
        _walk("next_only", 12, max_passes=11)
    assert "MAX_PASSES_PER_LIST=11" in _loop_error(info)
    assert len(_walk("next_only", 11, max_passes=11)[1]) == 11


def test_duplicates_across_pages_are_collapsed() -> None:
    pager = _pager()
    older = _pass("a", time_modified="2024-01-01T00:00:00Z", n=1)
    newer = _pass("a", time_modified="2024-02-01T00:00:00Z", n=2)
    url = pager.add_page(_envelope([older, _pass("b")], total_count=4), pager.first_url)
    assert url is not None
    assert pager.add_page(_envelope([_pass("c"), newer], total_count=4), url) is None
    assert pager.result() == [newer, _pass("b"), _pass("c")]


# --- bounded decompression ----------------------------------------------------------------------------------


def _gzip_bomb(inflated: int) -> bytes:
    """Concatenated gzip members of 1 MiB of spaces each (one valid gzip stream, ~1 KB per MiB)."""
    member = gzip.compress(b" " * MIB, mtime=0)
    return member * (inflated // MIB)


def _zlib_bomb_prefix(inflated: int) -> bytes:
    """The start of one zlib stream inflating to ``inflated`` spaces (no end: the bound must come first)."""
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    flushed = block.compress(b" " * MIB) + block.flush(zlib.Z_FULL_FLUSH)
    return b"\x78\xda" + flushed * (inflated // MIB)


def _decode(encoding: str | None, body: bytes, chunk: int = 64 * 1024, **bounds: int) -> bytearray:
    decoder = BodyDecoder(
        encoding,
        endpoint=ENDPOINT,
        max_received=bounds.get("max_received", MAX_ANSWER_BYTES),
        max_decoded=bounds.get("max_decoded", MAX_ANSWER_BYTES),
    )
    _feed(decoder, body, chunk)
    return decoder.finish()


def _feed(decoder: BodyDecoder, body: bytes, chunk: int) -> None:
    for start in range(0, len(body), chunk):
        decoder.feed(body[start : start + chunk])


@pytest.mark.parametrize(("encoding", "bomb"), [("gzip", _gzip_bomb), ("deflate", _zlib_bomb_prefix)])
def test_a_one_gib_bomb_stops_at_the_decoded_bound_with_little_memory(encoding: str, bomb: Any) -> None:
    body = bomb(1 << 30)
    assert len(body) < 2 * MIB  # about 1 MB on the wire
    decoder = BodyDecoder(
        encoding, endpoint=ENDPOINT, max_received=MAX_ANSWER_BYTES, max_decoded=MAX_ANSWER_BYTES
    )
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamError) as info:
            _feed(decoder, body, 64 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.transient is False
    assert f"MAX_ANSWER_BYTES={MAX_ANSWER_BYTES} bytes after decompression" in str(info.value)
    assert decoder.decoded <= MAX_ANSWER_BYTES
    assert decoder.received < 64 * 1024 * 2  # it stopped within the first couple of chunks
    assert peak < MAX_ANSWER_BYTES + 4 * MIB


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        (None, lambda data: data),
        ("identity", lambda data: data),
        ("gzip", lambda data: gzip.compress(data, mtime=0)),
        ("x-gzip", lambda data: gzip.compress(data, mtime=0)),
        ("deflate", zlib.compress),
        ("deflate", lambda data: _raw_deflate(data)),
    ],
    ids=["absent", "identity", "gzip", "x-gzip", "deflate-zlib", "deflate-raw"],
)
@pytest.mark.parametrize("chunk", [1, 7, 65536])
def test_supported_codings_decode_exactly_in_any_chunking(
    encoding: str | None, compress: Any, chunk: int
) -> None:
    text = json.dumps(_envelope([_pass(f"p{i}") for i in range(20)])).encode()
    assert _decode(encoding, compress(text), chunk) == text


def _raw_deflate(data: bytes) -> bytes:
    """Raw deflate (no zlib header), which some servers send as ``deflate``."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def test_a_multi_member_gzip_body_is_one_answer() -> None:
    assert (
        _decode("gzip", gzip.compress(b'{"a":', mtime=0) + gzip.compress(b" 1}", mtime=0), 5) == b'{"a": 1}'
    )


def test_an_answer_exactly_at_the_bound_is_accepted_and_one_byte_more_is_not() -> None:
    assert len(_decode("gzip", gzip.compress(b" " * 1000), max_decoded=1000)) == 1000
    with pytest.raises(UpstreamError, match="after decompression"):
        _decode("gzip", gzip.compress(b" " * 1001), max_decoded=1000)
    with pytest.raises(UpstreamError, match="after decompression"):
        _decode(None, b" " * 1001, max_decoded=1000)


def test_bytes_received_are_bounded_too() -> None:
    with pytest.raises(UpstreamError, match=f"MAX_ANSWER_BYTES={1000} bytes as received"):
        _decode(None, b" " * 1001, 100, max_received=1000)


def test_the_decoded_bound_can_be_named_for_the_fetch() -> None:
    decoder = BodyDecoder(
        None, endpoint=ENDPOINT, max_received=100, max_decoded=10, decoded_bound="MAX_FETCH_BYTES"
    )
    with pytest.raises(UpstreamError, match="larger than MAX_FETCH_BYTES after decompression"):
        decoder.feed(b"x" * 11)


@pytest.mark.parametrize(
    ("encoding", "body", "reason"),
    [
        ("gzip", gzip.compress(b'{"a": 1}')[:-6], "ends before its compressed stream"),
        ("gzip", b"", "ends before its compressed stream"),
        ("deflate", zlib.compress(b'{"a": 1}')[:-3], "ends before its compressed stream"),
        ("deflate", b"x", "ends before its compressed stream"),
        ("gzip", b'{"a": 1}', "does not decompress"),
        ("gzip", gzip.compress(b"{}") + b"trailing", "does not decompress"),
        ("deflate", zlib.compress(b"{}") + b"trailing", "data after the end of the deflate stream"),
    ],
)
def test_broken_compressed_bodies_are_unusable(encoding: str, body: bytes, reason: str) -> None:
    with pytest.raises(UpstreamError, match=reason) as info:
        _decode(encoding, body, 4)
    assert info.value.transient is False


@pytest.mark.parametrize(
    ("header", "coding"),
    [(None, "identity"), ("", "identity"), ("identity", "identity"), ("GZIP", "gzip"), ("x-gzip", "gzip"),
     (" deflate ", "deflate"), ("identity, gzip", "gzip")],
)  # fmt: skip
def test_content_codings_this_client_decodes(header: str | None, coding: str) -> None:
    assert content_coding(header, endpoint=ENDPOINT) == coding


@pytest.mark.parametrize("header", ["br", "zstd", "compress", "gzip, br", "gzip, gzip", "x-unknown-coding"])
def test_any_other_content_coding_is_refused(header: str) -> None:
    with pytest.raises(UpstreamError, match="unsupported Content-Encoding") as info:
        BodyDecoder(header, endpoint=ENDPOINT, max_received=10, max_decoded=10)
    assert info.value.transient is False


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


# --- backoff (the domain's rule, which the client uses) ---------------------------------------------------


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
    source = _source()
    with pytest.raises(TokenRevoked) as info:
        source.fetch_passes(token, 10)
    assert source.requests_sent == 0
    if token:
        assert token not in str(info.value)
        assert token not in repr(info.value)


@pytest.mark.parametrize("left", [0.0, -5.0, 0.01])
def test_a_deadline_already_over_sends_nothing(left: float) -> None:
    source = _source()
    with pytest.raises(DeadlineExceeded) as info:
        source.fetch_passes("tok-42", left)
    assert info.value.transient is True
    assert source.requests_sent == 0


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
