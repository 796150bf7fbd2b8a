"""MongoCacheStore: the per-user cache documents, the change log and the sync leases in MongoDB.

Written for the common subset of MongoDB, Amazon DocumentDB and FerretDB 1.x (the local stand-in): no
``arrayFilters``, no transactions, no ``$pull`` with query conditions (FerretDB 1.x silently ignores a
``$pull`` whose value is a condition rather than an exact element) and no ``$bsonSize``.

Concurrency: every cache write is guarded by the document's ``sync_revision`` *and* preceded by a
revision claim, a document inserted into the lease collection under the unique ``_id``
``revision:<user_id>:<revision>``. On MongoDB the guarded update alone is atomic, but FerretDB 1.x
applies an update as read, modify, write back the whole document (FerretDB issue #3040), so two writers
can both pass the guard; inserting a unique ``_id`` is atomic on both, so exactly one writer per
revision proceeds. A claim is deleted once its write is done; one left by a crashed writer expires after
``CLAIM_TTL_SECONDS``. Leases use ``findAndModify`` with upsert: atomic on MongoDB; on FerretDB 1.x two
callers taking over the same *expired* lease at the same instant can both succeed (a fresh lease is
safe: its insert is unique), which the revision claims make harmless for the data.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Final

import bson
from pymongo import ASCENDING, DESCENDING, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.monitoring import CommandListener

from bytemark_cache.domain.model import (
    REVISION_FIELD,
    CacheDocument,
    ListChanges,
    ListName,
    SyncPlan,
)
from bytemark_cache.errors import ConcurrentModification, StoreError

logger = logging.getLogger(__name__)

Document = dict[str, Any]

DEFAULT_MAX_DOCUMENT_BYTES: Final = 15 * 1024 * 1024
"""1 MiB below MongoDB's 16 MiB hard limit: the gap absorbs fields the plan does not know (``passesLog``)."""

PENDING_FIELD: Final = "sync_pending"
"""Token an apply that needs several update statements chains them with; removed by its last statement
(a writer that died half-way leaves it behind: harmless, the next multi-statement apply replaces it)."""

TOMBSTONE_FIELD: Final = "__bytemark_cache_removed__"
"""Marker an element to remove is replaced with before one exact-value ``$pull`` takes all of them out."""

WRAPPER_FIELDS: Final = ("status", "payload", "payload_hash", "timestamp")
"""Element fields a sync replaces; everything else on an element (``free_ticket_status``, ``_id`` …) stays."""

TRIM_TARGET_RATIO: Final = 0.9
"""After a size trim the document is brought down to this share of the limit, so the next syncs stay
incremental instead of rewriting a near-limit ``passes4`` every time."""

MARK_ATTEMPTS: Final = 5
"""How often mark_pass_status re-reads and retries while syncs keep moving the document (~0.3 s)."""

CLAIM_TTL_SECONDS: Final = 60.0
"""How long a revision claim blocks other writers when its writer died before deleting it."""

_URI_CREDENTIALS = re.compile(r"(mongodb(?:\+srv)?://)[^@/\s]*@")


def connect(
    uri: str,
    database: str,
    *,
    timeout_ms: int = 3000,
    socket_timeout_ms: int = 10000,
    appname: str = "bytemark-ticket-cache",
    event_listeners: Sequence[CommandListener] | None = None,
) -> Database[Document]:
    """One MongoClient with short timeouts (well under the Lambda and API Gateway limits) and its database.

    Retryable writes stay at the driver default: pymongo only uses them on replica sets and sharded
    clusters (Atlas, DocumentDB), never on a standalone server such as FerretDB, so nothing needs turning
    off. Raises StoreError for an unusable URI (the message never repeats the URI: it may hold a password).
    """
    try:
        client: MongoClient[Document] = MongoClient(
            uri,
            appname=appname,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=socket_timeout_ms,
            event_listeners=list(event_listeners or ()),
        )
    except (PyMongoError, ValueError, TypeError) as exc:
        raise StoreError(f"MongoDB client could not be created: {type(exc).__name__}") from exc
    return client[database]


