"""A programmable stand-in for Bytemark: each list path answers exactly the status, headers and bytes a test
sets, so envelopes the simulator cannot produce (wrong types, foreign links, odd encodings) can be served.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

V1 = "/passes"
V4 = "/v4.0/passes"


@dataclass(frozen=True)
class Answer:
    """One HTTP answer; ``length`` overrides the Content-Length header (a body cut short)."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    length: int | None = None


Responder = Callable[[dict[str, list[str]]], Answer]


def envelope(
    passes: list[Any],
    *,
    total: Any = "auto",
    page_count: Any = "auto",
    pagination: Any = "auto",
    errors: Any = (),
    data: Any = "auto",
) -> dict[str, Any]:
    """A Bytemark page; every part can be replaced by something hostile."""
    if data == "auto":
        data = {"passes": passes}
        if page_count is not None:
            data["page_count"] = len(passes) if page_count == "auto" else page_count
        if total is not None:
            data["total_count"] = len(passes) if total == "auto" else total
        if pagination is not None:
            data["pagination"] = (
                {"page": 1, "per_page": 100, "next": None} if pagination == "auto" else pagination
            )
    return {"server_time": "2024-06-15T04:30:00.000Z", "data": data, "errors": list(errors)}


def json_answer(value: Any, status: int = 200, **headers: str) -> Answer:
    return Answer(status, json.dumps(value).encode(), {"Content-Type": "application/json", **headers})


class StubBytemark:
    """The server; ``answer(path, responder_or_answer)`` programs one list, ``requests`` records the asks."""

    def __init__(self) -> None:
        stub = self
        self.responders: dict[str, Responder] = {}
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
                """Quiet."""

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                stub.requests.append(self.path)
                responder = stub.responders.get(url.path)
                answer = responder(parse_qs(url.query)) if responder else Answer(404, b"{}")
                self.send_response(answer.status)
                headers = {"Content-Type": "application/json", **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header(
                    "Content-Length", str(answer.length if answer.length is not None else len(answer.body))
                )
                if answer.length is not None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(answer.body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="stub-bytemark", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, path: str, answer: Answer | Responder) -> None:
        self.responders[path] = answer if callable(answer) else (lambda _query, fixed=answer: fixed)

    def lists(self, current: list[Any], expired: list[Any]) -> None:
        """Both lists as one plain page each."""
        self.answer(V1, json_answer(envelope(current)))
        self.answer(V4, json_answer(envelope(expired)))

    def start(self) -> StubBytemark:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
