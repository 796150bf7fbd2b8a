"""Local API Gateway (REST proxy) and Lambda Invoke API fronts for functions run by the emulator.

``LocalApiGateway`` turns HTTP requests into API Gateway proxy events the way a REST API with an
authorizer would. Identity: a real deployment gets it from the authorizer; locally the caller names itself
with the ``X-Local-User-Id`` header, accepted only when the stack was started with ``dev_identity=True``
(the header is always stripped before the function sees it, so a function can never rely on it).

The function then sees what the deployed authorizer hands it (``AuthorizerType`` in template.yaml):

- ``COGNITO`` (the default, as deployed): ``requestContext.authorizer.claims`` with ``sub`` = a UUID (derived
  from the user id, stable across runs - never the user id, as in Cognito) and the ``IDENTITY_CLAIM`` claim
  (``custom:user_id``) = the user id as a string, plus the ID token's usual claims;
- ``LAMBDA``: ``requestContext.authorizer`` = ``{"user_id": "<id>", "principalId": …}`` (a Lambda
  authorizer's context).

``LocalLambdaApi`` answers boto3's ``lambda.invoke`` so the back-fill's self-continuation works locally.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

Invoke = Callable[[dict[str, Any]], Any]
AuthorizerType = Literal["COGNITO", "LAMBDA"]
DEV_IDENTITY_HEADER = "X-Local-User-Id"
DEFAULT_IDENTITY_CLAIM = "custom:user_id"
"""The template's ``IdentityClaim`` default; the stack passes the built template's value."""
LOCAL_USER_POOL_ID = "us-east-1_LOCAL"
LOCAL_APP_CLIENT_ID = "local-app-client"
_SUB_NAMESPACE = uuid.UUID("7b1c2a9e-5d3f-4c8a-9e61-0f2d4b6a8c31")
"""Fixed, so a user's local ``sub`` is the same on every run and machine."""
_MAX_BODY_BYTES = 1024 * 1024

log = logging.getLogger("local.gateway")


def local_sub(user_id: str) -> str:
    """The Cognito ``sub`` of a local user: a UUID derived from the user id (never the id itself)."""
    return str(uuid.uuid5(_SUB_NAMESPACE, f"local-user:{user_id}"))


def cognito_claims(
    user_id: str, identity_claim: str = DEFAULT_IDENTITY_CLAIM, now: datetime | None = None
) -> dict[str, str]:
    """What a REST API's Cognito authorizer puts in ``requestContext.authorizer.claims`` (all strings)."""
    if identity_claim == "sub":
        raise ValueError("the identity claim cannot be sub: Cognito's sub is a UUID, not the user id")
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    sub = local_sub(user_id)

    def stamp(moment: datetime) -> str:
        # The form API Gateway gives the JWT's time claims in, e.g. "Mon Jun 02 10:00:00 UTC 2025".
        return moment.strftime("%a %b %d %H:%M:%S UTC %Y")

    return {
        "sub": sub,
        identity_claim: user_id,
        "cognito:username": sub,
        "token_use": "id",
        "aud": LOCAL_APP_CLIENT_ID,
        "iss": f"https://cognito-idp.us-east-1.amazonaws.com/{LOCAL_USER_POOL_ID}",
        "auth_time": stamp(issued),
        "iat": stamp(issued),
        "exp": stamp(issued + timedelta(hours=1)),
    }