@dataclass
class _Statement:
    """One update statement (or one array's part of it): its filter guards and its update operators."""

    guards: Document = field(default_factory=dict)
    set_fields: Document = field(default_factory=dict)
    pull: Document = field(default_factory=dict)
    push: Document = field(default_factory=dict)

    def merge(self, other: _Statement) -> None:
        """Add another array's part of this statement (the arrays never share a path)."""
        self.guards.update(other.guards)
        self.set_fields.update(other.set_fields)
        self.pull.update(other.pull)
        self.push.update(other.push)

    def update(self) -> Document:
        """The update document (operators without content left out)."""
        operators: Document = {}
        if self.set_fields:
            operators["$set"] = self.set_fields
        if self.pull:
            operators["$pull"] = self.pull
        if self.push:
            operators["$push"] = self.push
        return operators


class MongoCacheStore:
    """CacheStore on MongoDB: incremental, revision-guarded writes; change log; single-flight leases."""

    def __init__(
        self,
        database: Database[Document],
        cache_collection: str,
        log_collection: str,
        lease_collection: str,
        *,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    ) -> None:
        if max_document_bytes <= 0:
            raise ValueError("max_document_bytes must be positive")
        self._cache: Collection[Document] = database[cache_collection]
        self._log: Collection[Document] = database[log_collection]
        self._leases: Collection[Document] = database[lease_collection]
        self._max_document_bytes = max_document_bytes

    def ensure_indexes(self) -> None:
        """Create the unique cache index on ``user_id`` and the log index on ``(user_id, timestamp)``."""
        with _store_errors("index creation"):
            self._cache.create_index([("user_id", ASCENDING)], unique=True)
            self._log.create_index([("user_id", ASCENDING), ("timestamp", ASCENDING)])
        # The lease collection needs none: leases, revision claims and throttle slots are keyed by _id.

    # -- reads -------------------------------------------------------------------------------------

    def load(self, user_id: int) -> CacheDocument | None:
        """The user's cache document (without the top-level ``_id``), or None."""
        with _store_errors("load"):
            return self._cache.find_one({"user_id": user_id}, {"_id": 0})

    def cache_timestamps(self, user_ids: Sequence[int]) -> dict[int, int]:
        """``user_id -> document timestamp`` for the ``user_ids`` that have a cache document (one query)."""
        if not user_ids:
            return {}
        with _store_errors("cache_timestamps"):
            cursor = self._cache.find(
                {"user_id": {"$in": list(user_ids)}}, {"_id": 0, "user_id": 1, "timestamp": 1}
            )
            found: dict[int, int] = {}
            for document in cursor:
                timestamp = document.get("timestamp")
                # Documents of the Node service may hold the timestamp as a double; one without any
                # timestamp is as stale as it gets.
                found[int(document["user_id"])] = int(timestamp) if isinstance(timestamp, int | float) else 0
            return found

    def read_log(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        """The user's newest change-log entries, newest first (insertion order breaks timestamp ties)."""
        if limit <= 0:
            # pymongo reads limit(0) as "no limit".
            return []
        with _store_errors("read_log"):
            cursor = (
                self._log.find({"user_id": user_id})
                .sort([("timestamp", DESCENDING), ("_id", DESCENDING)])
                .limit(limit)
            )
            entries = list(cursor)
        for entry in entries:
            # Sorting needs _id; the caller does not (an ObjectId is not JSON either).
            entry.pop("_id", None)
        return entries

    # -- writes ------------------------------------------------------------------------------------

    def apply(self, plan: SyncPlan) -> None:
        """Write only what the plan changes, revision-guarded, then append its log entries.

        Raises ConcurrentModification when the document is not at ``plan.base_revision`` (or already
        exists for a create); nothing is written then. A StoreError from the log insert comes after the
        document was written: the document is current, some log entries may be missing.
        """
        passes4 = self._bounded_passes4(plan)
        if plan.creates:
            self._create(plan, passes4)
        else:
            self._update(plan, passes4)
        if plan.log:
            with _store_errors("change log insert"):
                self._log.insert_many([entry.to_document() for entry in plan.log], ordered=False)

    def mark_pass_status(self, user_id: int, pass_uuid: str, status: str) -> bool:
        """Set one ``passes`` element's ``status`` (payload and hash untouched); False if not found.

        Like a sync it claims and bumps the revision, so a sync computed before this change fails
        instead of silently overwriting it. Raises ConcurrentModification when syncs kept moving the
        document for every attempt.
        """
        # The element is addressed by index (no arrayFilters on FerretDB); a sync may move it between
        # the read and the write, so the write is guarded by revision and uuid at that index, and retried.
        for attempt in range(MARK_ATTEMPTS):
            if attempt:
                # A rival holds the revision claim only while it writes (milliseconds).
                time.sleep(random.uniform(0.5, 1.0) * 0.01 * 2**attempt)
            with _store_errors("mark_pass_status"):
                document = self._cache.find_one(
                    {"user_id": user_id}, {"_id": 0, REVISION_FIELD: 1, "passes.pass_uuid": 1}
                )
            if document is None:
                return False
            uuids = [_uuid_of(element) for element in document.get("passes") or []]
            if pass_uuid not in uuids:
                return False
            index = uuids.index(pass_uuid)
            revision = _revision_of(document)
            try:
                with (
                    self._revision_claim(user_id, revision, uuid.uuid4().hex),
                    _store_errors("mark_pass_status"),
                ):
                    result = self._cache.update_one(
                        {
                            "user_id": user_id,
                            REVISION_FIELD: _revision_guard(revision),
                            f"passes.{index}.pass_uuid": pass_uuid,
                        },
                        {"$set": {f"passes.{index}.status": status}, "$inc": {REVISION_FIELD: 1}},
                    )
            except ConcurrentModification:
                continue
            if result.matched_count:
                return True
        raise ConcurrentModification(f"cache document of user {user_id} kept changing; status not set")

    def throttle(self, key: str, now: float, interval_seconds: float) -> float:
        """Claim the slot ``key`` for ``interval_seconds``: 0 when claimed, else seconds until it frees up.

        Slots live in the lease collection as ``{_id: "throttle:<key>", until}``; one per key, reused.
        """
        slot_id = f"throttle:{key}"
        for _attempt in range(2):
            try:
                self._leases.find_one_and_update(
                    {"_id": slot_id, "until": {"$lte": now}},
                    {"$set": {"until": now + interval_seconds}},
                    upsert=True,
                )
                return 0.0
            except DuplicateKeyError:
                # The slot exists and is still taken (the filter did not match it).
                with _store_errors("throttle"):
                    slot = self._leases.find_one({"_id": slot_id})
                until = float(slot.get("until", 0)) if slot is not None else 0.0
                if until > now:
                    return until - now
                # Freed between the two calls: claim it again.
            except PyMongoError as exc:
                raise StoreError(f"MongoDB throttle failed: {_describe(exc)}") from exc
        raise ConcurrentModification(f"throttle slot {key!r} kept changing")

    def acquire_lease(self, user_id: int, owner: str, now: float, ttl_seconds: float) -> bool:
        """Take the user's lease if it is free, expired or already ours; False when someone else holds it."""
        try:
            self._leases.find_one_and_update(
                {"_id": user_id, "$or": [{"expires_at": {"$lte": now}}, {"owner": owner}]},
                {"$set": {"owner": owner, "expires_at": now + ttl_seconds}},
                upsert=True,
            )
        except DuplicateKeyError:
            # The filter did not match an existing lease, so the upsert tried to insert a second one.
            return False
        except PyMongoError as exc:
            raise StoreError(f"MongoDB acquire_lease failed: {_describe(exc)}") from exc
        return True

    def release_lease(self, user_id: int, owner: str) -> None:
        """Give the lease back (only if ``owner`` still holds it)."""
        with _store_errors("release_lease"):
            self._leases.delete_one({"_id": user_id, "owner": owner})

    # -- apply internals ---------------------------------------------------------------------------

    def _create(self, plan: SyncPlan, passes4: ListChanges) -> None:
        document: Document = {
            "user_id": plan.user_id,
            "timestamp": plan.timestamp,
            "passes": plan.passes.final,
            "passes4": passes4.final,
            REVISION_FIELD: 1,
        }
        try:
            self._cache.insert_one(document)
        except DuplicateKeyError as exc:
            raise ConcurrentModification(f"cache document of user {plan.user_id} already exists") from exc
        except PyMongoError as exc:
            raise StoreError(f"MongoDB cache insert failed: {_describe(exc)}") from exc

    def _update(self, plan: SyncPlan, passes4: ListChanges) -> None:
        base = plan.base_revision or 0
        token = uuid.uuid4().hex
        with self._revision_claim(plan.user_id, base, token):
            self._update_claimed(plan, passes4, base, token)

    def _update_claimed(self, plan: SyncPlan, passes4: ListChanges, base: int, token: str) -> None:
        changes: dict[ListName, ListChanges] = {"passes": plan.passes, "passes4": passes4}
        stored_uuids = self._stored_uuids(plan.user_id, base, changes)

        # MongoDB refuses one update touching `passes.3.status` and `passes` (path conflict), so each
        # array's steps (positional sets, pull, push) go to successive statements; both arrays share them.
        statements: list[_Statement] = []
        for name, changes_of_list in changes.items():
            for position, step in enumerate(
                _list_steps(name, changes_of_list, stored_uuids.get(name), token)
            ):
                if position == len(statements):
                    statements.append(_Statement())
                statements[position].merge(step)
        if not statements:
            statements.append(_Statement())

        # The first statement checks the revision the plan was computed from and bumps it by one (one
        # apply, one revision, whatever the statement count). The later ones check the new revision and
        # this apply's token, which no other writer can know, so a rival that read the half-written
        # document can never have its later statements land on ours (or ours on theirs). The document
        # timestamp goes with the last statement: a half-applied plan leaves the document looking
        # stale, so the next check syncs it again.
        operations: list[UpdateOne] = []
        for position, statement in enumerate(statements):
            filter_: Document = {"user_id": plan.user_id}
            update = statement.update()
            if position == 0:
                filter_[REVISION_FIELD] = _revision_guard(base)
                update["$inc"] = {REVISION_FIELD: 1}
            else:
                filter_[REVISION_FIELD] = base + 1
                filter_[PENDING_FIELD] = token
            filter_.update(statement.guards)
            last = position == len(statements) - 1
            if last:
                update.setdefault("$set", {})["timestamp"] = plan.timestamp
            if len(statements) > 1:
                if position == 0:
                    update.setdefault("$set", {})[PENDING_FIELD] = token
                elif last:
                    update["$unset"] = {PENDING_FIELD: ""}
            operations.append(UpdateOne(filter_, update))

        with _store_errors("cache update"):
            result = self._cache.bulk_write(operations, ordered=True)
        # Statement k can only match once the first did (revision and token), and the statements run in
        # order, so the match count is the length of the applied prefix.
        if result.matched_count == 0:
            raise ConcurrentModification(
                f"cache document of user {plan.user_id} is no longer at revision {base}"
            )
        if result.matched_count < len(operations):
            logger.error(
                "cache update applied only partly: user_id=%s applied=%d statements=%d",
                plan.user_id,
                result.matched_count,
                len(operations),
                extra={
                    "user_id": plan.user_id,
                    "applied": result.matched_count,
                    "statements": len(operations),
                },
            )
            raise ConcurrentModification(
                f"cache document of user {plan.user_id} changed while it was being updated "
                f"({result.matched_count} of {len(operations)} statements applied)"
            )

    def _stored_uuids(
        self, user_id: int, base: int, changes: Mapping[ListName, ListChanges]
    ) -> dict[ListName, list[Any]]:
        """The stored ``pass_uuid`` sequence of each array that loses elements (to find their indexes)."""
        names = [name for name, change in changes.items() if change.removed and not change.rewrite]
        if not names:
            return {}
        projection: Document = {"_id": 0}
        projection.update({f"{name}.pass_uuid": 1 for name in names})
        with _store_errors("load"):
            document = self._cache.find_one(
                {"user_id": user_id, REVISION_FIELD: _revision_guard(base)}, projection
            )
        if document is None:
            raise ConcurrentModification(f"cache document of user {user_id} is no longer at revision {base}")
        return {name: [_uuid_of(element) for element in document.get(name) or []] for name in names}

    @contextmanager
    def _revision_claim(self, user_id: int, revision: int, token: str) -> Iterator[None]:
        """Hold the unique claim on moving ``user_id``'s document on from ``revision`` (see the module doc).

        Raises ConcurrentModification when another writer holds it.
        """
        claim_id = f"revision:{user_id}:{revision}"
        for attempt in (1, 2):
            now = time.time()
            try:
                self._leases.insert_one(
                    {
                        "_id": claim_id,
                        "user_id": user_id,
                        "owner": token,
                        "expires_at": now + CLAIM_TTL_SECONDS,
                    }
                )
                break
            except DuplicateKeyError:
                with _store_errors("revision claim"):
                    holder = self._leases.find_one({"_id": claim_id})
                    if attempt == 1 and holder is not None and float(holder.get("expires_at", 0)) <= now:
                        # Left by a writer that died mid-apply: remove exactly that claim, then try again.
                        self._leases.delete_one({"_id": claim_id, "owner": holder.get("owner")})
                        continue
                    if attempt == 1 and holder is None:
                        continue  # released in the meantime
                raise ConcurrentModification(
                    f"another writer is updating the cache document of user {user_id} (revision {revision})"
                ) from None
            except PyMongoError as exc:
                raise StoreError(f"MongoDB revision claim failed: {_describe(exc)}") from exc
        try:
            yield
        finally:
            try:
                self._leases.delete_one({"_id": claim_id, "owner": token})
            except PyMongoError as exc:
                # Harmless once the write is done (no writer can hold that revision any more); otherwise it
                # blocks this revision until it expires.
                logger.warning(
                    "revision claim not released: user_id=%s error=%s",
                    user_id,
                    type(exc).__name__,
                    extra={"user_id": user_id},
                )

    def _bounded_passes4(self, plan: SyncPlan) -> ListChanges:
        """``plan.passes4``, or a rewrite without its oldest elements when the document nears the limit."""
        if not (plan.creates or plan.passes.changed or plan.passes4.changed):
            # Only the timestamp and revision change: the size cannot grow.
            return plan.passes4
        skeleton: Document = {
            "user_id": plan.user_id,
            "timestamp": plan.timestamp,
            "passes": [],
            "passes4": [],
            REVISION_FIELD: 1 << 62,
            PENDING_FIELD: uuid.uuid4().hex,
        }
        passes_sizes = [_element_bytes(index, element) for index, element in enumerate(plan.passes.final)]
        passes4_sizes = [_element_bytes(index, element) for index, element in enumerate(plan.passes4.final)]
        estimate = len(bson.encode(skeleton)) + sum(passes_sizes) + sum(passes4_sizes)
        if estimate <= self._max_document_bytes:
            return plan.passes4

        # The arrays are kept oldest first (SPEC §4), so the oldest history is at the front. Dropping
        # front elements renumbers the rest with shorter keys: the estimate only errs on the safe side.
        target = int(self._max_document_bytes * TRIM_TARGET_RATIO)
        trimmed = 0
        while trimmed < len(passes4_sizes) and estimate > target:
            estimate -= passes4_sizes[trimmed]
            trimmed += 1
        logger.warning(
            "passes4 trimmed to keep the cache document under the size limit: user_id=%s trimmed=%d kept=%d",
            plan.user_id,
            trimmed,
            len(passes4_sizes) - trimmed,
            extra={"user_id": plan.user_id, "trimmed": trimmed, "kept": len(passes4_sizes) - trimmed},
        )
        if estimate > self._max_document_bytes:
            logger.warning(
                "cache document exceeds the size limit even without passes4: user_id=%s estimate=%d",
                plan.user_id,
                estimate,
                extra={"user_id": plan.user_id, "estimate": estimate},
            )
        return replace(
            plan.passes4,
            final=plan.passes4.final[trimmed:],
            updated=[],
            removed=[],
            appended=[],
            rewrite=True,
        )


def _list_steps(
    name: ListName, changes: ListChanges, stored_uuids: list[Any] | None, token: str
) -> list[_Statement]:
    """The ordered steps that turn the stored array into ``changes.final`` (ListChanges' apply order)."""
    if not changes.changed:
        return []
    if changes.rewrite:
        return [_Statement(set_fields={name: changes.final})]
    steps: list[_Statement] = []
    positional = _Statement()
    for index, element in changes.updated:
        # Guarding on the uuid at that index catches writers that do not bump the revision (Node).
        positional.guards[f"{name}.{index}.pass_uuid"] = element["pass_uuid"]
        for wrapper_field in WRAPPER_FIELDS:
            if wrapper_field in element:
                positional.set_fields[f"{name}.{index}.{wrapper_field}"] = element[wrapper_field]
    removed = set(changes.removed)
    tombstone = {TOMBSTONE_FIELD: token}
    tombstoned = False
    for index, stored_uuid in enumerate(stored_uuids or []):
        if stored_uuid in removed:
            # FerretDB 1.x ignores `$pull: {passes: {pass_uuid: {$in: [...]}}}` (conditions), but both it
            # and MongoDB pull an exact value: replace the doomed elements by one tombstone, then pull it.
            positional.guards[f"{name}.{index}.pass_uuid"] = stored_uuid
            positional.set_fields[f"{name}.{index}"] = tombstone
            tombstoned = True
    if positional.set_fields:
        steps.append(positional)
    if tombstoned:
        steps.append(_Statement(pull={name: tombstone}))
    if changes.appended:
        steps.append(_Statement(push={name: {"$each": changes.appended}}))
    return steps


def _revision_guard(revision: int) -> Any:
    """Filter value matching a document at ``revision``; documents the Node service wrote have none (0)."""
    return revision if revision else {"$in": [0, None]}


def _revision_of(document: Mapping[str, Any]) -> int:
    """The document's revision, 0 when absent (as a plan's ``base_revision``)."""
    value = document.get(REVISION_FIELD)
    return int(value) if isinstance(value, int | float) else 0


def _uuid_of(element: object) -> Any:
    """An array element's ``pass_uuid`` (None for anything that is not a sub-document)."""
    return element.get("pass_uuid") if isinstance(element, Mapping) else None


def _element_bytes(index: int, element: Mapping[str, Any]) -> int:
    """Bytes one element takes inside a BSON array: type byte, index key with its NUL, the document."""
    return 1 + len(str(index)) + 1 + len(bson.encode(element))


def _describe(exc: PyMongoError) -> str:
    """A short, password-free description of a driver error."""
    code = getattr(exc, "code", None)
    text = _URI_CREDENTIALS.sub(r"\1***@", str(exc))
    if len(text) > 300:
        text = text[:300] + "…"
    prefix = type(exc).__name__ if code is None else f"{type(exc).__name__} (code {code})"
    return f"{prefix}: {text}"


@contextmanager
def _store_errors(action: str) -> Iterator[None]:
    """Translate driver exceptions into StoreError."""
    try:
        yield
    except PyMongoError as exc:
        raise StoreError(f"MongoDB {action} failed: {_describe(exc)}") from exc
