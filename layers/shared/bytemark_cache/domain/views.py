"""What the app is shown: the contract §7 body with each element's effective status, and its ETag."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Final

from bytemark_cache.domain.document import StoredCache
from bytemark_cache.domain.expiry import effective_status
from bytemark_cache.domain.model import Element

SHOWN_FIELDS: Final = ("pass_uuid", "timestamp", "status", "free_ticket_status", "payload_hash")
"""The element wrapper fields the app sees (fields other writers added, such as ``_id``, are internal)."""


def tickets_body(
    cache: StoredCache,
    *,
    now: float,
    stale: bool,
    refreshing: bool = False,
    day_pass_label: str,
    timezone: str,
) -> dict[str, Any]:
    """The 200 body: wrapper fields, ``effective_status`` and ``payload`` of every element.

    ``synced_at``/``age_seconds`` are null when the stored sync time could not be read (a legacy document
    whose sync failed); ``refreshing`` says a sync was queued behind this answer.
    """
    moment = datetime.fromtimestamp(now, UTC)

    def view(element: Element) -> dict[str, Any]:
        shown = {name: element.get(name) for name in SHOWN_FIELDS}
        shown["effective_status"] = effective_status(
            element, moment, day_pass_label=day_pass_label, tz=timezone
        )
        shown["payload"] = element.get("payload")
        return shown

    synced_at = cache.synced_at
    body: dict[str, Any] = {
        "user_id": cache.user_id,
        "synced_at": None
        if synced_at is None
        else datetime.fromtimestamp(synced_at, UTC).isoformat().replace("+00:00", "Z"),
        "age_seconds": cache.age(now),
        "stale": stale,
        "passes": [view(element) for element in cache.passes],
        "passes4": [view(element) for element in cache.history],
    }
    if refreshing:
        body["refreshing"] = True
    return body


def body_etag(body: dict[str, Any]) -> str:
    """A strong ETag over what the app would see change (not the ever-growing ``age_seconds``)."""
    identity = {
        "user_id": body["user_id"],
        "synced_at": body["synced_at"],
        "stale": body["stale"],
        "elements": [
            (element["pass_uuid"], element["payload_hash"], element["status"], element["effective_status"])
            for element in [*body["passes"], *body["passes4"]]
        ],
    }
    digest = hashlib.md5(json.dumps(identity, separators=(",", ":")).encode(), usedforsecurity=False)
    return f'"{digest.hexdigest()}"'
