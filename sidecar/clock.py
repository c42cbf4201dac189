"""Time, injected: the service reads the clock through this so tests can use a fake one."""

from __future__ import annotations

import time


class SystemClock:
    """Wall time (for records and backoff across restarts) and a monotonic clock (for readiness)."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
