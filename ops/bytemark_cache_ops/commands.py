"""The per-user commands and the back-fill: ``show``, ``sync``, ``log``, ``backfill``.

Only identifiers, statuses, labels, times and hashes are ever shown: tokens, e-mail addresses and the other
customer fields of a Bytemark payload never reach the screen.
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import TYPE_CHECKING, Any, Final

from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.domain.document import read_cache
from bytemark_cache.domain.passes import parse_bytemark_time
from bytemark_cache.domain.views import tickets_body
from bytemark_cache.errors import ConfigError
from bytemark_cache_ops.exits import EXIT_OK, Interrupted, NotFound
from bytemark_cache_ops.render import (
    Progress,
    duration,
    iso,
    plain,
    plural,
    print_json,
    short_hash,
    write_table,
)

if TYPE_CHECKING:
    from typing import TextIO

    from bytemark_cache.services import BackfillResult
    from bytemark_cache_ops.context import Context

PROG: Final = "bytemark-cache"
CHANGES_SHOWN: Final = 50

_PASS_COLUMNS: Final = (
    ("uuid", "UUID"),
    ("label_name", "LABEL"),
    ("status", "STATUS"),
    ("effective_status", "EFFECTIVE"),
    ("time_created", "CREATED"),
)


# -- show -------------------------------------------------------------------------------------------


def show(args: argparse.Namespace, ctx: Context) -> int:
    """``show USER``: the stored cache as the service reads it (no Bytemark call), legacy shapes named."""
    services = ctx.services
    user_id: int = args.user_id
    now = services.tickets.now()
    stored = read_cache(services.cache.load(user_id), user_id, now)
    if stored is None:
        raise NotFound(f"user {user_id} has no cache (run `{PROG} sync {user_id}` to build it)")
    ttl = services.settings.cache_ttl_seconds
    body = tickets_body(
        stored,
        now=now,
        stale=False,
        day_pass_label=services.settings.day_pass_label,
        timezone=services.settings.agency_timezone,
    )
    passes = [_pass_row(element) for element in body["passes"]]
    history = sorted(body["passes4"], key=_newest_first_key, reverse=True)
    shown_history = [_pass_row(element) for element in history[: args.passes4]]
    age: int | None = body["age_seconds"]
    stale = age is None or age >= ttl
    summary = {
        "user_id": user_id,
        "synced_at": body["synced_at"],
        "age_seconds": age,
        "ttl_seconds": ttl,
        "stale": stale,
        "revision": stored.revision,
        "next_sync_at": iso(stored.next_sync_at),
        "legacy": list(stored.legacy),
        "duplicates": stored.duplicates,
        "counts": {
            "passes": len(passes),
            "passes4": len(history),
            "by_effective_status": dict(sorted(Counter(row["effective_status"] for row in passes).items())),
        },
        "passes": passes,
        "passes4": {"count": len(history), "newest": shown_history},
    }
    out = ctx.out
    if args.json:
        print_json(out, summary)
        return EXIT_OK

    if age is None:
        out.write(f"user {user_id}: cache sync time unknown (stale: the next read syncs it)\n")
    else:
        freshness = f"stale: older than the TTL of {duration(ttl)}" if stale else f"TTL {duration(ttl)}"
        out.write(f"user {user_id}: cache synced {body['synced_at']} ({duration(age)} ago, {freshness})\n")
    by_status = ", ".join(
        f"{count} {status}" for status, count in summary["counts"]["by_effective_status"].items()
    )
    out.write(
        f"passes: {len(passes)}" + (f" ({by_status})" if by_status else "") + f"   passes4: {len(history)}\n"
    )
    if stored.legacy:
        out.write(
            f"legacy shapes: {', '.join(stored.legacy)} (read as they are; the next sync or "
            f"`{PROG} migrate --apply` converges them)\n"
        )
    if stored.duplicates:
        out.write(
            f"{plural(stored.duplicates + 1, 'document')} stored for this user: the newest sync is shown "
            f"(`{PROG} migrate --apply` keeps it and moves the others aside)\n"
        )
    out.write(f"\nPASSES ({len(passes)})\n")
    _write_pass_table(out, passes)
    newest = f", newest {len(shown_history)} shown" if len(history) > len(shown_history) else ""
    out.write(f"\nPASSES4 ({len(history)}{newest})\n")
    _write_pass_table(out, shown_history)
    return EXIT_OK


def _pass_row(element: dict[str, Any]) -> dict[str, Any]:
    """The only fields of an element the CLI shows: identifiers, label, statuses, creation time."""
    payload = element.get("payload")
    fields = payload if isinstance(payload, dict) else {}
    return {
        "uuid": plain(element.get("pass_uuid")),
        "label_name": plain(fields.get("label_name")),
        "status": plain(element.get("status")),
        "effective_status": plain(element.get("effective_status")),
        "time_created": plain(fields.get("time_created")),
    }


def _newest_first_key(element: dict[str, Any]) -> tuple[float, float]:
    """Sort key: the pass's ``time_created`` (unparseable = oldest), then the element's timestamp."""
    payload = element.get("payload")
    raw = payload.get("time_created") if isinstance(payload, dict) else None
    try:
        created = parse_bytemark_time(raw)
    except ValueError:
        created = None
    stamp = element.get("timestamp")
    return (
        created.timestamp() if created is not None else float("-inf"),
        float(stamp) if isinstance(stamp, int | float) else float("-inf"),
    )


def _write_pass_table(out: TextIO, rows: list[dict[str, Any]]) -> None:
    if not rows:
        out.write("  (none)\n")
        return
    write_table(
        out, [header for _, header in _PASS_COLUMNS], [[row[key] for key, _ in _PASS_COLUMNS] for row in rows]
    )


# -- sync -------------------------------------------------------------------------------------------


def sync(args: argparse.Namespace, ctx: Context) -> int:
    """``sync USER``: synchronise now (no deadline unless ``--timeout``) and report what changed."""
    services = ctx.services
    user_id: int = args.user_id
    deadline = (
        Deadline.after(services.tickets.now(), args.timeout) if args.timeout is not None else Deadline.never()
    )
    result = services.tickets.sync(user_id, deadline=deadline, reason="manual")
    cache = result.cache
    synced_at = iso(cache.synced_at)
    changes: list[dict[str, Any]] = []
    if result.changed_passes and result.source in ("built", "synced"):
        # The entries this sync wrote carry its sync time.
        changes = [
            _log_row(entry)
            for entry in services.cache.read_log(user_id, result.changed_passes)
            if entry.get("timestamp") == cache.synced_at
        ]
    counts = {"passes": len(cache.passes), "passes4": len(cache.history)}
    out = ctx.out
    if args.json:
        print_json(
            out,
            {
                "user_id": user_id,
                "source": result.source,
                "synced_at": synced_at,
                "changed_passes": result.changed_passes,
                "counts": counts,
                "changes": changes,
            },
        )
        return EXIT_OK

    if result.source == "built":
        headline = f"cache built, {plural(result.changed_passes, 'pass')} written"
    elif result.source == "synced":
        headline = (
            f"cache synced, {plural(result.changed_passes, 'pass')} changed"
            if result.changed_passes
            else "cache synced, nothing changed"
        )
    else:
        headline = "a concurrent sync refreshed the cache just now; its result is shown"
    out.write(f"user {user_id}: {headline} (synced at {synced_at})\n")
    if changes:
        out.write("\nCHANGES\n")
        write_table(
            out,
            ["ACTION", "LIST", "UUID", "STATUS"],
            [[row["action"], row["list"], row["uuid"], row["status"]] for row in changes[:CHANGES_SHOWN]],
        )
        if len(changes) > CHANGES_SHOWN:
            # A first build can log hundreds of history passes; --json lists them all.
            out.write(f"  ... and {len(changes) - CHANGES_SHOWN} more (--json lists all)\n")
    out.write(f"\nnow: {counts['passes']} in passes, {counts['passes4']} in passes4\n")
    return EXIT_OK


# -- log --------------------------------------------------------------------------------------------


def log(args: argparse.Namespace, ctx: Context) -> int:
    """``log USER``: the newest change-log entries."""
    services = ctx.services
    user_id: int = args.user_id
    rows = [_log_row(entry) for entry in services.cache.read_log(user_id, args.limit)]
    if not rows and not services.cache.load(user_id):
        raise NotFound(f"user {user_id} has no cache and no change log")
    out = ctx.out
    if args.json:
        print_json(out, {"user_id": user_id, "entries": rows})
        return EXIT_OK
    out.write(
        f"user {user_id}: {plural(len(rows), 'change-log entry', 'change-log entries')}, newest first\n"
    )
    if rows:
        write_table(
            out,
            ["TIME", "ACTION", "LIST", "UUID", "STATUS", "HASH", "PREVIOUS"],
            [
                [
                    row["at"],
                    row["action"],
                    row["list"],
                    row["uuid"],
                    row["status"],
                    short_hash(row["payload_hash"]),
                    short_hash(row["previous_hash"]),
                ]
                for row in rows
            ],
        )
    return EXIT_OK


def _log_row(entry: dict[str, Any]) -> dict[str, Any]:
    """The change-log fields the CLI shows (the store's ``_id`` and anything unknown are left out)."""
    timestamp = entry.get("timestamp")
    return {
        "timestamp": timestamp,
        "at": iso(timestamp),
        **{
            name: plain(entry.get(name))
            for name in ("action", "list", "uuid", "status", "payload_hash", "previous_hash")
        },
    }


# -- backfill ---------------------------------------------------------------------------------------


def backfill(args: argparse.Namespace, ctx: Context) -> int:
    """``backfill --mode``: one pass of the scheduled job's mode, progress on stderr, then the summary."""
    services = ctx.services
    if services.backfill is None:
        raise ConfigError(["UPDATE_QUEUE_URL is required for a back-fill (the users go on the update queue)"])
    progress = Progress(ctx.err, "back-fill", total=args.max_users, enabled=not args.quiet)
    last: dict[str, Any] = {"scanned": 0, "cursor": None}

    def on_page(page: BackfillResult) -> None:
        last.update(scanned=page.scanned, cursor=page.cursor)
        progress.update(
            page.scanned,
            f"scanned {plural(page.scanned, 'user')}, enqueued {page.enqueued}, cursor {page.cursor}",
        )

    try:
        result = services.backfill.scan(
            args.mode,
            args.cursor,
            max_users=args.max_users,
            page_size=args.page_size,
            dry_run=args.dry_run,
            on_page=on_page,
        )
    except KeyboardInterrupt:
        # Pages after the cursor may be partly enqueued: re-sending them is harmless (a sync is idempotent).
        resume = last["cursor"] if last["cursor"] is not None else args.cursor
        hint = f"; resume with --cursor {resume}" if resume is not None else ""
        raise Interrupted(f"back-fill interrupted after {plural(last['scanned'], 'user')}{hint}") from None
    finally:
        progress.finish()

    due_now = _due_now(ctx) if args.mode == "due" and args.dry_run else None
    out = ctx.out
    if args.json:
        summary = {**result.to_dict(), "dry_run": args.dry_run}
        if due_now is not None:
            summary["due_now"] = due_now
        print_json(out, summary)
        return EXIT_OK
    dry = ", dry run" if args.dry_run else ""
    if args.mode == "prune":
        verb = "would delete old change-log entries; none deleted" if args.dry_run else "deleted"
        count = "" if args.dry_run else f" {plural(result.pruned, 'change-log entry', 'change-log entries')}"
        out.write(f"back-fill (prune{dry}): {verb}{count}\n")
        return EXIT_OK
    verb = "would enqueue" if args.dry_run else "enqueued"
    scanned = plural(result.scanned, "user")
    out.write(f"back-fill ({result.mode}{dry}): scanned {scanned}, {verb} {result.enqueued}\n")
    if due_now is not None:
        out.write(f"due now: {plural(due_now, 'user')} (a real run takes them page by page)\n")
    if result.cursor is None:
        out.write("finished: every user was scanned (cursor: none)\n")
    else:
        out.write(f"stopped at cursor {result.cursor}; resume with --cursor {result.cursor}\n")
    return EXIT_OK


def _due_now(ctx: Context) -> int | None:
    """How many users are due, when the store can count them (MongoCacheStore and the fake can)."""
    count_due = getattr(ctx.services.cache, "count_due", None)
    if not callable(count_due):
        return None
    return int(count_due(int(ctx.services.tickets.now())))
