"""The pure half of the Bytemark client: envelopes, paging decisions, links, bounded decompression.

No I/O here; ``bytemark_http`` feeds it bytes and bodies. Every refusal is ``UpstreamError(transient=False)``
naming the list (``/passes`` or ``/v4.0/passes``) and, for a bound, the bound; a revoked token
(error code 50020) is ``TokenRevoked``.

Paging (``paging_decision``), in order: an empty page ends the list; with ``total_count`` present the list
goes on while the passes so far are fewer (a stale ``next`` on a complete list costs nothing, a missing one
on an incomplete list does not truncate it); else a ``next`` link is followed; else a list that gave links
before, or an explicit ``next: null``, has ended; else a full page (or a ``page_count`` that reads as a
number of pages and says more) asks for the next page number. Links are followed only to the configured
origin (the request carries the user's bearer token). ``ListPager`` adds the bounds: ``max_pages``,
``MAX_PASSES_PER_LIST``, a page asked for twice or a page repeating the previous one's uuids (loops).

Longer than the layer's ~350-line guide on purpose: it is every rule about what Bytemark may answer, in one
place, each a small pure function with its own tests (tests/unit/test_bytemark_http_parsing.py).
"""

from __future__ import annotations

import email.utils
import enum
import json
import math
import zlib
from dataclasses import dataclass
from datetime import UTC
from typing import Any, TypeGuard
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

from bytemark_cache.domain.model import Pass
from bytemark_cache.domain.passes import collapse_duplicates, validate_pass
from bytemark_cache.errors import TokenRevoked, UpstreamError

REVOKED_ERROR_CODE = 50020
"""Bytemark's "session/token expired or revoked" error code (sometimes sent with HTTP 200)."""

ACCEPT_ENCODING = "gzip, deflate"
"""The only content codings this client decodes (itself, with bounded output)."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_INFLATE_STEP = 1 << 20


def unusable(endpoint: str, reason: str) -> UpstreamError:
    """The permanent error for an answer this client cannot use."""
    return UpstreamError(f"Bytemark {endpoint}: {reason}", transient=False)


# ------------------------------------------------------------------------------------------- envelope


@dataclass(frozen=True)
class PassPage:
    """One validated page; ``None`` counts were absent (or null) in the answer."""

    passes: list[Pass]
    page_count: int | None
    total_count: int | None
    next_link: str | None
    """``pagination.next`` when it is a non-empty link."""
    next_given: bool
    """True when ``pagination`` has a ``next`` key at all (null or "" there means "no next page")."""


def is_revocation(body: object) -> bool:
    """True when an answer's ``errors`` list carries code 50020 (token expired or revoked)."""
    return REVOKED_ERROR_CODE in _error_codes(body)


def parse_pass_page(body: object, *, endpoint: str) -> PassPage:
    """Validate one decoded envelope; raise TokenRevoked (50020) or UpstreamError(transient=False)."""
    if not isinstance(body, dict):
        raise unusable(endpoint, "answer is not a JSON object")
    codes = _error_codes(body)
    if REVOKED_ERROR_CODE in codes:
        raise TokenRevoked()
    if codes or body.get("errors"):
        # Codes are plain numbers; the messages next to them may quote user data, so they stay out.
        shown = ", ".join(str(code) for code in codes) or "unrecognised"
        raise unusable(endpoint, f"Bytemark reported errors (codes: {shown})")
    data = body.get("data")
    if not isinstance(data, dict):
        raise unusable(endpoint, "'data' is missing or not an object")
    raw_passes = data.get("passes")
    if not isinstance(raw_passes, list):
        raise unusable(endpoint, "'data.passes' is missing or not a list")
    total_count = _optional_count(data, "total_count", endpoint)
    page_count = _optional_count(data, "page_count", endpoint)
    pagination = data.get("pagination")
    if pagination is None:
        pagination = {}
    if not isinstance(pagination, dict):
        raise unusable(endpoint, "'data.pagination' is not an object")
    next_link = pagination.get("next")
    if next_link is not None and not isinstance(next_link, str):
        raise unusable(endpoint, "'data.pagination.next' is neither a link nor null")
    passes: list[Pass] = []
    for index, raw_pass in enumerate(raw_passes):
        try:
            passes.append(validate_pass(raw_pass))
        except UpstreamError as exc:
            raise unusable(endpoint, f"pass #{index} is invalid: {exc}") from exc
    return PassPage(
        passes=passes,
        page_count=page_count,
        total_count=total_count,
        next_link=(next_link.strip() or None) if next_link else None,
        next_given="next" in pagination,
    )


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date); None when unusable."""
    text = (value or "").strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 HTTP-dates are always GMT; a naive result means the sender left the zone out.
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


UNDECODABLE: Any = object()
"""What ``decode_json`` returns for a body that is not JSON (distinct from a JSON ``null``)."""


def decode_json(content: bytes | bytearray) -> object:
    """The JSON value of ``content`` (UTF-8/16/32), or UNDECODABLE; NaN and Infinity are not JSON."""
    try:
        return json.loads(content, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return UNDECODABLE


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _optional_count(data: dict[str, Any], key: str, endpoint: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < 0:
        raise unusable(endpoint, f"'data.{key}' is not a non-negative integer")
    return value


def _error_codes(body: object) -> list[int]:
    """The numeric ``errors[].code`` values of an envelope (codes sent as digit strings count too)."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    codes: list[int] = []
    for error in errors:
        code = error.get("code") if isinstance(error, dict) else None
        if _is_int(code):
            codes.append(code)
        elif isinstance(code, str) and code.strip().isdigit():
            codes.append(int(code.strip()))
    return codes


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; ``true`` is not a count.
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------- paging


