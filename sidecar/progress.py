"""Progress of long work (a backfill, an align fetch or upload): N/M with an ETA.

On a terminal it is a tqdm bar on stderr, and log lines printed meanwhile go above the bar instead
of through it. Anywhere else (a log file, the manager, cron) it is one log line every `every`
seconds, so a log shows the work moving without a line per item. `close()` gives the summary.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack


def on_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """`label`: what is counted ("backfill", "verl upload"); `total`: how many (may grow).

    `bar`: draw a bar (default: when stderr is a terminal). `log`: the logger of the periodic lines.
    `clock`: monotonic seconds (a fake in tests)."""

    def __init__(self, label: str, total: int, log: logging.Logger, every: float = 60.0,
                 bar: bool | None = None, clock=time.monotonic, position: int | None = None,
                 unit: str = "checkpoint"):
        self.label, self.total, self.log, self.every, self.unit = label, int(total), log, every, unit
        self.clock = clock
        self.done = 0
        self.timed = 0  # items that took time (an eval), as against instant ones (a reused result)
        self.started = clock()
        self._last_line = self.started
        self._stack = ExitStack()
        self._bar = None
        if bar if bar is not None else on_terminal():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._stack.enter_context(logging_redirect_tqdm())
            self._bar = tqdm(total=self.total, desc=label, unit=unit, file=sys.stderr, position=position,
                             dynamic_ncols=True, mininterval=0.5, miniters=1, leave=True)
            # miniters=1: tqdm otherwise learns from a burst of instant items (reused results) to
            # skip the next ~25 updates, and the bar stands still through the evals after them

    def eta(self) -> float | None:
        """Seconds left, at the pace of the items that took time (instant ones would make a backfill
        of mostly reused results promise an end long before its evals are done)."""
        if self.total <= self.done:
            return 0.0
        if self.timed <= 0:
            return None
        return (self.clock() - self.started) / self.timed * (self.total - self.done)

    def line(self) -> str:
        percent = 100 * self.done // self.total if self.total else 100  # 4989/5000 is 99%, not 100%
        return (f"{self.label}: {self.done}/{self.total} {self.unit}s ({percent}%), "
                f"{eta_text(self.clock() - self.started)} so far, ETA {eta_text(self.eta())}")

    def grow(self, total: int) -> None:
        """More work became known (e.g. new checkpoints during a backfill)."""
        if total > self.total:
            self.total = int(total)
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()

    def advance(self, n: int = 1, timed: bool = True) -> None:
        """`n` more done; `timed=False`: they took no time of their own (a reused result)."""
        self.done += n
        if timed:
            self.timed += n
        if self._bar is not None:
            if n:
                self._bar.update(n)
            else:  # a nudge: redraw, so the clock and the ETA move on while a long item runs
                self._bar.refresh()
            return
        now = self.clock()
        if now - self._last_line >= self.every and self.done < self.total:
            self._last_line = now
            self.log.info("%s", self.line())

    def close(self) -> str:
        """Stop the bar; the summary ("backfill: 1200/1200 checkpoints in 3m05s")."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._stack.close()
        return f"{self.label}: {self.done}/{self.total} {self.unit}s in {eta_text(self.clock() - self.started)}"
