"""Filesystem events (SPEC §2.10): watchdog's native observer only *wakes* the loop.

The tick decides what is ready; an event is just a hint that something under the SFT root
changed. Network filesystems deliver no events for writes made on other hosts, so the service
keeps a polling safety net in auto mode. This is the only module that imports watchdog.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


class _QuietStop(logging.Filter):
    """watchdog's inotify emitter logs an ERROR ("queue_events() called when the thread is
    inactive") when an event arrives while the observer is being stopped: a race inside its own
    shutdown that loses nothing (the sidecar is stopping or re-attaching the watch anyway). It is
    not the user's concern, so that line is dropped; every other watchdog message stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


_QUIET_STOP = _QuietStop()


class WatcherUnavailable(Exception):
    """The native observer cannot start here (no watchdog, no inotify, too many watches...)."""


class Watcher:
    """Calls `on_change(urgent)` from watchdog's thread whenever anything under `root` changes;
    `urgent` is True when the file changed is named in `urgent_names` (a ready marker), or when
    the root folder itself is created, deleted or renamed in its parent (a training restart that
    swaps its output folder: the watch on the old folder would never see the new one)."""

    def __init__(self, root: Path, on_change: Callable[[bool], None], urgent_names: tuple[str, ...] = ()) -> None:
        self.root = root
        self.on_change = on_change
        self.urgent_names = frozenset(urgent_names)
        self._observer = None

    def start(self) -> str:
        """Start the native observer; returns its name. Raises WatcherUnavailable with the reason."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except Exception as exc:  # noqa: BLE001 - any import failure means: no events here
            raise WatcherUnavailable(f"watchdog cannot be imported ({exc})") from exc
        inotify_log = logging.getLogger("watchdog.observers.inotify")
        if _QUIET_STOP not in inotify_log.filters:
            inotify_log.addFilter(_QUIET_STOP)

        on_change, urgent_names = self.on_change, self.urgent_names
        root_path = os.path.abspath(self.root)
        parent = os.path.dirname(root_path)

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # noqa: D102 - watchdog's hook
                if event.event_type not in ("opened", "closed_no_write"):
                    paths = (event.src_path, getattr(event, "dest_path", "") or "")
                    on_change(any(os.path.basename(os.fsdecode(p)) in urgent_names for p in paths if p))

        class _RootMoved(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # noqa: D102 - watchdog's hook
                paths = (event.src_path, getattr(event, "dest_path", "") or "")
                if any(os.fsdecode(p) == root_path for p in paths if p):
                    on_change(True)

        observer = Observer()
        try:
            observer.schedule(_Wake(), str(self.root), recursive=True)
            if parent != root_path:
                try:
                    observer.schedule(_RootMoved(), parent, recursive=False)
                except OSError as exc:  # the polling safety net still notices a swapped root
                    log.debug("cannot watch %s for the root being replaced: %s", parent, exc)
            observer.start()
        except Exception as exc:  # noqa: BLE001 - e.g. OSError: inotify watch limit reached
            try:
                observer.stop()
            except Exception:  # noqa: BLE001
                pass
            raise WatcherUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self._observer = observer
        return type(observer).__name__

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
