"""Output helpers of the CLI: tables, JSON, times, sizes, plurals, progress on stderr, and scrubbing.

Every string that comes from stored data goes through ``plain`` (no terminal control characters) and every
error text through ``scrub`` (no credentials in URIs, no bearer tokens).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from bson import ObjectId

LABEL_WIDTH: Final = 40
BAR_WIDTH: Final = 24
HASH_SHOWN: Final = 8

# user:password@ in a URI, and bearer tokens: never echoed even if a driver message carried them.
_SECRET_PATTERNS: Final = (
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@"), r"\1***@"),
    (re.compile(r"(?i)\b(bearer)\s+\S+"), r"\1 ***"),
)


def print_json(out: TextIO, value: object) -> None:
    """One JSON document (ObjectIds and dates as text)."""
    out.write(json.dumps(value, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def write_table(out: TextIO, headers: list[str], rows: list[list[Any]], *, full_last: bool = False) -> None:
    """Left-aligned columns, two spaces apart, indented by two (``full_last``: the last column uncut)."""
    cells = [[cell(value) for value in row] for row in rows]
    if full_last:
        for row, values in zip(cells, rows, strict=True):
            row[-1] = str(plain(values[-1])) if values[-1] not in (None, "") else "-"
    widths = [max(len(header), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    for row in [headers, *cells]:
        out.write(
            "  " + "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        )
        out.write("\n")


def cell(value: object) -> str:
    """A table cell: ``-`` for nothing, long text cut to LABEL_WIDTH."""
    if value is None or value == "":
        return "-"
    text = str(plain(value))
    return text if len(text) <= LABEL_WIDTH else text[: LABEL_WIDTH - 1] + "…"


def plain(value: object) -> Any:
    """Strings without control characters (a payload must not drive the operator's terminal)."""
    if not isinstance(value, str):
        return value
    return "".join("?" if unicodedata.category(char) in ("Cc", "Cf") else char for char in value)


def iso(timestamp: object) -> str | None:
    """Unix seconds as ``2024-06-15T04:30:00Z``; None for anything else."""
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        return None
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def duration(seconds: int) -> str:
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


def size(count: int) -> str:
    """Bytes for people: ``512 B``, ``12.3 KiB``, ``4.0 MiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 user`` / ``2 users`` (``plural_form`` for irregular words)."""
    if count == 1:
        return f"{count} {singular}"
    if plural_form is None:
        plural_form = singular + ("es" if singular.endswith("s") else "s")
    return f"{count} {plural_form}"


def short_hash(value: str | None) -> str | None:
    """The first HASH_SHOWN characters of a hash."""
    return value[:HASH_SHOWN] if value else value


def scrub(message: str) -> str:
    """One line without credentials."""
    for pattern, replacement in _SECRET_PATTERNS:
        message = pattern.sub(replacement, message)
    return message.replace("\n", " ")


def is_tty(stream: TextIO) -> bool:
    """True when ``stream`` is a terminal."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or exotic stream
        return False


@dataclass
class Progress:
    """Progress on stderr: one redrawn line (a bar when the total is known) on a terminal; elsewhere one
    plain line per step when ``lines`` is set, nothing otherwise."""

    stream: TextIO
    label: str
    total: int | None = None
    enabled: bool = True
    lines: bool = True
    _drawn: int = 0

    def update(self, done: int, counters: str) -> None:
        """Show the progress after one step (``done`` of ``total``)."""
        if not self.enabled:
            return
        if not is_tty(self.stream):
            if self.lines:
                self.stream.write(f"{self.label}: {counters}\n")
                self.stream.flush()
            return
        if self.total:
            share = min(1.0, done / self.total)
            filled = int(share * BAR_WIDTH)
            line = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {share:4.0%} {counters}"
        else:
            line = f"{self.label}: {counters}"
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
