"""``AdminClient``: the Python face of the simulator's ``/__admin/`` JSON API (standard library only).

Works against an in-process ``SimulatorServer`` and against ``python -m bytemark_simulator`` alike.

The routes (JSON bodies; every one answers loopback clients only):

- ``GET /health``, ``POST /reset``, ``GET|POST /time`` ``{"now": iso|null, "frozen": true}``
- ``GET|PATCH /options`` ``{"envelope_style": "spec"|"next_only"|"absolute_next"|"page_count_pages"|
  "short_page", "compress_answers": bool}``: server-wide, back to the start setting on reset
- ``POST /users`` ``{"user_id", "token", "current", "expired", "seed", "empty_pagination_style",
  "envelope_style", "compress_answers"}``; ``GET|PATCH /users/<id>`` (PATCH sets the keys given;
  ``envelope_style`` / ``compress_answers`` null = follow the server-wide option)
- ``GET|PUT /users/<id>/passes``, ``POST /users/<id>/purchase|revoke|token``,
  ``POST /users/<id>/passes/<uuid>/activate|expire``, ``DELETE /users/<id>/passes/<uuid>``
- ``GET|POST|DELETE /faults``: POST ``{"kind", "user_id", "endpoint", "count", "rate", "latency_ms",
  "retry_after", "variant", "drip_bytes", "drip_interval_ms", "inflated_bytes", "body_bytes",
  "pass_count"}`` (``state.FAULT_HELP`` says what each kind does and reads)
- ``GET /requests``: request counters by endpoint and user
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, cast
from urllib.parse import quote

Pass = dict[str, Any]


class SimulatorAdminError(Exception):
    """The admin API refused a request (unknown user or pass, invalid argument …)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class AdminClient:
    """Drive a running simulator: seed users, mutate passes, inject faults, read counters."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the simulator URL must be http(s), got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # Never route loopback admin traffic through an environment proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        # base_url is validated as http(s) in __init__, so no file: or custom scheme reaches urlopen.
        request = urllib.request.Request(f"{self.base_url}/__admin{path}", data=data, method=method)  # noqa: S310
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", errors="replace")
            try:
                message = str(json.loads(text).get("error", text))
            except (json.JSONDecodeError, AttributeError):
                message = text
            raise SimulatorAdminError(exc.code, message) from exc

    @staticmethod
    def _pass_path(user_id: int, pass_uuid: str) -> str:
        return f"/users/{int(user_id)}/passes/{quote(pass_uuid, safe='')}"

    def health(self) -> dict[str, Any]:
        """``{"ok": true, "now": ...}`` once the server answers."""
        return cast(dict[str, Any], self._call("GET", "/health"))

    def reset(self) -> None:
        """Drop all users, faults and counters (the clock returns to its start setting)."""
        self._call("POST", "/reset", {})

    def seed_user(
        self,
        user_id: int,
        token: str,
        current: int = 3,
        expired: int = 2,
        seed: int | None = None,
        *,
        empty_pagination_style: str = "null",
        envelope_style: str | None = None,
        compress_answers: bool | None = None,
    ) -> dict[str, Any]:
        """Create (or replace) a user; returns ``{"user_id", "token", "current": [..], "expired": [..]}``.

        ``envelope_style`` / ``compress_answers`` None follow the server-wide options (``set_envelope``).
        """
        body = {
            "user_id": user_id,
            "token": token,
            "current": current,
            "expired": expired,
            "seed": seed,
            "empty_pagination_style": empty_pagination_style,
            "envelope_style": envelope_style,
            "compress_answers": compress_answers,
        }
        return cast(dict[str, Any], self._call("POST", "/users", body))

    def user(self, user_id: int) -> dict[str, Any]:
        """A user's settings and list sizes (never the token)."""
        return cast(dict[str, Any], self._call("GET", f"/users/{int(user_id)}"))

    def set_user_options(
        self,
        user_id: int,
        *,
        empty_pagination_style: str | None = None,
        envelope_style: str | None = None,
        compress_answers: bool | None = None,
    ) -> dict[str, Any]:
        """Change per-user options; None leaves one unchanged (``set_envelope(None, user_id=…)`` un-sets).

        ``empty_pagination_style`` is "null" or "object" (``"pagination": {}`` on a single page);
        ``envelope_style`` and ``compress_answers`` as in ``set_envelope`` / ``set_compression``.
        """
        body = {
            "empty_pagination_style": empty_pagination_style,
            "envelope_style": envelope_style,
            "compress_answers": compress_answers,
        }
        changes = {name: value for name, value in body.items() if value is not None}
        return cast(dict[str, Any], self._call("PATCH", f"/users/{int(user_id)}", changes))

    def options(self) -> dict[str, Any]:
        """The server-wide options: ``{"envelope_style": ..., "compress_answers": ...}``."""
        return cast(dict[str, Any], self._call("GET", "/options"))

    def set_envelope(self, style: str | None, *, user_id: int | None = None) -> dict[str, Any]:
        """Serve pages in envelope ``style``, server-wide or for one user (None: follow the server's).

        - "spec" (default): page_count = passes on the page, total_count, relative next, null at the end
        - "next_only": no total_count; relative next while more follow, absent on the last page
        - "absolute_next": like spec, next is ``http://<Host header>/passes?page=2&per_page=5``
        - "page_count_pages": like spec, page_count = number of pages
        - "short_page": no total_count, no pagination; a page shorter than per_page is the last
        """
        if user_id is None:
            if style is None:
                raise ValueError("the server-wide envelope style cannot be None")
            return cast(dict[str, Any], self._call("PATCH", "/options", {"envelope_style": style}))
        return cast(dict[str, Any], self._call("PATCH", f"/users/{int(user_id)}", {"envelope_style": style}))

    def set_compression(self, enabled: bool | None, *, user_id: int | None = None) -> dict[str, Any]:
        """gzip normal pages for clients sending ``Accept-Encoding: gzip``, server-wide or for one user.

        For a user, None follows the server-wide setting again.
        """
        if user_id is None:
            if enabled is None:
                raise ValueError("the server-wide compression switch cannot be None")
            return cast(dict[str, Any], self._call("PATCH", "/options", {"compress_answers": enabled}))
        body = {"compress_answers": enabled}
        return cast(dict[str, Any], self._call("PATCH", f"/users/{int(user_id)}", body))

    def passes(self, user_id: int) -> dict[str, list[Pass]]:
        """What the simulator holds now: ``{"current": [...], "expired": [...]}`` in serving order."""
        return cast(dict[str, list[Pass]], self._call("GET", f"/users/{int(user_id)}/passes"))

    def activate(self, user_id: int, pass_uuid: str, at: str | None = None) -> Pass:
        """USABLE → USING with first_use (default now) and expiration set; returns the pass."""
        return cast(Pass, self._call("POST", self._pass_path(user_id, pass_uuid) + "/activate", {"at": at}))

    def expire(self, user_id: int, pass_uuid: str) -> Pass:
        """Mark EXPIRED and move from the v1 list to the front of the v4 history; returns the pass."""
        return cast(Pass, self._call("POST", self._pass_path(user_id, pass_uuid) + "/expire", {}))

    def purchase(self, user_id: int, label_name: str = "Local Day Pass") -> Pass:
        """Append a new USABLE pass of that product to the v1 list; returns it."""
        body = {"label_name": label_name}
        return cast(Pass, self._call("POST", f"/users/{int(user_id)}/purchase", body))

    def put_pass(
        self,
        user_id: int,
        pass_dict: Pass | str,
        list_name: str = "current",
        *,
        position: int | None = None,
        replace: bool = True,
    ) -> Pass:
        """Insert a pass verbatim (a dict, or JSON text served byte for byte); returns it as parsed.

        With ``replace`` a pass with the same uuid in that list is replaced in place; ``replace=False``
        inserts anyway (duplicates). ``position`` inserts at that index instead of appending.
        """
        body: dict[str, Any] = {"list_name": list_name, "position": position, "replace": replace}
        if isinstance(pass_dict, str):
            body["pass_json"] = pass_dict
        else:
            body["pass"] = pass_dict
        return cast(Pass, self._call("PUT", f"/users/{int(user_id)}/passes", body))

    def remove_pass(self, user_id: int, pass_uuid: str) -> None:
        """Delete a pass from whichever list holds it."""
        self._call("DELETE", self._pass_path(user_id, pass_uuid))

    def revoke(self, user_id: int) -> None:
        """The user's token now gets HTTP 401 with error code 50020."""
        self._call("POST", f"/users/{int(user_id)}/revoke", {})

    def set_token(self, user_id: int, token: str) -> None:
        """Give the user a new valid token (un-revokes; the old token stops working)."""
        self._call("POST", f"/users/{int(user_id)}/token", {"token": token})

    def set_fault(
        self,
        kind: str,
        *,
        user_id: int | None = None,
        endpoint: str | None = None,
        count: int | None = None,
        rate: float = 1.0,
        latency_ms: int = 0,
        retry_after: int = 1,
        variant: str | None = None,
        drip_bytes: int | None = None,
        drip_interval_ms: int | None = None,
        inflated_bytes: int | None = None,
        body_bytes: int | None = None,
        pass_count: int | None = None,
    ) -> dict[str, Any]:
        """Inject a fault (global or per user, optionally one endpoint "v1"/"v4"); returns it with its id.

        ``count`` is how many times it fires before it is removed (None = until cleared); ``rate`` is the
        probability it fires on a matching request (deterministic RNG). Kinds (``FAULT_KINDS``):

        - latency (``latency_ms``), timeout (``latency_ms``, default 30000), reset, http_500, http_503,
          rate_limit (``retry_after``), malformed_json, error_200_50020,
          schema_break (``variant``: passes_not_list, pass_without_uuid, data_not_object)
        - slow_drip: headers at once, then ``drip_bytes`` (4) every ``drip_interval_ms`` (100)
        - gzip_bomb / deflate_bomb: a ~1 MB body inflating to ``inflated_bytes`` (1 GiB) of whitespace and
          then the envelope
        - huge_body: a ``body_bytes`` (64 MiB) envelope whose first pass has a huge string field
        - huge_list: one page of ``pass_count`` (100000) small passes
        - pagination_loop: full pages of new passes forever, next always set, total_count 2**53 - 1
        - unstorable_pass (``variant``: int_overflow, nul_key, dollar_key, lone_surrogate, deep_nesting,
          dotted_key): the first pass on the page gets one field no document store takes
        - wrong_content_encoding: ``Content-Encoding: br`` on plain JSON
        - truncated_body: Content-Length of the whole envelope, half of it sent, connection closed

        The size and pace parameters None take the defaults in brackets.
        """
        body = {
            "kind": kind,
            "user_id": user_id,
            "endpoint": endpoint,
            "count": count,
            "rate": rate,
            "latency_ms": latency_ms,
            "retry_after": retry_after,
            "variant": variant,
            "drip_bytes": drip_bytes,
            "drip_interval_ms": drip_interval_ms,
            "inflated_bytes": inflated_bytes,
            "body_bytes": body_bytes,
            "pass_count": pass_count,
        }
        return cast(dict[str, Any], self._call("POST", "/faults", body))

    def faults(self) -> list[dict[str, Any]]:
        """The active faults."""
        return cast(list[dict[str, Any]], self._call("GET", "/faults")["faults"])

    def clear_faults(self) -> None:
        """Remove every fault."""
        self._call("DELETE", "/faults")

    def request_counts(self) -> dict[str, Any]:
        """``{"total", "by_endpoint": {"v1", "v4"}, "by_user": {"<user_id>": {"v1", "v4"}}}``."""
        return cast(dict[str, Any], self._call("GET", "/requests"))

    def set_time(self, iso: str | None, *, frozen: bool = True) -> dict[str, Any]:
        """Set the simulator clock (frozen, or ticking from iso); None returns to real time."""
        return cast(dict[str, Any], self._call("POST", "/time", {"now": iso, "frozen": frozen}))

    def now(self) -> str:
        """The simulator clock's current instant (ISO-8601 UTC)."""
        return str(self._call("GET", "/time")["now"])
