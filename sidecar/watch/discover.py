"""Discovery: which `checkpoint-<N>` folders exist under the SFT root (SPEC §2.1).

A root whose folder is unchanged since a trusted listing is not listed again: a folder's mtime
changes whenever an entry is created, removed or renamed in it (NFS clients judge their own
listing caches by it). A listing is trusted only when the folder's mtime was at least
RACY_SECONDS old at the time (on a filesystem with coarse timestamps an entry made in the same
second after the listing would not change it), and every root is listed again at least every
RELIST_SECONDS whatever its mtime says (a server clock far behind ours).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..checkpoints import Checkpoint, parse_step

log = logging.getLogger(__name__)

RACY_SECONDS = 2.0
RELIST_SECONDS = 300.0


_MTIME_RELIABLE: dict[int, bool] = {}  # st_dev -> whether its folders' mtimes follow their entries


def mtime_reliable(dev: int) -> bool:
    """False for FUSE filesystems (gcsfuse, s3fs, ...: object stores often report one fixed mtime
    for every folder): their folders are listed on every pass. From /proc/self/mountinfo."""
    if dev not in _MTIME_RELIABLE:
        wanted = f"{os.major(dev)}:{os.minor(dev)}"
        fstype = ""
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
                for line in mounts:
                    fields = line.split()
                    if len(fields) > 2 and fields[2] == wanted and " - " in line:
                        fstype = line.split(" - ", 1)[1].split()[0]
        except OSError:
            pass
        _MTIME_RELIABLE[dev] = not (fstype == "fuse" or fstype.startswith("fuse."))
    return _MTIME_RELIABLE[dev]


class Stamps:
    """Which folders are unchanged since a trusted listing (their (dev, ino, mtime) then).

    A folder whose entries changed while its mtime stayed the same (found by the relisting every
    RELIST_SECONDS) is never trusted again: it is listed on every pass, and that is said once."""

    def __init__(self) -> None:
        self._stamps: dict[object, tuple[tuple, float]] = {}  # key -> (stamp, monotonic relist deadline)
        self._blind: set = set()  # folders whose mtime was seen not to follow their entries

    def unchanged(self, key, st: os.stat_result) -> bool:
        seen = self._stamps.get(key)
        return seen is not None and seen[0] == _stamp(st) and time.monotonic() < seen[1]

    def listed(self, key, st: os.stat_result, trust: bool = True, changed: bool = False) -> None:
        """The folder was just listed (as it was at `st`); trusted unless its mtime is too recent,
        it is on a filesystem whose mtimes cannot be trusted, or (`changed`: the listing differs
        from the one before) its mtime stayed the same while its entries changed."""
        seen = self._stamps.get(key)
        if changed and seen is not None and seen[0] == _stamp(st) and key not in self._blind and _still(key, st):
            self._blind.add(key)
            log.warning("%s: entries changed but the folder's modification time did not (a FUSE or object-store "
                        "filesystem?); it is listed again on every pass from now on", key)
        if trust and key not in self._blind and mtime_reliable(st.st_dev) \
                and time.time_ns() - st.st_mtime_ns >= RACY_SECONDS * 1e9:
            self._stamps[key] = (_stamp(st), time.monotonic() + RELIST_SECONDS)
        else:
            self._stamps.pop(key, None)


def _stamp(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def _still(path, st: os.stat_result) -> bool:
    """The folder's stamp is still `st`'s (an entry made between the stat and the listing moved it)."""
    try:
        return _stamp(os.stat(path)) == _stamp(st)
    except OSError:
        return False


class RootMissing(Exception):
    """The SFT root is gone or unreadable at scan time (it may come back)."""


class Discoverer:
    """Lists checkpoints under one root; warns once per symlink pointing outside the root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._warned: set[str] = set()
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the root at the last scan
        self._last_names: set[str] | None = None  # the checkpoint folders the last scan listed ...
        self._last: list[Checkpoint] = []  # ... and what they parsed to
        self._last_entries: list[str] | None = None  # the checkpoint folders at the last scan, as listed
        self._stamps = Stamps()
        self.unchanged = False  # the last scan found the same checkpoints as the one before

    def scan(self) -> list[Checkpoint]:
        """Checkpoints sorted by step. Raises RootMissing if the root cannot be listed."""
        root = self.root
        step = parse_step(root.name)
        if step is not None:
            if not root.is_dir():
                raise RootMissing(str(root))
            return [Checkpoint(step, root.name, root.parent)]
        self.unchanged = False
        try:
            st = os.stat(root)
            if self._stamps.unchanged(root, st):
                self.unchanged = True
                return list(self._last)
            # Folder or symlink comes with the listing (d_type) on local filesystems: no stat per entry.
            folders: list[str] = []
            links: list[str] = []
            with os.scandir(root) as listing:
                for entry in listing:
                    name = entry.name
                    if name.startswith("checkpoint-"):
                        if entry.is_dir(follow_symlinks=False):
                            folders.append(name)
                        elif entry.is_symlink():
                            links.append(name)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            raise RootMissing(f"{root}: {exc.strerror or exc}") from exc
        if self.identity != (st.st_dev, st.st_ino):  # a new (or replaced) root: nothing carries over
            self.identity = (st.st_dev, st.st_ino)
            self._last_names, self._last_entries = None, None
        same = folders == self._last_entries
        self._stamps.listed(root, st, trust=not links, changed=not same and self._last_entries is not None)
        if not links and same:  # (symlinks are always checked again)
            self.unchanged = True
            return list(self._last)  # the same folders as last time
        self._last_entries = folders
        names = set(folders)
        for name in links:
            if self._symlink_inside(os.path.join(root, name), name):
                names.add(name)
        if names != self._last_names:  # parse and sort only when the folder list changed
            self._last_names = names
            self._last = self._checkpoints(names)
        return list(self._last)

    def _checkpoints(self, names: set[str]) -> list[Checkpoint]:
        by_step: dict[int, str] = {}
        for name in names:
            step = parse_step(name)
            if step is None:
                continue
            other = by_step.get(step)
            if other is not None:
                name = self._duplicate(step, other, name)
            by_step[step] = name
        return [Checkpoint(step, by_step[step], self.root) for step in sorted(by_step)]

    def _duplicate(self, step: int, first: str, second: str) -> str:
        """`checkpoint-5` and `checkpoint-05` name one step: keep the first by name, warn once."""
        keep = min(first, second)
        if f"dup-{step}" not in self._warned:
            self._warned.add(f"dup-{step}")
            log.warning("%s and %s both name step %d; using %s", first, second, step, keep)
        return keep

    def _symlink_inside(self, path: str, name: str) -> bool:
        target = Path(os.path.realpath(path))
        real_root = Path(os.path.realpath(self.root))
        inside = target != real_root and real_root in target.parents and target.is_dir()
        if not inside and name not in self._warned:
            self._warned.add(name)
            log.warning("ignoring %s: it is a symlink to %s, which is not a folder inside %s", path, target, self.root)
        return inside
