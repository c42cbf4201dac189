"""Readiness: is a checkpoint completely written? (SPEC §2.2)

A checkpoint is ready when it is non-empty, its shard indexes name only existing shards, and
either the ready marker exists in it or its recursive fingerprint has been still for the quiet
period on the sidecar's own monotonic clock. Only checkpoints not yet ready are walked.

File mtimes are compared with the wall clock in one case only, and never decide alone: a
checkpoint already there when the sidecar started whose newest file is older than the quiet
period (a restart over finished checkpoints) is ready after one short confirmation interval
in which its fingerprint did not change. A file server whose clock is behind (or `cp -a`,
`rsync -a`, `tar x`) makes files still being written look old, so a folder that appears while
the sidecar runs always waits the full quiet period.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..files import FileProblem, read_capped

_INDEX_SUFFIXES = (".safetensors.index.json", "pytorch_model.bin.index.json")
CONFIRM_MAX_SECONDS = 2.0  # the confirmation interval: a quarter of the quiet period, at most this
INDEX_MAX_BYTES = 16 * 1024 * 1024  # a shard index is ~100 KB; a bigger one is not read


@dataclass(frozen=True)
class FolderWalk:
    """One walk of a checkpoint folder."""

    fingerprint: tuple  # sorted (relative path, size, mtime_ns)
    newest_mtime: float  # seconds since the epoch, 0.0 if empty
    indexes: tuple  # relative paths of shard index files


def walk(folder: Path) -> FolderWalk | None:
    """Walk `folder` recursively; None if it vanished. Unreadable entries count as changing."""
    entries: list[tuple[str, int, int]] = []
    indexes: list[str] = []
    newest = 0
    stack = [(str(folder), "")]
    if not folder.is_dir():
        return None
    while stack:
        path, rel = stack.pop()
        try:
            with os.scandir(path) as it:
                for entry in it:
                    name = f"{rel}{entry.name}"
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((entry.path, f"{name}/"))
                            continue
                        st = entry.stat()
                    except OSError:
                        entries.append((name, -1, -1))
                        continue
                    entries.append((name, st.st_size, st.st_mtime_ns))
                    newest = max(newest, st.st_mtime_ns)
                    if name.endswith(_INDEX_SUFFIXES):
                        indexes.append(name)
        except FileNotFoundError:
            if path == str(folder):
                return None
            entries.append((rel, -1, -1))
        except OSError:
            entries.append((rel, -1, -1))
    entries.sort()
    return FolderWalk(tuple(entries), newest / 1e9, tuple(sorted(indexes)))


def parse_shard_index(text: str) -> set[str] | None:
    """Shard file names listed by a HF `*.index.json` (`weight_map` values); None if unparseable."""
    try:
        data = json.loads(text)
        weight_map = data["weight_map"]
        return {str(v) for v in weight_map.values()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def missing_shards(folder: Path, snap: FolderWalk) -> list[str]:
    """Shards named by the folder's index files that do not exist (an unreadable index counts)."""
    present = {name for name, _, _ in snap.fingerprint}
    missing: list[str] = []
    for index in snap.indexes:
        try:
            shards = parse_shard_index(read_capped(folder / index, INDEX_MAX_BYTES))
        except (OSError, FileProblem):
            shards = None
        if shards is None:
            missing.append(f"{index} (unreadable)")
            continue
        base = index.rsplit("/", 1)[0] + "/" if "/" in index else ""
        missing.extend(sorted(s for s in shards if f"{base}{s}" not in present))
    return missing


@dataclass
class _Watch:
    fingerprint: tuple
    still_since: float  # monotonic time the current fingerprint was first seen
    confirm: bool = False  # settled before the sidecar started: one confirmation interval suffices


class ReadinessTracker:
    """Remembers fingerprints of not-yet-ready checkpoints between ticks, the steps found ready
    (never walked again), and when the loop must wake for a quiet period to end.

    `check` returns (ready, reason, wake_at): wake_at is the monotonic time the quiet period
    ends for a checkpoint that is still settling, so the loop can wake exactly then.
    """

    def __init__(self, quiet_seconds: float, marker: str | None) -> None:
        self.quiet = quiet_seconds
        self.marker = marker
        self._watch: dict[int, _Watch] = {}
        self.ready: set[int] = set()  # steps found ready: never walked again
        self.deadlines: list[float] = []  # this pass: when quiet periods end (the loop wakes then)
        self.confirm_deadlines: list[float] = []  # ... of folders there at start-up, confirming they are still

    def forget(self, step: int) -> None:
        self._watch.pop(step, None)
        self.ready.discard(step)

    def new_pass(self) -> None:
        """A new walk of the root begins (or the root is gone): no quiet period is pending."""
        self.deadlines, self.confirm_deadlines = [], []

    def is_ready(self, step: int, folder: Path, now_mono: float, now_wall: float,
                 at_startup: bool = False) -> tuple[bool, str]:
        """Whether the checkpoint is ready (walking it only if not known ready yet); a folder still
        settling adds the end of its quiet period to this pass's deadlines."""
        if step in self.ready:
            return True, "found ready before"
        ok, reason, wake_at = self.check(step, folder, now_mono, now_wall, at_startup)
        if ok:
            self.ready.add(step)
        elif wake_at is not None:
            self.deadlines.append(wake_at)
            if reason == "confirming":
                self.confirm_deadlines.append(wake_at)
        return ok, reason

    @property
    def confirm_seconds(self) -> float:
        return min(self.quiet / 4, CONFIRM_MAX_SECONDS)

    def check(self, step: int, folder: Path, now_mono: float, now_wall: float,
              at_startup: bool = False) -> tuple[bool, str, float | None]:
        """`at_startup`: the folder was there when the sidecar started (its first scan)."""
        snap = walk(folder)
        if snap is None:
            self._watch.pop(step, None)
            return False, "vanished", None
        if not snap.fingerprint:
            self._watch.pop(step, None)
            return False, "empty", None
        missing = missing_shards(folder, snap)
        if missing:
            self._watch[step] = _Watch(snap.fingerprint, now_mono)
            return False, f"waiting for shards: {', '.join(missing[:3])}", None
        if self.marker:
            if (folder / self.marker).exists():
                self._watch.pop(step, None)
                return True, "marker", None
            return False, f"waiting for marker {self.marker}", None
        seen = self._watch.get(step)
        if seen is None:
            if at_startup and now_wall - snap.newest_mtime >= self.quiet:
                self._watch[step] = _Watch(snap.fingerprint, now_mono, confirm=True)
                return False, "confirming", now_mono + self.confirm_seconds
            self._watch[step] = _Watch(snap.fingerprint, now_mono)
            return False, "settling", now_mono + self.quiet
        if seen.fingerprint != snap.fingerprint:
            self._watch[step] = _Watch(snap.fingerprint, now_mono)  # written to: the full quiet period
            return False, "still being written", now_mono + self.quiet
        needed = self.confirm_seconds if seen.confirm else self.quiet
        if now_mono - seen.still_since >= needed:
            self._watch.pop(step, None)
            return True, ("settled before the sidecar started (unchanged while confirming)" if seen.confirm
                          else "quiet period passed"), None
        return False, "confirming" if seen.confirm else "settling", seen.still_since + needed
