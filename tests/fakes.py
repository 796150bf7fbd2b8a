"""In-memory fakes of the project's own ports, for unit tests (no sockets, no drivers)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bytemark_cache.domain.model import (
    REVISION_FIELD,
    CacheDocument,
    FetchedPasses,
    Pass,
    SyncPlan,
    UpdateMessage,
)
from bytemark_cache.domain.sync import apply_plan
from bytemark_cache.errors import ConcurrentModification, TokenRevoked, UpstreamError


class InMemoryTokenStore:
    """``bytemark_tokens`` as a dict."""

    def __init__(self, tokens: dict[int, str | None] | None = None) -> None:
        self.tokens: dict[int, str | None] = dict(tokens or {})

    def token_for(self, user_id: int) -> str | None:
        token = self.tokens.get(user_id)
        return token if token and token.strip() else None

    def users_with_token(self, after_user_id: int | None, page_size: int) -> Iterator[list[int]]:
        ids = sorted(uid for uid in self.tokens if self.token_for(uid))
        if after_user_id is not None:
            ids = [uid for uid in ids if uid > after_user_id]
        for start in range(0, len(ids), page_size):
            yield ids[start : start + page_size]


class InMemoryPassSource:
    """Bytemark as a dict of token → lists; failures can be queued per token."""

    def __init__(self) -> None:
        self.accounts: dict[str, FetchedPasses] = {}
        self.failures: dict[str, list[UpstreamError]] = {}
        self.fetches: list[str] = []
        self.before_fetch: Callable[[str], None] | None = None

    def set_passes(self, token: str, current: list[Pass], expired: list[Pass] | None = None) -> None:
        self.accounts[token] = FetchedPasses(current=list(current), expired=list(expired or []))

    def fail_next(self, token: str, error: UpstreamError) -> None:
        self.failures.setdefault(token, []).append(error)

    def fetch_passes(self, token: str) -> FetchedPasses:
        self.fetches.append(token)
        if self.before_fetch is not None:
            self.before_fetch(token)
        pending = self.failures.get(token)
        if pending:
            raise pending.pop(0)
        if token not in self.accounts:
            raise TokenRevoked()
        fetched = self.accounts[token]
        return FetchedPasses(copy.deepcopy(fetched.current), copy.deepcopy(fetched.expired))


class InMemoryCacheStore:
    """Cache documents, log and leases in dicts, with the same optimistic-concurrency rule as MongoDB."""

    def __init__(self) -> None:
        self.documents: dict[int, CacheDocument] = {}
        self.log: list[dict[str, Any]] = []
        self.leases: dict[int, tuple[str, float]] = {}
        self.throttles: dict[str, float] = {}
        self.applied: list[SyncPlan] = []
        self._lock = threading.Lock()

    def load(self, user_id: int) -> CacheDocument | None:
        with self._lock:
            document = self.documents.get(user_id)
            return copy.deepcopy(document) if document is not None else None

    def apply(self, plan: SyncPlan) -> None:
        with self._lock:
            old = self.documents.get(plan.user_id)
            if plan.creates:
                if old is not None:
                    raise ConcurrentModification("exists")
            elif old is None or old.get(REVISION_FIELD, 0) != plan.base_revision:
                raise ConcurrentModification("revision moved")
            self.documents[plan.user_id] = apply_plan(copy.deepcopy(old), plan)
            self.log.extend(entry.to_document() for entry in plan.log)
            self.applied.append(plan)

    def cache_timestamps(self, user_ids: Sequence[int]) -> dict[int, int]:
        with self._lock:
            return {uid: int(self.documents[uid]["timestamp"]) for uid in user_ids if uid in self.documents}

    def mark_pass_status(self, user_id: int, pass_uuid: str, status: str) -> bool:
        with self._lock:
            for element in self.documents.get(user_id, {}).get("passes", []):
                if element.get("pass_uuid") == pass_uuid:
                    element["status"] = status
                    return True
            return False

    def read_log(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            entries = [entry for entry in self.log if entry["user_id"] == user_id]
        return sorted(entries, key=lambda entry: entry["timestamp"], reverse=True)[:limit]

    def throttle(self, key: str, now: float, interval_seconds: float) -> float:
        with self._lock:
            until = self.throttles.get(key, 0.0)
            if until > now:
                return until - now
            self.throttles[key] = now + interval_seconds
            return 0.0

    def acquire_lease(self, user_id: int, owner: str, now: float, ttl_seconds: float) -> bool:
        with self._lock:
            held = self.leases.get(user_id)
            if held is not None and held[0] != owner and held[1] > now:
                return False
            self.leases[user_id] = (owner, now + ttl_seconds)
            return True

    def release_lease(self, user_id: int, owner: str) -> None:
        with self._lock:
            if self.leases.get(user_id, ("", 0.0))[0] == owner:
                del self.leases[user_id]


class InMemoryUpdateQueue:
    """The update queue as a list of message bodies."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail_after: int | None = None

    def enqueue(self, messages: Sequence[UpdateMessage]) -> None:
        from bytemark_cache.errors import StoreError

        for message in messages:
            if self.fail_after is not None and len(self.messages) >= self.fail_after:
                raise StoreError("queue unavailable")
            self.messages.append(message.to_body())


