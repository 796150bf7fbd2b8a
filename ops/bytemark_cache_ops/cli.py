"""The operator CLI ``bytemark-cache`` (stdlib argparse): the parser, and one dispatch for every command.

Output is for humans on a terminal; ``--json`` prints one JSON document for machines instead. Progress
goes to stderr. Every error the project raises is answered through ONE table (``exits.ERRORS``: exit code
and a one-line message); tokens, e-mail addresses and credentials in URIs are never printed.

Commands: ``show``, ``sync``, ``log`` (one user), ``backfill`` (the scheduled job's modes), ``doctor``
(read-only health report), ``migrate`` (converge the Node service's documents), ``ensure-indexes``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import TYPE_CHECKING, Any, Final, TextIO

from bson import ObjectId
from bson.errors import InvalidId

from bytemark_cache_ops import commands, doctor, indexes, migrate
from bytemark_cache_ops.context import Context, MaintenanceStore
from bytemark_cache_ops.exits import EPILOG, EXIT_USAGE, describe_error, rule_for
from bytemark_cache_ops.render import plain

if TYPE_CHECKING:
    from bytemark_cache.bootstrap import Services
    from bytemark_cache.ports import TokenStore

PROG: Final = "bytemark-cache"
DEFAULT_LOG_LIMIT: Final = 20
DEFAULT_PASSES4_SHOWN: Final = 5
DEFAULT_BACKFILL_PAGE_SIZE: Final = 500

Handler = Callable[[argparse.Namespace, Context], int]

__all__ = ["build_parser", "describe_error", "main"]


def main(
    argv: Sequence[str] | None = None,
    *,
    services: Services | None = None,
    tokens: TokenStore | None = None,
    maintenance: MaintenanceStore | None = None,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one command and return its exit code; each part is built only when the command uses it."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        # argparse prints help and usage errors to sys.stdout / sys.stderr itself.
        with redirect_stdout(out), redirect_stderr(err):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    handler: Handler = args.handler
    context = Context(
        out,
        err,
        injected_services=services,
        injected_tokens=tokens,
        injected_maintenance=maintenance,
        env=env,
        # Missing indexes are doctor's and ensure-indexes' to report (one line each, with the index named).
        check_indexes_at_start=False,
    )
    with _package_logging(err):
        try:
            return handler(args, context)
        except (Exception, KeyboardInterrupt) as exc:
            rule = rule_for(exc)
            if rule is None:
                raise  # a bug: keep its traceback
            err.writelines(f"{PROG}: error: {line}\n" for line in rule.lines(exc))
            return rule.code


# -- the parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a flag given before the command is not reset by the sub-parser's default.
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document on stdout"
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operate the Bytemark ticket cache: inspect, sync, back-fill, check and migrate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json", action="store_true", default=False, help="print one JSON document on stdout"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Handler, summary: str, description: str) -> argparse.ArgumentParser:
        found = sub.add_parser(name, parents=[common], help=summary, description=description)
        found.set_defaults(handler=handler)
        return found

    show = command(
        "show",
        commands.show,
        "show a user's cache (no Bytemark call)",
        "Show a user's cache as the service reads it: sync time, age, legacy shapes, counts and passes.",
    )
    show.add_argument("user_id", type=_user_id, metavar="USER", help="the user id")
    show.add_argument(
        "--passes4",
        type=_positive_int,
        default=DEFAULT_PASSES4_SHOWN,
        metavar="N",
        help=f"how many of the newest expired passes to list (default {DEFAULT_PASSES4_SHOWN})",
    )

    sync = command(
        "sync",
        commands.sync,
        "synchronise a user's cache with Bytemark now",
        "Synchronise a user's cache with Bytemark now (a missing cache is built).",
    )
    sync.add_argument("user_id", type=_user_id, metavar="USER", help="the user id")
    sync.add_argument(
        "--timeout", type=_positive_float, default=None, metavar="SECONDS", help="give up after this long"
    )

    log = command(
        "log",
        commands.log,
        "show a user's newest change-log entries",
        "Show a user's newest change-log entries (created / updated / removed passes).",
    )
    log.add_argument("user_id", type=_user_id, metavar="USER", help="the user id")
    log.add_argument(
        "--limit",
        type=_positive_int,
        default=DEFAULT_LOG_LIMIT,
        metavar="N",
        help=f"how many entries (default {DEFAULT_LOG_LIMIT})",
    )

    backfill = command(
        "backfill",
        commands.backfill,
        "run one pass of a back-fill mode (due, missing, stale, prune)",
        "due: users whose next sync time has passed; missing: users with a token and no cache; stale: "
        "caches older than the TTL (all three go on the update queue); prune: delete change-log entries "
        "older than the retention. Progress goes to stderr; the summary to stdout.",
    )
    backfill.add_argument("--mode", required=True, choices=("due", "missing", "stale", "prune"))
    backfill.add_argument("--dry-run", action="store_true", help="count, enqueue and delete nothing")
    backfill.add_argument(
        "--cursor", type=_user_id, default=None, metavar="N", help="resume after this user id"
    )
    backfill.add_argument(
        "--max-users", type=_positive_int, default=None, metavar="N", help="stop after scanning about N users"
    )
    backfill.add_argument(
        "--page-size",
        type=_positive_int,
        default=DEFAULT_BACKFILL_PAGE_SIZE,
        metavar="N",
        help=f"users read per page (default {DEFAULT_BACKFILL_PAGE_SIZE})",
    )
    backfill.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    check = command(
        "doctor",
        doctor.doctor,
        "read-only health report of the cache collection",
        "Scan every cache document (read only) and report legacy shapes, duplicate users, sizes, indexes "
        "and users with a token but no cache. Exit 7 when something would break the service.",
    )
    _batch_size(check, doctor.DEFAULT_BATCH_SIZE)
    check.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=doctor.DEFAULT_MAX_BYTES,
        metavar="N",
        help=f"warn about documents larger than this (default {doctor.DEFAULT_MAX_BYTES})",
    )
    check.add_argument(
        "--token-scan-limit",
        type=_non_negative_int,
        default=doctor.DEFAULT_TOKEN_SCAN_LIMIT,
        metavar="N",
        help="users with a token to check for a missing cache (0: skip MySQL; "
        f"default {doctor.DEFAULT_TOKEN_SCAN_LIMIT})",
    )

    converge = command(
        "migrate",
        migrate.migrate,
        "converge the Node service's documents (dry run unless --apply)",
        "Normalise timestamps, user ids and element keys, move duplicate documents to a side collection, "
        "then create the indexes. Dry run unless --apply. Resumable (--after) and idempotent.",
    )
    converge.add_argument("--apply", action="store_true", help="write (default: report what would be done)")
    _batch_size(converge, migrate.DEFAULT_BATCH_SIZE)
    converge.add_argument(
        "--after", type=_document_id, default=None, metavar="ID", help="resume after this document _id"
    )
    converge.add_argument(
        "--max-documents", type=_positive_int, default=None, metavar="N", help="stop after N documents"
    )
    converge.add_argument(
        "--duplicates-collection", default=None, metavar="NAME", help="side collection of moved duplicates"
    )
    converge.add_argument("--log-collection", default=None, metavar="NAME", help="the migration log")
    converge.add_argument(
        "--examples",
        type=_non_negative_int,
        default=migrate.DEFAULT_EXAMPLES,
        metavar="N",
        help=f"documents listed in the report (default {migrate.DEFAULT_EXAMPLES})",
    )
    converge.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    command(
        "ensure-indexes",
        indexes.ensure,
        "create the indexes the service needs (a deploy step)",
        "Create every missing required index and report each one (present, created, conflict, failed). "
        "Needs createIndex rights and only the MongoDB settings. Exit 7 when one is not in place.",
    )
    return parser


def _batch_size(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=default,
        metavar="N",
        help=f"documents read per batch (default {default})",
    )


def _user_id(raw: str) -> int:
    value: int = _number(raw, int, 0, "a user id")
    return value


def _number(raw: str, kind: Callable[[str], Any], smallest: float, what: str) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {plain(raw)!r}") from None
    if not value >= smallest:
        raise argparse.ArgumentTypeError(f"not {what}: {raw!r}")
    return value


def _positive_int(raw: str) -> int:
    value: int = _number(raw, int, 1, "a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value: int = _number(raw, int, 0, "a non-negative integer")
    return value


def _positive_float(raw: str) -> float:
    value: float = _number(raw, float, 0.001, "a positive number of seconds")
    return value


def _document_id(raw: str) -> object:
    """An ``_id`` as printed by ``migrate``: an ObjectId's 24 hex digits, else the text itself."""
    if len(raw) == 24:
        try:
            return ObjectId(raw)
        except InvalidId:
            pass
    return raw


@contextmanager
def _package_logging(err: TextIO) -> Iterator[None]:
    """Show the package's warnings (e.g. Bytemark retries) on ``err`` as plain lines while a command runs."""
    package_logger = logging.getLogger("bytemark_cache")
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
