"""Bytemark's pass lists over HTTP: the ``PassSource`` adapter (SPEC §2).

Both lists (v1 current, v4 expired history) are fetched page by page through one ``requests.Session`` per
instance, so connections are reused across calls and across warm Lambda invocations. Every failure
becomes one of the project's own errors: ``TokenRevoked`` (HTTP 401 or error code 50020, never retried),
or ``UpstreamError`` — transient (5xx, timeouts, resets, 429, after bounded retries with backoff) or not
(anything Bytemark answered that this client cannot use). Nothing partial is ever returned: a caller
that got a truncated list would take the missing passes for removed ones.

The token is a secret: it is sent only in the ``Authorization`` header of the request, never stored on
the instance or the session, and never put in a message, a log record or a repr.
"""

from __future__ import annotations

import email.utils
import http.cookiejar
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, TypeGuard

import requests
from requests.adapters import HTTPAdapter

from bytemark_cache.domain.model import FetchedPasses, Pass
from bytemark_cache.domain.passes import collapse_duplicates, validate_pass
from bytemark_cache.errors import TokenRevoked, UpstreamError

logger = logging.getLogger(__name__)

V1_PATH = "/passes"
"""The legacy v1 list: the user's current passes."""

V4_PATH = "/v4.0/passes"
"""The v4 list, asked for with ``status=EXPIRED``: the user's pass history."""

REVOKED_ERROR_CODE = 50020
"""Bytemark's "session/token expired or revoked" error code (sometimes sent with HTTP 200)."""

USER_AGENT = "bytemark-ticket-cache/0.1 (+python-requests)"

DEFAULT_MAX_RETRY_AFTER = 10.0
"""Longest ``Retry-After`` worth waiting for inside one invocation; longer ones fail fast (transient)."""

_MAX_CONNECT_TIMEOUT = 3.05
"""Connecting takes a few round trips at most; a slow read is the only thing worth waiting longer for."""

_TRANSIENT_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class PassPage:
    """One validated page of a pass list."""

    passes: list[Pass]
    page_count: int
    total_count: int
    next_link: object
    """``pagination.next`` as received (a link, ``None`` or absent); only its truthiness matters."""


def has_next_page(*, page: int, per_page: int, page_count: int, total_count: int, next_link: object) -> bool:
    """True while ``pagination.next`` is truthy and ``(page-1)*per_page + page_count < total_count``."""
    # Both conditions, as SPEC §2 says: a stale ``next`` on the last page must not cause an extra call,
    # and a missing/null ``next`` ends the list even when the counts disagree.
    return bool(next_link) and (page - 1) * per_page + page_count < total_count


def is_revocation(body: object) -> bool:
    """True when an answer's ``errors`` list carries code 50020 (token expired or revoked)."""
    return REVOKED_ERROR_CODE in _error_codes(body)


def parse_pass_page(body: object, *, endpoint: str) -> PassPage:
    """Validate one decoded envelope; raise TokenRevoked (50020) or UpstreamError(transient=False)."""
    if not isinstance(body, dict):
        raise _unusable(endpoint, "answer is not a JSON object")
    codes = _error_codes(body)
    if REVOKED_ERROR_CODE in codes:
        raise TokenRevoked()
    if codes or body.get("errors"):
        # Codes are plain numbers; the messages next to them may quote user data, so they stay out.
        shown = ", ".join(str(code) for code in codes) or "unrecognised"
        raise _unusable(endpoint, f"Bytemark reported errors (codes: {shown})")
    data = body.get("data")
    if not isinstance(data, dict):
        raise _unusable(endpoint, "'data' is missing or not an object")
    raw_passes = data.get("passes")
    if not isinstance(raw_passes, list):
        raise _unusable(endpoint, "'data.passes' is missing or not a list")
    total_count = data.get("total_count")
    if not _is_int(total_count):
        raise _unusable(endpoint, "'data.total_count' is missing or not an integer")
    page_count = data.get("page_count", len(raw_passes))
    if not _is_int(page_count) or page_count < 0:
        raise _unusable(endpoint, "'data.page_count' is not a non-negative integer")
    if page_count != len(raw_passes):
        # Paging arithmetic trusts page_count; if it disagrees with the list we could skip passes.
        raise _unusable(endpoint, f"'data.page_count' is {page_count} but the page holds {len(raw_passes)}")
    pagination = data.get("pagination")
    if pagination is None:
        pagination = {}
    if not isinstance(pagination, dict):
        raise _unusable(endpoint, "'data.pagination' is not an object")
    passes: list[Pass] = []
    for index, raw_pass in enumerate(raw_passes):
        try:
            passes.append(validate_pass(raw_pass))
        except UpstreamError as exc:
            raise _unusable(endpoint, f"pass #{index} is invalid: {exc}") from exc
    return PassPage(
        passes=passes, page_count=page_count, total_count=total_count, next_link=pagination.get("next")
    )


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date); None when unusable."""
    if value is None:
        return None
    text = value.strip()
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


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**attempt)]`` (attempt from 0)."""
    ceiling = min(cap, base * (2 ** max(0, attempt)))
    return rng.uniform(0.0, ceiling)


