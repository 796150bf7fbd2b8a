"""Bytemark's pass lists over HTTP: the ``PassSource`` adapter (docs/contract.md §2).

Both lists (``/passes``: current; ``/v4.0/passes?status=EXPIRED``: history) are fetched one after the other,
page by page, through one ``requests.Session`` per instance (connections reused, no cookies, no urllib3
retries). Paging, envelope tolerance and loop detection live in ``bytemark_envelope``.

Outcomes: ``TokenRevoked`` (HTTP 401 or error 50020, never retried); ``DeadlineExceeded`` (the deadline came
first); ``UpstreamError`` transient (5xx, 408, 429, timeouts, resets, truncated bodies; retried with jittered
backoff while attempts and time are left) or permanent (anything Bytemark answered that cannot be used).
Nothing partial is ever returned: a caller that got a truncated list would take the missing passes for
removed ones.

Bounds: every answer is streamed (``stream=True``) and read raw; at most ``MAX_ANSWER_BYTES`` received and
as many after decompression, which this module does itself (gzip, deflate; anything else is refused);
``MAX_FETCH_BYTES`` decoded for one call, ``MAX_PASSES_PER_LIST`` and ``max_pages`` per list.

A little over the layer's ~350-line guide: one attempt's I/O (connect, stream, decode, classify) reads best
whole; the pure rules already live in ``bytemark_envelope``.

Time: ``deadline`` (on ``clock``) bounds the whole call. Connect timeout ``min(3.05, timeout_seconds)`` and
read timeout ``timeout_seconds``, both capped by the time left; while a body streams, the socket's timeout is
set to the time left before each read and the deadline checked after it, so a slow drip ends with the
deadline. One attempt (request and whole answer) also ends after ``timeout_seconds`` (a retried timeout). No
backoff sleep that would end after the deadline is started; a longer ``Retry-After`` fails fast.

The token is a secret: it is sent only in the ``Authorization`` header of the request, never stored on the
instance or the session, and never put in a message, a log record or a repr. Logs name the list's path,
never a URL. ``requests_sent`` counts the HTTP requests made (for a metric).
"""

from __future__ import annotations

import contextlib
import http.client
import http.cookiejar
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from bytemark_cache.adapters.bytemark_envelope import (
    ACCEPT_ENCODING,
    UNDECODABLE,
    BodyDecoder,
    ListPager,
    decode_json,
    is_revocation,
    parse_retry_after,
    unusable,
)
from bytemark_cache.domain.backoff import backoff_delay
from bytemark_cache.domain.bounds import MAX_ANSWER_BYTES, MAX_FETCH_BYTES, MAX_PASSES_PER_LIST
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.model import FetchedPasses, Pass
from bytemark_cache.errors import DeadlineExceeded, TokenRevoked, UpstreamError

logger = logging.getLogger(__name__)

V1_PATH = "/passes"
"""The legacy v1 list: the user's current passes."""

V4_PATH = "/v4.0/passes"
"""The v4 list, asked for with ``status=EXPIRED``: the user's pass history."""

USER_AGENT = "bytemark-ticket-cache/0.1 (+python-requests)"

DEFAULT_MAX_RETRY_AFTER = 10.0
"""Longest ``Retry-After`` worth waiting for inside one invocation; longer ones fail fast (transient)."""

_MAX_CONNECT_TIMEOUT = 3.05
"""Connecting takes a few round trips at most; a slow read is the only thing worth waiting longer for."""

_TRANSIENT_4XX = frozenset({408, 429})
_CHUNK_BYTES = 64 * 1024
_DEADLINE_SLACK = 0.05
"""A timeout that fires with less than this left before the deadline was the deadline's."""


