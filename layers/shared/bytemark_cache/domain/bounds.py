"""The bounds that keep memory, time and MongoDB documents finite, whatever Bytemark sends (one place).

Every limit here has its reason next to it. The planner checks a sync against them before anything is
written, so an answer that would not fit is refused whole (the old cache stays) instead of half-applied.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any, Final

MONGODB_DOCUMENT_LIMIT: Final = 16 * 1024 * 1024
"""MongoDB's hard limit on one BSON document."""

MAX_DOCUMENT_BYTES: Final = 15 * 1024 * 1024
"""A cache document is kept 1 MiB under MongoDB's limit: room for fields other writers add (``passesLog``)
and for the estimate of values this module cannot size exactly."""

HISTORY_TRIM_RATIO: Final = 0.9
"""When the history has to shrink to fit the size limit it goes down to this share of the limit, so the next
syncs stay incremental instead of re-trimming a near-limit history every time."""

MAX_PASSES_PER_LIST: Final = 10_000
"""Passes accepted in one Bytemark list (all pages). A daily commuter of ten years has ~3,650 expired passes;
more than this is a broken answer (a pagination loop, a fault), refused rather than held in memory."""

MAX_ANSWER_BYTES: Final = 8 * 1024 * 1024
"""Bytes of one Bytemark answer (one page), both as received and after decompression: a real page of 100
passes is ~300 KB. The compressed limit stops huge bodies; the decompressed one stops decompression bombs."""

MAX_FETCH_BYTES: Final = 48 * 1024 * 1024
"""Decompressed bytes of every page of both lists of one fetch together: bounds a sync's memory (parsed
JSON takes a few times its text) well inside the functions' 512 MB."""

MAX_PASS_DEPTH: Final = 32
"""Nesting levels allowed inside one pass. Real passes nest 4-5 deep; MongoDB refuses documents nested over
100 deep, and the pass sits 4 levels down in the cache document."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
_UNKNOWN_VALUE_BYTES: Final = 32
"""Size assumed for a BSON value this module has no rule for (an ObjectId is 12, a Decimal128 16)."""


class NotStorable(ValueError):
    """A value MongoDB cannot store (or that this service refuses to): says what and where."""


def bson_document_size(document: Mapping[str, Any]) -> int:
    """Bytes ``document`` takes as BSON (exact for JSON-like values; estimated for other BSON types).

    Raises NotStorable for what BSON cannot hold (see ``check_storable``), so a size is never computed
    for something that would fail later.
    """
    return _document_size(document, depth=0, max_depth=None, where="", strict_keys=False)


def check_storable(pass_: Mapping[str, Any]) -> int:
    """The BSON size of one fresh pass; NotStorable when MongoDB could not store it as this service writes it.

    Refused: integers outside 64 bits, keys with NUL, starting with ``$`` or holding a ``.`` (FerretDB and
    DocumentDB refuse dotted keys, and MongoDB update paths cannot address them), keys or strings with
    lone surrogates (not UTF-8), nesting deeper than MAX_PASS_DEPTH, values JSON cannot produce.
    """
    return _document_size(pass_, depth=0, max_depth=MAX_PASS_DEPTH, where="pass", strict_keys=True)


def _document_size(
    document: Mapping[str, Any], *, depth: int, max_depth: int | None, where: str, strict_keys: bool
) -> int:
    if max_depth is not None and depth > max_depth:
        raise NotStorable(f"{where}: nested deeper than {max_depth} levels")
    size = 4 + 1  # int32 length + terminating NUL
    for key, value in document.items():
        if not isinstance(key, str):
            raise NotStorable(f"{where}: a key is not a string")
        if "\x00" in key:
            raise NotStorable(f"{where}: a key contains NUL")
        if key.startswith("$"):
            raise NotStorable(f"{where}: key {_shown(key)} starts with '$'")
        if strict_keys and "." in key:
            raise NotStorable(f"{where}: key {_shown(key)} holds a '.'")
        value_size = _value_size(value, depth, max_depth, f"{where}.{_shown(key)}", strict_keys)
        size += 1 + _utf8_length(key, where) + 1 + value_size
    return size


def _value_size(value: Any, depth: int, max_depth: int | None, where: str, strict_keys: bool) -> int:
    # bool before int: it is an int subclass.
    if value is None:
        return 0
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise NotStorable(f"{where}: integer outside 64 bits")
        if type(value) is not int:
            # bson.Int64 (what the driver reads a stored int64 as, e.g. the Node service's millisecond
            # timestamps) is always written back as int64; other int subclasses: an upper bound.
            return 8
        return 4 if _INT32_MIN <= value <= _INT32_MAX else 8
    if isinstance(value, float):
        return 8
    if isinstance(value, str):
        return 4 + _utf8_length(value, where) + 1
    if isinstance(value, Mapping):
        return _document_size(
            value, depth=depth + 1, max_depth=max_depth, where=where, strict_keys=strict_keys
        )
    if isinstance(value, list | tuple):
        if max_depth is not None and depth + 1 > max_depth:
            raise NotStorable(f"{where}: nested deeper than {max_depth} levels")
        size = 4 + 1
        for index, item in enumerate(value):
            item_size = _value_size(item, depth + 1, max_depth, f"{where}[{index}]", strict_keys)
            size += 1 + len(str(index)) + 1 + item_size
        return size
    if max_depth is not None:
        # Fresh passes come from JSON: anything else means the caller handed in something odd.
        raise NotStorable(f"{where}: {type(value).__name__} is not a JSON value")
    if isinstance(value, _dt.datetime):
        return 8
    if isinstance(value, bytes | bytearray):
        return 4 + 1 + len(value)
    return _UNKNOWN_VALUE_BYTES


def _utf8_length(text: str, where: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise NotStorable(f"{where}: text with a lone surrogate (not UTF-8)") from None


def _shown(key: str) -> str:
    """A key as error messages show it: short and printable (keys are Bytemark field names, not secrets)."""
    printable = key.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return repr(printable[:40])
