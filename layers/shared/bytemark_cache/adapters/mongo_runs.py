"""MongoBackfillRunStore: back-fill progress per run id in a small MongoDB collection."""

from __future__ import annotations

from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from bytemark_cache.errors import StoreError

_PROGRESS_FIELDS = ("mode", "cursor", "scanned", "enqueued", "done")


class MongoBackfillRunStore:
    """One document per run id: ``{_id: run_id, mode, cursor, scanned, enqueued, done, updated_at}``."""

    def __init__(self, database: Database[dict[str, Any]], collection: str) -> None:
        self._runs: Collection[dict[str, Any]] = database[collection]

    def load_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's progress, or None."""
        try:
            document = self._runs.find_one({"_id": run_id})
        except PyMongoError as exc:
            raise StoreError(f"cannot read back-fill run ({type(exc).__name__})") from exc
        if document is None:
            return None
        return {name: document.get(name) for name in _PROGRESS_FIELDS}

    def save_run(self, run_id: str, progress: dict[str, Any], now: float) -> None:
        """Upsert the run's progress."""
        fields = {name: progress[name] for name in _PROGRESS_FIELDS if name in progress}
        try:
            self._runs.update_one({"_id": run_id}, {"$set": {**fields, "updated_at": int(now)}}, upsert=True)
        except PyMongoError as exc:
            raise StoreError(f"cannot record back-fill run ({type(exc).__name__})") from exc
