"""The operator CLI: ``bytemark-cache show|sync|log|backfill`` (stdlib argparse only).

Output is for humans on a terminal; ``--json`` prints one JSON document for machines instead. Only
identifiers, statuses, labels, times and hashes are ever shown: tokens, e-mail addresses and the other
customer fields of a Bytemark payload never reach the screen.

Exit codes: 0 ok · 1 other failure · 2 usage · 3 not found · 4 Bytemark failed · 5 configuration ·
6 store unavailable (MongoDB / MySQL / SQS) · 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TextIO

from bytemark_cache.domain.passes import parse_bytemark_time
from bytemark_cache.domain.views import tickets_body
from bytemark_cache.errors import (
    BytemarkCacheError,
    ConfigError,
    InvalidInput,
    NoBytemarkAccount,
    StoreError,
    SyncInProgress,
    TokenRevoked,
    UpstreamError,
)

if TYPE_CHECKING:
    # Only for annotations: importing the composition root pulls in the services and ports, which a
    # plain ``--help`` does not need.
    from bytemark_cache.bootstrap import Services
    from bytemark_cache.services import BackfillResult

PROG: Final = "bytemark-cache"

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_UPSTREAM: Final = 4
EXIT_CONFIG: Final = 5
EXIT_STORE: Final = 6
EXIT_INTERRUPTED: Final = 130

DEFAULT_LOG_LIMIT: Final = 20
DEFAULT_PASSES4_SHOWN: Final = 5
DEFAULT_BACKFILL_PAGE_SIZE: Final = 500

_LABEL_WIDTH: Final = 40
_BAR_WIDTH: Final = 24
_HASH_SHOWN: Final = 8
_CHANGES_SHOWN: Final = 50

_EPILOG: Final = """\
exit codes:
  0  ok
  1  other failure (e.g. a sync of that user is already running)
  2  usage error
  3  not found (no cache, no Bytemark account)
  4  Bytemark failed (down, or the user's token expired / was revoked)
  5  configuration error (every problem is listed)
  6  store unavailable (MongoDB, MySQL or SQS)
  130  interrupted (an interrupted back-fill names the --cursor to resume from)

Configuration comes from the environment (MONGODB_URI, MYSQL_*, BYTEMARK_API_URL, UPDATE_QUEUE_URL, ...).
"""

# user:password@ in a URI, and bearer tokens: never echoed even if a driver message carried them.
_SECRET_PATTERNS: Final = (
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@"), r"\1***@"),
    (re.compile(r"(?i)\b(bearer)\s+\S+"), r"\1 ***"),
)

Handler = Callable[[argparse.Namespace, "Services", TextIO, TextIO], int]


class CliError(Exception):
    """A failure the CLI reports itself: one line on stderr and ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        self.exit_code = exit_code
        super().__init__(message)


# -- entry point ------------------------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None,
    *,
    services: Services | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one CLI command and return its exit code (services are built only when a command runs)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    try:
        # argparse prints help and usage errors to sys.stdout / sys.stderr itself.
        with redirect_stdout(out), redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    handler: Handler = args.handler
    with _package_logging(err):
        try:
            if services is None:
                services = _build_services()
            return handler(args, services, out, err)
        except ConfigError as exc:
            for problem in exc.problems:
                _error(err, f"configuration error: {problem}")
            return EXIT_CONFIG
        except CliError as exc:
            _error(err, str(exc))
            return exc.exit_code
        except BytemarkCacheError as exc:
            message, code = describe_error(exc)
            _error(err, message)
            return code
        except KeyboardInterrupt:
            _error(err, "interrupted")
            return EXIT_INTERRUPTED


def describe_error(exc: BytemarkCacheError) -> tuple[str, int]:
    """The one-line message and exit code for a project error."""
    if isinstance(exc, NoBytemarkAccount):
        return (
            f"user {exc.user_id} has no Bytemark account (no token in bytemark_tokens); nothing was written",
            EXIT_NOT_FOUND,
        )
    if isinstance(exc, TokenRevoked):
        return (
            "Bytemark rejected the user's token: expired or revoked (50020); the user must sign in to "
            "Bytemark again; the cache was left unchanged",
            EXIT_UPSTREAM,
        )
    if isinstance(exc, UpstreamError):
        retry = f", retry after {exc.retry_after:g} s" if exc.retry_after is not None else ""
        kind = f"transient{retry}" if exc.transient else "not transient"
        return (
            f"Bytemark is unavailable: {_scrub(str(exc))} ({kind}); the cache was left unchanged",
            EXIT_UPSTREAM,
        )
    if isinstance(exc, StoreError):
        return f"store unavailable: {_scrub(str(exc))}", EXIT_STORE
    if isinstance(exc, InvalidInput):
        return f"invalid input: {_scrub(str(exc))}", EXIT_USAGE
    if isinstance(exc, SyncInProgress):
        return f"{_scrub(str(exc))}; try again in a few seconds", EXIT_FAILURE
    return _scrub(str(exc)), EXIT_FAILURE


def _build_services() -> Services:
    # Imported here so that `--help` and usage errors work without configuration or drivers.
    from bytemark_cache.bootstrap import build_services

    return build_services()


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
        description="Operate the Bytemark ticket cache: inspect, sync and back-fill users' caches.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json", action="store_true", default=False, help="print one JSON document on stdout"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    show = commands.add_parser(
        "show",
        parents=[common],
        help="show a user's cache (no Bytemark call)",
        description="Show a user's cache as stored: sync time, age, counts and the passes. No Bytemark call.",
    )
    show.add_argument("user_id", type=_user_id, metavar="USER", help="the user id")
    show.add_argument(
        "--passes4",
        type=_positive_int,
        default=DEFAULT_PASSES4_SHOWN,
        metavar="N",
        help=f"how many of the newest expired passes to list (default {DEFAULT_PASSES4_SHOWN})",
    )
    show.set_defaults(handler=_cmd_show)

    sync = commands.add_parser(
        "sync",
        parents=[common],
        help="synchronise a user's cache with Bytemark now",
        description="Synchronise a user's cache with Bytemark now (a missing cache is built).",
    )
    sync.add_argument("user_id", type=_user_id, metavar="USER", help="the user id")
    sync.set_defaults(handler=_cmd_sync)

    log = commands.add_parser(
        "log",
        parents=[common],
        help="show a user's newest change-log entries",
        description="Show a user's newest change-log entries (created / updated / removed passes).",
    )
    log.add_argument("user_id", type=_user_id, metavar="USER", help="the user id")
    log.add_argument(
        "--limit",
        type=_positive_int,
        default=DEFAULT_LOG_LIMIT,
        metavar="N",
        help=f"how many entries (default {DEFAULT_LOG_LIMIT})",
    )
    log.set_defaults(handler=_cmd_log)

    backfill = commands.add_parser(
        "backfill",
        parents=[common],
        help="enqueue every user whose cache is missing or stale",
        description=(
            "Put every user with a Bytemark token and no cache (missing) or a cache older than the TTL "
            "(stale) on the update queue. Progress goes to stderr; the summary to stdout."
        ),
    )
    backfill.add_argument(
        "--mode", required=True, choices=("missing", "stale"), help="which users to enqueue"
    )
    backfill.add_argument("--dry-run", action="store_true", help="count the users, enqueue nothing")
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
    backfill.set_defaults(handler=_cmd_backfill)
    return parser


def _user_id(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a user id: {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a user id: {raw!r}")
    return value


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a positive integer: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {raw!r}")
    return value


# -- show -------------------------------------------------------------------------------------------


def _cmd_show(args: argparse.Namespace, services: Services, out: TextIO, err: TextIO) -> int:
    """``show USER``: the stored cache, read from the store only."""
    user_id: int = args.user_id
    document = services.cache.load(user_id)
    if document is None:
        raise CliError(
            f"user {user_id} has no cache (run `{PROG} sync {user_id}` to build it)", EXIT_NOT_FOUND
        )
    ttl = services.tickets.ttl_seconds
    body = tickets_body(
        document,
        now=services.tickets.now(),
        stale=False,
        day_pass_label=services.settings.day_pass_label,
        timezone=services.settings.agency_timezone,
    )
    passes = [_pass_row(element) for element in body["passes"]]
    history = sorted(body["passes4"], key=_newest_first_key, reverse=True)
    shown_history = [_pass_row(element) for element in history[: args.passes4]]
    age: int = body["age_seconds"]
    summary = {
        "user_id": user_id,
        "synced_at": body["synced_at"],
        "age_seconds": age,
        "ttl_seconds": ttl,
        "stale": age >= ttl,
        "counts": {
            "passes": len(passes),
            "passes4": len(history),
            "by_effective_status": dict(sorted(Counter(row["effective_status"] for row in passes).items())),
        },
        "passes": passes,
        "passes4": {"count": len(history), "newest": shown_history},
    }
    if args.json:
        _print_json(out, summary)
        return EXIT_OK

    freshness = f"stale: older than the TTL of {_duration(ttl)}" if age >= ttl else f"TTL {_duration(ttl)}"
    out.write(f"user {user_id}: cache synced {body['synced_at']} ({_duration(age)} ago, {freshness})\n")
    by_status = ", ".join(
        f"{count} {status}" for status, count in summary["counts"]["by_effective_status"].items()
    )
    out.write(
        f"passes: {len(passes)}" + (f" ({by_status})" if by_status else "") + f"   passes4: {len(history)}\n"
    )
    out.write(f"\nPASSES ({len(passes)})\n")
    _write_pass_table(out, passes)
    newest = f", newest {len(shown_history)} shown" if len(history) > len(shown_history) else ""
    out.write(f"\nPASSES4 ({len(history)}{newest})\n")
    _write_pass_table(out, shown_history)
    return EXIT_OK


_PASS_COLUMNS: Final = (
    ("uuid", "UUID"),
    ("label_name", "LABEL"),
    ("status", "STATUS"),
    ("effective_status", "EFFECTIVE"),
    ("time_created", "CREATED"),
)


def _pass_row(element: dict[str, Any]) -> dict[str, Any]:
    """The only fields of an element the CLI shows: identifiers, label, statuses, creation time."""
    payload = element.get("payload")
    fields = payload if isinstance(payload, dict) else {}
    return {
        "uuid": element.get("pass_uuid"),
        "label_name": _plain(fields.get("label_name")),
        "status": _plain(element.get("status")),
        "effective_status": _plain(element.get("effective_status")),
        "time_created": _plain(fields.get("time_created")),
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
    _write_table(
        out,
        [header for _, header in _PASS_COLUMNS],
        [[row[key] for key, _ in _PASS_COLUMNS] for row in rows],
    )


# -- sync -------------------------------------------------------------------------------------------


def _cmd_sync(args: argparse.Namespace, services: Services, out: TextIO, err: TextIO) -> int:
    """``sync USER``: synchronise now and report what changed."""
    user_id: int = args.user_id
    result = services.tickets.sync(user_id)
    document = result.document
    synced_at = _iso(document.get("timestamp"))
    changes: list[dict[str, Any]] = []
    if result.changed_passes and result.source in ("built", "synced"):
        # The entries this sync appended carry the document's new timestamp.
        stamp = document.get("timestamp")
        changes = [
            _log_row(entry)
            for entry in services.cache.read_log(user_id, result.changed_passes)
            if entry.get("timestamp") == stamp
        ]
    counts = {"passes": len(document.get("passes", [])), "passes4": len(document.get("passes4", []))}
    if args.json:
        _print_json(
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
        headline = f"cache built, {_plural(result.changed_passes, 'pass')} written"
    elif result.source == "synced":
        headline = (
            f"cache synced, {_plural(result.changed_passes, 'pass')} changed"
            if result.changed_passes
            else "cache synced, nothing changed"
        )
    else:
        headline = "a concurrent sync refreshed the cache just now; its result is shown"
    out.write(f"user {user_id}: {headline} (synced at {synced_at})\n")
    if changes:
        out.write("\nCHANGES\n")
        _write_table(
            out,
            ["ACTION", "LIST", "UUID", "STATUS"],
            [[row["action"], row["list"], row["uuid"], row["status"]] for row in changes[:_CHANGES_SHOWN]],
        )
        if len(changes) > _CHANGES_SHOWN:
            # A first build can log hundreds of history passes; --json lists them all.
            out.write(f"  ... and {len(changes) - _CHANGES_SHOWN} more (--json lists all)\n")
    out.write(f"\nnow: {counts['passes']} in passes, {counts['passes4']} in passes4\n")
    return EXIT_OK


# -- log --------------------------------------------------------------------------------------------


def _cmd_log(args: argparse.Namespace, services: Services, out: TextIO, err: TextIO) -> int:
    """``log USER``: the newest change-log entries."""
    user_id: int = args.user_id
    rows = [_log_row(entry) for entry in services.cache.read_log(user_id, args.limit)]
    if not rows and services.cache.load(user_id) is None:
        raise CliError(f"user {user_id} has no cache and no change log", EXIT_NOT_FOUND)
    if args.json:
        _print_json(out, {"user_id": user_id, "entries": rows})
        return EXIT_OK
    out.write(
        f"user {user_id}: {_plural(len(rows), 'change-log entry', 'change-log entries')}, newest first\n"
    )
    if rows:
        _write_table(
            out,
            ["TIME", "ACTION", "LIST", "UUID", "STATUS", "HASH", "PREVIOUS"],
            [
                [
                    row["at"],
                    row["action"],
                    row["list"],
                    row["uuid"],
                    row["status"],
                    _short_hash(row["payload_hash"]),
                    _short_hash(row["previous_hash"]),
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
        "at": _iso(timestamp),
        "action": _plain(entry.get("action")),
        "list": _plain(entry.get("list")),
        "uuid": _plain(entry.get("uuid")),
        "status": _plain(entry.get("status")),
        "payload_hash": _plain(entry.get("payload_hash")),
        "previous_hash": _plain(entry.get("previous_hash")),
    }


def _short_hash(value: str | None) -> str | None:
    return value[:_HASH_SHOWN] if value else value


# -- backfill ---------------------------------------------------------------------------------------


def _cmd_backfill(args: argparse.Namespace, services: Services, out: TextIO, err: TextIO) -> int:
    """``backfill --mode``: enqueue due users with progress on stderr, then the summary."""
    if services.queue is None and not args.dry_run:
        raise CliError("UPDATE_QUEUE_URL is required for a back-fill (or use --dry-run)", EXIT_CONFIG)
    progress = _Progress(err, max_users=args.max_users, enabled=not args.quiet)
    try:
        result = services.tickets.backfill(
            args.mode,
            args.cursor,
            max_users=args.max_users,
            page_size=args.page_size,
            dry_run=args.dry_run,
            on_page=progress.update,
        )
    except KeyboardInterrupt:
        # Pages after the cursor may be partly enqueued: re-sending them is harmless (a sync is idempotent).
        resume = progress.cursor if progress.cursor is not None else args.cursor
        hint = f"; resume with --cursor {resume}" if resume is not None else ""
        raise CliError(
            f"back-fill interrupted after {_plural(progress.scanned, 'user')}{hint}", EXIT_INTERRUPTED
        ) from None
    finally:
        progress.finish()

    if args.json:
        _print_json(out, {**result.to_dict(), "dry_run": args.dry_run})
        return EXIT_OK
    verb = "would enqueue" if args.dry_run else "enqueued"
    dry = ", dry run" if args.dry_run else ""
    scanned = _plural(result.scanned, "user")
    out.write(f"back-fill ({result.mode}{dry}): scanned {scanned}, {verb} {result.enqueued}\n")
    if result.cursor is None:
        out.write("finished: every user was scanned (cursor: none)\n")
    else:
        out.write(f"stopped at cursor {result.cursor}; resume with --cursor {result.cursor}\n")
    return EXIT_OK


@dataclass
class _Progress:
    """Back-fill progress on stderr: one redrawn line on a terminal, plain lines otherwise."""

    stream: TextIO
    max_users: int | None
    enabled: bool = True
    scanned: int = 0
    enqueued: int = 0
    cursor: int | None = None
    _drawn: int = 0

    def update(self, result: BackfillResult) -> None:
        """Record and show the progress after one page (``on_page`` callback)."""
        self.scanned, self.enqueued, self.cursor = result.scanned, result.enqueued, result.cursor
        if not self.enabled:
            return
        counters = f"scanned {_plural(self.scanned, 'user')}, enqueued {self.enqueued}, cursor {self.cursor}"
        if not _is_tty(self.stream):
            self.stream.write(f"back-fill: {counters}\n")
            self.stream.flush()
            return
        if self.max_users:
            done = min(1.0, self.scanned / self.max_users)
            filled = int(done * _BAR_WIDTH)
            line = f"[{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] {done:4.0%} {counters}"
        else:
            line = f"back-fill: {counters}"
        # Pad over the previous, possibly longer, line.
        self.stream.write("\r" + line.ljust(self._drawn))
        self.stream.flush()
        self._drawn = len(line)

    def finish(self) -> None:
        """End the redrawn line so what follows starts on a fresh one."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or exotic stream
        return False


# -- output helpers ---------------------------------------------------------------------------------


def _print_json(out: TextIO, value: object) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def _write_table(out: TextIO, headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(header), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    for row in [headers, *cells]:
        out.write(
            "  " + "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        )
        out.write("\n")


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    text = str(value)
    return text if len(text) <= _LABEL_WIDTH else text[: _LABEL_WIDTH - 1] + "…"


def _plain(value: object) -> Any:
    """Strings without control characters (a payload must not drive the operator's terminal)."""
    if not isinstance(value, str):
        return value
    return "".join("?" if unicodedata.category(char) in ("Cc", "Cf") else char for char in value)


def _iso(timestamp: object) -> str | None:
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _duration(seconds: int) -> str:
    """``95`` → ``1m 35s``; two units at most."""
    seconds = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    """``1 user`` / ``2 users`` (``plural`` for irregular words)."""
    if count == 1:
        return f"{count} {singular}"
    if plural is None:
        plural = singular + ("es" if singular.endswith("s") else "s")
    return f"{count} {plural}"


def _scrub(message: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        message = pattern.sub(replacement, message)
    return message.replace("\n", " ")


def _error(err: TextIO, message: str) -> None:
    err.write(f"{PROG.split()[-1]}: error: {message}\n")


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
