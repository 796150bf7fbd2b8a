"""SystemClock: the Clock port on the real wall clock."""

from __future__ import annotations

import time


class SystemClock:
    """Clock backed by ``time.time`` and ``time.sleep``."""

    def now(self) -> float:
        """Unix time in seconds."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` (nothing for zero or less)."""
        if seconds > 0:
            time.sleep(seconds)
