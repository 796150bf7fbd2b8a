"""In-process adapters for running the REAL services over the simulated day, under the ports' contracts
(layers/shared/bytemark_cache/ports.py) and fast at 10,000 users:

- ``FastCacheStore``: tests/fakes.py's InMemoryCacheStore indexed by user (its ``load`` and ``take_due`` scan
  every document), copy-on-write instead of deep copies (the services never mutate what they load: the
  unit tests check it), and it meters the bytes the real MongoCacheStore would send for each write;
- ``TimedTokens``: the token store, where a new rider's token exists from the moment they linked;
- ``TruthSource``: Bytemark, answering from the truth at the clock's instant, counting requests per page;
- ``SimQueue``: the update queue, delivering each message 1-2 s after it was sent, in simulated time.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from typing import Any

import bson
from bson import ObjectId

from bench.daysim_core import EventLoop, Meter, PolicyResult, in_window
from bench.daysim_riders import Rider
from bench.daysim_truth import Truth, requests_for
from bytemark_cache.adapters.mongo_store import update_statement
from bytemark_cache.domain import freshness
from bytemark_cache.domain.model import (
    NEXT_SYNC_FIELD,
    PENDING_LOG_FIELD,
    CacheDocument,
    FetchedPasses,
    SyncPlan,
    UpdateMessage,
)
from bytemark_cache.domain.plan import apply_plan
from bytemark_cache.errors import ConcurrentModification, TokenRevoked
from bytemark_cache.ports import Clock

QUEUE_DELAY_SECONDS = (1.0, 2.0)
"""An SQS message reaches the consumer this long after it was sent (uniform)."""


def _claim_bytes() -> int:
    claim = {"_id": "claim:1234567:12:0", "user_id": 1234567, "revision": 12, "generation": 0}
    return len(bson.encode({**claim, "owner": "0" * 32, "expires_at": 1.0}))


CLAIM_BYTES = _claim_bytes()
"""The claim document inserted before every write."""


class FastCacheStore:
    """CacheStore over dicts keyed by user (see the module docstring), metering write bytes.

    Write bytes of one write: the cache statement (the update's filter and update document from
    ``update_statement``, or the inserted document of a build), this write's change-log entries, and the
    claim document. The previous write's pending entries are not sent again: MongoCacheStore checks the
    last of them with a point read, and here every write's entries reached the log.
    """

    def __init__(self, clock: Clock, meter: Meter, result: PolicyResult) -> None:
        self._clock = clock
        self._meter = meter
        self._result = result
        self.documents: dict[int, CacheDocument] = {}
        self._claims: dict[int, dict[int, tuple[int, str, float]]] = {}
        self._due: list[tuple[int, int]] = []
        self._throttles: dict[str, float] = {}

    def load(self, user_id: int) -> list[CacheDocument]:
        document = self.documents.get(user_id)
        return [] if document is None else [document]

    def claim(self, user_id: int, revision: int, owner: str, now: float, ttl_seconds: float) -> bool:
        claims = self._claims.setdefault(user_id, {})
        held = claims.get(revision)
        if held is not None and held[1] == owner:
            return True
        if held is not None and held[2] > now:
            return False
        claims[revision] = (0 if held is None else held[0] + 1, owner, now + ttl_seconds)
        self._meter.write(now, CLAIM_BYTES)
        return True

    def release(self, user_id: int, revision: int, owner: str) -> None:
        held = self._claims.get(user_id, {}).get(revision)
        if held is not None and held[1] == owner:
            self._claims[user_id][revision] = (held[0], owner, 0.0)

    def write(self, plan: SyncPlan) -> None:
        now = self._clock.now()
        size = 0  # the previous write's entries all reached the log: the store only checks the last one
        entries = [entry.to_document() for entry in plan.log]
        if plan.creates:
            if plan.user_id in self.documents:
                raise ConcurrentModification("exists")
            document = apply_plan(None, plan)
            document["_id"] = ObjectId(f"{plan.user_id:024x}")
            if entries:
                document[PENDING_LOG_FIELD] = entries
            size += len(bson.encode(document))
        else:
            stored = self.documents.get(plan.user_id)
            if stored is None or not _guard_holds(stored, plan):
                raise ConcurrentModification("the document changed since it was read")
            filter_, update = update_statement(plan)
            size += len(bson.encode({"q": filter_, "u": update}))
            document = apply_plan(stored, plan)
            document.pop(PENDING_LOG_FIELD, None)
            if entries:
                document[PENDING_LOG_FIELD] = entries
        size += sum(len(bson.encode(entry)) for entry in entries)
        self.documents[plan.user_id] = document
        self._schedule(plan.user_id, document)
        claims = self._claims.get(plan.user_id, {})
        for revision in [revision for revision in claims if revision < plan.revision - 1]:
            del claims[revision]
        self._meter.write(now, size)
        self._result.count("writes")

    def set_next_sync(self, user_id: int, at: int) -> None:
        document = self.documents.get(user_id)
        if document is not None:
            self.documents[user_id] = {**document, NEXT_SYNC_FIELD: at}
            self._schedule(user_id, self.documents[user_id])
            statement = {
                "q": {"user_id": {"$in": [user_id, str(user_id)]}},
                "u": {"$set": {NEXT_SYNC_FIELD: at}},
            }
            self._meter.write(self._clock.now(), len(bson.encode(statement)))

    def cache_timestamps(self, user_ids: Sequence[int]) -> dict[int, Any]:
        documents = self.documents
        return {uid: documents[uid].get("timestamp") for uid in user_ids if uid in documents}

    def take_due(self, now: int, limit: int, hold_until: int) -> list[int]:
        taken: list[int] = []
        while self._due and len(taken) < limit and self._due[0][0] <= now:
            at, user_id = heapq.heappop(self._due)
            document = self.documents.get(user_id)
            if document is not None and (document.get(NEXT_SYNC_FIELD) or 0) == at and user_id not in taken:
                taken.append(user_id)
        for user_id in taken:
            if in_window(now):
                self._result.count(f"due by rule: {schedule_rule(self.documents[user_id])}")
            self.documents[user_id] = {**self.documents[user_id], NEXT_SYNC_FIELD: hold_until}
            self._schedule(user_id, self.documents[user_id])
        if taken:
            ids = [ObjectId(f"{uid:024x}") for uid in taken]
            statement = {"q": {"_id": {"$in": ids}}, "u": {"$set": {NEXT_SYNC_FIELD: hold_until}}}
            self._meter.write(now, len(bson.encode(statement)) + 60)  # + the "still due" condition
        return sorted(taken)

    def count_due(self, now: int) -> int:
        return sum(1 for d in self.documents.values() if (d.get(NEXT_SYNC_FIELD) or 0) <= now)

    def read_log(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        return []

    def prune_log(self, before: int, limit: int) -> int:
        return 0

    def throttle(self, key: str, now: float, interval_seconds: float) -> float:
        until = self._throttles.get(key, 0.0)
        if until > now:
            return until - now
        self._throttles[key] = now + interval_seconds
        return 0.0

    def _schedule(self, user_id: int, document: CacheDocument) -> None:
        heapq.heappush(self._due, (document.get(NEXT_SYNC_FIELD) or 0, user_id))


def schedule_rule(document: CacheDocument) -> str:
    """Which rule of the freshness policy set the document's ``next_sync_at`` (read from the interval)."""
    interval = (document.get(NEXT_SYNC_FIELD) or 0) - (document.get("timestamp") or 0)
    rules = {
        freshness.RIDING_INTERVAL_SECONDS: "riding (a ride ticket in use)",
        freshness.ACTIVE_INTERVAL_SECONDS: "active rider",
        freshness.DORMANT_FLOOR_SECONDS: "dormant floor",
        freshness.FAILED_SYNC_RETRY_SECONDS: "retry",
    }
    return rules.get(interval, "known transition")


