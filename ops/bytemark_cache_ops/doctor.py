"""``doctor``: a read-only health report of the cache collection (before a cutover, and any time after).

It scans every document in batches by ``_id`` and names what it finds with the reader's own words
(``StoredCache.legacy``, ``timestamp_kind``), then checks duplicates, indexes, sizes and the users with a
token and no cache. It never writes. Errors are what would break the service (the unique index cannot
exist, a document cannot be written back); warnings are what the service copes with.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import bson

from bytemark_cache.domain.bounds import MAX_DOCUMENT_BYTES
from bytemark_cache.domain.document import (
    ELEMENT_FIELDS,
    interpret_user_id,
    read_cache,
    timestamp_kind,
)
from bytemark_cache.domain.identity import is_user_id
from bytemark_cache.domain.model import (
    ACTIVE_FIELD,
    CURRENT,
    HISTORY,
    NEXT_SYNC_FIELD,
    PENDING_LOG_FIELD,
    REVISION_FIELD,
    CacheDocument,
)
from bytemark_cache_ops.exits import EXIT_OK, ProblemsFound
from bytemark_cache_ops.indexes import index_dict, write_indexes
from bytemark_cache_ops.render import Progress, iso, plural, print_json, size, write_table

if TYPE_CHECKING:
    from typing import TextIO

    from bytemark_cache.adapters.mongo_indexes import IndexFinding
    from bytemark_cache_ops.context import Context

DEFAULT_MAX_BYTES: Final = 4 * 1024 * 1024
DEFAULT_BATCH_SIZE: Final = 500
DEFAULT_TOKEN_SCAN_LIMIT: Final = 10_000
EXAMPLES: Final = 10
KNOWN_FIELDS: Final = frozenset(
    {"_id", "user_id", "timestamp", CURRENT, HISTORY, REVISION_FIELD, NEXT_SYNC_FIELD, ACTIVE_FIELD}
    | {PENDING_LOG_FIELD}
)
"""The top-level fields of the contract's document; any other is another writer's (kept as it is)."""
_TOKEN_PAGE: Final = 500


@dataclass
class Found:
    """A count and a few examples of one finding."""

    count: int = 0
    examples: list[Any] = field(default_factory=list)

    def add(self, example: Any) -> None:
        """Count one more (and remember it while there are fewer than EXAMPLES)."""
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    def to_dict(self) -> dict[str, Any]:
        """``{"count", "examples"}``."""
        return {"count": self.count, "examples": [str(example) for example in self.examples]}


@dataclass
class Report:
    """Everything the scan found."""

    collection: str
    max_bytes: int
    documents: int = 0
    legacy: Counter[str] = field(default_factory=Counter)
    legacy_documents: int = 0
    timestamp_kinds: Counter[str] = field(default_factory=Counter)
    unknown_fields: Counter[str] = field(default_factory=Counter)
    unknown_element_fields: Counter[str] = field(default_factory=Counter)
    unreadable_user_ids: Found = field(default_factory=Found)
    over_max_bytes: Found = field(default_factory=Found)
    over_limit: Found = field(default_factory=Found)
    unknown_sync_time: Found = field(default_factory=Found)
    largest: tuple[int, Any] | None = None
    oldest: tuple[int, Any] | None = None
    newest: tuple[int, Any] | None = None
    duplicates: dict[int, int] = field(default_factory=dict)
    indexes: list[IndexFinding] = field(default_factory=list)
    tokens: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, document: CacheDocument, now: float) -> None:
        """Take one document into the report."""
        self.documents += 1
        document_id = document.get("_id")
        encoded = len(bson.encode(document))
        if self.largest is None or encoded > self.largest[0]:
            self.largest = (encoded, document_id)
        if encoded > MAX_DOCUMENT_BYTES:
            self.over_limit.add(document_id)
        elif encoded > self.max_bytes:
            self.over_max_bytes.add(document_id)
        self.timestamp_kinds[timestamp_kind(document.get("timestamp"))] += 1
        self.unknown_fields.update(name for name in document if name not in KNOWN_FIELDS)
        self.unknown_element_fields.update(_unknown_element_fields(document))
        user_id = interpret_user_id(document.get("user_id"))
        if user_id is None or not is_user_id(user_id):
            self.unreadable_user_ids.add(document_id)
            return
        stored = read_cache([document], user_id, now)
        assert stored is not None  # the document is this user's
        self.legacy.update(stored.legacy)
        self.legacy_documents += bool(stored.legacy)
        if stored.synced_at is None:
            self.unknown_sync_time.add(document_id)
            return
        if self.oldest is None or stored.synced_at < self.oldest[0]:
            self.oldest = (stored.synced_at, document_id)
        if self.newest is None or stored.synced_at > self.newest[0]:
            self.newest = (stored.synced_at, document_id)

    def judge(self) -> None:
        """Sort the findings into errors (would break the service) and warnings."""
        if self.duplicates:
            users = sorted(self.duplicates)
            self.errors.append(
                f"{plural(len(users), 'user')} with more than one document "
                f"({sum(self.duplicates.values())} documents, e.g. {_ids(users)}): the unique index on "
                "user_id cannot exist; run `bytemark-cache migrate --apply`"
            )
        if self.unreadable_user_ids.count:
            self.errors.append(
                f"{plural(self.unreadable_user_ids.count, 'document')} without a readable user_id "
                f"(_id {_ids(self.unreadable_user_ids.examples)}): no user can read them; fix them by hand"
            )
        if self.over_limit.count:
            self.errors.append(
                f"{plural(self.over_limit.count, 'document')} over the {size(MAX_DOCUMENT_BYTES)} bound "
                f"(_id {_ids(self.over_limit.examples)}): a sync cannot write them back"
            )
        for finding in self.indexes:
            if finding.status == "present":
                continue
            text = f"index {finding.spec.name} on {finding.collection} is {finding.status}"
            text += f" ({finding.detail})" if finding.detail else ""
            if finding.status == "conflict" or finding.spec.unique:
                self.errors.append(f"{text}: run `bytemark-cache ensure-indexes` (after migrate --apply)")
            else:
                self.warnings.append(f"{text} ({finding.spec.reason}): run `bytemark-cache ensure-indexes`")
        if self.legacy_documents:
            self.warnings.append(
                f"{plural(self.legacy_documents, 'document')} in legacy shapes (read as they are): "
                "`bytemark-cache migrate --apply` converges them"
            )
        if self.over_max_bytes.count:
            self.warnings.append(
                f"{plural(self.over_max_bytes.count, 'document')} over {size(self.max_bytes)} "
                f"(_id {_ids(self.over_max_bytes.examples)})"
            )
        if self.unknown_sync_time.count:
            self.warnings.append(
                f"{plural(self.unknown_sync_time.count, 'document')} without a believable sync time: "
                "served as stale until their next sync"
            )
        if self.tokens and self.tokens["without_cache"]["count"]:
            self.warnings.append(
                f"{plural(self.tokens['without_cache']['count'], 'user')} with a token and no cache: "
                "`bytemark-cache backfill --mode missing` builds them"
            )

    def to_dict(self) -> dict[str, Any]:
        """The report for machines (``--json``)."""
        return {
            "collection": self.collection,
            "documents": self.documents,
            "legacy": dict(sorted(self.legacy.items())),
            "legacy_documents": self.legacy_documents,
            "timestamp_kinds": dict(sorted(self.timestamp_kinds.items())),
            "unknown_fields": dict(sorted(self.unknown_fields.items())),
            "unknown_element_fields": dict(sorted(self.unknown_element_fields.items())),
            "duplicates": {
                "users": len(self.duplicates),
                "documents": sum(self.duplicates.values()),
                "examples": sorted(self.duplicates)[:EXAMPLES],
            },
            "unreadable_user_ids": self.unreadable_user_ids.to_dict(),
            "sizes": {
                "max_bytes": self.max_bytes,
                "largest_bytes": self.largest[0] if self.largest else 0,
                "largest_id": str(self.largest[1]) if self.largest else None,
                "over_max_bytes": self.over_max_bytes.to_dict(),
                "over_limit": self.over_limit.to_dict(),
            },
            "sync_times": {
                "oldest": iso(self.oldest[0]) if self.oldest else None,
                "newest": iso(self.newest[0]) if self.newest else None,
                "unknown": self.unknown_sync_time.to_dict(),
            },
            "indexes": [index_dict(finding) for finding in self.indexes],
            "tokens": self.tokens,
            "errors": self.errors,
            "warnings": self.warnings,
        }


def doctor(args: argparse.Namespace, ctx: Context) -> int:
    """``doctor``: scan, check, report; exit 7 when something would break the service."""
    services = ctx.services
    store = ctx.maintenance()
    now = services.tickets.now()
    report = Report(store.cache_collection, args.max_bytes)
    progress = Progress(ctx.err, "doctor", total=store.estimated_count(), enabled=True, lines=False)
    cursor: Any = None
    try:
        while True:
            batch = store.scan(cursor, args.batch_size)
            for document in batch:
                report.add(document, now)
            if batch:
                cursor = batch[-1].get("_id")
                progress.update(report.documents, f"{plural(report.documents, 'document')} read")
            if len(batch) < args.batch_size:
                break
    finally:
        progress.finish()
    report.duplicates = store.duplicate_user_ids()
    report.indexes = store.check_indexes()
    if args.token_scan_limit > 0:
        report.tokens = _tokens_without_cache(ctx, args.token_scan_limit)
    report.judge()
    if args.json:
        print_json(ctx.out, report.to_dict())
    else:
        _write_report(ctx.out, report)
    if report.errors:
        raise ProblemsFound(
            f"doctor found {plural(len(report.errors), 'problem')} that would break the service "
            "(ERRORS in the report)"
        )
    return EXIT_OK


def _tokens_without_cache(ctx: Context, limit: int) -> dict[str, Any]:
    """Users with a token and no cache document, among the first ``limit`` users with a token."""
    scanned = 0
    missing = Found()
    complete = True
    for page in ctx.tokens.users_with_token(None, min(_TOKEN_PAGE, limit)):
        page = page[: limit - scanned]
        found = ctx.services.cache.cache_timestamps(page)
        for user_id in page:
            if user_id not in found:
                missing.add(user_id)
        scanned += len(page)
        if scanned >= limit:
            complete = False
            break
    return {"scanned": scanned, "limit": limit, "complete": complete, "without_cache": missing.to_dict()}


def _unknown_element_fields(document: CacheDocument) -> set[str]:
    names: set[str] = set()
    for array in (document.get(CURRENT), document.get(HISTORY)):
        for element in array if isinstance(array, list) else []:
            if isinstance(element, dict):
                names.update(name for name in element if name not in ELEMENT_FIELDS and name != "uuid")
    return names


def _ids(values: list[Any]) -> str:
    shown = ", ".join(str(value) for value in values[:3])
    return shown + (", …" if len(values) > 3 else "")


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items())) or "none"


def _write_report(out: TextIO, report: Report) -> None:
    users = (
        report.documents
        - report.unreadable_user_ids.count
        - sum(report.duplicates.values())
        + len(report.duplicates)
    )
    out.write(
        f"doctor: {report.collection}: {plural(report.documents, 'document')}, {plural(users, 'user')}\n"
    )
    oldest = iso(report.oldest[0]) if report.oldest else "-"
    newest = iso(report.newest[0]) if report.newest else "-"
    out.write(f"sync times: oldest {oldest}, newest {newest}, unknown {report.unknown_sync_time.count}\n")
    largest = f"{size(report.largest[0])} (_id {report.largest[1]})" if report.largest else "-"
    out.write(
        f"sizes: largest {largest}; over {size(report.max_bytes)}: {report.over_max_bytes.count}; "
        f"over the {size(MAX_DOCUMENT_BYTES)} bound: {report.over_limit.count}\n"
    )
    out.write(f"timestamps: {_counts(report.timestamp_kinds)}\n")
    out.write(f"\nLEGACY SHAPES ({plural(report.legacy_documents, 'document')})\n")
    if report.legacy:
        write_table(out, ["SHAPE", "DOCUMENTS"], [[n, c] for n, c in sorted(report.legacy.items())])
    else:
        out.write("  (none)\n")
    out.write(f"duplicate users: {len(report.duplicates)} ({sum(report.duplicates.values())} documents)\n")
    out.write(f"unreadable user ids: {report.unreadable_user_ids.count}\n")
    out.write(
        f"fields the service does not know (kept): {_counts(report.unknown_fields)}; "
        f"in elements: {_counts(report.unknown_element_fields)}\n"
    )
    out.write("\nINDEXES\n")
    write_indexes(out, report.indexes)
    if report.tokens is not None:
        tokens = report.tokens
        scope = "all" if tokens["complete"] else f"the first {tokens['limit']}"
        missing = tokens["without_cache"]
        examples = f" (e.g. {', '.join(missing['examples'][:5])})" if missing["count"] else ""
        out.write(
            f"\ntokens: {plural(tokens['scanned'], 'user')} with a token scanned ({scope}): "
            f"{missing['count']} without a cache{examples}\n"
        )
    for title, lines in (("ERRORS (would break the service)", report.errors), ("WARNINGS", report.warnings)):
        if lines:
            out.write(f"\n{title}\n")
            out.writelines(f"  - {line}\n" for line in lines)
    out.write(f"\nresult: {plural(len(report.errors), 'error')}, {plural(len(report.warnings), 'warning')}\n")
