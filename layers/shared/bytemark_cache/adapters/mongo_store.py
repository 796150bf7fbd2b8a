"""MongoCacheStore: the cache documents, the change log and the write claims in MongoDB.

Written for what MongoDB, Amazon DocumentDB and FerretDB 1.x (the local stand-in) have in common: no
transactions, no ``arrayFilters``, no TTL indexes (FerretDB), and guarded updates that are not atomic on
FerretDB (it reads, modifies and writes back). What stays atomic everywhere: one update statement on one
document, and an insert under a unique ``_id``. So:

- every write of a sync is ONE update statement (a reader never sees half a sync; a failure writes
  nothing), filtered by the ``WriteGuard`` (``_id``, revision, timestamp);
- only the holder of the revision's claim writes: a claim is a document inserted under the unique ``_id``
  ``claim:<user>:<revision>:<generation>``; a claim whose holder died is taken over by inserting the next
  generation, which is as atomic as the first claim;
- change-log entries travel with the document in ``log_pending`` and are inserted, in order, under
  idempotent ids afterwards; a failure between the two leaves them pending. The next write (under the
  next claim) checks the last of them (a point read) and only if it is missing inserts them again, then
  replaces ``log_pending`` with its own entries: no write ever happens outside a claim, so nothing races
  on FerretDB, and no entry is ever lost.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from bson.errors import BSONError
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.monitoring import CommandListener

from bytemark_cache.domain.document import interpret_user_id
from bytemark_cache.domain.model import (
    NEXT_SYNC_FIELD,
    PENDING_LOG_FIELD,
    REVISION_FIELD,
    CacheDocument,
    SyncPlan,
    WriteGuard,
)
from bytemark_cache.domain.plan import apply_plan
from bytemark_cache.errors import ConcurrentModification, StoreError, UnstorableDocument

logger = logging.getLogger(__name__)

Document = dict[str, Any]

DUPLICATE_KEY: Final = 11000
MAX_DOCUMENTS_PER_USER: Final = 5
"""A user has one document; legacy data may hold a few (read all, the reader picks the newest)."""

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

    Raises StoreError for an unusable URI (the message never repeats the URI: it may hold a password).
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


class MongoCacheStore:
    """CacheStore on MongoDB (see the module docstring for the write protocol)."""

    def __init__(
        self, database: Database[Document], cache_collection: str, log_collection: str, claim_collection: str
    ) -> None:
        self._cache: Collection[Document] = database[cache_collection]
        self._log: Collection[Document] = database[log_collection]
        self._claims: Collection[Document] = database[claim_collection]

    # -- reads -------------------------------------------------------------------------------------

    def load(self, user_id: int) -> list[CacheDocument]:
        """Every stored document of the user, ``user_id`` stored as a number or as a string."""
        with store_errors("load"):
            return list(
                self._cache.find({"user_id": {"$in": [user_id, str(user_id)]}}).limit(MAX_DOCUMENTS_PER_USER)
            )

    def cache_timestamps(self, user_ids: Sequence[int]) -> dict[int, Any]:
        """``user_id -> stored timestamp`` (raw) for the ``user_ids`` that have a document (one query)."""
        if not user_ids:
            return {}
        wanted = [*user_ids, *(str(uid) for uid in user_ids)]
        found: dict[int, Any] = {}
        with store_errors("cache_timestamps"):
            for document in self._cache.find(
                {"user_id": {"$in": wanted}}, {"_id": 0, "user_id": 1, "timestamp": 1}
            ):
                user_id = interpret_user_id(document.get("user_id"))
                if user_id is not None:
                    found[user_id] = document.get("timestamp")
        return found

    def read_log(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        """The user's newest change-log entries, newest first (ids break timestamp ties)."""
        if limit <= 0:
            return []  # pymongo reads limit(0) as "no limit"
        with store_errors("read_log"):
            cursor = (
                self._log.find({"user_id": user_id}, {"_id": 0})
                .sort([("timestamp", DESCENDING), ("_id", DESCENDING)])
                .limit(limit)
            )
            return list(cursor)

    # -- claims ------------------------------------------------------------------------------------

    def claim(self, user_id: int, revision: int, owner: str, now: float, ttl_seconds: float) -> bool:
        """Insert the claim of ``revision`` (the next generation when the last holder's claim expired)."""
        generation = 0
        for _attempt in range(4):
            claim_id = f"claim:{user_id}:{revision}:{generation}"
            try:
                self._claims.insert_one(
                    {
                        "_id": claim_id,
                        "user_id": user_id,
                        "revision": revision,
                        "generation": generation,
                        "owner": owner,
                        "expires_at": now + ttl_seconds,
                    }
                )
                return True
            except DuplicateKeyError:
                pass
            except PyMongoError as exc:
                raise StoreError(f"MongoDB claim failed: {describe_error(exc)}") from exc
            with store_errors("claim"):
                latest = self._claims.find_one(
                    {"user_id": user_id, "revision": revision}, sort=[("generation", DESCENDING)]
                )
            if latest is None:
                continue  # every generation went in the meantime: start over
            if latest.get("owner") == owner:
                return True
            if float(latest.get("expires_at", 0)) > now:
                return False  # held
            generation = int(latest.get("generation", 0)) + 1
        return False

    def release(self, user_id: int, revision: int, owner: str) -> None:
        """Expire our claim at once. The document stays, so its generation is never claimed twice."""
        with store_errors("release"):
            self._claims.update_one(
                {"user_id": user_id, "revision": revision, "owner": owner}, {"$set": {"expires_at": 0}}
            )

    # -- writes ------------------------------------------------------------------------------------

    def write(self, plan: SyncPlan) -> None:
        """Flush what an earlier write left pending, then one guarded statement, then this write's log
        entries, then the claims of older revisions (see the module docstring)."""
        if plan.carried_log and not self._logged(plan.carried_log[-1].entry_id):
            # Before the statement that drops them from the document: inserted again, idempotently.
            self._flush_log([entry.to_document() for entry in plan.carried_log], ordered=False)
        entries = [entry.to_document() for entry in plan.log]
        if plan.creates:
            document = apply_plan(None, plan)
            if entries:
                document[PENDING_LOG_FIELD] = entries
            try:
                with store_errors("cache insert"):
                    self._cache.insert_one(document)
            except StoreError as exc:
                if isinstance(exc.__cause__, DuplicateKeyError):
                    raise ConcurrentModification(f"user {plan.user_id} already has a cache document") from exc
                raise
        else:
            with store_errors("cache update"):
                result = self._cache.update_one(*update_statement(plan))
            if result.matched_count == 0:
                raise ConcurrentModification(
                    f"cache document of user {plan.user_id} changed since it was read"
                )
        if entries:
            self._flush_log(entries, ordered=True)
        if plan.revision > 1:
            self._forget_claims(plan.user_id, plan.revision - 1)

    def set_next_sync(self, user_id: int, at: int) -> None:
        """Reschedule the user's next sync; nothing else changes."""
        with store_errors("set_next_sync"):
            self._cache.update_many(
                {"user_id": {"$in": [user_id, str(user_id)]}}, {"$set": {NEXT_SYNC_FIELD: at}}
            )

    def take_due(self, now: int, limit: int, hold_until: int) -> list[int]:
        """The oldest-due users (a document without ``next_sync_at`` is due), held until ``hold_until``."""
        due = {"$or": [{NEXT_SYNC_FIELD: {"$lte": now}}, {NEXT_SYNC_FIELD: None}]}
        with store_errors("take_due"):
            found = list(
                self._cache.find(due, {"_id": 1, "user_id": 1}).sort(NEXT_SYNC_FIELD, ASCENDING).limit(limit)
            )
            if not found:
                return []
            # Still-due only: a sync that landed meanwhile scheduled its own next time.
            self._cache.update_many(
                {"_id": {"$in": [document["_id"] for document in found]}, **due},
                {"$set": {NEXT_SYNC_FIELD: hold_until}},
            )
        users = (interpret_user_id(document.get("user_id")) for document in found)
        return sorted({user_id for user_id in users if user_id is not None})

    def count_due(self, now: int) -> int:
        """How many users are due (for the operator's dry run)."""
        with store_errors("count_due"):
            return self._cache.count_documents(
                {"$or": [{NEXT_SYNC_FIELD: {"$lte": now}}, {NEXT_SYNC_FIELD: None}]}
            )

    def prune_log(self, before: int, limit: int) -> int:
        """Delete up to ``limit`` change-log entries older than ``before``; how many went."""
        with store_errors("prune_log"):
            ids = [
                document["_id"]
                for document in self._log.find({"timestamp": {"$lt": before}}, {"_id": 1}).limit(limit)
            ]
            if not ids:
                return 0
            return int(self._log.delete_many({"_id": {"$in": ids}}).deleted_count)

    def throttle(self, key: str, now: float, interval_seconds: float) -> float:
        """Claim the slot ``key`` for ``interval_seconds``: 0 when claimed, else seconds until it frees up.

        Slots live in the claims collection as ``{_id: "throttle:<key>", until}``; one per key, reused.
        """
        slot_id = f"throttle:{key}"
        for _attempt in range(2):
            try:
                self._claims.find_one_and_update(
                    {"_id": slot_id, "until": {"$lte": now}},
                    {"$set": {"until": now + interval_seconds}},
                    upsert=True,
                )
                return 0.0
            except DuplicateKeyError:
                # The slot exists and is still taken (the filter did not match it).
                with store_errors("throttle"):
                    slot = self._claims.find_one({"_id": slot_id})
                until = float(slot.get("until", 0)) if slot is not None else 0.0
                if until > now:
                    return until - now
            except PyMongoError as exc:
                raise StoreError(f"MongoDB throttle failed: {describe_error(exc)}") from exc
        raise ConcurrentModification(f"throttle slot {key!r} kept changing")

    # -- internals ---------------------------------------------------------------------------------

    def _logged(self, entry_id: str) -> bool:
        """True when the entry is in the log: a point read by ``_id``."""
        with store_errors("change log check"):
            return self._log.find_one({"_id": entry_id}, {"_id": 1}) is not None

    def _flush_log(self, entries: list[Document], *, ordered: bool) -> None:
        """Insert the entries; ones already there (an earlier flush of the same write) are skipped.

        A write's own entries go in order, so when its last entry is in the log all of them are: the next
        write then checks that one entry instead of sending them all again.
        """
        try:
            self._log.insert_many(entries, ordered=ordered)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors) or exc.details.get(
                "writeConcernErrors"
            ):
                raise StoreError(f"MongoDB change log insert failed: {describe_error(exc)}") from exc
        except PyMongoError as exc:
            raise StoreError(f"MongoDB change log insert failed: {describe_error(exc)}") from exc

    def _forget_claims(self, user_id: int, current_claim: int) -> None:
        """Delete the claims of revisions before the one just written from (they can never be used)."""
        try:
            self._claims.delete_many({"user_id": user_id, "revision": {"$lt": current_claim}})
        except PyMongoError as exc:
            # Harmless leftovers: the next write tries again.
            logger.warning("old claims not deleted", extra={"user_id": user_id, "error": type(exc).__name__})


