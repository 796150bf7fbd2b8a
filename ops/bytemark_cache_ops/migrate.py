"""``migrate``: the command around ``migration.Migration`` (dry run unless ``--apply``), and its report."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bytemark_cache.errors import StoreError
from bytemark_cache_ops.exits import EXIT_OK, Interrupted, ProblemsFound
from bytemark_cache_ops.indexes import IN_PLACE, write_indexes
from bytemark_cache_ops.migration import DEFAULT_BATCH_SIZE, DEFAULT_EXAMPLES, Migration, MigrationReport
from bytemark_cache_ops.render import Progress, plural, print_json, write_table

if TYPE_CHECKING:
    from typing import TextIO

    from bytemark_cache_ops.context import Context

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_EXAMPLES", "migrate"]


def migrate(args: argparse.Namespace, ctx: Context) -> int:
    """``migrate``: dry run by default, ``--apply`` to write; exit 7 when something was left alone."""
    services = ctx.services
    store = ctx.maintenance(
        duplicates_collection=args.duplicates_collection, migration_log_collection=args.log_collection
    )
    migration = Migration(
        services.cache,
        store,
        apply=args.apply,
        now=services.tickets.now,
        claim_seconds=services.settings.sync_claim_seconds,
        examples=args.examples,
    )
    progress = Progress(ctx.err, "migrate", total=store.estimated_count(), enabled=not args.quiet)
    converged, moved = ("converged", "moved") if args.apply else ("would converge", "would move")

    def on_batch(report: MigrationReport) -> None:
        progress.update(
            report.scanned,
            f"scanned {plural(report.scanned, 'document')}, {converged} {report.converged}, "
            f"{moved} {report.moved}, cursor {report.cursor}",
        )

    try:
        report = migration.run(
            after=args.after, batch_size=args.batch_size, max_documents=args.max_documents, on_batch=on_batch
        )
    except KeyboardInterrupt:
        raise Interrupted(f"migrate interrupted {_where(migration.report)}") from None
    except StoreError as exc:
        # Said by the error table as "store unavailable: …", with where to resume.
        raise StoreError(f"{exc}; migrate stopped {_where(migration.report)}") from exc
    finally:
        progress.finish()
    if args.json:
        print_json(ctx.out, report.to_dict())
    else:
        _write_report(ctx.out, report)
    problems = []
    if report.left_alone:
        problems.append(f"left {plural(report.left_alone, 'document')} as they were")
    not_in_place = [finding for finding in report.indexes if finding.status not in IN_PLACE]
    if args.apply and not_in_place:
        problems.append(f"{plural(len(not_in_place), 'index', 'indexes')} not in place")
    if problems:
        raise ProblemsFound(f"migrate {' and '.join(problems)} (see the report)")
    return EXIT_OK


def _where(report: MigrationReport) -> str:
    cursor = report.cursor
    hint = f"resume with --after {cursor}" if cursor is not None else "run it again"
    return f"after {plural(report.scanned, 'document')}; {hint}"


def _write_report(out: TextIO, report: MigrationReport) -> None:
    dry = "" if report.apply else " (dry run: nothing is written)"
    out.write(f"migrate{dry}: {report.collection}, {plural(report.scanned, 'document')} scanned\n")
    converged, moved = ("converged", "moved") if report.apply else ("would converge", "would move")
    out.write(
        f"{converged} {plural(report.converged, 'document')}; {moved} {plural(report.moved, 'duplicate')} to "
        f"{report.duplicates_collection}; {report.unchanged} unchanged; "
        f"{report.skipped_ids.count} skipped; {report.changed_meanwhile.count} changed meanwhile; "
        f"{report.busy.count} busy\n"
    )
    if report.actions:
        out.write("\nACTIONS (documents)\n")
        write_table(out, ["ACTION", "DOCUMENTS"], [[n, c] for n, c in sorted(report.actions.items())])
    if report.skipped:
        out.write("\nSKIPPED (a person has to look: bytemark-cache doctor names them)\n")
        write_table(out, ["REASON", "DOCUMENTS"], [[n, c] for n, c in sorted(report.skipped.items())])
    if report.examples:
        total = report.converged + report.moved
        out.write(f"\nDOCUMENTS ({len(report.examples)} of {total})\n")
        write_table(
            out,
            ["_ID", "USER", "ACTIONS"],
            [[row["_id"], row["user_id"], " ".join(row["actions"])] for row in report.examples],
            full_last=True,
        )
    if report.finished:
        out.write("\nINDEXES" + ("" if report.apply else " (created by --apply after the documents)") + "\n")
        write_indexes(out, report.indexes)
        out.write("\nfinished: every document was scanned\n")
    else:
        out.write(
            f"\nstopped after {plural(report.scanned, 'document')}; resume with --after {report.cursor}\n"
        )
    if report.apply and (report.converged or report.moved):
        out.write(f"migration log: {report.migration_log_collection}\n")
