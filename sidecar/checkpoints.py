"""Checkpoint naming: what a `checkpoint-<N>` folder is called and where it lives (shared by the
watch pipeline, pins and the identity of a single-checkpoint root)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


def parse_step(name: str) -> int | None:
    """`checkpoint-500` -> 500; any other name (`checkpoint-final`, `tmp-checkpoint-5`) -> None."""
    if not name.startswith("checkpoint-"):
        return None
    digits = name[11:]
    return int(digits) if digits.isascii() and digits.isdigit() else None


class Checkpoint(NamedTuple):
    step: int
    name: str
    parent: Path  # the folder holding it (absolute); the path is built only when needed

    @property
    def path(self) -> Path:
        """As seen under the root (a symlink stays a symlink), absolute."""
        return self.parent / self.name

    @property
    def parent_name(self) -> str:
        """`model_parent` of the results layout: the basename of the folder holding the checkpoint."""
        return self.parent.name
