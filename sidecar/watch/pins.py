"""Checkpoint pins (SPEC §2.8): hard-linked copies that rotation (`save_total_limit`) cannot delete.

`<state-dir>/pins/<model>/checkpoint-<N>/` where `<model>` is the exact basename of `--sft-root`:
eval scripts derive `results/<model_parent>/<checkpoint>` from the parent folder of `CKPT_LIST`,
so the pin's parent carries the same name and results land where the sidecar reads them.

The hard-link tree (`Linker`), the listing of checkpoint folders and the count of the bytes only
such a tree holds are shared with the kept best checkpoints (`keep_best`).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from ..checkpoints import Checkpoint, parse_step

log = logging.getLogger(__name__)

# a hard link is impossible here (another filesystem, a filesystem without links, too many links)
_CANNOT_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)


class Linker:
    """Hard-links file trees into `into`; where a link is impossible it copies, with one warning
    per linker. Sources are only read (a link adds a name to the trainer's file, never changes it)."""

    def __init__(self, into: Path) -> None:
        self.into = into
        self._warned_copy = False

    def link_tree(self, src: Path, dest: Path) -> None:
        """`dest` (created) gets every file of `src` as a hard link (a symlink stays a symlink, a
        symlinked folder too: nothing outside `src` is followed). Raises OSError (a full disk, `src`
        deleted meanwhile): a partial tree is never taken for a complete one."""
        if not src.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such checkpoint folder", str(src))
        dest.mkdir(parents=True)
        for folder, dirs, files in os.walk(src, onerror=_raise):
            here = Path(folder)
            rel = here.relative_to(src)
            for d in dirs:
                if (here / d).is_symlink():
                    self._link(here / d, dest / rel / d)
                else:
                    (dest / rel / d).mkdir(exist_ok=True)
            for f in files:
                self._link(here / f, dest / rel / f)

    def _link(self, src: Path, dest: Path) -> None:
        try:
            os.link(src, dest, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _CANNOT_LINK:
                raise
            if not self._warned_copy:
                log.warning("cannot hard-link %s into %s (%s); copying instead (uses disk space)", src,
                            self.into, exc.strerror)
                self._warned_copy = True
            shutil.copy2(src, dest, follow_symlinks=False)


def _raise(exc: OSError) -> None:
    raise exc


def checkpoint_folders(root: Path) -> list[Checkpoint]:
    """The `checkpoint-<N>` folders directly in `root` (not symlinks; temp folders are named otherwise)."""
    if not root.is_dir():
        return []
    out = []
    for entry in os.scandir(root):
        step = parse_step(entry.name)
        if step is not None and entry.is_dir(follow_symlinks=False):
            out.append(Checkpoint(step, entry.name, root))
    return sorted(out)


def held_only_by(folder: Path) -> int:
    """Bytes of the files under `folder` that no name outside it holds (every hard link of the file
    is in `folder`): what deleting `folder` would free. Hard links to a trainer's checkpoint count
    nothing until the trainer deletes its own."""
    seen: dict[tuple[int, int], list[int]] = {}  # inode -> [links seen here, links in all, size]
    for parent, _dirs, files in os.walk(folder):
        for f in files:
            try:
                st = os.lstat(os.path.join(parent, f))
            except OSError:
                continue
            entry = seen.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink, st.st_size])
            entry[0] += 1
    return sum(size for here, links, size in seen.values() if here >= links)


class Pins:
    """The pins of one SFT root."""

    def __init__(self, state_dir: Path, sft_root_name: str) -> None:
        self.root = state_dir / "pins" / sft_root_name
        self.linker = Linker(self.root)

    def path(self, name: str) -> Path:
        return self.root / name

    def existing(self) -> list[Checkpoint]:
        """Complete pins on disk (a temp folder of an interrupted pin is not one)."""
        return checkpoint_folders(self.root)

    def clean_temp(self) -> None:
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith(".pin-"):
                    shutil.rmtree(entry, ignore_errors=True)

    def pin(self, ckpt: Checkpoint) -> Checkpoint:
        """Hard-link the checkpoint's file tree into its pin (a copy, with one warning, where links
        fail); returns the pinned checkpoint. An existing pin is reused."""
        dest = self.path(ckpt.name)
        if dest.is_dir():
            return Checkpoint(ckpt.step, ckpt.name, self.root)
        tmp = self.root / f".pin-{ckpt.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.linker.link_tree(ckpt.path, tmp)
            os.replace(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Checkpoint(ckpt.step, ckpt.name, self.root)

    def unpin(self, name: str) -> None:
        shutil.rmtree(self.path(name), ignore_errors=True)


def pin_disk_use(pins_root: Path) -> tuple[int, int]:
    """(number of pins, bytes they hold that no other link holds) under a pins/<model> folder."""
    if not pins_root.is_dir():
        return 0, 0
    count = sum(1 for e in pins_root.iterdir() if parse_step(e.name) is not None)
    return count, held_only_by(pins_root)
