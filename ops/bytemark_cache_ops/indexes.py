"""``ensure-indexes``: the deploy step that creates the indexes the service needs (its functions never do).

It needs a MongoDB user with createIndex on the cache, log and claims collections (the functions' user
needs no such right) and only the MongoDB settings. An index counts as present whatever its name when one
with the same keys and uniqueness exists, so the Node service's indexes are kept, never built twice.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from bytemark_cache_ops.exits import EXIT_OK, ProblemsFound
from bytemark_cache_ops.render import plural, print_json, scrub, write_table

if TYPE_CHECKING:
    from typing import TextIO

    from bytemark_cache.adapters.mongo_indexes import IndexFinding
    from bytemark_cache_ops.context import Context, MaintenanceStore

IN_PLACE: Final = frozenset({"present", "created"})


def ensure(args: argparse.Namespace, ctx: Context) -> int:
    """``ensure-indexes``: create what is missing and report each required index; exit 7 when one is not
    in place."""
    store = ctx.maintenance(mongodb_only=True)
    findings = explain_failures(store, store.ensure_indexes())
    if args.json:
        print_json(ctx.out, {"indexes": [index_dict(finding) for finding in findings]})
    else:
        ctx.out.write(f"ensure-indexes: {', '.join(sorted(set(store.collections.values())))}\n")
        write_indexes(ctx.out, findings)
    check_in_place(findings)
    return EXIT_OK


def explain_failures(store: MaintenanceStore, findings: list[IndexFinding]) -> list[IndexFinding]:
    """The findings, a unique index that could not be built explained by the duplicates that block it
    (MongoDB says E11000; FerretDB only "constraint failed")."""
    if not any(finding.status == "failed" and finding.spec.unique for finding in findings):
        return findings
    duplicates = store.duplicate_user_ids()
    if not duplicates:
        return findings
    detail = (
        f"{plural(len(duplicates), 'user')} with more than one document: "
        "run `bytemark-cache migrate --apply` first"
    )
    return [
        replace(finding, detail=detail) if finding.status == "failed" and finding.spec.unique else finding
        for finding in findings
    ]


def check_in_place(findings: list[IndexFinding]) -> None:
    """Raise ProblemsFound naming every required index that is not present or created."""
    missing = [finding for finding in findings if finding.status not in IN_PLACE]
    if missing:
        names = ", ".join(f"{finding.spec.name} ({finding.status})" for finding in missing)
        raise ProblemsFound(
            f"{plural(len(missing), 'required index', 'required indexes')} not in place: {names}"
        )


def index_dict(finding: IndexFinding) -> dict[str, object]:
    """One finding for machines."""
    return {
        "collection": finding.collection,
        "name": finding.spec.name,
        "keys": [[name, direction] for name, direction in finding.spec.keys],
        "unique": finding.spec.unique,
        "status": finding.status,
        "found_as": finding.found_name,
        "detail": finding.detail,
    }


def index_keys(finding: IndexFinding) -> str:
    """``user_id:1 unique``."""
    keys = ", ".join(f"{name}:{direction}" for name, direction in finding.spec.keys)
    return keys + (" unique" if finding.spec.unique else "")


def write_indexes(out: TextIO, findings: list[IndexFinding]) -> None:
    """The index table (doctor, migrate and ensure-indexes), each detail on a line of its own."""
    write_table(
        out,
        ["STATUS", "COLLECTION", "INDEX", "KEYS", "FOUND AS"],
        [
            [
                finding.status,
                finding.collection,
                finding.spec.name,
                index_keys(finding),
                finding.found_name if finding.status == "present" else None,
            ]
            for finding in findings
        ],
    )
    out.writelines(
        f"  {finding.spec.name}: {scrub(finding.detail)}\n" for finding in findings if finding.detail
    )