class BytemarkHttpSource:
    """``PassSource`` over Bytemark's HTTP API, with bounded retries and no partial results."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float,
        page_size: int,
        max_pages: int,
        max_retries: int = 3,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        connect_timeout_seconds: float | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be > 0")
        if page_size < 1 or max_pages < 1:
            raise ValueError("page_size and max_pages must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._base_url = base_url.rstrip("/")
        connect = connect_timeout_seconds or min(timeout_seconds, _MAX_CONNECT_TIMEOUT)
        self._timeout = (connect, timeout_seconds)
        self._page_size = page_size
        self._max_pages = max_pages
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_retry_after = max_retry_after
        self._session = session if session is not None else _new_session()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()

    def __repr__(self) -> str:
        return (
            f"BytemarkHttpSource(base_url={self._base_url!r}, page_size={self._page_size}, "
            f"max_pages={self._max_pages}, max_retries={self._max_retries})"
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def fetch_passes(self, token: str) -> FetchedPasses:
        """Both lists, every page; raises TokenRevoked, or UpstreamError for anything else that failed."""
        headers = _request_headers(token)
        # Sequential on purpose: a revoked token or an outage is seen on the first list, and the second
        # one is then never asked for.
        current = self._fetch_list(headers, V1_PATH, {})
        expired = self._fetch_list(headers, V4_PATH, {"status": "EXPIRED"})
        return FetchedPasses(current=current, expired=expired)

    def _fetch_list(self, headers: Mapping[str, str], path: str, params: Mapping[str, str]) -> list[Pass]:
        passes: list[Pass] = []
        page = 1
        while True:
            body = self._get_json(headers, path, {**params, "per_page": self._page_size, "page": page})
            parsed = parse_pass_page(body, endpoint=path)
            passes.extend(parsed.passes)
            more = has_next_page(
                page=page,
                per_page=self._page_size,
                page_count=parsed.page_count,
                total_count=parsed.total_count,
                next_link=parsed.next_link,
            )
            if not more:
                return collapse_duplicates(passes)
            if page >= self._max_pages:
                # A truncated list would read as "passes removed" to the sync: refuse instead.
                raise UpstreamError(
                    f"Bytemark {path}: more than max_pages={self._max_pages} pages "
                    f"(total_count={parsed.total_count}, per_page={self._page_size})",
                    transient=False,
                )
            page += 1

    def _get_json(self, headers: Mapping[str, str], path: str, params: Mapping[str, str | int]) -> object:
        """One GET with bounded retries; the decoded JSON body of a 2xx answer."""
        url = self._base_url + path
        attempts = self._max_retries + 1
        for attempt in range(attempts):
            retry_after: float | None = None
            cause: BaseException | None = None
            try:
                response = self._session.get(
                    url, params=params, headers=headers, timeout=self._timeout, allow_redirects=False
                )
            except requests.Timeout as exc:
                reason = "timed out"
                cause = exc
            except requests.ConnectionError as exc:
                # Also covers resets while reading the body (requests re-raises them as ConnectionError).
                reason = "connection failed or was reset"
                cause = exc
            except requests.RequestException as exc:
                raise UpstreamError(
                    f"Bytemark {path}: request failed ({type(exc).__name__})", transient=False
                ) from exc
            else:
                status = response.status_code
                body = _decode_json(response.content)
                if status == 401 or is_revocation(body):
                    raise TokenRevoked()
                if 200 <= status < 300:
                    if body is _UNDECODABLE:
                        raise _unusable(path, f"HTTP {status} with a body that is not valid JSON")
                    return body
                if status < 500 and status not in _TRANSIENT_4XX:
                    raise _unusable(path, f"HTTP {status}")
                reason = f"HTTP {status}"
                if status in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
                    if retry_after is not None and retry_after > self._max_retry_after:
                        # Waiting that long would eat the invocation; let the caller retry later instead.
                        raise UpstreamError(
                            f"Bytemark {path}: {reason}, Retry-After {retry_after:g}s exceeds "
                            f"{self._max_retry_after:g}s",
                            transient=True,
                            retry_after=retry_after,
                        ) from None
            if attempt + 1 >= attempts:
                raise UpstreamError(
                    f"Bytemark {path}: {reason} (gave up after {attempts} attempts)",
                    transient=True,
                    retry_after=retry_after,
                ) from cause
            delay = (
                retry_after
                if retry_after is not None
                else backoff_delay(attempt, base=self._backoff_base, cap=self._backoff_cap, rng=self._rng)
            )
            logger.warning(
                "bytemark request retried",
                extra={"endpoint": path, "reason": reason, "attempt": attempt + 1, "delay_seconds": delay},
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises


_UNDECODABLE: Any = object()
"""Marker for a body that is not JSON (distinct from a JSON ``null``)."""


def _decode_json(content: bytes) -> object:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _UNDECODABLE


def _error_codes(body: object) -> list[int]:
    """The numeric ``errors[].code`` values of an envelope (codes sent as digit strings count too)."""
    if not isinstance(body, dict):
        return []
    errors = body.get("errors")
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


def _unusable(endpoint: str, reason: str) -> UpstreamError:
    return UpstreamError(f"Bytemark {endpoint}: {reason}", transient=False)


def _request_headers(token: str) -> dict[str, str]:
    """Per-request headers; the token never goes on the shared session, which serves every user."""
    # requests quotes an invalid header value in its own error message; check first so it never can.
    if not isinstance(token, str) or not token or not all("!" <= char <= "~" for char in token):
        raise TokenRevoked("Bytemark token is empty or not a valid bearer token")
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }


def _new_session() -> requests.Session:
    session = requests.Session()
    # Retries are ours (with jitter and Retry-After); urllib3's own would multiply them.
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=4, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # One session serves every user of a warm container: never carry one user's cookies to the next.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return session
