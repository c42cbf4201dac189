"""Signals reach the service on a thread of their own.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds the internal lock of a `threading.Event` it is waiting on; a handler that sets that
Event then waits for a lock its own thread holds, for ever (the service's loop waits on Events
that a stop must set). So the handler only writes the signal's number to a pipe (no lock is
taken), and a relay thread reads it and runs the real handler.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable


def relay_signals(signums: tuple[int, ...], handler: Callable[[int], None]) -> None:
    """From now on, each of `signums` runs `handler(signum)` on the relay thread (main thread only)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def note(signum, _frame) -> None:
        try:
            os.write(write_end, bytes([signum]))
        except OSError:  # the pipe is full: a stop is already on its way
            pass

    for signum in signums:
        signal.signal(signum, note)

    def relay() -> None:
        while True:
            for signum in os.read(read_end, 64):
                handler(signum)

    threading.Thread(target=relay, name="signal-relay", daemon=True).start()
