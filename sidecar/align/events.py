"""What an uploader tells align while it uploads one framework, and what it asks.

align's coordinator (upload.py) sets `EVENTS` around each `uploader(fw, cfg, frame, mode)` call, in
this process or in the framework's upload process; the uploader reads it with `current()`. An
uploader called outside align (a benchmark's own loop) gets the default, which does nothing: it
just uploads. So the uploader keeps its four-argument contract.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path


class UploadEvents:
    """The default: no progress, no record, never stopping, one SwanLab run for the whole frame."""

    # rows per SwanLab run: the uploader finishes its run (SwanLab has then taken every point; in
    # cloud mode the server has them) and starts the next after this many rows; None: one run
    segment_rows: int | None = None

    def opened(self, run_dir: Path) -> bool:
        """A SwanLab run is open, its files in `run_dir`, nothing logged yet: False means do not
        log into it (finish it and stop)."""
        return True

    def advanced(self, rows: int) -> None:
        """SwanLab has taken the frame's first `rows` rows (a count, not an increment)."""

    def durable(self, rows: int, run_dir: Path) -> None:
        """The run in `run_dir` is finished: the frame's first `rows` rows are in SwanLab for good."""

    def stopping(self) -> bool:
        """True once the upload should stop at the next step boundary (Ctrl-C, SIGTERM, align gone)."""
        return False


EVENTS: ContextVar[UploadEvents] = ContextVar("align_upload_events", default=UploadEvents())


def current() -> UploadEvents:
    return EVENTS.get()
