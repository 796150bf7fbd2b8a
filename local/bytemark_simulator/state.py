"""The simulator's in-memory world: users and their two pass lists, tokens, faults, counters and the clock.

Every method is thread-safe (one lock); the HTTP layer never touches the data directly. Passes are kept as
their JSON text next to the parsed object so a pass put in verbatim (``2.50``, ``1E21``) is served byte for
byte as given.

Envelope styles (``ENVELOPE_STYLES``; server-wide via ``/__admin/options``, per user via
``PATCH /__admin/users/<id>``; a user's null follows the server's):

- ``spec``: ``page_count`` = passes on this page, ``total_count``, ``pagination.next`` a relative link
  while more pages follow and null on the last page.
- ``next_only``: no ``total_count``; ``pagination.next`` a relative link while more pages follow, absent
  on the last page.
- ``absolute_next``: like spec, but ``next`` is an absolute URL built from the request's Host header.
- ``page_count_pages``: like spec, but ``page_count`` is the number of pages (ceil(total / per_page)).
- ``short_page``: no ``total_count`` and no ``pagination``; only a page shorter than per_page ends the list
  (a full last page is followed by an empty one).

Fault kinds (``FAULT_KINDS``) and the parameters each reads are listed in ``FAULT_HELP``.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from .hostile import UNSTORABLE_FIELDS
from .passes import (
    PRODUCTS_BY_LABEL,
    Pass,
    PassFactory,
    activate_pass,
    expire_pass,
    format_iso,
    now_utc,
    parse_iso,
)

# What each kind does and which set_fault parameters it reads (count, rate, user_id, endpoint apply to all).
FAULT_HELP = {
    "latency": "answer normally after latency_ms",
    "http_500": "HTTP 500 with an errors envelope",
    "http_503": "HTTP 503 with an errors envelope",
    "timeout": "hold the answer latency_ms (default 30000), then answer normally",
    "reset": "drop the connection with a TCP reset, no answer",
    "rate_limit": "HTTP 429 with Retry-After: retry_after",
    "malformed_json": "HTTP 200 whose body is the first half of the envelope",
    "error_200_50020": "HTTP 200 carrying error 50020 and data null",
    "schema_break": "valid JSON of the wrong shape; variant in SCHEMA_BREAK_VARIANTS",
    "slow_drip": "headers (true Content-Length) at once, then the body drip_bytes every drip_interval_ms",
    "gzip_bomb": "Content-Encoding gzip: concatenated members inflating to inflated_bytes (whitespace, "
    "then the envelope)",
    "deflate_bomb": "like gzip_bomb as one zlib stream with Content-Encoding deflate",
    "huge_body": "a body_bytes uncompressed envelope whose first pass has a huge string field, streamed",
    "huge_list": "one page of pass_count small passes (page_count and total_count match), streamed",
    "pagination_loop": "every page full of fresh passes, next always set, total_count 2**53 - 1",
    "unstorable_pass": "the first pass on the page gets one unstorable field; variant in "
    "UNSTORABLE_PASS_VARIANTS",
    "wrong_content_encoding": "Content-Encoding br on a body that is plain JSON, not brotli",
    "truncated_body": "Content-Length of the whole envelope, half of it sent, then the connection closed",
}
FAULT_KINDS = tuple(FAULT_HELP)
SCHEMA_BREAK_VARIANTS = ("passes_not_list", "pass_without_uuid", "data_not_object")
UNSTORABLE_PASS_VARIANTS = tuple(UNSTORABLE_FIELDS)
FAULT_VARIANTS = {"schema_break": SCHEMA_BREAK_VARIANTS, "unstorable_pass": UNSTORABLE_PASS_VARIANTS}
# Defaults of the size and pace parameters of the hostile faults.
FAULT_PARAM_DEFAULTS = {
    "drip_bytes": 4,
    "drip_interval_ms": 100,
    "inflated_bytes": 1 << 30,
    "body_bytes": 64 << 20,
    "pass_count": 100_000,
}
ENVELOPE_STYLES = ("spec", "next_only", "absolute_next", "page_count_pages", "short_page")
ENDPOINTS = ("v1", "v4")
PAGINATION_STYLES = ("null", "object")
ListName = Literal["current", "expired"]
Endpoint = Literal["v1", "v4"]


class AdminError(Exception):
    """An admin request that cannot be honoured; carries the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def dump_json(value: Any) -> str:
    """Compact JSON with non-ASCII kept as is (Bytemark answers in UTF-8)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class StoredPass:
    """One pass: the JSON text served and the parsed object the admin operations look at."""

    raw: str
    data: Pass

    @classmethod
    def from_data(cls, data: Pass) -> StoredPass:
        """Store a parsed pass, serialised compactly."""
        return cls(dump_json(data), data)

    @classmethod
    def from_raw(cls, raw: str) -> StoredPass:
        """Store a pass given as JSON text, kept verbatim."""
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise AdminError(400, f"pass_json is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise AdminError(400, "pass_json must be a JSON object")
        return cls(raw.strip(), cast(Pass, data))

    def touch(self) -> None:
        """Re-serialise after an in-place change."""
        self.raw = dump_json(self.data)

    @property
    def uuid(self) -> Any:
        """The pass's uuid field (None when the pass has none)."""
        return self.data.get("uuid")


