"""The day-pass rule and the effective status the app is shown (contract §6). Pure: payloads are only read."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from bytemark_cache.domain.passes import EXPIRED, USABLE, USING, parse_bytemark_time, time_or_none

DEFAULT_TIMEZONE = "America/Chicago"
DEFAULT_DAY_PASS_LABEL = "Day Pass"  # noqa: S105 - a product label, not a secret

_END_OF_DAY = time(23, 59, 59)
# Statuses whose meaning depends on the clock; every other status is Bytemark's final word.
_LIVE_STATUSES = frozenset({USABLE, USING})


def day_pass_expiration(first_use: datetime | str, tz: str = DEFAULT_TIMEZONE) -> datetime:
    """When a day pass first used at ``first_use`` expires: 23:59:59 local time that day, as aware UTC.

    ``first_use`` is an aware datetime (naive is taken as UTC) or Bytemark's ISO-8601 text.
    Raises ValueError for unparseable or empty text and ZoneInfoNotFoundError for an unknown zone.
    """
    if isinstance(first_use, str):
        parsed = parse_bytemark_time(first_use)
        if parsed is None:
            raise ValueError("first_use is empty")
        first_use = parsed
    elif first_use.tzinfo is None:
        first_use = first_use.replace(tzinfo=UTC)
    zone = ZoneInfo(tz)
    local_day = first_use.astimezone(zone).date()
    # Built from the wall-clock time, not "start of day + 24h": DST days are 23 or 25 hours long.
    return datetime.combine(local_day, _END_OF_DAY, tzinfo=zone).astimezone(UTC)


def is_day_pass(pass_: Mapping[str, Any], label: str = DEFAULT_DAY_PASS_LABEL) -> bool:
    """True when ``label_name`` holds ``label`` as a phrase, ignoring case; an empty label matches nothing.

    A phrase: not inside a longer word, and not the tail of a hyphenated count, so "Day Pass" matches
    "Local Day Pass (Adult)" but neither "Holiday Pass" nor "Regional 7-Day Pass" (valid seven days, not
    until midnight). An agency that sells "1-Day Pass" sets the label to that.
    """
    name = pass_.get("label_name")
    if not isinstance(name, str) or not label:
        return False
    return _label_pattern(label).search(name) is not None


@functools.lru_cache(maxsize=8)
def _label_pattern(label: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-]){re.escape(label)}(?!\w)", re.IGNORECASE)


def effective_status(
    element_or_pass: Mapping[str, Any],
    now: datetime,
    *,
    day_pass_label: str = DEFAULT_DAY_PASS_LABEL,
    tz: str = DEFAULT_TIMEZONE,
) -> str:
    """The status the app shows: USABLE+first_use → USING; past expiration (or day-pass end) → EXPIRED.

    Takes a cache element (its wrapper ``status``, which a local activation may have set, and its
    ``payload``) or a bare pass. Only USABLE/USING are re-derived; USES_GONE, EXPIRED and unknown
    statuses are Bytemark's and returned unchanged. An unparseable time counts as absent, so one odd
    field never breaks a read. ``now`` naive is taken as UTC.
    """
    payload = element_or_pass.get("payload")
    pass_: Mapping[str, Any] = payload if isinstance(payload, Mapping) else element_or_pass
    status = element_or_pass.get("status")
    if not isinstance(status, str):
        status = pass_.get("status")
    if not isinstance(status, str):
        return "UNKNOWN"
    if status not in _LIVE_STATUSES:
        return status
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    first_use = time_or_none(pass_.get("first_use"))
    expires_at = time_or_none(pass_.get("expiration"))
    if first_use is not None and is_day_pass(pass_, day_pass_label):
        day_end = day_pass_expiration(first_use, tz)
        expires_at = day_end if expires_at is None else min(expires_at, day_end)
    if expires_at is not None and now > expires_at:
        return EXPIRED
    if status == USABLE and first_use is not None:
        return USING
    return status
