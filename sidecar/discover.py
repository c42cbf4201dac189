"""Discovery: which `checkpoint-<N>` folders exist under the SFT root (SPEC §2.1)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_STEP = re.compile(r"checkpoint-(\d+)")


def parse_step(name: str) -> int | None:
    """`checkpoint-500` -> 500; any other name (`checkpoint-final`, `tmp-checkpoint-5`) -> None."""
    match = _STEP.fullmatch(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Checkpoint:
    step: int
    name: str
    path: Path  # as seen under the root (a symlink stays a symlink), absolute

    @property
    def parent_name(self) -> str:
        """`model_parent` of the results layout: the basename of the folder holding the checkpoint."""
        return self.path.parent.name


class RootMissing(Exception):
    """The SFT root is gone or unreadable at scan time (it may come back)."""


class Discoverer:
    """Lists checkpoints under one root; warns once per symlink pointing outside the root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._warned: set[str] = set()

    def scan(self) -> list[Checkpoint]:
        """Checkpoints sorted by step. Raises RootMissing if the root cannot be listed."""
        root = self.root
        step = parse_step(root.name)
        if step is not None:
            if not root.is_dir():
                raise RootMissing(str(root))
            return [Checkpoint(step, root.name, root)]
        found: list[Checkpoint] = []
        try:
            with os.scandir(root) as entries:
                for entry in entries:
                    step = parse_step(entry.name)
                    if step is None:
                        continue
                    try:
                        if entry.is_symlink():
                            if not self._symlink_inside(entry):
                                continue
                        elif not entry.is_dir(follow_symlinks=False):
                            continue
                    except OSError:
                        continue
                    found.append(Checkpoint(step, entry.name, root / entry.name))
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            raise RootMissing(f"{root}: {exc.strerror or exc}") from exc
        found.sort(key=lambda c: c.step)
        return found

    def _symlink_inside(self, entry: os.DirEntry) -> bool:
        target = Path(os.path.realpath(entry.path))
        real_root = Path(os.path.realpath(self.root))
        inside = target != real_root and real_root in target.parents and target.is_dir()
        if not inside and entry.name not in self._warned:
            self._warned.add(entry.name)
            log.warning(
                "ignoring %s: it is a symlink to %s, which is not a folder inside %s",
                entry.path, target, self.root,
            )
        return inside
