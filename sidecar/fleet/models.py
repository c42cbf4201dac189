"""Which model folders the fleet watches: every direct subfolder of a `--models-root` that holds
`checkpoint-<N>` folders (a subfolder without any yet is looked at again when it changes), kept
by `--model-filter` globs. Roots and folders whose mtime is unchanged since a trusted listing are
not listed again (see `watch.discover`)."""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..checkpoints import parse_step
from ..watch.discover import Stamps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFolder:
    name: str  # the folder's name: what profiles match and status shows
    path: Path
    root: Path  # the --models-root it is in


class ModelFinder:
    """Lists the model folders under the roots; warns once per root that is itself a model folder."""

    def __init__(self, roots: tuple[Path, ...], filters: tuple[str, ...] = ()) -> None:
        self.roots = roots
        self.filters = filters
        self._stamps = Stamps()
        self._subfolders: dict[Path, list[str]] = {}  # root -> its subfolders at the last listing
        self._models: dict[Path, bool] = {}  # subfolder -> holds checkpoints (False: looked again when it changes)
        self._warned: set[Path] = set()
        self.identities: dict[Path, object] = {}  # root -> (st_dev, st_ino), or "missing"
        self.missing: set[Path] = set()

    def wanted(self, name: str) -> bool:
        return not name.startswith(".") and (not self.filters or any(fnmatch.fnmatchcase(name, g) for g in self.filters))

    def scan(self) -> dict[Path, ModelFolder]:
        """The model folders now, by path. A root that cannot be listed keeps none (see `missing`)."""
        found: dict[Path, ModelFolder] = {}
        self.missing = set()
        for root in self.roots:
            names = self._list_root(root)
            if names is None:
                if root not in self.missing:
                    self.missing.add(root)
                continue
            for name in names:
                path = root / name
                if self._holds_checkpoints(path):
                    found[path] = ModelFolder(name, path, root)
        return found

    def _list_root(self, root: Path) -> list[str] | None:
        try:
            st = os.stat(root)
            self.identities[root] = (st.st_dev, st.st_ino)
            if self._stamps.unchanged(root, st) and root in self._subfolders:
                return self._subfolders[root]
            names = []
            own = False
            with os.scandir(root) as listing:
                for entry in listing:
                    if parse_step(entry.name) is not None:
                        own = True
                    elif entry.is_dir() and self.wanted(entry.name):
                        names.append(entry.name)
        except OSError as exc:
            if self.identities.get(root) != "missing":
                log.warning("--models-root %s cannot be listed (%s); its models wait for it to come back",
                            root, exc.strerror or exc)
            self.identities[root] = "missing"
            return None
        if own and root not in self._warned:
            self._warned.add(root)
            log.warning("--models-root %s holds checkpoint folders itself: it is a model folder (watch it with "
                        "--sft-root, or give its parent as --models-root)", root)
        names.sort()
        self._stamps.listed(root, st, changed=root in self._subfolders and names != self._subfolders[root])
        self._subfolders[root] = names
        return self._subfolders[root]

    def _holds_checkpoints(self, path: Path) -> bool:
        """Known models stay models (their pipeline watches them); others are listed again when
        their folder changes."""
        if self._models.get(path):
            return True
        try:
            st = os.stat(path)
            if path in self._models and self._stamps.unchanged(path, st):
                return False
            with os.scandir(path) as listing:
                holds = any(parse_step(entry.name) is not None for entry in listing)
        except OSError:
            self._models.pop(path, None)
            return False
        self._stamps.listed(path, st, changed=path in self._models and holds != self._models[path])
        self._models[path] = holds
        return holds

    def forget(self, path: Path) -> None:
        """A model folder gone: if it comes back, it is looked at afresh."""
        self._models.pop(path, None)
