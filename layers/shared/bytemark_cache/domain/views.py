"""What the app is shown: the SPEC §7 body with each element's effective status, and its ETag."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from bytemark_cache.domain.expiry import effective_status
from bytemark_cache.domain.model import CacheDocument, Element

_WRAPPER_FIELDS = ("pass_uuid", "timestamp", "status", "free_ticket_status", "payload_hash")


def tickets_body(
    document: CacheDocument,
    *,
    now: float,
    stale: bool,
    day_pass_label: str,
    timezone: str,
) -> dict[str, Any]:
    """The 200 body: wrapper fields, ``effective_status`` and ``payload`` of every element.

    Fields older writers added to elements (``_id`` …) are internal and not shown.
    """
    moment = datetime.fromtimestamp(now, UTC)
    synced_at = int(document.get("timestamp") or 0)

    def view(element: Element) -> dict[str, Any]:
        shown = {name: element.get(name) for name in _WRAPPER_FIELDS}
        shown["effective_status"] = effective_status(
            element, moment, day_pass_label=day_pass_label, tz=timezone
        )
        shown["payload"] = element.get("payload")
        return shown

    return {
        "user_id": document["user_id"],
        "synced_at": datetime.fromtimestamp(synced_at, UTC).isoformat().replace("+00:00", "Z"),
        "age_seconds": max(0, int(now) - synced_at),
        "stale": stale,
        "passes": [view(element) for element in document.get("passes", [])],
        "passes4": [view(element) for element in document.get("passes4", [])],
    }


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
