"""In-memory fakes of the project's own ports, for unit tests (no sockets, no drivers).

They follow the ports' contracts, including the ones that matter for correctness: the cache store's claims
(one holder per revision, expired claims taken over by the next generation) and its guarded, all-or-nothing
write with the pending change log. ``InMemoryCacheStore.fail_next`` injects a failure at a named point.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from bytemark_cache.domain.document import interpret_user_id
from bytemark_cache.domain.model import (
    NEXT_SYNC_FIELD,
    PENDING_LOG_FIELD,
    CacheDocument,
    FetchedPasses,
    Pass,
    SyncPlan,
    UpdateMessage,
)
from bytemark_cache.domain.plan import apply_plan
from bytemark_cache.errors import (
    ConcurrentModification,
    StoreError,
    TokenRevoked,
    UpstreamError,
)


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
    """Bytemark as a dict of token → lists; failures can be queued per token. Two requests per fetch."""

    def __init__(self) -> None:
        self.accounts: dict[str, FetchedPasses] = {}
        self.failures: dict[str, list[UpstreamError]] = {}
        self.fetches: list[str] = []
        self.budgets: list[float] = []
        self.requests_sent = 0
        self.before_fetch: Any = None

    def set_passes(self, token: str, current: list[Pass], expired: list[Pass] | None = None) -> None:
        self.accounts[token] = FetchedPasses(current=list(current), expired=list(expired or []))

    def fail_next(self, token: str, error: UpstreamError) -> None:
        self.failures.setdefault(token, []).append(error)

    def fetch_passes(self, token: str, budget_seconds: float) -> FetchedPasses:
        self.fetches.append(token)
        self.budgets.append(budget_seconds)
        self.requests_sent += 2
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
    """Cache documents, change log and claims in dicts, under the same contract as MongoCacheStore."""

    FAULT_POINTS = ("write", "log", "claim")

    def __init__(self) -> None:
        self.documents: dict[Any, CacheDocument] = {}
        self.log: dict[str, dict[str, Any]] = {}
        self.claims: dict[str, dict[str, Any]] = {}
        self.throttles: dict[str, float] = {}
        self.writes: list[SyncPlan] = []
        self.faults: dict[str, list[Exception]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # -- test helpers ------------------------------------------------------------------------------

    def put(self, document: CacheDocument) -> Any:
        """Store a document as another writer would have (an ``_id`` is given if it has none)."""
        with self._lock:
            stored = copy.deepcopy(document)
            stored.setdefault("_id", f"oid-{next(self._ids)}")
            self.documents[stored["_id"]] = stored
            return stored["_id"]

    def document_of(self, user_id: int) -> CacheDocument | None:
        """The (first) stored document of the user, as stored."""
        documents = self.load(user_id)
        return documents[0] if documents else None

    def fail_next(self, point: str, error: Exception | None = None) -> None:
        """Raise ``error`` (a StoreError by default) the next time ``point`` is reached: ``write`` (the
        document statement), ``log`` (the log insert after the document write) or ``claim``."""
        assert point in self.FAULT_POINTS
        self.faults.setdefault(point, []).append(error or StoreError(f"injected failure at {point}"))

    def log_entries(self, user_id: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self.log.values() if user_id is None or e["user_id"] == user_id]

    def _fault(self, point: str) -> None:
        pending = self.faults.get(point)
        if pending:
            raise pending.pop(0)

    # -- the port ----------------------------------------------------------------------------------

    def load(self, user_id: int) -> list[CacheDocument]:
        with self._lock:
            return [
                copy.deepcopy(document)
                for document in self.documents.values()
                if interpret_user_id(document.get("user_id")) == user_id
            ]

    def claim(self, user_id: int, revision: int, owner: str, now: float, ttl_seconds: float) -> bool:
        with self._lock:
            self._fault("claim")
            generation = 0
            while True:
                claim_id = f"claim:{user_id}:{revision}:{generation}"
                held = self.claims.get(claim_id)
                if held is None:
                    self.claims[claim_id] = {
                        "user_id": user_id, "revision": revision, "generation": generation,
                        "owner": owner, "expires_at": now + ttl_seconds,
                    }  # fmt: skip
                    return True
                if held["owner"] == owner:
                    return True
                if held["expires_at"] > now:
                    return False
                generation += 1

    def release(self, user_id: int, revision: int, owner: str) -> None:
        with self._lock:
            for claim in self.claims.values():
                if (claim["user_id"], claim["revision"], claim["owner"]) == (user_id, revision, owner):
                    claim["expires_at"] = 0

    def write(self, plan: SyncPlan) -> None:
        with self._lock:
            self._insert_log([entry.to_document() for entry in plan.carried_log])
            self._fault("write")
            entries = [entry.to_document() for entry in plan.log]
            if plan.creates:
                if self.load(plan.user_id):
                    raise ConcurrentModification("exists")
                document = apply_plan(None, plan)
                document["_id"] = f"oid-{next(self._ids)}"
            else:
                assert plan.guard is not None
                stored = self.documents.get(plan.guard.document_id)
                if stored is None or not _guard_holds(stored, plan):
                    raise ConcurrentModification("the document changed since it was read")
                document = apply_plan(copy.deepcopy(stored), plan)
                document.pop(PENDING_LOG_FIELD, None)
            if entries:
                document[PENDING_LOG_FIELD] = entries
            self.documents[document["_id"]] = document
            self.writes.append(plan)
            self._fault("log")
            self._insert_log(entries)
            self.claims = {
                key: claim
                for key, claim in self.claims.items()
                if not (claim["user_id"] == plan.user_id and claim["revision"] < plan.revision - 1)
            }

    def set_next_sync(self, user_id: int, at: int) -> None:
        with self._lock:
            for document in self.documents.values():
                if interpret_user_id(document.get("user_id")) == user_id:
                    document[NEXT_SYNC_FIELD] = at

    def cache_timestamps(self, user_ids: Sequence[int]) -> dict[int, Any]:
        with self._lock:
            found: dict[int, Any] = {}
            for document in self.documents.values():
                user_id = interpret_user_id(document.get("user_id"))
                if user_id in user_ids:
                    found[user_id] = document.get("timestamp")
            return found

    def take_due(self, now: int, limit: int, hold_until: int) -> list[int]:
        with self._lock:
            due = sorted(
                (d for d in self.documents.values() if _is_due(d, now)),
                key=lambda d: d.get(NEXT_SYNC_FIELD) or 0,
            )[:limit]
            for document in due:
                document[NEXT_SYNC_FIELD] = hold_until
            return sorted({uid for d in due if (uid := interpret_user_id(d.get("user_id"))) is not None})

    def count_due(self, now: int) -> int:
        with self._lock:
            return sum(1 for document in self.documents.values() if _is_due(document, now))

    def read_log(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        entries = sorted(self.log_entries(user_id), key=lambda e: (e["timestamp"], e["_id"]), reverse=True)
        return [{k: v for k, v in e.items() if k != "_id"} for e in entries[: max(0, limit)]]

    def prune_log(self, before: int, limit: int) -> int:
        with self._lock:
            old = [key for key, entry in self.log.items() if entry["timestamp"] < before][:limit]
            for key in old:
                del self.log[key]
            return len(old)

    def throttle(self, key: str, now: float, interval_seconds: float) -> float:
        with self._lock:
            until = self.throttles.get(key, 0.0)
            if until > now:
                return until - now
            self.throttles[key] = now + interval_seconds
            return 0.0

    def _insert_log(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            self.log.setdefault(entry["_id"], dict(entry))


def _guard_holds(stored: CacheDocument, plan: SyncPlan) -> bool:
    assert plan.guard is not None
    values_hold = all(name in stored and stored[name] == value for name, value in plan.guard.fields.items())
    return values_hold and not any(name in stored for name in plan.guard.missing)


def _is_due(document: CacheDocument, now: int) -> bool:
    next_sync = document.get(NEXT_SYNC_FIELD)
    return next_sync is None or next_sync <= now


class InMemoryUpdateQueue:
    """The update queue as a list of message bodies."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail_after: int | None = None

    def enqueue(self, messages: Sequence[UpdateMessage]) -> None:
        for message in messages:
            if self.fail_after is not None and len(self.messages) >= self.fail_after:
                raise StoreError("queue unavailable")
            self.messages.append(message.to_body())


class InMemoryRedelivery:
    """Redelivery decisions recorded: delays per receipt handle, and the dead-lettered bodies."""

    def __init__(self) -> None:
        self.delays: dict[str, int] = {}
        self.dead_letters: list[dict[str, str]] = []
        self.fail: bool = False

    def retry_later(self, receipt_handle: str, delay_seconds: int) -> None:
        if self.fail:
            raise StoreError("SQS unavailable")
        self.delays[receipt_handle] = delay_seconds

    def dead_letter(self, body: str, reason: str, message_id: str) -> None:
        if self.fail:
            raise StoreError("SQS unavailable")
        self.dead_letters.append({"body": body, "reason": reason, "message_id": message_id})


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


class RecordingSleep:
    """Stands in for time.sleep: records every wait instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


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
        self.redelivery = InMemoryRedelivery()
        self.clock = FakeClock()
        self.runs = InMemoryBackfillRuns()
        self.settings = Settings.from_env({**LOCAL_TEST_ENV, **(env or {})})
        self.services = build_services(
            self.settings,
            tokens=self.tokens,
            source=self.source,
            cache=self.cache,
            queue=self.queue,
            redelivery=self.redelivery,
            clock=self.clock,
            runs=self.runs,
        )
