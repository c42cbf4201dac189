"""Keeping the best checkpoints (`--keep-best N`): hard-linked copies of the N best evaluated
checkpoints by one metric, which the trainer's rotation (`save_total_limit`) cannot delete.

`<state-dir>/best/<sft-root name>/checkpoint-<N>/`, with a `best` symlink to the top one and an
`.owner.json` naming the configuration whose ranking they follow (two configurations of one SFT
root would delete each other's copies: a second one is refused). The ranking is a pure function
of the state's rows (`best_of`): the N best values of the metric, a tie kept by the earlier step
(as W&B's best_* summary); a row without the metric is not ranked. The keeper only makes the
folders match it, after each result (`Keeper.offer`; reused results at the end of the pass,
`Keeper.settle`) and at start (`Keeper.start`).

A copy is made in a temp folder and renamed into place, so a crash never leaves a half copy that
looks complete; a pin (--pin-checkpoints) is moved in instead of linked a second time. Nothing
under --sft-root is ever deleted or changed (a hard link adds a name to a file, nothing more).
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..checkpoints import Checkpoint, parse_step
from ..reporters.rows import metric_value
from ..errors import ConfigError
from .pins import Linker, checkpoint_folders

log = logging.getLogger(__name__)

RETRY_FAILED_SECONDS = 600.0  # a copy that failed (a full disk) is tried again this long after, while it ranks

OWNER = ".owner.json"
LINK = "best"
TEMP = ".tmp-keep-"  # temp folders and links: removed (or put back) at start


@dataclass(frozen=True)
class Ranked:
    step: int
    value: float


def values_of(rows: dict[int, dict], metric: str) -> Iterable[tuple[int, float]]:
    for step, row in rows.items():
        value = metric_value(row, metric)
        if value is not None:
            yield step, value


def best_of(values: Iterable[tuple[int, float]], n: int, lower_better: bool) -> list[Ranked]:
    """The `n` best (step, value) pairs, best first; of equal values the earlier step ranks higher."""
    sign = 1.0 if lower_better else -1.0
    return [Ranked(s, v) for s, v in heapq.nsmallest(n, values, key=lambda sv: (sign * sv[1], sv[0]))]


def parse_metric_setting(text) -> tuple[str, bool] | None:
    """The state's recorded `keep_best_metric` ("HR@10:max", "loss:min") -> (name, lower is better)."""
    if not isinstance(text, str) or not text:
        return None
    name, _, goal = text.rpartition(":")
    if goal in ("max", "min") and name:
        return name, goal == "min"
    return text, False


