"""Time, injected: the service reads the clock and waits through this, so tests can use a fake one."""

from __future__ import annotations

import threading
import time


class SystemClock:
    """Wall time (for records and backoff across restarts) and a monotonic clock (for readiness)."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait until `event` is set or `timeout` seconds passed (None: no limit); whether it was set."""
        return event.wait(timeout)
