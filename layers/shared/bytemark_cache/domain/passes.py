"""Bytemark passes as values: time parsing, validation, wrapping into elements, ordering, de-duplication."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from bytemark_cache.domain.hashing import payload_hash as compute_payload_hash
from bytemark_cache.domain.model import Element, Pass
from bytemark_cache.errors import UpstreamError

USABLE = "USABLE"
USING = "USING"
EXPIRED = "EXPIRED"
USES_GONE = "USES_GONE"

CreationKey = tuple[int, datetime, str]
"""Sort key by ``time_created``: ``(has_time, time, uuid)``; passes without a usable time come first."""

_NO_TIME = datetime.min.replace(tzinfo=UTC)


def parse_bytemark_time(value: object) -> datetime | None:
    """Aware UTC datetime from Bytemark's ISO-8601 text (with/without ms, ``Z``/offset); None for null/"".

    Raises ValueError for anything else. Text without an offset is taken as UTC, which is what Bytemark
    sends.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not an ISO-8601 time: {value!r}")
    text = value.strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        # OverflowError: an offset that pushes year 1 or 9999 out of range.
        raise ValueError(f"not an ISO-8601 time: {value!r}") from exc


def validate_pass(obj: object) -> Pass:
    """``obj`` as a Pass when it is an object with a non-empty string ``uuid`` and ``status``.

    Raises UpstreamError (not transient: asking again returns the same thing) otherwise.
    """
    if not isinstance(obj, dict):
        raise UpstreamError(f"Bytemark pass is not an object but {type(obj).__name__}", transient=False)
    uuid = obj.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise UpstreamError("Bytemark pass without a uuid", transient=False)
    status = obj.get("status")
    if not isinstance(status, str) or not status:
        raise UpstreamError(f"Bytemark pass {uuid!r} without a status", transient=False)
    return obj


def wrap_pass(pass_: Pass, now: int, payload_hash: str | None = None) -> Element:
    """The cache element for ``pass_`` (contract §4); the pass itself becomes ``payload``, untouched.

    ``payload_hash`` is computed when not given; pass it when already known so each pass is hashed once.
    """
    return {
        "pass_uuid": pass_["uuid"],
        "timestamp": now,
        "status": pass_["status"],
        "free_ticket_status": 0,
        "payload": pass_,
        "payload_hash": compute_payload_hash(pass_) if payload_hash is None else payload_hash,
    }


def creation_key(pass_: Mapping[str, Any]) -> CreationKey:
    """Sort key ordering passes by ``time_created`` (oldest first); missing/unparseable times sort first.

    Ties (and the time-less passes) are ordered by uuid so the order never depends on input order.
    """
    uuid = pass_.get("uuid")
    uuid_text = uuid if isinstance(uuid, str) else ""
    created = time_or_none(pass_.get("time_created"))
    if created is None:
        return (0, _NO_TIME, uuid_text)
    return (1, created, uuid_text)


def collapse_duplicates(passes: Iterable[Pass]) -> list[Pass]:
    """One pass per uuid: the one with the latest ``time_modified`` (on a tie the later occurrence).

    The survivor takes the position of the uuid's first occurrence; passes without a string uuid are
    kept as they are.
    """
    result: list[Pass] = []
    position_of: dict[str, int] = {}
    for candidate in passes:
        uuid = candidate.get("uuid")
        if not isinstance(uuid, str):
            result.append(candidate)
            continue
        position = position_of.get(uuid)
        if position is None:
            position_of[uuid] = len(result)
            result.append(candidate)
        elif _modified_key(candidate) >= _modified_key(result[position]):
            result[position] = candidate
    return result


def _modified_key(pass_: Pass) -> tuple[int, datetime]:
    modified = time_or_none(pass_.get("time_modified"))
    return (0, _NO_TIME) if modified is None else (1, modified)


def time_or_none(value: object) -> datetime | None:
    """Like parse_bytemark_time, but garbage is None: ordering or a read must never fail on one odd pass."""
    try:
        return parse_bytemark_time(value)
    except ValueError:
        return None
