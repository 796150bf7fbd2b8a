"""Fires the back-fill schedules locally, as EventBridge Scheduler would (mode + a run id per firing).

The schedules and their intervals come from the built template (``due`` every 5 minutes, ``missing`` and
``prune`` daily); ``interval_seconds`` turns a schedule expression into the local period.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("local.scheduler")

_RATE_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
_DAILY_CRON = re.compile(r"cron\(\d+ \d+ [*?] \* [*?] \*\)")


def interval_seconds(expression: str) -> float:
    """The period of an EventBridge schedule expression: ``rate(N unit)`` exactly; a daily
    ``cron(M H * * ? *)`` as 24 h (locally it fires a day after the stack starts, not at that time of day)."""
    rate = re.fullmatch(r"rate\((\d+) (minute|hour|day)s?\)", expression.strip())
    if rate:
        return float(int(rate.group(1)) * _RATE_UNITS[rate.group(2)])
    if _DAILY_CRON.fullmatch(expression.strip()):
        return 86400.0
    raise ValueError(f"unsupported schedule expression for the local scheduler: {expression!r}")


def schedule_input(mode: str, at: datetime | None = None) -> dict[str, Any]:
    """The input the deployed schedule sends: run id = mode + scheduled time, so retries share it."""
    moment = (at or datetime.now(UTC)).replace(microsecond=0)
    return {"mode": mode, "cursor": None, "run_id": f"{mode}:{moment.isoformat().replace('+00:00', 'Z')}"}


class LocalScheduler:
    """Invokes the back-fill every ``interval`` seconds per mode (0 = never; fire by hand with ``fire``)."""

    def __init__(self, invoke: Callable[[dict[str, Any]], Any], intervals: dict[str, float]) -> None:
        self._invoke = invoke
        self._intervals = {mode: seconds for mode, seconds in intervals.items() if seconds > 0}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(mode, seconds), name=f"schedule-{mode}", daemon=True)
            for mode, seconds in self._intervals.items()
        ]

    def fire(self, mode: str) -> Any:
        """Run one scheduled back-fill now and return the function's summary."""
        event = schedule_input(mode)
        log.info("firing back-fill %s", event["run_id"])
        return self._invoke(event)

    def start(self) -> None:
        """Start the periodic firings."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop firing."""
        self._stop.set()

    def _run(self, mode: str, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.fire(mode)
            except Exception as exc:  # noqa: BLE001 — a failed firing is logged; the next one still runs
                log.error("scheduled back-fill %s failed: %s", mode, exc)