def _guard_holds(stored: CacheDocument, plan: SyncPlan) -> bool:
    guard = plan.guard
    assert guard is not None
    if stored.get("_id") != guard.document_id:
        return False
    values_hold = all(name in stored and stored[name] == value for name, value in guard.fields.items())
    return values_hold and not any(name in stored for name in guard.missing)


class TimedTokens:
    """TokenStore: ``tok-<user id>`` for every rider, from the moment the rider linked Bytemark."""

    def __init__(self, riders: dict[int, Rider], clock: Clock) -> None:
        self._riders = riders
        self._clock = clock
        self._ids = sorted(riders)

    def token_for(self, user_id: int) -> str | None:
        rider = self._riders.get(user_id)
        return rider.token if rider is not None and rider.has_token(self._clock.now()) else None

    def users_with_token(self, after_user_id: int | None, page_size: int) -> Iterator[list[int]]:
        now = self._clock.now()
        ids = [uid for uid in self._ids if self._riders[uid].has_token(now)]
        if after_user_id is not None:
            ids = [uid for uid in ids if uid > after_user_id]
        for start in range(0, len(ids), page_size):
            yield ids[start : start + page_size]


class TruthSource:
    """PassSource over the truth at the clock's instant; ``cause`` (set by the caller) names what the
    requests are counted under."""

    def __init__(self, truth: Truth, clock: Clock, meter: Meter, result: PolicyResult) -> None:
        self._truth = truth
        self._clock = clock
        self._meter = meter
        self._result = result
        self.requests_sent = 0
        self.cause = "other"

    def fetch_passes(self, token: str, budget_seconds: float) -> FetchedPasses:
        user_id = int(token.removeprefix("tok-"))
        if user_id not in self._truth.riders:
            raise TokenRevoked()
        now = self._clock.now()
        current, history = self._truth.lists_at(user_id, now)
        count = requests_for(len(current), len(history))
        self.requests_sent += count
        self._meter.requests(now, count)
        if in_window(now):
            self._result.count(f"requests: {self.cause}", count)
        return FetchedPasses(current=list(current), expired=list(history))


class SimQueue:
    """UpdateQueue delivering each message to the loop 1-2 s after it was sent."""

    def __init__(self, loop: EventLoop, clock: Clock, seed: str) -> None:
        self._loop = loop
        self._clock = clock
        self._rng = random.Random(seed)

    def enqueue(self, messages: Sequence[UpdateMessage]) -> None:
        now = self._clock.now()
        for message in messages:
            self._loop.at(now + self._rng.uniform(*QUEUE_DELAY_SECONDS), "deliver", message.to_body())