def read_owner(root: Path) -> dict | None:
    """The `.owner.json` of a best/<model> folder ({"model_config_key", "state_file"}), None when
    absent; raises ValueError when it is not readable as one."""
    try:
        data = json.loads((root / OWNER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("model_config_key"), str):
        raise ValueError("no model_config_key")
    return data


class Keeper:
    """The kept best checkpoints of one model configuration."""

    def __init__(self, state_dir: Path, sft_root: Path, n: int, metric: str, lower_better: bool,
                 owner_key: str, state_file: Path, movable: Path | None = None) -> None:
        """`movable`: the pins folder, whose checkpoints are moved in rather than linked."""
        self.root = state_dir / "best" / sft_root.name
        self.sft_root = sft_root
        self.n, self.metric, self.lower_better = n, metric, lower_better
        self.owner_key, self.state_file = owner_key, state_file
        self.movable = movable
        self.linker = Linker(self.root)
        self._entered: list[str] = []  # "kept checkpoint-300 (HR@10=0.41, best 1 of 3)" since last asked
        self.top: list[Ranked] = []
        self._names: dict[int, str] = {}  # the checkpoint folder name of each ranked step
        self._unsettled = False  # offers deferred to `settle`
        # in the top but not kept: step -> monotonic time to try again (no folder: at the next start;
        # a copy that failed, a full disk: after RETRY_FAILED_SECONDS)
        self._skip: dict[int, float] = {}

    # ----- start ------------------------------------------------------------------------------
    def start(self, rows: dict[int, dict], busy: set[int] = frozenset()) -> list[Checkpoint]:
        """Check that the folder is this configuration's, settle what a crash left, rank the
        state's rows and make the folder match; returns the kept copies on disk. Raises
        ConfigError when another configuration (or not this sidecar) keeps checkpoints there."""
        self._check_owner()
        self.top = best_of(values_of(rows, self.metric), self.n, self.lower_better)
        self._names.update((r.step, str(rows[r.step].get("checkpoint_name") or f"checkpoint-{r.step}"))
                           for r in self.top)
        try:
            self._clean_temp()
            kept = self.existing()
            if rows and not self.top:
                log.warning("--keep-best-metric %s: no row has this metric yet; nothing is kept until one does%s",
                            self.metric, " (the kept copies there stay as they are)" if kept else "")
            unranked = [c.name for c in kept if c.step not in rows]
            if unranked:
                log.info("%d kept checkpoint(s) in %s have no result in the state (%s); they are ranked again once "
                         "evaluated", len(unranked), self.root, ", ".join(unranked[:5]))
            self._reconcile(None, self._ranked_in(rows), set(busy))
            kept = self.existing()
        except OSError as exc:  # e.g. a folder there that cannot be read: the evaluations go on
            log.warning("keeping the best checkpoints in %s: %s", self.root, exc)
            kept = []
        for line in self.entered():
            log.info("%s", line)
        return kept

    def _check_owner(self) -> None:
        try:
            owner = read_owner(self.root)
        except ValueError as exc:
            raise ConfigError(f"--keep-best: {self.root / OWNER} is not readable ({exc}); move {self.root} away "
                              f"to keep the best checkpoints there") from None
        if owner is None:
            if self.existing():
                raise ConfigError(f"--keep-best: {self.root} holds checkpoint folders this sidecar did not keep "
                                  f"(no {OWNER}); move them away to keep the best checkpoints there")
        elif owner["model_config_key"] != self.owner_key:
            raise ConfigError(f"--keep-best: {self.root} keeps the best checkpoints of another configuration of "
                              f"this SFT root (state file {owner.get('state_file')}); two configurations cannot "
                              f"share it: move that folder away to keep this configuration's best there")

    def _clean_temp(self) -> None:
        """Temp folders of an interrupted copy go; a pin moved in (complete by construction) and a
        kept copy set aside while it was being replaced are put in place when nothing took it."""
        if not self.root.is_dir():
            return
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.name.startswith(TEMP):
                continue
            kind, _, rest = entry.name[len(TEMP):].partition("-")
            name = rest.partition("-")[2]  # <pid>-<checkpoint name>
            dest = self.root / name
            if kind in ("moved", "old") and parse_step(name) is not None and not os.path.lexists(dest):
                os.rename(entry.path, dest)
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)

    # ----- what is kept -----------------------------------------------------------------------
    def existing(self) -> list[Checkpoint]:
        return checkpoint_folders(self.root)

    def with_kept(self, found: list[Checkpoint]) -> list[Checkpoint]:
        """`found` and the kept copies of steps not in it (the trainer deleted the original): a
        re-evaluation (--force-eval-steps) or a state that lost their rows evaluates the copy."""
        steps = {c.step for c in found}
        extra = [c for c in self.existing() if c.step not in steps]
        return sorted(found + extra) if extra else found

    # ----- after each result ------------------------------------------------------------------
    def offer(self, ckpt: Checkpoint, row: dict, rows: dict[int, dict], busy: set[int],
              defer: bool = False) -> list[str]:
        """`row` is the new result of `ckpt` (`rows`: the state's rows before it): rank it and make
        the folder match, keeping `ckpt` from where it is now (a pin is moved in). Returns a line
        for each checkpoint that entered the kept set (the caller logs them after its result).
        `defer`: only rank it, the folder follows at `settle` (`ckpt` stays where it is: a reused
        result under --sft-root; in a backfill most would enter and leave the top within one pass).
        Never raises: a failure is one warning and the evaluation goes on."""
        step, value = ckpt.step, metric_value(row, self.metric)
        self._names[step] = ckpt.name
        if step in rows or any(r.step == step for r in self.top):  # a re-evaluation: its old value goes
            pairs = ((s, v) for s, v in values_of(rows, self.metric) if s != step)
            self.top = best_of([*pairs, *([(step, value)] if value is not None else [])], self.n, self.lower_better)
        elif value is not None:
            self.top = best_of([(r.step, r.value) for r in self.top] + [(step, value)], self.n, self.lower_better)
        if defer:
            self._unsettled = True
            return []
        self._unsettled = False
        try:
            self._reconcile(ckpt, self._ranked_in({**rows, step: row}), busy - {step})
        except OSError as exc:
            log.warning("keeping the best checkpoints in %s: %s", self.root, exc)
        return self.entered()

    def settle(self, rows: dict[int, dict], busy: set[int]) -> list[str]:
        """Make the folder match the ranking after deferred offers (`rows`: the state's, with
        them); returns the lines of the checkpoints that entered the kept set."""
        if not self._unsettled:
            return []
        self._unsettled = False
        try:
            self._reconcile(None, self._ranked_in(rows), busy)
        except OSError as exc:
            log.warning("keeping the best checkpoints in %s: %s", self.root, exc)
        return self.entered()

    def entered(self) -> list[str]:
        lines, self._entered = self._entered, []
        return lines

    def _ranked_in(self, rows: dict[int, dict]):
        """Whether a step's row has a value of the metric: only then can it be ranked out (a copy
        whose row lacks it, a re-evaluation that wrote no such metric, a --keep-best-metric only
        newer rows have, is kept: it may be the only copy left of that checkpoint)."""
        return lambda step: step in rows and metric_value(rows[step], self.metric) is not None

    def _reconcile(self, current: Checkpoint | None, has_row, busy: set[int]) -> None:
        """Make the folder hold the top N: a kept copy ranked out goes (not one of a step whose row
        has no value of the metric, `has_row(step)` False, nor one in use), a top one not kept yet is kept when its
        checkpoint still exists, `current` is kept again from its new folder; then the `best` link
        follows."""
        place = {r.step: i for i, r in enumerate(self.top)}
        kept = {c.step: c for c in self.existing()}
        for step, copy in kept.items():
            if self.top and step not in place and has_row(step) and step not in busy:
                gone = self._source(step, copy.name) is None  # the trainer deleted it: this copy was the last
                shutil.rmtree(copy.path, ignore_errors=True)
                log.log(logging.WARNING if gone else logging.DEBUG, "%s left the best %d by %s; its kept copy is "
                        "removed%s", copy.name, self.n, self.metric, " (it was the last copy)" if gone else "")
        for i, ranked in enumerate(self.top):
            if current is not None and ranked.step == current.step:
                self._keep(current, i, entering=ranked.step not in kept)
            elif ranked.step not in kept and time.monotonic() >= self._skip.get(ranked.step, 0.0):
                source = self._source(ranked.step, self._names.get(ranked.step, f"checkpoint-{ranked.step}"))
                if source is None:
                    self._skip[ranked.step] = math.inf
                else:
                    self._keep(source, i, entering=True)
        self._point_best()

    def _source(self, step: int, name: str) -> Checkpoint | None:
        """The checkpoint folder `name` of `step` where it still exists: under --sft-root, else a pin."""
        for parent in (self.sft_root, self.movable):
            if parent is not None and (parent / name).is_dir():
                return Checkpoint(step, name, parent)
        return None

    def _keep(self, source: Checkpoint, rank: int, entering: bool) -> None:
        """Put `source`'s files at best/<model>/<name>: staged in a temp folder (a pin is moved there,
        anything else hard-linked), then renamed over the old copy. A failure leaves no temp."""
        if source.parent == self.root:
            return  # evaluated from its kept copy: already there
        dest = self.root / source.name
        staged = self.root / f"{TEMP}moved-{os.getpid()}-{source.name}"
        try:
            self._own_folder()
            if not self._move(source, staged):
                staged = self.root / f"{TEMP}new-{os.getpid()}-{source.name}"
                shutil.rmtree(staged, ignore_errors=True)
                self.linker.link_tree(source.path, staged)
            self._swap(staged, dest)
        except OSError as exc:
            shutil.rmtree(staged, ignore_errors=True)
            again = source.step not in self._skip
            self._skip[source.step] = time.monotonic() + RETRY_FAILED_SECONDS
            (log.warning if again else log.debug)(
                "could not keep %s in %s (%s); it is not kept for now (the evaluation goes on; tried again after "
                "%.0f minutes, at a result, and at the next start)", source.name, self.root, exc.strerror or exc,
                RETRY_FAILED_SECONDS / 60)
            return
        if entering:
            value = self.top[rank].value
            self._entered.append(f"kept {source.name} ({self.metric}={value:.4g}, best {rank + 1} of {self.n})")

    def _move(self, source: Checkpoint, staged: Path) -> bool:
        """A pin becomes the kept copy by a rename (no second set of links); False when it is no
        pin or cannot be renamed (another filesystem): it is linked instead."""
        if self.movable is None or source.parent != self.movable or os.path.lexists(staged):
            return False
        try:
            os.rename(source.path, staged)
        except OSError:
            return False
        return True

    def _swap(self, staged: Path, dest: Path) -> None:
        """`staged` becomes `dest`; the old copy is set aside first (a crash in between puts it back
        at the next start) and then removed."""
        old = None
        if os.path.lexists(dest):
            old = self.root / f"{TEMP}old-{os.getpid()}-{dest.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(dest, old)
        os.rename(staged, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _own_folder(self) -> None:
        """Create the folder with its `.owner.json` (before any copy: a folder of copies without
        one was not made by a sidecar)."""
        if (self.root / OWNER).exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TEMP}owner-{os.getpid()}"
        tmp.write_text(json.dumps({"model_config_key": self.owner_key, "state_file": str(self.state_file)}) + "\n",
                       encoding="utf-8")
        os.replace(tmp, self.root / OWNER)

    def _point_best(self) -> None:
        """The `best` symlink (relative) names the top-ranked kept copy, replaced atomically; with
        no ranking yet an existing link stays unless it is dangling."""
        link = self.root / LINK
        kept = {c.step: c.name for c in self.existing()}
        target = next((kept[r.step] for r in self.top if r.step in kept), None)
        try:
            if target is None:
                if os.path.islink(link) and (self.top or not link.exists()):
                    os.unlink(link)
                return
            if os.path.islink(link) and os.readlink(link) == target:
                return
            tmp = self.root / f"{TEMP}link-{os.getpid()}"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, link)
        except OSError as exc:
            log.warning("could not point %s at %s (%s)", link, target, exc.strerror or exc)
