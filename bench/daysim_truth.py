"""Bytemark's truth for the simulated day: each rider's v1 and v4 lists at any instant, as pass JSON, and the
state the rider should be shown; ``TruthSource`` serves it to the real services as their ``PassSource``.

A pass's JSON has make_pass's fields (tests/fakes.py) plus what a real pass carries that matters here: uses,
activation count, a version, an order item and an opaque barcode (drawn from a shared pool, so a pass is
~3 kB of JSON like a real one while the world stays small in memory). Each change of a pass is one version;
Bytemark applies time-driven changes (EXPIRED, moved to the v4 history) 5-90 s after the expiration.
"""

from __future__ import annotations

import base64
import bisect
import json
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from bench.daysim_riders import Rider, SimPass

PAGE_SIZE: Final = 100
"""Bytemark's page size as the service asks for it (BYTEMARK_PAGE_SIZE): a fetch is one request per page of
each list, so 2 requests when each list fits one page (``total_count`` tells the client when to stop)."""

_BARCODES: Final = [base64.b64encode(random.Random(n).randbytes(1800)).decode("ascii") for n in range(61)]
ORGANIZATION_UUID: Final = "6f1c2a9e-3b1d-4c55-9a57-0c3f8e5d2b10"


def iso(moment: int | None) -> str | None:
    """Bytemark's time text (UTC, milliseconds, ``Z``)."""
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(moment))


def requests_for(current: int, history: int) -> int:
    """HTTP requests of one fetch: every page of both lists (an empty list is one request)."""
    return max(1, math.ceil(current / PAGE_SIZE)) + max(1, math.ceil(history / PAGE_SIZE))


@dataclass(frozen=True)
class Version:
    """The pass as Bytemark lists it from ``since`` on: in ``where`` ("v1", "v4", None = gone) as ``body``."""

    since: int
    where: str | None
    body: dict[str, Any] | None


def pass_versions(p: SimPass, *, keep_after: int) -> list[Version]:
    """The versions of ``p`` in time order; those superseded before ``keep_after`` are dropped."""
    changes: list[tuple[int, str]] = [(p.created, "created")]
    changes += [(t, kind) for t, kind in ((p.first_use, "activated"), (p.used_up, "used_up")) if t]
    changes += [(t, kind) for t, kind in ((p.moved, "moved"), (p.removed, "removed")) if t]
    changes += [(t, "corrected") for t in p.corrections]
    changes.sort()
    versions: list[Version] = []
    status, where, number, corrected = "USABLE", "v1", 1, 0
    for at, kind in changes:
        if kind == "removed":
            versions.append(Version(at, None, None))
            break
        if kind == "activated":
            status = "USING"
        elif kind == "used_up":
            status = "USES_GONE"
        elif kind == "moved":
            status, where = "EXPIRED", "v4"
        elif kind == "corrected":
            corrected += 1
        number += kind != "created"
        versions.append(Version(at, where, _body(p, status, at, number, corrected)))
    while len(versions) > 1 and versions[1].since <= keep_after:
        versions.pop(0)
    return versions


def _body(p: SimPass, status: str, modified: int, number: int, corrected: int) -> dict[str, Any]:
    activated = p.first_use is not None and modified >= p.first_use
    product = p.product
    body: dict[str, Any] = {
        "uuid": p.uuid,
        "status": status,
        "first_use": iso(p.first_use) if activated else None,
        "expiration": iso(p.expiration) if activated else None,
        "time_created": iso(p.created),
        "time_modified": iso(modified),
        "product_uuid": "prod-" + product.key,
        "label_name": product.label,
        "pass_type": "RIDE_BASED" if product.uses else "TIME_BASED",
        "total_uses": product.uses,
        "remaining_uses": None if product.uses is None else product.uses - int(activated),
        "activation_count": int(activated),
        "version": number,
        "order_item": {"price": product.price_cents / 100, "tax_rate": 0.0825, "quantity": 1},
        "organization_uuid": ORGANIZATION_UUID,
        "barcode": {"format": "AZTEC", "payload": _BARCODES[int(p.uuid[:8], 16) % len(_BARCODES)]},
    }
    if corrected:
        body["support_note"] = f"corrected by support ({corrected})"
    return body


class Truth:
    """Every simulated rider's passes at Bytemark, queryable at any instant after ``keep_after``."""

    def __init__(self, riders: Iterable[Rider], *, keep_after: int) -> None:
        self.riders = {rider.user_id: rider for rider in riders}
        self._versions: dict[int, list[tuple[list[int], list[Version], SimPass]]] = {}
        self._breakpoints: dict[int, list[int]] = {}
        self._by_uuid = {uid: {p.uuid: p for p in rider.passes} for uid, rider in self.riders.items()}
        for user_id, rider in self.riders.items():
            timelines = []
            points: set[int] = set()
            for p in rider.passes:
                versions = pass_versions(p, keep_after=keep_after)
                timelines.append(([v.since for v in versions], versions, p))
                points.update(p.change_times())
            self._versions[user_id] = timelines
            self._breakpoints[user_id] = sorted(points)

    def lists_at(self, user_id: int, t: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Bytemark's v1 (oldest first) and v4 (newest first) lists of the user at ``t``."""
        current: list[tuple[str, dict[str, Any]]] = []
        history: list[tuple[int, dict[str, Any]]] = []
        for sinces, versions, _ in self._versions[user_id]:
            index = bisect.bisect_right(sinces, t) - 1
            if index < 0:
                continue
            version = versions[index]
            if version.body is None:
                continue
            if version.where == "v1":
                current.append((version.body["time_created"], version.body))
            else:
                history.append((version.since, version.body))
        current.sort(key=lambda item: item[0])
        history.sort(key=lambda item: -item[0])
        return [body for _, body in current], [body for _, body in history]

    def state_at(self, user_id: int, t: float) -> frozenset[tuple[str, str]]:
        """The ticket state at ``t``: (uuid, status) of every pass Bytemark lists then that is not expired.

        A pass is expired when Bytemark says EXPIRED or when its expiration has passed while Bytemark still
        says USABLE/USING (the seconds before Bytemark applies it). Otherwise Bytemark's status is the truth
        (a used-up ride stays USES_GONE until Bytemark moves it to the history)."""
        state = set()
        for sinces, versions, p in self._versions[user_id]:
            index = bisect.bisect_right(sinces, t) - 1
            body = versions[index].body if index >= 0 else None
            if body is None:
                continue
            status = body["status"]
            if status == "EXPIRED" or (status == "USING" and p.expiration is not None and t > p.expiration):
                continue
            state.add((p.uuid, status))
        return frozenset(state)

    def pass_of(self, user_id: int, uuid: str) -> SimPass:
        """The simulated pass ``uuid`` of the user."""
        return self._by_uuid[user_id][uuid]

    def breakpoints(self, user_id: int) -> list[int]:
        """Every instant a pass of the user changed (ascending)."""
        return self._breakpoints[user_id]


def response_bytes(bodies: Iterable[dict[str, Any]], memo: dict[int, int]) -> int:
    """Bytes of the JSON answer holding ``bodies`` (compact JSON; ~60 B of envelope per page)."""
    total, count = 0, 0
    for body in bodies:
        size = memo.get(id(body))
        if size is None:
            size = memo[id(body)] = len(json.dumps(body, separators=(",", ":")).encode())
        total += size + 1
        count += 1
    return total + 60 * max(1, math.ceil(count / PAGE_SIZE))
