"""MongoDB access of the operator's maintenance commands only (``doctor``, ``migrate``, ``ensure-indexes``).

Not used by the functions. Reads are batches by ``_id`` (one short query each: no cursor kept open between
batches, so a long scan survives cursor timeouts and resumes after any ``_id``). Writes to the cache
documents themselves go through ``CacheStore`` (claim, guarded write); this module only writes the side
collection of moved duplicates, the migration log, and deletes a moved duplicate while it is still as read.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database

from bytemark_cache.adapters.mongo_indexes import IndexFinding, Role, check_indexes, ensure_indexes
from bytemark_cache.adapters.mongo_store import guard_filter, store_errors
from bytemark_cache.domain.document import interpret_user_id
from bytemark_cache.domain.model import CacheDocument, WriteGuard

Document = dict[str, Any]

DEFAULT_DUPLICATES_COLLECTION: Final = "BytemarkTicketsCacheDuplicates"
DEFAULT_MIGRATION_LOG_COLLECTION: Final = "BytemarkMigrationLog"
_STRING_ID_CHUNK: Final = 1000
"""String user ids looked up per query when counting their numeric twins."""


class MongoMaintenanceStore:
    """The cache collection scanned in batches, its indexes, the side collection and the migration log."""

    def __init__(
        self,
        database: Database[Document],
        collections: dict[Role, str],
        *,
        duplicates_collection: str = DEFAULT_DUPLICATES_COLLECTION,
        migration_log_collection: str = DEFAULT_MIGRATION_LOG_COLLECTION,
    ) -> None:
        self._database = database
        self.collections = dict(collections)
        self._cache: Collection[Document] = database[collections["cache"]]
        self._aside: Collection[Document] = database[duplicates_collection]
        self._log: Collection[Document] = database[migration_log_collection]
        self.duplicates_collection = duplicates_collection
        self.migration_log_collection = migration_log_collection

    @property
    def cache_collection(self) -> str:
        """The name of the cache collection."""
        return self.collections["cache"]

    # -- reads -------------------------------------------------------------------------------------

    def estimated_count(self) -> int:
        """About how many cache documents there are (collection metadata; for progress only)."""
        with store_errors("count"):
            return int(self._cache.estimated_document_count())

    def scan(self, after: Any, limit: int) -> list[CacheDocument]:
        """Up to ``limit`` cache documents in ``_id`` order, after ``after`` (None: from the start)."""
        query: Document = {} if after is None else {"_id": {"$gt": after}}
        with store_errors("scan"):
            return list(self._cache.find(query).sort("_id", ASCENDING).limit(limit))

    def duplicate_user_ids(self) -> dict[int, int]:
        """``user_id -> documents`` for every user with more than one document. A number and a string
        of the same id count together; so do different spellings of one id (``"071"`` and ``71``)."""
        counts: dict[int, int] = {}
        strings: Counter[int] = Counter()
        with store_errors("duplicate scan"):
            # Same stored value (MongoDB groups equal numbers of any numeric type together).
            for group in self._cache.aggregate(
                [
                    {"$group": {"_id": "$user_id", "documents": {"$sum": 1}}},
                    {"$match": {"documents": {"$gt": 1}}},
                ],
                allowDiskUse=True,
            ):
                user_id = interpret_user_id(group["_id"])
                if user_id is not None and not isinstance(group["_id"], str):
                    counts[user_id] = int(group["documents"])
            # String ids (legacy, few): each against the numeric documents of the same id.
            for document in self._cache.find({"user_id": {"$type": "string"}}, {"_id": 0, "user_id": 1}):
                user_id = interpret_user_id(document.get("user_id"))
                if user_id is not None:
                    strings[user_id] += 1
            ids = sorted(strings)
            numeric: Counter[int] = Counter()
            for start in range(0, len(ids), _STRING_ID_CHUNK):
                chunk = ids[start : start + _STRING_ID_CHUNK]
                for document in self._cache.find({"user_id": {"$in": chunk}}, {"_id": 0, "user_id": 1}):
                    user_id = interpret_user_id(document.get("user_id"))
                    if user_id is not None:
                        numeric[user_id] += 1
        for user_id, string_documents in strings.items():
            counts[user_id] = numeric[user_id] + string_documents
        return {user_id: total for user_id, total in counts.items() if total > 1}

    def check_indexes(self) -> list[IndexFinding]:
        """The required indexes against what the collections hold (listIndexes only)."""
        return check_indexes(self._database, self.collections)

    # -- writes (migrate --apply, ensure-indexes) ----------------------------------------------------

    def ensure_indexes(self) -> list[IndexFinding]:
        """Create each missing required index (see ``mongo_indexes.ensure_indexes``)."""
        return ensure_indexes(self._database, self.collections)

    def copy_aside(self, document: CacheDocument) -> None:
        """Store ``document`` verbatim (same ``_id``) in the side collection; again replaces the copy."""
        with store_errors("copy to the side collection"):
            self._aside.replace_one({"_id": document["_id"]}, document, upsert=True)

    def delete_guarded(self, guard: WriteGuard) -> bool:
        """Delete the cache document while it is still as ``guard`` says; False when it changed or went."""
        with store_errors("delete"):
            return self._cache.delete_one(guard_filter(guard)).deleted_count == 1

    def record_migration(self, entry: Document) -> None:
        """Write one migration log entry under its ``_id`` (again replaces it: idempotent)."""
        with store_errors("migration log write"):
            self._log.replace_one({"_id": entry["_id"]}, entry, upsert=True)

    def forget_migration(self, entry_id: str) -> None:
        """Delete a migration log entry whose change did not happen after all."""
        with store_errors("migration log delete"):
            self._log.delete_one({"_id": entry_id})
