"""The indexes the service needs, created as a deploy step and only checked at cold start.

The functions never create indexes (their MongoDB user needs no createIndex right, and an index build that
fails must not turn into failed requests): ``bytemark-cache ensure-indexes`` (or ``migrate --apply``) creates
them; a cold start lists them and logs a warning for each one missing. An index counts as present when one
with the same keys and uniqueness exists, whatever its name (the Node service's names differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from bytemark_cache.errors import StoreError

Role = Literal["cache", "log", "claims"]
Status = Literal["present", "missing", "conflict", "created", "failed"]


@dataclass(frozen=True)
class IndexSpec:
    """One index: on which collection (by role), its keys, uniqueness, the name we give it, and why."""

    role: Role
    keys: tuple[tuple[str, int], ...]
    name: str
    reason: str
    unique: bool = False


REQUIRED_INDEXES: Final = (
    IndexSpec("cache", (("user_id", 1),), "user_id_unique", "one document per user; every read", unique=True),
    IndexSpec("cache", (("next_sync_at", 1),), "next_sync_at", "the due back-fill's range"),
    IndexSpec("log", (("user_id", 1), ("timestamp", 1)), "user_id_timestamp", "a user's change log"),
    IndexSpec("log", (("timestamp", 1),), "timestamp", "pruning the change log by age"),
    IndexSpec("claims", (("user_id", 1), ("revision", 1)), "user_id_revision", "write claims by user"),
)


@dataclass(frozen=True)
class IndexFinding:
    """What was found (or done) for one required index."""

    spec: IndexSpec
    collection: str
    status: Status
    found_name: str | None = None
    detail: str = ""


def check_indexes(database: Database[dict[str, Any]], collections: dict[Role, str]) -> list[IndexFinding]:
    """The required indexes against what the collections hold (read only: listIndexes)."""
    findings: list[IndexFinding] = []
    existing = {role: _existing(database, name) for role, name in collections.items()}
    for spec in REQUIRED_INDEXES:
        collection = collections[spec.role]
        same_keys = [info for info in existing[spec.role] if _keys(info) == spec.keys]
        matching = [info for info in same_keys if bool(info.get("unique")) == spec.unique]
        if matching:
            findings.append(IndexFinding(spec, collection, "present", str(matching[0].get("name"))))
        elif same_keys:
            findings.append(
                IndexFinding(
                    spec,
                    collection,
                    "conflict",
                    str(same_keys[0].get("name")),
                    "same keys, but " + ("not unique" if spec.unique else "unique"),
                )
            )
        else:
            findings.append(IndexFinding(spec, collection, "missing"))
    return findings


def ensure_indexes(database: Database[dict[str, Any]], collections: dict[Role, str]) -> list[IndexFinding]:
    """Create each missing index; a conflict or a failed build (duplicate ids) is reported, not raised."""
    results: list[IndexFinding] = []
    for finding in check_indexes(database, collections):
        if finding.status != "missing":
            results.append(finding)
            continue
        spec = finding.spec
        try:
            database[finding.collection].create_index(list(spec.keys), name=spec.name, unique=spec.unique)
        except OperationFailure as exc:
            detail = (
                "duplicate user ids: run `bytemark-cache migrate --apply` first"
                if exc.code == 11000
                else str(exc)
            )
            results.append(IndexFinding(spec, finding.collection, "failed", None, detail[:300]))
            continue
        except PyMongoError as exc:
            raise StoreError(f"MongoDB index creation failed: {type(exc).__name__}") from exc
        results.append(IndexFinding(spec, finding.collection, "created", spec.name))
    return results


def _existing(database: Database[dict[str, Any]], collection: str) -> list[dict[str, Any]]:
    try:
        return [dict(info) for info in database[collection].list_indexes()]
    except OperationFailure as exc:
        if exc.code == 26:  # NamespaceNotFound: no collection yet, so no index
            return []
        raise StoreError(f"MongoDB listIndexes failed: {type(exc).__name__} (code {exc.code})") from exc
    except PyMongoError as exc:
        raise StoreError(f"MongoDB listIndexes failed: {type(exc).__name__}") from exc


def _keys(info: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    key = info.get("key") or {}
    return tuple(
        (str(field), int(direction))
        for field, direction in dict(key).items()
        if isinstance(direction, int | float)
    )