def authorizer_context(
    user_id: str,
    authorizer_type: AuthorizerType = "COGNITO",
    identity_claim: str = DEFAULT_IDENTITY_CLAIM,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``requestContext.authorizer`` for an authenticated caller, as the deployed authorizer builds it."""
    if authorizer_type == "COGNITO":
        return {"claims": cognito_claims(user_id, identity_claim, now)}
    return {"user_id": user_id, "principalId": f"local|{user_id}"}


def proxy_event(
    method: str,
    raw_path: str,
    headers: dict[str, str],
    body: bytes,
    user_id: str | None,
    stage: str = "local",
    *,
    authorizer_type: AuthorizerType = "COGNITO",
    identity_claim: str = DEFAULT_IDENTITY_CLAIM,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The REST API proxy event for one request (what API Gateway hands to Lambda)."""
    parts = urlsplit(raw_path)
    query = parse_qs(parts.query, keep_blank_values=True)
    text_body = body.decode("utf-8", errors="replace") if body else None
    now = now or datetime.now(UTC)
    context: dict[str, Any] = {
        "resourcePath": parts.path,
        "httpMethod": method,
        "path": f"/{stage}{parts.path}",
        "accountId": "123456789012",
        "protocol": "HTTP/1.1",
        "stage": stage,
        "requestId": str(uuid.uuid4()),
        "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "requestTimeEpoch": int(now.timestamp() * 1000),
        "identity": {"sourceIp": "127.0.0.1", "userAgent": headers.get("User-Agent", "")},
        "apiId": "local",
    }
    if user_id is not None:
        context["authorizer"] = authorizer_context(user_id, authorizer_type, identity_claim, now)
    return {
        "resource": parts.path,
        "path": parts.path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": context,
        "body": text_body,
        "isBase64Encoded": False,
    }


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _LocalHttpFront:
    """A threaded loopback HTTP server whose GET/POST requests go to ``self._handle``."""

    def __init__(self, host: str, port: int, name: str) -> None:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                front._handle(self)

            def do_POST(self) -> None:
                front._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                log.info("%s %s %s", name, self.command, self.path.split("?")[0])

        self._server = _QuietServer((host, port), Handler)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError


class LocalApiGateway(_LocalHttpFront):
    """HTTP on ``host:port`` → proxy event → ``invoke`` → HTTP answer."""

    def __init__(
        self,
        invoke: Invoke,
        host: str = "127.0.0.1",
        port: int = 3000,
        *,
        dev_identity: bool,
        authorizer_type: AuthorizerType = "COGNITO",
        identity_claim: str = DEFAULT_IDENTITY_CLAIM,
    ) -> None:
        if authorizer_type == "COGNITO":
            cognito_claims("1", identity_claim)  # refuse "sub" up front, as the template's rule does
        self._invoke = invoke
        self._dev_identity = dev_identity
        self._authorizer_type: AuthorizerType = authorizer_type
        self._identity_claim = identity_claim
        self._local_routes: list[tuple[str, str, Callable[[str], Any]]] = []
        super().__init__(host, port, "api-gateway")

    def add_local_route(self, method: str, prefix: str, action: Callable[[str], Any]) -> None:
        """A local-only control route (e.g. fire a schedule); its JSON result is the answer."""
        self._local_routes.append((method, prefix, action))

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        if request.path == "/__local/health":
            _reply(request, 200, {"Content-Type": "application/json"}, b'{"ok": true}')
            return
        for method, prefix, action in self._local_routes:
            if request.command == method and request.path.startswith(prefix):
                result = action(request.path)
                _reply(request, 200, {"Content-Type": "application/json"}, json.dumps(result).encode())
                return
        length = int(request.headers.get("Content-Length") or 0)
        if length > _MAX_BODY_BYTES:
            _reply(request, 413, {"Content-Type": "application/json"}, b'{"message": "Request too long"}')
            return
        body = request.rfile.read(length) if length else b""
        event = self.event_for(request.command, request.path, dict(request.headers.items()), body)
        if event is None:
            # What API Gateway does when the authorizer rejects: the function is never invoked.
            _reply(request, 401, {"Content-Type": "application/json"}, b'{"message": "Unauthorized"}')
            return
        started = time.perf_counter()
        try:
            answer = self._invoke(event)
        except Exception as exc:  # noqa: BLE001 — a function crash is API Gateway's 502
            log.error("function failed: %s", exc)
            _reply(
                request, 502, {"Content-Type": "application/json"}, b'{"message": "Internal server error"}'
            )
            return
        log.info("invoked on_demand_check in %.0f ms", (time.perf_counter() - started) * 1000)
        status, out_headers, out_body = _from_proxy_result(answer)
        _reply(request, status, out_headers, out_body)

    def event_for(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> dict[str, Any] | None:
        """The proxy event for a request, or None when the authorizer would refuse it (see request_event)."""
        return request_event(
            method,
            raw_path,
            headers,
            body,
            dev_identity=self._dev_identity,
            authorizer_type=self._authorizer_type,
            identity_claim=self._identity_claim,
        )


def request_event(
    method: str,
    raw_path: str,
    headers: dict[str, str],
    body: bytes,
    *,
    dev_identity: bool,
    authorizer_type: AuthorizerType = "COGNITO",
    identity_claim: str = DEFAULT_IDENTITY_CLAIM,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """The proxy event the gateway hands the function for a request, or None when the authorizer would
    refuse it (no identity: the gateway answers 401 without invoking).

    The local identity header is stripped whatever happens; it is trusted only with ``dev_identity``.
    """
    claimed = next((v for k, v in headers.items() if k.lower() == DEV_IDENTITY_HEADER.lower()), None)
    forwarded = {
        name: value for name, value in headers.items() if name.lower() != DEV_IDENTITY_HEADER.lower()
    }
    user_id = claimed.strip() if dev_identity and claimed and claimed.strip() else None
    if user_id is None:
        return None
    return proxy_event(
        method,
        raw_path,
        forwarded,
        body,
        user_id,
        authorizer_type=authorizer_type,
        identity_claim=identity_claim,
        now=now,
    )


def _from_proxy_result(answer: Any) -> tuple[int, dict[str, str], bytes]:
    if not isinstance(answer, dict) or "statusCode" not in answer:
        return 502, {"Content-Type": "application/json"}, b'{"message": "Internal server error"}'
    headers = {str(k): str(v) for k, v in (answer.get("headers") or {}).items()}
    for name, values in (answer.get("multiValueHeaders") or {}).items():
        if values:
            headers[str(name)] = ", ".join(str(value) for value in values)
    raw = answer.get("body") or ""
    body = base64.b64decode(raw) if answer.get("isBase64Encoded") else str(raw).encode()
    return int(answer["statusCode"]), headers, body


def _reply(request: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
    request.send_response(status)
    for name, value in headers.items():
        request.send_header(name, value)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    if body and request.command != "HEAD":
        request.wfile.write(body)


class LocalLambdaApi(_LocalHttpFront):
    """Lambda's ``Invoke`` API for named local functions: ``Event`` invocations run in the background."""

    def __init__(self, functions: dict[str, Invoke], host: str = "127.0.0.1", port: int = 0) -> None:
        self._functions = functions
        self.invocations: list[tuple[str, dict[str, Any]]] = []
        super().__init__(host, port, "lambda-api")

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        # /2015-03-31/functions/<name or ARN>/invocations
        parts = urlsplit(request.path).path.strip("/").split("/")
        if len(parts) != 4 or parts[1] != "functions" or parts[3] != "invocations":
            _reply(request, 404, {"Content-Type": "application/json"}, b'{"Message": "not found"}')
            return
        # boto3 percent-encodes an ARN; keep the bare function name (without a version or alias).
        name = unquote(parts[2]).split(":function:")[-1].split(":")[0]
        invoke = self._functions.get(name)
        length = int(request.headers.get("Content-Length") or 0)
        payload = json.loads(request.rfile.read(length) or b"{}")
        if invoke is None:
            body = json.dumps({"Type": "User", "Message": f"Function not found: {name}"}).encode()
            _reply(
                request,
                404,
                {"Content-Type": "application/json", "x-amzn-ErrorType": "ResourceNotFoundException"},
                body,
            )
            return
        self.invocations.append((name, payload))
        if request.headers.get("X-Amz-Invocation-Type") == "Event":
            threading.Thread(target=invoke, args=(payload,), name=f"async-{name}", daemon=True).start()
            _reply(request, 202, {"Content-Type": "application/json"}, b"")
            return
        result = invoke(payload)
        _reply(request, 200, {"Content-Type": "application/json"}, json.dumps(result).encode())