def update_statement(plan: SyncPlan) -> tuple[Document, Document]:
    """The filter and update document of an existing document's write (what goes over the wire)."""
    assert plan.guard is not None
    return guard_filter(plan.guard), _update(plan, [entry.to_document() for entry in plan.log])


def guard_filter(guard: WriteGuard) -> Document:
    """The filter that matches the document only while it is as ``guard`` read it."""
    return {
        "_id": guard.document_id,
        **guard.fields,
        **{name: {"$exists": False} for name in guard.missing},
    }


def _update(plan: SyncPlan, entries: list[Document]) -> Document:
    """The one update document: positional sets, appends by index, whole arrays, fields, the pending log."""
    set_fields: Document = {}
    for changes in plan.lists():
        if changes.rewrite:
            set_fields[changes.name] = changes.final
            continue
        for index, fields in changes.updated:
            set_fields.update({f"{changes.name}.{index}.{name}": value for name, value in fields.items()})
        # Setting the index just past the end appends: no $push, whose path would conflict with the sets.
        set_fields.update(
            {
                f"{changes.name}.{changes.stored_length + offset}": element
                for offset, element in enumerate(changes.appended)
            }
        )
    set_fields.update(plan.fields)
    set_fields[REVISION_FIELD] = plan.revision
    unset: Document = {}
    if entries:
        set_fields[PENDING_LOG_FIELD] = entries
    else:
        unset[PENDING_LOG_FIELD] = ""  # an earlier write's entries were flushed just before
    return {"$set": set_fields, "$unset": unset}


def describe_error(exc: PyMongoError) -> str:
    """A short, password-free description of a driver error."""
    code = getattr(exc, "code", None)
    text = _URI_CREDENTIALS.sub(r"\1***@", str(exc))
    if len(text) > 300:
        text = text[:300] + "…"
    prefix = type(exc).__name__ if code is None else f"{type(exc).__name__} (code {code})"
    return f"{prefix}: {text}"


@contextmanager
def store_errors(action: str) -> Iterator[None]:
    """Translate driver exceptions into StoreError (UnstorableDocument when BSON refused the document);
    every MongoDB adapter's calls go through it."""
    try:
        yield
    except BSONError as exc:
        # Never a partial write: the driver refuses before sending, the server refuses the whole statement.
        raise UnstorableDocument(f"MongoDB {action} refused the document: {type(exc).__name__}") from exc
    except PyMongoError as exc:
        raise StoreError(f"MongoDB {action} failed: {describe_error(exc)}") from exc