class FakeClock:
    """Time that moves only when told; ``sleep`` advances it."""

    def __init__(self, start: float = 1_718_425_800.0) -> None:
        self.current = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.current += seconds

    def advance(self, seconds: float) -> None:
        self.current += seconds


def make_pass(
    uuid: str,
    *,
    status: str = "USABLE",
    time_created: str = "2024-06-01T10:00:00.000Z",
    time_modified: str | None = None,
    label_name: str = "Local Single Ride",
    first_use: str | None = None,
    expiration: str | None = None,
    **extra: Any,
) -> Pass:
    """A small Bytemark-shaped pass (the simulator makes the realistic ones)."""
    return {
        "uuid": uuid,
        "status": status,
        "first_use": first_use,
        "expiration": expiration,
        "time_created": time_created,
        "time_modified": time_modified or time_created,
        "product_uuid": "prod-" + label_name.replace(" ", "-").lower(),
        "label_name": label_name,
        "order_item": {"price": 250, "tax_rate": 0.0825},
        **extra,
    }


LOCAL_TEST_ENV = {
    "MONGODB_URI": "mongodb://127.0.0.1:1/",
    "MYSQL_HOST": "127.0.0.1",
    "MYSQL_USER": "app",
    "MYSQL_PASSWORD": "secret",
    "BYTEMARK_API_URL": "http://127.0.0.1:1",
    "UPDATE_QUEUE_URL": "http://127.0.0.1:1/123456789012/updates",
}
"""Valid settings whose endpoints are never dialled (every adapter is replaced by a fake)."""


class InMemoryBackfillRuns:
    """Back-fill progress per run id."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}

    def load_run(self, run_id: str) -> dict[str, Any] | None:
        run = self.runs.get(run_id)
        return dict(run) if run is not None else None

    def save_run(self, run_id: str, progress: dict[str, Any], now: float) -> None:
        self.runs[run_id] = dict(progress)


class RecordingContinuation:
    """Continuation that records what would have been handed on."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def continue_backfill(self, request: dict[str, Any]) -> None:
        self.requests.append(request)


class FakeWorld:
    """Services over fresh fakes, for handler tests: ``world.services`` goes to ``lambda_handler``."""

    def __init__(self, env: dict[str, str] | None = None, users: dict[int, str | None] | None = None) -> None:
        from bytemark_cache.bootstrap import build_services
        from bytemark_cache.config import Settings

        self.tokens = InMemoryTokenStore(users if users is not None else {42: "tok-42"})
        self.source = InMemoryPassSource()
        self.cache = InMemoryCacheStore()
        self.queue = InMemoryUpdateQueue()
        self.clock = FakeClock()
        self.runs = InMemoryBackfillRuns()
        self.settings = Settings.from_env({**LOCAL_TEST_ENV, **(env or {})})
        self.services = build_services(
            self.settings,
            tokens=self.tokens,
            source=self.source,
            cache=self.cache,
            queue=self.queue,
            clock=self.clock,
            runs=self.runs,
        )
