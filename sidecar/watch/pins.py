"""Checkpoint pins (SPEC §2.8): hard-linked copies that rotation (`save_total_limit`) cannot delete.

`<state-dir>/pins/<model>/checkpoint-<N>/` where `<model>` is the exact basename of `--sft-root`:
eval scripts derive `results/<model_parent>/<checkpoint>` from the parent folder of `CKPT_LIST`,
so the pin's parent carries the same name and results land where the sidecar reads them.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from ..checkpoints import Checkpoint, parse_step

log = logging.getLogger(__name__)


class Pins:
    """The pins of one SFT root."""

    def __init__(self, state_dir: Path, sft_root_name: str) -> None:
        self.root = state_dir / "pins" / sft_root_name
        self._warned_copy = False

    def path(self, name: str) -> Path:
        return self.root / name

    def existing(self) -> list[Checkpoint]:
        """Complete pins on disk (a temp folder of an interrupted pin is not one)."""
        if not self.root.is_dir():
            return []
        out = []
        for entry in os.scandir(self.root):
            step = parse_step(entry.name)
            if step is not None and entry.is_dir(follow_symlinks=False):
                out.append(Checkpoint(step, entry.name, self.root))
        return sorted(out)

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
        tmp.mkdir(parents=True)
        src = ckpt.path
        for folder, dirs, files in os.walk(src):
            rel = Path(folder).relative_to(src)
            for d in dirs:
                (tmp / rel / d).mkdir(exist_ok=True)
            for f in files:
                self._link(Path(folder) / f, tmp / rel / f)
        os.replace(tmp, dest)
        return Checkpoint(ckpt.step, ckpt.name, self.root)

    def _link(self, src: Path, dest: Path) -> None:
        try:
            os.link(src, dest, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
            if not self._warned_copy:
                log.warning("cannot hard-link %s into %s (%s); copying instead (uses disk space)", src,
                            self.root, exc.strerror)
                self._warned_copy = True
            shutil.copy2(src, dest, follow_symlinks=False)

    def unpin(self, name: str) -> None:
        shutil.rmtree(self.path(name), ignore_errors=True)


def pin_disk_use(pins_root: Path) -> tuple[int, int]:
    """(number of pins, bytes they hold that no other link holds) under a pins/<model> folder."""
    if not pins_root.is_dir():
        return 0, 0
    count = sum(1 for e in pins_root.iterdir() if parse_step(e.name) is not None)
    own = 0
    for folder, _dirs, files in os.walk(pins_root):
        for f in files:
            try:
                st = os.lstat(os.path.join(folder, f))
            except OSError:
                continue
            if st.st_nlink == 1:  # the original is gone (or it was copied): the pin keeps it alive
                own += st.st_size
    return count, own