class Paging(enum.Enum):
    """What to do after a page."""

    STOP = "stop"
    FOLLOW_LINK = "follow the next link"
    NEXT_PAGE = "ask for the next page number"


def paging_decision(
    page: PassPage, *, page_number: int, per_page: int, items_so_far: int, links_seen: bool
) -> Paging:
    """Whether the list goes on after ``page`` (page ``page_number``; ``items_so_far`` includes it).

    ``links_seen``: an earlier page of this list carried a ``next`` link.
    """
    count = len(page.passes)
    if count == 0:
        return Paging.STOP
    if page.total_count is not None:
        if items_so_far >= page.total_count:
            return Paging.STOP
        return Paging.FOLLOW_LINK if page.next_link else Paging.NEXT_PAGE
    if page.next_link:
        return Paging.FOLLOW_LINK
    if links_seen or page.next_given:
        return Paging.STOP
    # page_count equal to the page's length is the count of items; anything else is the number of pages.
    more_pages = page.page_count is not None and page.page_count != count and page_number < page.page_count
    return Paging.NEXT_PAGE if count >= per_page or more_pages else Paging.STOP


def origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def resolve_link(link: str, *, request_url: str, base_url: str, endpoint: str) -> str:
    """``link`` (relative or absolute) made absolute; refused unless it stays on ``base_url``'s origin."""
    resolved = urljoin(request_url, link.strip())
    try:
        parts = urlsplit(resolved)
        target = origin(resolved)
    except ValueError:
        raise unusable(endpoint, "'pagination.next' is not a valid link") from None
    if parts.username is not None or parts.password is not None or target != origin(base_url):
        scheme, host, port = target
        # Only the origin is shown: the link's path and query are Bytemark's data, not ours to log.
        raise unusable(
            endpoint, f"'pagination.next' leads off the Bytemark origin (to {scheme}://{host}:{port})"
        )
    return parts._replace(fragment="").geturl()


def page_key(url: str) -> tuple[Any, ...]:
    """What makes two URLs the same page: origin, path and the query's pairs in any order."""
    parts = urlsplit(url)
    return (*origin(url), parts.path or "/", tuple(sorted(parse_qsl(parts.query, keep_blank_values=True))))


class ListPager:
    """Walks one list page by page: says which URL comes next and keeps every bound of the walk."""

    def __init__(
        self,
        *,
        base_url: str,
        path: str,
        params: dict[str, str],
        per_page: int,
        max_pages: int,
        max_passes: int,
    ) -> None:
        self.endpoint = path
        self._base = base_url.rstrip("/") + path
        self._base_url = base_url
        self._params = params
        self._per_page = per_page
        self._max_pages = max_pages
        self._max_passes = max_passes
        self.pages = 0
        self._passes: list[Pass] = []
        self._previous_uuids: list[str] | None = None
        self._links_seen = False
        self.first_url = self._page_url(1)
        self._asked = {page_key(self.first_url)}

    def add_page(self, body: object, url: str) -> str | None:
        """Take the decoded answer to ``url``; the next URL to ask for, or None when the list is complete."""
        page = parse_pass_page(body, endpoint=self.endpoint)
        self.pages += 1
        self._passes.extend(page.passes)
        if len(self._passes) > self._max_passes:
            raise unusable(self.endpoint, f"more than MAX_PASSES_PER_LIST={self._max_passes} passes")
        uuids = [str(pass_["uuid"]) for pass_ in page.passes]
        if uuids and uuids == self._previous_uuids:
            raise unusable(self.endpoint, f"page {self.pages} repeats the previous page (a paging loop)")
        self._previous_uuids = uuids
        step = paging_decision(
            page,
            page_number=self.pages,
            per_page=self._per_page,
            items_so_far=len(self._passes),
            links_seen=self._links_seen,
        )
        self._links_seen = self._links_seen or page.next_link is not None
        if step is Paging.STOP:
            return None
        if self.pages >= self._max_pages:
            # A truncated list would read as "passes removed" to the sync: refuse instead.
            raise unusable(
                self.endpoint,
                f"more than max_pages={self._max_pages} pages (total_count={page.total_count}, "
                f"per_page={self._per_page})",
            )
        if step is Paging.FOLLOW_LINK and page.next_link is not None:
            next_url = resolve_link(
                page.next_link, request_url=url, base_url=self._base_url, endpoint=self.endpoint
            )
        else:
            next_url = self._page_url(self.pages + 1)
        key = page_key(next_url)
        if key in self._asked:
            raise unusable(
                self.endpoint, f"page {self.pages} links to a page already fetched (a paging loop)"
            )
        self._asked.add(key)
        return next_url

    def result(self) -> list[Pass]:
        """Every pass of the list, one per uuid."""
        return collapse_duplicates(self._passes)

    def _page_url(self, number: int) -> str:
        return f"{self._base}?{urlencode({**self._params, 'per_page': self._per_page, 'page': number})}"


