"""Node-compatible ``JSON.stringify`` and the MD5 ``payload_hash`` of a Bytemark pass (contract §5).

The earlier Node service stored ``md5(JSON.stringify(pass))``; to recognise its unchanged passes the
hash must be byte-for-byte the same. For data produced by ``json.loads`` that means reproducing:

- key order: array-index keys (``"0"`` … ``"4294967294"``) first in ascending numeric order, then every
  other key in insertion order (that is how V8 enumerates a plain object's own properties);
- no whitespace, non-ASCII written as-is (UTF-8 when hashed), JavaScript's string escaping
  (``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``, other control characters as ``\\u00xx``, lone surrogates as
  ``\\udxxx``);
- numbers as ``Number.prototype.toString`` writes the IEEE double the value parses to; NaN and
  ±Infinity as ``null``.

Two encoders produce identical text. The fast one rewrites only the few values whose Python text differs
from JavaScript's and lets the C JSON encoder do the rest; the slow one writes every token itself and
handles the rare floats (``|x| < 1e-4``) the C encoder cannot spell the JavaScript way.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from bytemark_cache.domain.model import Pass

# The C encoder behind ``json.dumps(ensure_ascii=False)``: escapes exactly what JSON.stringify escapes
# (", \, \b \f \n \r \t, other C0 controls as lowercase \u00xx) and leaves U+007F, U+2028/9 raw.
_encode_string: Callable[[str], str] = json.encoder.encode_basestring

_MAX_SAFE_INTEGER = 2**53
_MAX_ARRAY_INDEX = 2**32 - 2
# Python's float repr switches to exponent form below 1e-4; JavaScript only below 1e-6 and with a
# different exponent spelling, so such floats cannot go through the C encoder.
_SMALLEST_PLAIN_REPR = 1e-4
_EXPONENT_FROM = 1e21

_SURROGATES = re.compile("[\ud800-\udbff][\udc00-\udfff]|[\ud800-\udfff]")

_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False)


class _NeedsTokenEncoderError(Exception):
    """A value the C encoder cannot write the JavaScript way; the token encoder takes over."""


def payload_hash(pass_: Pass) -> str:
    """MD5 hex digest of ``JSON.stringify(pass_)`` encoded as UTF-8, as the Node service computed it."""
    text = _stringify_unchecked(pass_)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # Only lone surrogates fail to encode; fix them on this rare path instead of scanning every text.
        data = _fix_surrogates(text).encode("utf-8")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def js_stringify(value: Any) -> str:
    """``JSON.stringify(value)`` exactly as Node.js writes it for json.loads data."""
    text = _stringify_unchecked(value)
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _fix_surrogates(text)
    return text


def _stringify_unchecked(value: Any) -> str:
    """The JSON.stringify text, except that surrogate code points are still raw."""
    try:
        return _DUMPS.encode(_javascript_view(value))
    except _NeedsTokenEncoderError:
        return "".join(_tokens(value))


def js_number(number: int | float) -> str:
    """``Number.prototype.toString`` of the double ``number`` converts to (``null`` for NaN/Infinity)."""
    try:
        as_double = float(number)
    except OverflowError:
        # An integer beyond the double range parses to Infinity in JavaScript.
        return "null"
    if not math.isfinite(as_double):
        return "null"
    if as_double == 0:
        return "0"  # also -0
    sign = "-" if as_double < 0 else ""
    digits, point = _shortest_digits(abs(as_double))
    count = len(digits)
    if count <= point <= 21:
        return sign + digits + "0" * (point - count)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    exponent = point - 1
    mantissa = digits if count == 1 else digits[0] + "." + digits[1:]
    return f"{sign}{mantissa}e{'+' if exponent > 0 else '-'}{abs(exponent)}"


def _shortest_digits(magnitude: float) -> tuple[str, int]:
    """``(digits, point)`` with ``0.<digits> * 10**point == magnitude``, digits the shortest round-trip ones.

    Python's repr and V8 both pick the shortest digit string that reads back as the same double
    (and the closest one when several exist), so repr's digits are JavaScript's digits.
    """
    mantissa, _, exponent_text = repr(magnitude).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    point = len(whole) + (int(exponent_text) if exponent_text else 0)
    # Leading zeros ("0.001") move the decimal point left.
    point -= len(whole + fraction) - len((whole + fraction).lstrip("0"))
    return digits.rstrip("0") or "0", point


def _integer_view(number: int) -> int | float | None:
    """An int/float whose Python text is the JavaScript text of an integer outside ±2**53."""
    text = js_number(number)
    if text == "null":
        return None
    # Below 1e21 JavaScript writes plain digits (a Python int with those digits prints the same);
    # from 1e21 it writes "1e+21"-style, which is also the repr of the double.
    return int(text) if "e" not in text else float(number)


def _float_view(number: float) -> int | float | None:
    """An int/float/None whose Python text is the JavaScript text of ``number``."""
    if number != number or number in (math.inf, -math.inf):
        return None
    magnitude = abs(number)
    if magnitude < _EXPONENT_FROM:
        if number.is_integer():
            return int(js_number(number)) if magnitude >= _MAX_SAFE_INTEGER else int(number)
        if magnitude < _SMALLEST_PLAIN_REPR:
            raise _NeedsTokenEncoderError
    # Non-integral floats in [1e-4, 1e21) and everything from 1e21 up: Python's repr equals JavaScript's.
    return number


def _is_array_index(key: str) -> bool:
    """True for the canonical numeric keys V8 enumerates first (``"0"``, ``"17"``; not ``"017"``)."""
    return (
        key.isdigit()
        and key.isascii()
        and len(key) <= 10
        and (key == "0" or key[0] != "0")
        and int(key) <= _MAX_ARRAY_INDEX
    )


def _index_keys_first(obj: dict[str, Any]) -> list[str]:
    """The object's keys in JavaScript enumeration order."""
    indices = sorted((key for key in obj if _is_array_index(key)), key=int)
    if not indices:
        return list(obj)
    index_set = set(indices)
    return indices + [key for key in obj if key not in index_set]


