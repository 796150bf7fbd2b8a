"""One process of the cross-process race (tests/integration/test_races.py): its own ``build_services``.

The process takes tasks from the parent (an SQS-style message for a change the parent just made at
Bytemark: a purchase or an activation) and, between tasks, does what riders do: opens the app
(``check_with_ttl``), pulls to refresh (``forced_check``), and syncs (``check``, ``sync``). A task whose
message the handler reported as failed goes back on the queue (SQS would redeliver it). It returns how
each operation ended; an exception other than the contract's transient ones is returned as ``escaped``.
"""

from __future__ import annotations

import functools
import json
import queue
import random
import time
import traceback
from collections import Counter
from typing import Any

from bytemark_cache.bootstrap import build_services
from bytemark_cache.config import Settings
from bytemark_cache.domain.deadline import Deadline
from bytemark_cache.errors import ConcurrentModification, RateLimited, SyncInProgress

EXPECTED = (SyncInProgress, RateLimited, ConcurrentModification)
"""What a caller may be told under contention (all transient); anything else is a failure of the test."""

STOP = "stop"


def run(env: dict[str, str], users: list[int], tasks: Any, results: Any, done: Any, seed: int) -> None:
    """The worker's main: build the services, say ready, work until the STOP task, send the counts.

    ``done`` is a shared counter of the operations all workers finished (the parent runs until enough)."""
    from tests.reliability.rig import call_updates, sqs_record

    rng = random.Random(seed)
    settings = Settings.from_env(env)
    services = build_services(settings, check_indexes=False)
    tickets = services.tickets
    counts: Counter[str] = Counter()
    escaped: list[str] = []
    results.put(("ready", seed))

    def deadline() -> Deadline:
        return Deadline.after(time.time(), 20)

    def message(task: tuple[int, str, str | None]) -> None:
        user_id, reason, pass_uuid = task
        body: dict[str, Any] = {"user_id": user_id, "reason": reason}
        if pass_uuid is not None:
            body["pass_uuid"] = pass_uuid
        response = call_updates(services, {"Records": [sqs_record(json.dumps(body))]}, 30_000)
        if response["batchItemFailures"]:
            counts["sqs_retried"] += 1
            tasks.put(task)
        else:
            counts[f"sqs_{reason}"] += 1

    def rider() -> None:
        user_id = rng.choice(users)
        operation = rng.choice(("open", "open", "refresh", "check", "sync"))
        if operation == "open":
            result = tickets.check_with_ttl(user_id, deadline=deadline(), refresh_behind=False)
        elif operation == "refresh":
            result = tickets.forced_check(
                user_id, deadline=deadline(), min_interval_seconds=settings.forced_sync_interval_seconds
            )
        elif operation == "check":
            result = tickets.check(user_id, deadline=deadline())
        else:
            result = tickets.sync(user_id, deadline=deadline(), reason="manual")
        counts[f"{operation}_{result.source}"] += 1

    # Each round: the next message if there is one, then what a rider does.
    while True:
        try:
            task = tasks.get(timeout=0.002)
        except queue.Empty:
            task = None
        if task == STOP:
            break
        operations = [rider] if task is None else [functools.partial(message, task), rider]
        for operation in operations:
            with done.get_lock():
                done.value += 1
            try:
                operation()
            except EXPECTED as exc:
                counts[f"told_{type(exc).__name__}"] += 1
            except Exception:
                escaped.append(traceback.format_exc(limit=8))
    results.put(("done", {"counts": dict(counts), "escaped": escaped}))