# ------------------------------------------------------------------------------------ bounded decoding


class BodyDecoder:
    """An answer body fed chunk by chunk: counts the bytes received and inflates gzip/deflate itself.

    ``max_received`` bounds the bytes as received, ``max_decoded`` the bytes after decompression
    (``decoded_bound`` names that bound in the error, MAX_ANSWER_BYTES by default); zlib's ``max_length``
    keeps a bomb from ever inflating more than one byte past the bound.
    """

    def __init__(
        self,
        content_encoding: str | None,
        *,
        endpoint: str,
        max_received: int,
        max_decoded: int,
        decoded_bound: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.coding = content_coding(content_encoding, endpoint=endpoint)
        self._max_received = max_received
        self._max_decoded = max_decoded
        self._decoded_bound = decoded_bound or f"MAX_ANSWER_BYTES={max_decoded} bytes"
        self.received = 0
        self._body = bytearray()
        self._inflater: Any = None
        self._header = b""  # deflate: the first bytes, until zlib or raw deflate can be told apart
        self._ended = False  # the compressed stream (every gzip member so far) is complete

    @property
    def decoded(self) -> int:
        """Bytes after decompression so far."""
        return len(self._body)

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk as received; raise UpstreamError(transient=False) past a bound."""
        self.received += len(chunk)
        if self.received > self._max_received:
            raise unusable(
                self.endpoint, f"answer larger than MAX_ANSWER_BYTES={self._max_received} bytes as received"
            )
        if self.coding == "identity":
            self._append(chunk)
        elif chunk:
            self._inflate(chunk)

    def finish(self) -> bytearray:
        """The decoded body, once the whole answer was fed; a compressed stream must be complete."""
        if self.coding != "identity" and not self._ended:
            raise unusable(self.endpoint, f"the {self.coding} body ends before its compressed stream does")
        return self._body

    def _inflate(self, data: bytes) -> None:
        if self.coding == "deflate" and self._inflater is None:
            self._header += data
            if len(self._header) < 2:
                return
            data, self._header = self._header, b""
            # RFC 9110 deflate is a zlib stream; some servers send raw deflate. A zlib header is
            # CM=8, CINFO<=7 and a multiple of 31 as a 16-bit number.
            zlib_header = data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and (data[0] << 8 | data[1]) % 31 == 0
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        try:
            while data:
                if self._inflater is None:  # gzip: the next member of a multi-member body
                    self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    self._ended = False
                # One byte past the bound proves it exceeded; small steps keep the output buffers small.
                step = min(self._max_decoded - len(self._body) + 1, _INFLATE_STEP)
                self._append(self._inflater.decompress(data, step))
                if not self._inflater.eof:
                    data = self._inflater.unconsumed_tail
                    continue
                self._ended = True
                data = self._inflater.unused_data
                if self.coding == "gzip":
                    self._inflater = None
                elif data:
                    raise unusable(self.endpoint, "data after the end of the deflate stream")
        except zlib.error:
            raise unusable(self.endpoint, f"the {self.coding} body does not decompress") from None

    def _append(self, data: bytes) -> None:
        if len(self._body) + len(data) > self._max_decoded:
            raise unusable(self.endpoint, f"answer larger than {self._decoded_bound} after decompression")
        self._body += data


def content_coding(header: str | None, *, endpoint: str) -> str:
    """``identity``, ``gzip`` or ``deflate`` from a Content-Encoding header; anything else is refused."""
    codings = [part.strip().lower() for part in (header or "").split(",")]
    codings = [coding for coding in codings if coding and coding != "identity"]
    if not codings:
        return "identity"
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return "deflate" if codings[0] == "deflate" else "gzip"
    shown = ", ".join(coding[:20] for coding in codings[:3])
    raise unusable(
        endpoint, f"unsupported Content-Encoding {shown!r} (this client asked for {ACCEPT_ENCODING})"
    )