def _javascript_view(value: Any) -> Any:
    """``value`` itself, or a copy in which the C encoder writes JavaScript's text; shares unchanged parts.

    Raises _NeedsTokenEncoderError for values only the token encoder can write.
    """
    kind = type(value)
    if kind is dict:
        return _object_view(value)
    if kind is list or kind is tuple:
        return _array_view(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER else _integer_view(value)
    if kind is float:
        return _float_view(value)
    raise TypeError(f"{kind.__name__} is not JSON data")


def _object_view(obj: dict[str, Any]) -> dict[str, Any]:
    reorder = False
    for key in obj:
        if type(key) is not str:
            raise TypeError(f"object key {key!r} is not a string")
        if key.isdigit():
            reorder = reorder or _is_array_index(key)
    replaced = _changed_views(obj.items())
    if replaced is None and not reorder:
        return obj
    source = obj if replaced is None else {**obj, **replaced}
    if not reorder:
        return source
    return {key: source[key] for key in _index_keys_first(source)}


def _array_view(items: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
    replaced = _changed_views(enumerate(items))
    if replaced is None:
        return items
    copy = list(items)
    for position, view in replaced.items():
        copy[position] = view
    return copy


def _changed_views[K](pairs: Iterable[tuple[K, Any]]) -> dict[K, Any] | None:
    """The values whose JavaScript view differs (None when none does): the containers' one loop."""
    replaced: dict[K, Any] | None = None
    for key, item in pairs:
        kind = type(item)
        # Inline the common leaves: one call per container, not per value, keeps this cheap.
        if kind is str or kind is bool or item is None:
            continue
        if kind is int and -_MAX_SAFE_INTEGER <= item <= _MAX_SAFE_INTEGER:
            continue
        view = _javascript_view(item)
        if view is not item:
            if replaced is None:
                replaced = {}
            replaced[key] = view
    return replaced


def _tokens(value: Any) -> list[str]:
    """Every token of ``JSON.stringify(value)`` written by hand (the reference encoder)."""
    out: list[str] = []
    _write(value, out)
    return out


def _write(value: Any, out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append(_encode_string(value))
    elif value is None:
        out.append("null")
    elif kind is bool:
        out.append("true" if value else "false")
    elif kind is int or kind is float:
        out.append(js_number(value))
    elif kind is dict:
        out.append("{")
        for position, key in enumerate(_index_keys_first(value)):
            if type(key) is not str:
                raise TypeError(f"object key {key!r} is not a string")
            if position:
                out.append(",")
            out.append(_encode_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif kind is list or kind is tuple:
        out.append("[")
        for position, item in enumerate(value):
            if position:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{kind.__name__} is not JSON data")


def _surrogate_text(match: re.Match[str]) -> str:
    text = match.group()
    if len(text) == 2:
        # A high+low pair is one character to JavaScript, written raw.
        return chr(0x10000 + ((ord(text[0]) - 0xD800) << 10) + (ord(text[1]) - 0xDC00))
    return f"\\u{ord(text):04x}"


def _fix_surrogates(text: str) -> str:
    """Escape lone surrogates as modern V8 does (``\\ud800``); join stray pairs into one character."""
    return _SURROGATES.sub(_surrogate_text, text)