@dataclass
class User:
    """A simulated Bytemark account."""

    user_id: int
    token: str
    factory: PassFactory
    current: list[StoredPass] = field(default_factory=list)
    expired: list[StoredPass] = field(default_factory=list)
    revoked: bool = False
    empty_pagination_style: str = "null"
    # None: follow the server-wide setting.
    envelope_style: str | None = None
    compress_answers: bool | None = None

    def lists(self) -> dict[str, list[StoredPass]]:
        """Both lists by admin name."""
        return {"current": self.current, "expired": self.expired}


@dataclass
class Fault:
    """A configured misbehaviour; ``remaining`` None means until cleared."""

    fault_id: int
    kind: str
    user_id: int | None
    endpoint: str | None
    remaining: int | None
    rate: float
    latency_ms: int
    retry_after: int
    variant: str
    drip_bytes: int = FAULT_PARAM_DEFAULTS["drip_bytes"]
    drip_interval_ms: int = FAULT_PARAM_DEFAULTS["drip_interval_ms"]
    inflated_bytes: int = FAULT_PARAM_DEFAULTS["inflated_bytes"]
    body_bytes: int = FAULT_PARAM_DEFAULTS["body_bytes"]
    pass_count: int = FAULT_PARAM_DEFAULTS["pass_count"]
    fired: int = 0

    def describe(self) -> dict[str, Any]:
        """The fault as the admin API shows it."""
        return {
            "id": self.fault_id,
            "kind": self.kind,
            "user_id": self.user_id,
            "endpoint": self.endpoint,
            "count": self.remaining,
            "rate": self.rate,
            "latency_ms": self.latency_ms,
            "retry_after": self.retry_after,
            "variant": self.variant,
            "drip_bytes": self.drip_bytes,
            "drip_interval_ms": self.drip_interval_ms,
            "inflated_bytes": self.inflated_bytes,
            "body_bytes": self.body_bytes,
            "pass_count": self.pass_count,
            "fired": self.fired,
        }


@dataclass(frozen=True)
class PageResult:
    """What one authorised API request resolved to, before any fault is applied."""

    user_id: int
    passes_raw: list[str]
    total_count: int
    page: int
    per_page: int
    more: bool
    object_pagination: bool
    envelope_style: str
    compress_answers: bool


