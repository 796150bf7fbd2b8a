"""The HTTP side: Bytemark's two pass endpoints (contract §2), the ``/__admin/`` API and ``SimulatorServer``.

Standard library only, so the simulator starts instantly anywhere. Requests are served concurrently on
daemon threads; ``stop()`` wakes every handler that is sleeping on a fault and cuts open keep-alive
connections, so it returns promptly even with a ``timeout`` or ``slow_drip`` fault in flight.

The envelope of a page follows the user's (else the server's) envelope style (see ``state``); with
``compress_answers`` on, a client sending ``Accept-Encoding: gzip`` gets normal pages gzip-compressed.
Faults that act before the request is authorised (latency, errors, reset …) come from
``_apply_pre_fault``; those that mangle an authorised page (malformed or hostile bodies) from
``_apply_body_fault``, with the big bodies built in ``hostile``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import logging
import math
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

from . import hostile
from .admin import AdminClient
from .state import (
    AdminError,
    Endpoint,
    Fault,
    PageResult,
    SimulatorState,
    dump_json,
)

logger = logging.getLogger("bytemark_simulator")

MAX_PER_PAGE = 500
DEFAULT_PER_PAGE = 10
TOKEN_EXPIRED_CODE = 50020
_ENDPOINTS: dict[str, Endpoint] = {"/passes": "v1", "/v4.0/passes": "v4"}
_LOOPBACK = ("127.", "::1", "::ffff:127.")
_USER_ROUTE = re.compile(r"^/__admin/users/(?P<user_id>-?\d+)(?P<rest>/.*)?$")
_PASS_ACTION = re.compile(r"^/passes/(?P<uuid>[^/]+)/(?P<action>activate|expire)$")
_PASS_ITEM = re.compile(r"^/passes/(?P<uuid>[^/]+)$")
_ENDPOINT_PATHS: dict[Endpoint, str] = {"v1": "/passes", "v4": "/v4.0/passes"}
# Query parameters the next link sets itself; any others the client sent are carried over verbatim.
_LINK_PARAMS: dict[Endpoint, tuple[str, ...]] = {
    "v1": ("page", "per_page"),
    "v4": ("status", "page", "per_page"),
}
# Faults that answer an authorised request with a mangled or hostile version of its page.
_BODY_FAULTS = frozenset(
    {
        "malformed_json",
        "schema_break",
        "slow_drip",
        "gzip_bomb",
        "deflate_bomb",
        "huge_body",
        "huge_list",
        "pagination_loop",
        "unstorable_pass",
        "wrong_content_encoding",
        "truncated_body",
    }
)
# huge_body's filler goes where this stands (nothing else in an envelope looks like it).
_FILL_MARK = "@@huge-body-filler@@"


class _AbortedError(Exception):
    """The connection was dropped on purpose (reset fault, or shutdown during a held request)."""


class _BadRequestError(Exception):
    """A query parameter the API refuses."""


class _SimulatorHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows the simulator state and its open connections."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: SimulatorState) -> None:
        super().__init__(address, _Handler)
        self.state = state
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def cut_connections(self) -> None:
        """Shut every open client connection so idle keep-alive handlers exit."""
        with self.connections_lock:
            open_connections = list(self.connections)
        for connection in open_connections:
            # OSError: already closed by its handler.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """One connection: API and admin requests."""

    protocol_version = "HTTP/1.1"
    server_version = "BytemarkSimulator/1.0"
    # Idle keep-alive connections are dropped after this many seconds.
    timeout = 60
    _body = b""

    # ------------------------------------------------------------ plumbing

    @property
    def sim(self) -> _SimulatorHTTPServer:
        """The server, typed."""
        return cast(_SimulatorHTTPServer, self.server)

    def setup(self) -> None:
        """Track the connection so stop() can cut it."""
        super().setup()
        # Headers and body go out in separate writes: without NODELAY each keep-alive answer waits ~40 ms
        # for the client's delayed ACK, and slow_drip's small writes would be merged.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.sim.connections_lock:
            self.sim.connections.add(self.connection)

    def finish(self) -> None:
        """Forget the connection."""
        with self.sim.connections_lock:
            self.sim.connections.discard(self.connection)
        # OSError: the client or a reset fault already tore the socket down.
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # signature fixed by the base class
        """Silence the default per-request stderr line; _log_request writes a token-free one."""

    def _log_request(
        self, status: int | str, user_id: int | None, fault: Fault | None, started: float
    ) -> None:
        logger.info(
            "%s %s %s user=%s status=%s fault=%s %.1fms",
            self.client_address[0],
            self.command,
            self.path,
            "-" if user_id is None else user_id,
            status,
            "-" if fault is None else fault.kind,
            (time.monotonic() - started) * 1000,
        )

    def _send(self, status: int, body: bytes | str, headers: dict[str, str] | None = None) -> None:
        payload = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_stream(
        self,
        body: hostile.Body,
        headers: dict[str, str] | None = None,
        pause_seconds: float = 0.0,
    ) -> None:
        """Answer 200 with Content-Length ``body.length`` at once, then write the chunks (pausing between)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(body.length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        for index, chunk in enumerate(body.chunks):
            if index and pause_seconds:
                self._hold(pause_seconds)
            # A client that went away surfaces here as BrokenPipe/ConnectionReset, ending the answer.
            self.wfile.write(chunk)

    def _abort(self) -> None:
        """Close the socket with SO_LINGER 0 so the peer sees a connection reset, not a clean close."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        raise _AbortedError

    def _hold(self, seconds: float) -> None:
        """Sleep, but give up (dropping the connection) as soon as the server stops."""
        if self.sim.stopping.wait(seconds):
            self._abort()

    def _read_json_body(self) -> dict[str, Any]:
        raw = self._body
        if not raw:
            return {}
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdminError(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise AdminError(400, "request body must be a JSON object")
        return cast(dict[str, Any], value)

    # -------------------------------------------------------------- verbs

    def do_GET(self) -> None:
        """Dispatch a GET."""
        self._dispatch()

    def do_POST(self) -> None:
        """Dispatch a POST."""
        self._dispatch()

    def do_PUT(self) -> None:
        """Dispatch a PUT."""
        self._dispatch()

    def do_PATCH(self) -> None:
        """Dispatch a PATCH."""
        self._dispatch()

    def do_DELETE(self) -> None:
        """Dispatch a DELETE."""
        self._dispatch()

    def _dispatch(self) -> None:
        # Read any body up front so a keep-alive connection never sees leftovers as the next request.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
            self.close_connection = True
        self._body = self.rfile.read(length) if length > 0 else b""
        try:
            if urlsplit(self.path).path.startswith("/__admin/"):
                self._admin()
            else:
                self._api()
        except _AbortedError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its own timeout) while we were answering.
            self.close_connection = True

    # ---------------------------------------------------------------- API

    def _api(self) -> None:
        started = time.monotonic()
        state = self.sim.state
        url = urlsplit(self.path)
        endpoint = _ENDPOINTS.get(url.path.rstrip("/"))
        token = self._bearer_token()
        user_id, refusal = state.user_for_token(token)
        state.count_request(endpoint, user_id)

        fault = state.pick_fault(user_id, endpoint)
        status: int | str = "reset"
        try:
            status = self._answer_api(url.query, endpoint, user_id, refusal, fault)
        finally:
            self._log_request(status, user_id, fault, started)

    def _bearer_token(self) -> str | None:
        header = self.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        return credentials.strip()

    def _answer_api(
        self,
        query: str,
        endpoint: Endpoint | None,
        user_id: int | None,
        refusal: str | None,
        fault: Fault | None,
    ) -> int:
        if fault is not None:
            early = self._apply_pre_fault(fault)
            if early is not None:
                return early
        if endpoint is None:
            return self._error(404, 40400, f"No route for {urlsplit(self.path).path}")
        if self.command not in ("GET", "HEAD"):
            return self._error(405, 40500, "Method not allowed", {"Allow": "GET"})
        if refusal is not None or user_id is None:
            return self._error(401, TOKEN_EXPIRED_CODE, refusal or "Invalid or expired session token")
        try:
            page, per_page = self._paging(query, endpoint)
        except _BadRequestError as exc:
            return self._error(400, 40000, str(exc))
        result = self.sim.state.page(user_id, endpoint, page, per_page)
        if fault is not None and fault.kind in _BODY_FAULTS:
            return self._apply_body_fault(fault, result, query, endpoint)
        self._send_page(self._envelope(result, query, endpoint), result)
        return 200

    def _send_page(self, text: str, result: PageResult) -> None:
        """Send a page, gzip-compressed when compress_answers is on and the client accepts gzip."""
        if not result.compress_answers:
            self._send(200, text)
            return
        headers = {"Vary": "Accept-Encoding"}
        if not self._accepts_gzip():
            self._send(200, text, headers)
            return
        headers["Content-Encoding"] = "gzip"
        self._send(200, gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0), headers)

    def _accepts_gzip(self) -> bool:
        """True when Accept-Encoding lists gzip without q=0."""
        for item in self.headers.get("Accept-Encoding", "").split(","):
            coding, *params = (part.strip().lower() for part in item.split(";"))
            if coding != "gzip":
                continue
            for param in params:
                name, _, value = param.partition("=")
                if name.strip() == "q":
                    try:
                        return float(value) > 0
                    except ValueError:
                        return False
            return True
        return False

    def _paging(self, query: str, endpoint: Endpoint) -> tuple[int, int]:
        params = parse_qs(query, keep_blank_values=True)

        def integer(name: str, default: int, upper: int | None) -> int:
            values = params.get(name)
            if not values:
                return default
            if len(values) > 1:
                raise _BadRequestError(f"{name} given more than once")
            text = values[0]
            if not text.isdigit() or text.startswith("0"):
                raise _BadRequestError(f"{name} must be a positive integer, got {text!r}")
            value = int(text)
            if upper is not None and value > upper:
                raise _BadRequestError(f"{name} must be at most {upper}, got {value}")
            return value

        per_page = integer("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)
        page = integer("page", 1, None)
        if endpoint == "v4":
            status = params.get("status", ["EXPIRED"])
            if status != ["EXPIRED"]:
                raise _BadRequestError(f"unsupported status filter {status!r}; only EXPIRED is served")
        return page, per_page

    def _next_link(self, result: PageResult, query: str, endpoint: Endpoint, absolute: bool = False) -> str:
        """The link to the next page: status (v4), page, per_page, then the client's other params."""
        params = [f"page={result.page + 1}", f"per_page={result.per_page}"]
        if endpoint == "v4":
            params.insert(0, "status=EXPIRED")
        params += [
            part
            for part in query.split("&")
            if part and unquote_plus(part.partition("=")[0]) not in _LINK_PARAMS[endpoint]
        ]
        link = f"{_ENDPOINT_PATHS[endpoint]}?{'&'.join(params)}"
        if not absolute:
            return link
        host = self.headers.get("Host") or "{}:{}".format(*self.sim.server_address[:2])
        return f"http://{host}{link}"

    def _envelope(self, result: PageResult, query: str, endpoint: Endpoint) -> str:
        """The page's envelope in its envelope style (``state`` module docstring)."""
        style = result.envelope_style
        next_link = None
        if result.more:
            next_link = self._next_link(result, query, endpoint, absolute=style == "absolute_next")
        if style == "page_count_pages":
            page_count = math.ceil(result.total_count / result.per_page)
        else:
            page_count = len(result.passes_raw)
        # Passes are spliced in as stored so verbatim JSON (2.50, 1E21, key order) reaches the client intact.
        parts = [
            '{"server_time":', dump_json(self.sim.state.server_time()),
            ',"data":{"passes":[', ",".join(result.passes_raw),
            '],"page_count":', str(page_count),
        ]  # fmt: skip
        if style not in ("next_only", "short_page"):
            parts += [',"total_count":', str(result.total_count)]
        if style != "short_page":
            if result.object_pagination:
                pagination = "{}"
            else:
                links: dict[str, Any] = {"page": result.page, "per_page": result.per_page}
                if next_link is not None or style != "next_only":
                    links["next"] = next_link
                pagination = dump_json(links)
            parts += [',"pagination":', pagination]
        parts.append('},"errors":[]}')
        return "".join(parts)

    def _error(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> int:
        body = {"errors": [{"code": code, "message": message}], "data": None}
        self._send(status, dump_json(body), headers)
        return status

    def _apply_pre_fault(self, fault: Fault) -> int | None:
        """Faults that act before (or instead of) the normal answer; None = carry on answering."""
        if fault.kind == "latency":
            self._hold(fault.latency_ms / 1000)
            return None
        if fault.kind == "timeout":
            # Longer than any sane client timeout; then answer normally, as a very slow upstream would.
            self._hold(fault.latency_ms / 1000)
            return None
        if fault.kind == "reset":
            self._abort()
        if fault.kind == "http_500":
            return self._error(500, 50000, "Internal server error")
        if fault.kind == "http_503":
            return self._error(503, 50300, "Service temporarily unavailable")
        if fault.kind == "rate_limit":
            return self._error(429, 42900, "Too many requests", {"Retry-After": str(fault.retry_after)})
        if fault.kind == "error_200_50020":
            return self._error(200, TOKEN_EXPIRED_CODE, "Your session has expired. Please log in again.")
        return None

    def _apply_body_fault(self, fault: Fault, result: PageResult, query: str, endpoint: Endpoint) -> int:
        """Answer an authorised request with a mangled or hostile version of its page."""
        kind = fault.kind
        if kind == "schema_break":
            return self._schema_break(fault, result, query, endpoint)
        if kind == "pagination_loop":
            return self._pagination_loop(result, query, endpoint)
        if kind == "unstorable_pass" and result.passes_raw:
            # Only the first pass changes; an empty page is served as it is.
            fragment = hostile.UNSTORABLE_FIELDS[fault.variant]
            passes = [hostile.with_extra_field(result.passes_raw[0], fragment), *result.passes_raw[1:]]
            result = dataclasses.replace(result, passes_raw=passes)
        if kind == "huge_body":
            return self._huge_body(fault, result, query, endpoint)
        if kind == "huge_list":
            return self._huge_list(fault, result)
        text = self._envelope(result, query, endpoint)
        payload = text.encode("utf-8")
        if kind == "malformed_json":
            # A strict prefix of a JSON object is never valid JSON.
            self._send(200, text[: max(1, len(text) // 2)])
        elif kind == "slow_drip":
            step = fault.drip_bytes
            chunks = (payload[start : start + step] for start in range(0, len(payload), step))
            self._send_stream(hostile.Body(len(payload), chunks), pause_seconds=fault.drip_interval_ms / 1000)
        elif kind == "gzip_bomb":
            self._send_stream(hostile.gzip_bomb(payload, fault.inflated_bytes), {"Content-Encoding": "gzip"})
        elif kind == "deflate_bomb":
            bomb = hostile.deflate_bomb(payload, fault.inflated_bytes)
            self._send_stream(bomb, {"Content-Encoding": "deflate"})
        elif kind == "wrong_content_encoding":
            self._send(200, payload, {"Content-Encoding": "br"})
        elif kind == "truncated_body":
            self._send_truncated(payload)
        else:
            self._send_page(text, result)
        return 200

    def _send_truncated(self, payload: bytes) -> None:
        """Declare the whole payload, send half of it, then close the connection (a clean FIN)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(payload[: len(payload) // 2])
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)

    def _schema_break(self, fault: Fault, result: PageResult, query: str, endpoint: Endpoint) -> int:
        passes = [json.loads(raw) for raw in result.passes_raw]
        next_link = self._next_link(result, query, endpoint) if result.more else None
        data: Any
        if fault.variant == "pass_without_uuid":
            if passes:
                passes[0].pop("uuid", None)
            else:
                passes = [{"status": "USABLE", "label_name": "Local Day Pass"}]
            data = {
                "passes": passes,
                "page_count": len(passes),
                "total_count": max(result.total_count, len(passes)),
                "pagination": {"page": result.page, "per_page": result.per_page, "next": None},
            }
        elif fault.variant == "data_not_object":
            data = passes
        else:
            data = {
                "passes": {str(index): item for index, item in enumerate(passes)},
                "page_count": len(passes),
                "total_count": result.total_count,
                "pagination": {"page": result.page, "per_page": result.per_page, "next": next_link},
            }
        self._send(200, dump_json({"server_time": self.sim.state.server_time(), "data": data, "errors": []}))
        return 200

    def _pagination_loop(self, result: PageResult, query: str, endpoint: Endpoint) -> int:
        """Every page full of passes never seen before, next always set, a total nobody reaches."""
        stamp = self.sim.state.server_time()
        looped = dataclasses.replace(
            result,
            passes_raw=hostile.small_passes(result.page, result.per_page, stamp),
            total_count=hostile.LOOP_TOTAL_COUNT,
            more=True,
            object_pagination=False,
            envelope_style="spec",
        )
        self._send_page(self._envelope(looped, query, endpoint), looped)
        return 200

    def _huge_body(self, fault: Fault, result: PageResult, query: str, endpoint: Endpoint) -> int:
        """The page's envelope with a huge string field in its first pass, body_bytes long in all."""
        passes = result.passes_raw or [hostile.small_pass(0, 0, self.sim.state.server_time())]
        marked = hostile.with_extra_field(passes[0], f'"padding":"{_FILL_MARK}"')
        total = max(result.total_count, len(passes))
        padded = dataclasses.replace(result, passes_raw=[marked, *passes[1:]], total_count=total)
        head, _, tail = self._envelope(padded, query, endpoint).partition(_FILL_MARK)
        self._send_stream(hostile.huge_body(head, tail, fault.body_bytes))
        return 200

    def _huge_list(self, fault: Fault, result: PageResult) -> int:
        """One page of pass_count small passes whose page_count and total_count agree with it."""
        stamp = self.sim.state.server_time()
        count = fault.pass_count
        head = '{"server_time":' + dump_json(stamp) + ',"data":{"passes":['
        pagination = dump_json({"page": result.page, "per_page": result.per_page, "next": None})
        tail = f'],"page_count":{count},"total_count":{count},"pagination":{pagination}}},"errors":[]}}'
        self._send_stream(hostile.huge_list(head, tail, count, stamp))
        return 200

    # -------------------------------------------------------------- admin

    def _admin(self) -> None:
        started = time.monotonic()
        if not self.client_address[0].startswith(_LOOPBACK):
            self._send(403, dump_json({"error": "the admin API answers loopback clients only"}))
            self._log_request(403, None, None, started)
            return
        try:
            status, body = self._admin_route()
        except AdminError as exc:
            status, body = exc.status, dump_json({"error": exc.message})
        except (TypeError, ValueError) as exc:
            status, body = 400, dump_json({"error": f"bad request: {exc}"})
        self._send(status, body)
        self._log_request(status, None, None, started)

    def _admin_route(self) -> tuple[int, str]:
        state = self.sim.state
        method = self.command
        path = urlsplit(self.path).path.rstrip("/")
        ok = dump_json({"ok": True})
        if path == "/__admin/health" and method == "GET":
            return 200, dump_json({"ok": True, "now": state.server_time()})
        if path == "/__admin/reset" and method == "POST":
            state.reset()
            return 200, ok
        if path == "/__admin/time":
            if method == "GET":
                return 200, dump_json({"now": state.server_time()})
            if method == "POST":
                body = self._read_json_body()
                return 200, dump_json(state.set_time(body.get("now"), frozen=bool(body.get("frozen", True))))
        if path == "/__admin/faults":
            if method == "GET":
                return 200, dump_json({"faults": state.faults()})
            if method == "POST":
                body = self._read_json_body()
                fault = state.set_fault(
                    str(body.get("kind")),
                    user_id=_optional_int(body.get("user_id")),
                    endpoint=body.get("endpoint"),
                    count=_optional_int(body.get("count")),
                    rate=float(body.get("rate", 1.0)),
                    latency_ms=int(body.get("latency_ms", 0)),
                    retry_after=int(body.get("retry_after", 1)),
                    variant=body.get("variant"),
                    drip_bytes=_optional_int(body.get("drip_bytes")),
                    drip_interval_ms=_optional_int(body.get("drip_interval_ms")),
                    inflated_bytes=_optional_int(body.get("inflated_bytes")),
                    body_bytes=_optional_int(body.get("body_bytes")),
                    pass_count=_optional_int(body.get("pass_count")),
                )
                return 201, dump_json(fault)
            if method == "DELETE":
                state.clear_faults()
                return 200, ok
        if path == "/__admin/options":
            if method == "GET":
                return 200, dump_json(state.options())
            if method == "PATCH":
                body = self._read_json_body()
                unknown = set(body) - {"envelope_style", "compress_answers"}
                if unknown:
                    raise AdminError(400, f"unknown options {sorted(unknown)}")
                options = state.set_options(body.get("envelope_style"), body.get("compress_answers"))
                return 200, dump_json(options)
        if path == "/__admin/requests" and method == "GET":
            return 200, dump_json(state.request_counts())
        if path == "/__admin/users" and method == "POST":
            body = self._read_json_body()
            created = state.seed_user(
                int(body["user_id"]),
                str(body["token"]),
                current=int(body.get("current", 3)),
                expired=int(body.get("expired", 2)),
                seed=_optional_int(body.get("seed")),
                empty_pagination_style=str(body.get("empty_pagination_style", "null")),
                envelope_style=body.get("envelope_style"),
                compress_answers=body.get("compress_answers"),
            )
            return 201, dump_json(created)
        match = _USER_ROUTE.match(path)
        if match:
            return self._admin_user_route(int(match["user_id"]), match["rest"] or "")
        raise AdminError(404, f"no admin route {method} {path}")

    def _admin_user_route(self, user_id: int, rest: str) -> tuple[int, str]:
        state = self.sim.state
        method = self.command
        ok = dump_json({"ok": True})
        if rest == "":
            if method == "GET":
                return 200, dump_json(state.user_summary(user_id))
            if method == "PATCH":
                body = self._read_json_body()
                return 200, dump_json(state.update_user(user_id, body))
        if rest == "/passes":
            if method == "GET":
                current, expired = state.passes_raw(user_id)
                return 200, '{"current":[' + ",".join(current) + '],"expired":[' + ",".join(expired) + "]}"
            if method == "PUT":
                body = self._read_json_body()
                stored = state.put_pass(
                    user_id,
                    pass_data=body.get("pass"),
                    pass_json=body.get("pass_json"),
                    list_name=str(body.get("list_name", "current")),
                    position=_optional_int(body.get("position")),
                    replace=bool(body.get("replace", True)),
                )
                return 200, dump_json(stored)
        if rest == "/purchase" and method == "POST":
            body = self._read_json_body()
            return 201, dump_json(state.purchase(user_id, str(body.get("label_name", "Local Day Pass"))))
        if rest == "/revoke" and method == "POST":
            state.revoke(user_id)
            return 200, ok
        if rest == "/token" and method == "POST":
            state.set_token(user_id, str(self._read_json_body().get("token", "")))
            return 200, ok
        action = _PASS_ACTION.match(rest)
        if action and method == "POST":
            pass_uuid = unquote(action["uuid"])
            if action["action"] == "activate":
                body = self._read_json_body()
                return 200, dump_json(state.activate(user_id, pass_uuid, body.get("at")))
            return 200, dump_json(state.expire(user_id, pass_uuid))
        item = _PASS_ITEM.match(rest)
        if item and method == "DELETE":
            state.remove_pass(user_id, unquote(item["uuid"]))
            return 200, ok
        raise AdminError(404, f"no admin route {method} /__admin/users/{user_id}{rest}")


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


class SimulatorServer:
    """The simulator as an in-process server: ``with SimulatorServer(port=0) as sim: sim.url, sim.admin``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8917,
        seed: int = 1,
        timezone: str = "America/Chicago",
        now: str | None = None,
        envelope_style: str = "spec",
        compress_answers: bool = False,
    ) -> None:
        self.host = host
        self.requested_port = port
        try:
            self.state = SimulatorState(
                seed=seed,
                timezone=timezone,
                now=now,
                envelope_style=envelope_style,
                compress_answers=compress_answers,
            )
        except AdminError as exc:
            raise ValueError(exc.message) from None
        self._httpd: _SimulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._admin: AdminClient | None = None

    @property
    def port(self) -> int:
        """The bound port (after start())."""
        if self._httpd is None:
            raise RuntimeError("the simulator is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the Bytemark API, e.g. http://127.0.0.1:8917 (after start())."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """How many client connections a handler is serving right now (0 when stopped)."""
        if self._httpd is None:
            return 0
        with self._httpd.connections_lock:
            return len(self._httpd.connections)

    @property
    def admin(self) -> AdminClient:
        """An AdminClient for this server."""
        if self._admin is None:
            self._admin = AdminClient(self.url)
        return self._admin

    def start(self) -> SimulatorServer:
        """Bind and serve on a background thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("the simulator is already running")
        self._httpd = _SimulatorHTTPServer((self.host, self.requested_port), self.state)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="bytemark-simulator",
            daemon=True,
        )
        self._thread.start()
        logger.info("bytemark simulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving: wake held requests, cut open connections, close the socket."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.cut_connections()
        if thread is not None:
            thread.join(timeout=1.0)
        self._httpd, self._thread, self._admin = None, None, None
        logger.info("bytemark simulator stopped")

    def __enter__(self) -> SimulatorServer:
        """Start on entry."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop on exit."""
        self.stop()