class _Retryable(Exception):
    """One attempt failed in a way the next may not (internal: never leaves this module)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Budget:
    """Decoded bytes one ``fetch_passes`` may still read (both lists, every page)."""

    def __init__(self, left: int) -> None:
        self.left = left


class BytemarkHttpSource:
    """``PassSource`` over Bytemark's HTTP API: bounded retries, bounded answers, no partial results."""

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
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        max_fetch_bytes: int = MAX_FETCH_BYTES,
        max_passes_per_list: int = MAX_PASSES_PER_LIST,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be > 0")
        if page_size < 1 or max_pages < 1:
            raise ValueError("page_size and max_pages must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._base_url = base_url.rstrip("/")
        self._timeout_seconds = timeout_seconds
        self._connect_timeout = connect_timeout_seconds or min(timeout_seconds, _MAX_CONNECT_TIMEOUT)
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
        self._max_answer_bytes = max_answer_bytes
        self._max_fetch_bytes = max_fetch_bytes
        self._max_passes_per_list = max_passes_per_list
        self._count_lock = threading.Lock()
        self.requests_sent = 0
        """HTTP requests started by this instance (every attempt counts), for the BytemarkRequests metric."""

    def __repr__(self) -> str:
        return (
            f"BytemarkHttpSource(base_url={self._base_url!r}, page_size={self._page_size}, "
            f"max_pages={self._max_pages}, max_retries={self._max_retries})"
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def fetch_passes(self, token: str, budget_seconds: float) -> FetchedPasses:
        """Every page of both lists in ``budget_seconds``: TokenRevoked, DeadlineExceeded, UpstreamError."""
        # The budget becomes a deadline on this client's own clock (the caller's clock may be another).
        deadline = Deadline.after(self._clock(), budget_seconds)
        headers = _request_headers(token)
        budget = _Budget(self._max_fetch_bytes)
        # Sequential on purpose: a revoked token or an outage is seen on the first list, and the second
        # one is then never asked for.
        current = self._fetch_list(headers, V1_PATH, {}, deadline, budget)
        expired = self._fetch_list(headers, V4_PATH, {"status": "EXPIRED"}, deadline, budget)
        return FetchedPasses(current=current, expired=expired)

    def _fetch_list(
        self,
        headers: Mapping[str, str],
        path: str,
        params: dict[str, str],
        deadline: Deadline,
        budget: _Budget,
    ) -> list[Pass]:
        pager = ListPager(
            base_url=self._base_url,
            path=path,
            params=params,
            per_page=self._page_size,
            max_pages=self._max_pages,
            max_passes=self._max_passes_per_list,
        )
        url: str | None = pager.first_url
        while url is not None:
            body = self._get_json(url, headers, path, deadline, budget)
            url = pager.add_page(body, url)
        return pager.result()

    def _get_json(
        self, url: str, headers: Mapping[str, str], endpoint: str, deadline: Deadline, budget: _Budget
    ) -> object:
        """One page with bounded retries: the decoded JSON body of a 2xx answer."""
        attempts = self._max_retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(url, headers, endpoint, deadline, budget)
            except _Retryable as failure:
                reason, retry_after, cause = failure.reason, failure.retry_after, failure.__cause__
            left = deadline.remaining(self._clock())
            if retry_after is not None and retry_after > min(self._max_retry_after, left):
                # Waiting that long would eat the invocation; let the caller retry later instead.
                limit = "the time left" if left < self._max_retry_after else f"{self._max_retry_after:g}s"
                raise UpstreamError(
                    f"Bytemark {endpoint}: {reason}, Retry-After {retry_after:g}s exceeds {limit}",
                    transient=True,
                    retry_after=retry_after,
                ) from None
            if attempt + 1 >= attempts:
                raise UpstreamError(
                    f"Bytemark {endpoint}: {reason} (gave up after {attempts} attempts)",
                    transient=True,
                    retry_after=retry_after,
                ) from cause
            if retry_after is not None:
                delay = retry_after
            else:
                delay = backoff_delay(attempt, base=self._backoff_base, cap=self._backoff_cap, rng=self._rng)
            if delay >= left:
                raise UpstreamError(
                    f"Bytemark {endpoint}: {reason} (no time left before the deadline to try again)",
                    transient=True,
                    retry_after=retry_after,
                ) from cause
            logger.warning(
                "bytemark request retried",
                extra={
                    "endpoint": endpoint,
                    "reason": reason,
                    "attempt": attempt + 1,
                    "delay_seconds": delay,
                },
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises

    def _attempt(
        self, url: str, headers: Mapping[str, str], endpoint: str, deadline: Deadline, budget: _Budget
    ) -> object:
        """One request and its whole answer; raises _Retryable for what another attempt may fix."""
        now = self._clock()
        if deadline.remaining(now) <= _DEADLINE_SLACK:
            raise DeadlineExceeded(f"Bytemark {endpoint}: no time left before the deadline for a request")
        timeout = (deadline.cap(self._connect_timeout, now), deadline.cap(self._timeout_seconds, now))
        attempt_end = deadline.earlier(Deadline.after(now, self._timeout_seconds))
        with self._count_lock:
            self.requests_sent += 1
        try:
            response = self._session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False, stream=True
            )
        except requests.Timeout as exc:
            raise self._timed_out(endpoint, deadline, "timed out") from exc
        except requests.ConnectionError as exc:
            raise _Retryable("connection failed or was reset") from exc
        except requests.RequestException as exc:
            raise UpstreamError(
                f"Bytemark {endpoint}: request failed ({type(exc).__name__})", transient=False
            ) from exc
        with response:
            status = response.status_code
            try:
                content: bytes | bytearray = self._read_body(
                    response, endpoint, deadline, attempt_end, budget
                )
            except (UpstreamError, _Retryable) as exc:
                # An error answer is classified by its status; its body matters only for 50020.
                transient = isinstance(exc, _Retryable) or exc.transient
                if status != 401 and (transient or 200 <= status < 300):
                    raise
                content = b""
        body = decode_json(content)
        if status == 401 or is_revocation(body):
            raise TokenRevoked()
        if 200 <= status < 300:
            if body is UNDECODABLE:
                raise unusable(endpoint, f"HTTP {status} with a body that is not valid JSON")
            return body
        if status < 500 and status not in _TRANSIENT_4XX:
            raise unusable(endpoint, f"HTTP {status}")
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
        raise _Retryable(f"HTTP {status}", retry_after)

    def _read_body(
        self,
        response: requests.Response,
        endpoint: str,
        deadline: Deadline,
        attempt_end: Deadline,
        budget: _Budget,
    ) -> bytearray:
        """The whole answer body, decompressed, within every bound and before ``attempt_end``."""
        declared = _content_length(response)
        if declared is not None and declared > self._max_answer_bytes:
            raise unusable(
                endpoint, f"answer of {declared} bytes exceeds MAX_ANSWER_BYTES={self._max_answer_bytes}"
            )
        bound = None
        if budget.left < self._max_answer_bytes:
            bound = f"the MAX_FETCH_BYTES={self._max_fetch_bytes} bytes of one fetch"
        decoder = BodyDecoder(
            response.headers.get("Content-Encoding"),
            endpoint=endpoint,
            max_received=self._max_answer_bytes,
            max_decoded=min(self._max_answer_bytes, budget.left),
            decoded_bound=bound,
        )
        raw = response.raw
        while True:
            now = self._clock()
            if deadline.expired(now):
                raise DeadlineExceeded(
                    f"Bytemark {endpoint}: the answer was still incomplete at the deadline"
                )
            if attempt_end.expired(now):
                raise _Retryable(f"timed out: no complete answer within {self._timeout_seconds:g}s")
            _set_socket_timeout(raw, attempt_end.cap(self._timeout_seconds, now))
            try:
                chunk = raw.read1(_CHUNK_BYTES, decode_content=False)
            except (ReadTimeoutError, TimeoutError) as exc:
                raise self._timed_out(endpoint, deadline, "timed out while reading the answer") from exc
            except (Urllib3Error, http.client.HTTPException, OSError) as exc:
                raise _Retryable("connection reset or answer cut short") from exc
            if not chunk:
                break
            decoder.feed(chunk)
        if declared is not None and decoder.received < declared:
            raise _Retryable("answer cut short")
        content = decoder.finish()
        budget.left -= decoder.decoded
        return content

    def _timed_out(self, endpoint: str, deadline: Deadline, what: str) -> Exception:
        """DeadlineExceeded when the timeout was the deadline's, else a retryable timeout."""
        if deadline.remaining(self._clock()) <= _DEADLINE_SLACK:
            return DeadlineExceeded(f"Bytemark {endpoint}: {what} at the deadline")
        return _Retryable(what)


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _set_socket_timeout(raw: Any, seconds: float) -> None:
    """Bound the next read of a streaming answer; skipped when the socket cannot be reached (or is gone)."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None and seconds > 0:
        with contextlib.suppress(OSError, AttributeError):
            sock.settimeout(seconds)


def _request_headers(token: str) -> dict[str, str]:
    """Per-request headers; the token never goes on the shared session, which serves every user."""
    # requests quotes an invalid header value in its own error message; check first so it never can.
    if not isinstance(token, str) or not token or not all("!" <= char <= "~" for char in token):
        raise TokenRevoked("Bytemark token is empty or not a valid bearer token")
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "Accept-Encoding": ACCEPT_ENCODING,
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
