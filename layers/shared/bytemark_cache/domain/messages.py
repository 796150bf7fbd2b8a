"""Validation of what the triggers hand in: update-queue bodies and back-fill schedule input (contract §7)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from bytemark_cache.domain.identity import MAX_USER_ID, is_user_id
from bytemark_cache.domain.model import BackfillMode, UpdateMessage, UpdateReason
from bytemark_cache.errors import InvalidInput

UPDATE_REASONS: tuple[UpdateReason, ...] = ("purchase", "activation", "backfill", "manual", "refresh")
BACKFILL_MODES: tuple[BackfillMode, ...] = ("due", "missing", "stale", "prune")
_MAX_BODY_BYTES = 4096
_MAX_UUID_LENGTH = 128
_MAX_RUN_ID_LENGTH = 200


@dataclass(frozen=True)
class BackfillRequest:
    """One back-fill invocation: the mode, where to resume, and the run it belongs to (for retries)."""

    mode: BackfillMode
    cursor: int | None
    run_id: str | None


def parse_update_message(body: str) -> UpdateMessage:
    """An update-queue body → UpdateMessage; InvalidInput names what is wrong.

    Fields a producer adds later are ignored (forward compatible); the known ones are checked strictly.
    """
    if len(body.encode()) > _MAX_BODY_BYTES:
        raise InvalidInput(f"body larger than {_MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidInput("body is not JSON") from exc
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    user_id = data.get("user_id")
    if not is_user_id(user_id):
        raise InvalidInput(f"user_id must be an integer from 1 to {MAX_USER_ID}")
    reason = data.get("reason")
    if reason not in UPDATE_REASONS:
        raise InvalidInput(f"reason must be one of {', '.join(UPDATE_REASONS)}")
    pass_uuid = data.get("pass_uuid")
    if pass_uuid is not None and (
        not isinstance(pass_uuid, str) or not pass_uuid.strip() or len(pass_uuid) > _MAX_UUID_LENGTH
    ):
        raise InvalidInput(f"pass_uuid must be a non-empty string of at most {_MAX_UUID_LENGTH} characters")
    return UpdateMessage(user_id=user_id, reason=cast(UpdateReason, reason), pass_uuid=pass_uuid)


def parse_backfill_request(event: Any) -> BackfillRequest:
    """The schedule's input ``{"mode", "cursor", "run_id"?}`` → BackfillRequest; InvalidInput otherwise."""
    if not isinstance(event, dict):
        raise InvalidInput("back-fill input must be a JSON object")
    unknown = sorted(set(event) - {"mode", "cursor", "run_id"})
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(unknown)}")
    mode = event.get("mode")
    if mode not in BACKFILL_MODES:
        raise InvalidInput(f"mode must be one of {', '.join(BACKFILL_MODES)}")
    raw_cursor = event.get("cursor")
    cursor = None if raw_cursor is None else _non_negative_int(raw_cursor, "cursor")
    run_id = event.get("run_id")
    if run_id is not None and (not isinstance(run_id, str) or not run_id or len(run_id) > _MAX_RUN_ID_LENGTH):
        raise InvalidInput(f"run_id must be a non-empty string of at most {_MAX_RUN_ID_LENGTH} characters")
    return BackfillRequest(mode=cast(BackfillMode, mode), cursor=cursor, run_id=run_id)


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{name} must be a non-negative integer or null")
    return int(value)