class SimulatorState:
    """All mutable simulator data behind one lock."""

    def __init__(
        self,
        seed: int = 1,
        timezone: str = "America/Chicago",
        now: str | None = None,
        envelope_style: str = "spec",
        compress_answers: bool = False,
    ) -> None:
        self._lock = threading.RLock()
        self._seed = seed
        self.timezone = timezone
        self._check_envelope_style(envelope_style)
        self._initial_options = {"envelope_style": envelope_style, "compress_answers": compress_answers}
        self._envelope_style = envelope_style
        self._compress_answers = compress_answers
        self._frozen_at: datetime | None = None
        self._offset = timedelta(0)
        self._initial_now = now
        self._users: dict[int, User] = {}
        self._tokens: dict[str, int] = {}
        self._faults: list[Fault] = []
        self._fault_rng = random.Random(f"bytemark-simulator-faults:{seed}")
        self._next_fault_id = 1
        self._counts: dict[str, Any] = {}
        self.reset()

    # ----------------------------------------------------------------- clock

    def now(self) -> datetime:
        """The simulator's current instant (real time unless set_time was used)."""
        with self._lock:
            if self._frozen_at is not None:
                return self._frozen_at
            return now_utc() + self._offset

    def set_time(self, iso: str | None, *, frozen: bool = True) -> dict[str, Any]:
        """Move the clock to iso (frozen there, or ticking from there); None returns to real time."""
        with self._lock:
            if iso is None:
                self._frozen_at, self._offset = None, timedelta(0)
            else:
                try:
                    moment = parse_iso(iso)
                except ValueError as exc:
                    raise AdminError(400, f"invalid time {iso!r}") from exc
                if frozen:
                    self._frozen_at, self._offset = moment, timedelta(0)
                else:
                    self._frozen_at, self._offset = None, moment - now_utc()
            return {"now": format_iso(self.now()), "frozen": self._frozen_at is not None}

    # ----------------------------------------------------------------- users

    def reset(self) -> None:
        """Drop every user, token, fault and counter; the clock and the server options return to the start."""
        with self._lock:
            self._envelope_style = str(self._initial_options["envelope_style"])
            self._compress_answers = bool(self._initial_options["compress_answers"])
            self._users.clear()
            self._tokens.clear()
            self._faults.clear()
            self._fault_rng = random.Random(f"bytemark-simulator-faults:{self._seed}")
            self._next_fault_id = 1
            self._counts = {"total": 0, "by_endpoint": dict.fromkeys(ENDPOINTS, 0), "by_user": {}}
            self.set_time(self._initial_now)

    def options(self) -> dict[str, Any]:
        """The server-wide options."""
        with self._lock:
            return {"envelope_style": self._envelope_style, "compress_answers": self._compress_answers}

    def set_options(
        self, envelope_style: str | None = None, compress_answers: bool | None = None
    ) -> dict[str, Any]:
        """Change the server-wide options (None leaves one unchanged); users without their own follow them."""
        if envelope_style is not None:
            self._check_envelope_style(envelope_style)
        if compress_answers is not None and not isinstance(compress_answers, bool):
            raise AdminError(400, "compress_answers must be true or false")
        with self._lock:
            if envelope_style is not None:
                self._envelope_style = envelope_style
            if compress_answers is not None:
                self._compress_answers = compress_answers
        return self.options()

    def seed_user(
        self,
        user_id: int,
        token: str,
        current: int = 3,
        expired: int = 2,
        seed: int | None = None,
        empty_pagination_style: str = "null",
        envelope_style: str | None = None,
        compress_answers: bool | None = None,
    ) -> dict[str, Any]:
        """Create (or recreate) a user with generated passes; returns the user and its passes.

        ``envelope_style`` / ``compress_answers`` None follow the server-wide options.
        """
        if current < 0 or expired < 0:
            raise AdminError(400, "current and expired must be >= 0")
        if not token:
            raise AdminError(400, "token must be a non-empty string")
        self._check_pagination_style(empty_pagination_style)
        if envelope_style is not None:
            self._check_envelope_style(envelope_style)
        if compress_answers is not None and not isinstance(compress_answers, bool):
            raise AdminError(400, "compress_answers must be true, false or null")
        with self._lock:
            owner = self._tokens.get(token)
            if owner is not None and owner != user_id:
                raise AdminError(409, "token already belongs to another user")
            self._drop_user(user_id)
            # Generated times hang off the clock's hour so the same seed gives the same passes all hour.
            anchor = self.now().replace(minute=0, second=0, microsecond=0)
            factory = PassFactory(user_id, self._seed if seed is None else seed, self.timezone)
            user = User(
                user_id,
                token,
                factory,
                empty_pagination_style=empty_pagination_style,
                envelope_style=envelope_style,
                compress_answers=compress_answers,
            )
            generated = [factory.current_pass(anchor) for _ in range(current)]
            # Bytemark's legacy list is ordered by uuid, not by time_created: clients must sort.
            user.current = [StoredPass.from_data(p) for p in sorted(generated, key=lambda p: str(p["uuid"]))]
            history = [factory.expired_pass(anchor) for _ in range(expired)]
            history.sort(key=lambda p: parse_iso(p["time_modified"]), reverse=True)
            user.expired = [StoredPass.from_data(p) for p in history]
            self._users[user_id] = user
            self._tokens[token] = user_id
            return {"user_id": user_id, "token": token, **self._lists_of(user)}

    def _drop_user(self, user_id: int) -> None:
        old = self._users.pop(user_id, None)
        if old is not None and self._tokens.get(old.token) == user_id:
            del self._tokens[old.token]

    def _user(self, user_id: int) -> User:
        user = self._users.get(user_id)
        if user is None:
            raise AdminError(404, f"unknown user {user_id}")
        return user

    @staticmethod
    def _check_pagination_style(style: str) -> None:
        if style not in PAGINATION_STYLES:
            raise AdminError(400, f"empty_pagination_style must be one of {list(PAGINATION_STYLES)}")

    @staticmethod
    def _check_envelope_style(style: str) -> None:
        if style not in ENVELOPE_STYLES:
            raise AdminError(400, f"envelope_style must be one of {list(ENVELOPE_STYLES)}")

    @staticmethod
    def _lists_of(user: User) -> dict[str, list[Pass]]:
        return {
            "current": [json.loads(p.raw) for p in user.current],
            "expired": [json.loads(p.raw) for p in user.expired],
        }

    def passes_raw(self, user_id: int) -> tuple[list[str], list[str]]:
        """The exact JSON text of both lists, in serving order."""
        with self._lock:
            user = self._user(user_id)
            return [p.raw for p in user.current], [p.raw for p in user.expired]

    def user_summary(self, user_id: int) -> dict[str, Any]:
        """A user's settings without the token."""
        with self._lock:
            user = self._user(user_id)
            return {
                "user_id": user.user_id,
                "revoked": user.revoked,
                "empty_pagination_style": user.empty_pagination_style,
                "envelope_style": user.envelope_style,
                "compress_answers": user.compress_answers,
                "current_count": len(user.current),
                "expired_count": len(user.expired),
            }

    def update_user(self, user_id: int, options: dict[str, Any]) -> dict[str, Any]:
        """Change the per-user options present in ``options``.

        ``empty_pagination_style`` null leaves it unchanged; ``envelope_style`` / ``compress_answers`` null
        make the user follow the server-wide option again.
        """
        unknown = set(options) - {"empty_pagination_style", "envelope_style", "compress_answers"}
        if unknown:
            raise AdminError(400, f"unknown user options {sorted(unknown)}")
        pagination_style = options.get("empty_pagination_style")
        if pagination_style is not None:
            self._check_pagination_style(pagination_style)
        envelope_style = options.get("envelope_style")
        if envelope_style is not None:
            self._check_envelope_style(envelope_style)
        compress = options.get("compress_answers")
        if compress is not None and not isinstance(compress, bool):
            raise AdminError(400, "compress_answers must be true, false or null")
        with self._lock:
            user = self._user(user_id)
            if pagination_style is not None:
                user.empty_pagination_style = pagination_style
            if "envelope_style" in options:
                user.envelope_style = envelope_style
            if "compress_answers" in options:
                user.compress_answers = compress
        return self.user_summary(user_id)

    def revoke(self, user_id: int) -> None:
        """Invalidate the user's token: it now gets 401 / 50020."""
        with self._lock:
            self._user(user_id).revoked = True

    def set_token(self, user_id: int, token: str) -> None:
        """Give the user a new valid token (the old one stops working)."""
        if not token:
            raise AdminError(400, "token must be a non-empty string")
        with self._lock:
            user = self._user(user_id)
            owner = self._tokens.get(token)
            if owner is not None and owner != user_id:
                raise AdminError(409, "token already belongs to another user")
            self._tokens.pop(user.token, None)
            user.token, user.revoked = token, False
            self._tokens[token] = user_id

    # ---------------------------------------------------------------- passes

    def _find(self, user: User, pass_uuid: str) -> tuple[str, int]:
        for list_name, stored_list in user.lists().items():
            for index, stored in enumerate(stored_list):
                if stored.uuid == pass_uuid:
                    return list_name, index
        raise AdminError(404, f"user {user.user_id} has no pass {pass_uuid}")

    def activate(self, user_id: int, pass_uuid: str, at: str | None = None) -> Pass:
        """USABLE → USING with first_use and expiration set; returns the pass."""
        with self._lock:
            user = self._user(user_id)
            list_name, index = self._find(user, pass_uuid)
            stored = user.lists()[list_name][index]
            if list_name != "current" or stored.data.get("status") != "USABLE":
                raise AdminError(409, f"pass {pass_uuid} is {stored.data.get('status')}, not an unused pass")
            now = self.now()
            try:
                first_use = now if at is None else parse_iso(at)
            except ValueError as exc:
                raise AdminError(400, f"invalid time {at!r}") from exc
            activate_pass(stored.data, first_use, now, self.timezone)
            stored.touch()
            return cast(Pass, json.loads(stored.raw))

    def expire(self, user_id: int, pass_uuid: str) -> Pass:
        """Mark EXPIRED and move from the v1 list to the front of the v4 history; returns the pass."""
        with self._lock:
            user = self._user(user_id)
            list_name, index = self._find(user, pass_uuid)
            if list_name != "current":
                raise AdminError(409, f"pass {pass_uuid} is already in the expired history")
            stored = user.current.pop(index)
            expire_pass(stored.data, self.now())
            stored.touch()
            # The history is newest first.
            user.expired.insert(0, stored)
            return cast(Pass, json.loads(stored.raw))

    def purchase(self, user_id: int, label_name: str = "Local Day Pass") -> Pass:
        """Append a new USABLE pass of the given product to the v1 list; returns it."""
        if label_name not in PRODUCTS_BY_LABEL:
            raise AdminError(400, f"unknown product {label_name!r}; known: {sorted(PRODUCTS_BY_LABEL)}")
        with self._lock:
            user = self._user(user_id)
            stored = StoredPass.from_data(user.factory.purchased_pass(self.now(), label_name))
            user.current.append(stored)
            return cast(Pass, json.loads(stored.raw))

    def put_pass(
        self,
        user_id: int,
        pass_data: Pass | None = None,
        pass_json: str | None = None,
        list_name: str = "current",
        position: int | None = None,
        replace: bool = True,
    ) -> Pass:
        """Insert a pass verbatim; with replace, one with the same uuid in that list is replaced in place."""
        if list_name not in ("current", "expired"):
            raise AdminError(400, "list_name must be 'current' or 'expired'")
        if (pass_data is None) == (pass_json is None):
            raise AdminError(400, "give exactly one of 'pass' and 'pass_json'")
        if pass_data is not None and not isinstance(pass_data, dict):
            raise AdminError(400, "pass must be a JSON object")
        if pass_data is not None:
            stored = StoredPass.from_data(pass_data)
        else:
            stored = StoredPass.from_raw(str(pass_json))
        with self._lock:
            target = self._user(user_id).lists()[list_name]
            if replace and stored.uuid is not None:
                for index, existing in enumerate(target):
                    if existing.uuid == stored.uuid:
                        target[index] = stored
                        return stored.data
            if position is None:
                target.append(stored)
            else:
                target.insert(position, stored)
            return stored.data

    def remove_pass(self, user_id: int, pass_uuid: str) -> None:
        """Delete a pass from whichever list holds it (Bytemark dropping a refunded pass)."""
        with self._lock:
            user = self._user(user_id)
            list_name, index = self._find(user, pass_uuid)
            del user.lists()[list_name][index]

    # ---------------------------------------------------------------- faults

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
        """Add a fault; returns its description (with an id). None parameters take FAULT_PARAM_DEFAULTS."""
        if kind not in FAULT_KINDS:
            raise AdminError(400, f"unknown fault kind {kind!r}; known: {list(FAULT_KINDS)}")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise AdminError(400, f"endpoint must be one of {list(ENDPOINTS)} or null")
        if count is not None and count < 1:
            raise AdminError(400, "count must be >= 1 or null")
        if not 0.0 <= rate <= 1.0:
            raise AdminError(400, "rate must be between 0 and 1")
        if latency_ms < 0 or retry_after < 0:
            raise AdminError(400, "latency_ms and retry_after must be >= 0")
        variants = FAULT_VARIANTS.get(kind)
        if variants is not None:
            variant = variant or variants[0]
            if variant not in variants:
                raise AdminError(400, f"variant must be one of {list(variants)}")
        given = {
            "drip_bytes": drip_bytes,
            "drip_interval_ms": drip_interval_ms,
            "inflated_bytes": inflated_bytes,
            "body_bytes": body_bytes,
            "pass_count": pass_count,
        }
        params = {
            name: FAULT_PARAM_DEFAULTS[name] if value is None else value for name, value in given.items()
        }
        if any(value < 0 for value in params.values()) or params["drip_bytes"] < 1:
            raise AdminError(400, "drip_bytes must be >= 1; the other size and pace parameters >= 0")
        if kind == "timeout" and latency_ms == 0:
            latency_ms = 30_000
        with self._lock:
            fault = Fault(
                fault_id=self._next_fault_id,
                kind=kind,
                user_id=user_id,
                endpoint=endpoint,
                remaining=count,
                rate=rate,
                latency_ms=latency_ms,
                retry_after=retry_after,
                variant=variant or "",
                **params,
            )
            self._next_fault_id += 1
            self._faults.append(fault)
            return fault.describe()

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        """The active faults."""
        with self._lock:
            return [fault.describe() for fault in self._faults]

    def pick_fault(self, user_id: int | None, endpoint: Endpoint | None) -> Fault | None:
        """The fault that fires for this request, if any; consumes one of its count."""
        with self._lock:
            for fault in self._faults:
                if fault.user_id is not None and fault.user_id != user_id:
                    continue
                if fault.endpoint is not None and fault.endpoint != endpoint:
                    continue
                if fault.rate < 1.0 and self._fault_rng.random() >= fault.rate:
                    continue
                fault.fired += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault
            return None

    # ------------------------------------------------------------- API reads

    def count_request(self, endpoint: Endpoint | None, user_id: int | None) -> None:
        """Record one API request (by endpoint and by user id; tokens are never recorded)."""
        with self._lock:
            self._counts["total"] += 1
            if endpoint is None:
                return
            self._counts["by_endpoint"][endpoint] += 1
            if user_id is not None:
                per_user = self._counts["by_user"].setdefault(str(user_id), dict.fromkeys(ENDPOINTS, 0))
                per_user[endpoint] += 1

    def request_counts(self) -> dict[str, Any]:
        """A copy of the counters."""
        with self._lock:
            return json.loads(json.dumps(self._counts))  # type: ignore[no-any-return]

    def user_for_token(self, token: str | None) -> tuple[int | None, str | None]:
        """(user_id, None) for a valid token, else (user_id or None, why it is refused)."""
        if not token:
            return None, "Missing bearer token"
        with self._lock:
            user_id = self._tokens.get(token)
            if user_id is None:
                return None, "Invalid or expired session token"
            if self._users[user_id].revoked:
                return user_id, "Session token has been revoked"
            return user_id, None

    def page(self, user_id: int, endpoint: Endpoint, page: int, per_page: int) -> PageResult:
        """One page of a user's v1 or v4 list."""
        with self._lock:
            user = self._user(user_id)
            source = user.current if endpoint == "v1" else user.expired
            start = (page - 1) * per_page
            items = [p.raw for p in source[start : start + per_page]]
            total = len(source)
            more = start + len(items) < total
            object_pagination = user.empty_pagination_style == "object" and page == 1 and not more
            return PageResult(
                user_id=user_id,
                passes_raw=items,
                total_count=total,
                page=page,
                per_page=per_page,
                more=more,
                object_pagination=object_pagination,
                envelope_style=user.envelope_style or self._envelope_style,
                compress_answers=(
                    self._compress_answers if user.compress_answers is None else user.compress_answers
                ),
            )

    def server_time(self) -> str:
        """The envelope's server_time."""
        return format_iso(self.now())
