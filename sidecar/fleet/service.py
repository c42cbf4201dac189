"""The fleet: one sidecar for every model folder under the `--models-root` folders.

Each model folder gets its profile (`profiles`), and with it exactly the configuration a
single-model sidecar started with those flags would have: the same state file, lock, log folder
and W&B run. Each model is a `ModelPipeline` under its own lock; all of them share one
`Scheduler` (the GPU slots, or Slurm's `--max-parallel`), which hands free slots to the models in
turn (`order`).

A model folder's life here: found -> profile resolved -> (no profile | locked by another sidecar |
error | watching) -> (removed | profile changed -> retiring -> closed). A model in trouble is
listed with its reason and never stops the others; one whose lock another sidecar holds is
taken over when that sidecar stops.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import labels
from ..config import Config
from ..errors import LockHeld, LockLost, SidecarError
from ..executors.base import Started
from ..labels import about
from ..reporters.base import Reporter
from ..watch.pipeline import ModelPipeline
from ..watch.scheduler import EvalKey
from ..watch.service import ROOT_MISSING_RECHECK_SECONDS, Loop, freeze_loaded, make_scheduler
from ..watch.state import ProcessLock
from .models import ModelFinder, ModelFolder
from .order import interleave
from .profiles import ProfilesFile
from .tree import clash_text, model_config, output_folders

log = logging.getLogger(__name__)

LOCK_RETRY_SECONDS = 5.0  # a model locked by another sidecar is tried again this often
SWITCH_RETRY_SECONDS = 0.5  # a model whose previous configuration is still closing


class Status:
    WATCHING = "watching"
    NO_PROFILE = "no profile"
    LOCKED = "locked"
    ERROR = "error"
    RETIRING = "retiring"
    REMOVED = "removed"
    DUPLICATE = "duplicate"


@dataclass
class Member:
    """A model being watched: its configuration, lock and pipeline."""

    name: str
    path: Path  # its model folder as found under the root (the entry's key)
    config: Config
    lock: ProcessLock
    pipeline: ModelPipeline
    lock_lost: bool = False
    retiring: str = ""  # why it stops once its running evals end

    @property
    def key(self) -> str:
        return self.pipeline.model

    def check_lock(self) -> None:
        try:
            self.lock.check()
        except LockLost:
            self.lock_lost = True
            raise


@dataclass
class Entry:
    """A model folder as the fleet sees it (what `status` and `plan` show for it)."""

    folder: ModelFolder
    status: str = ""
    reason: str = ""
    source: str = ""  # what gave its profile
    member: Member | None = None
    config: Config | None = None
    link: bool = False  # the model folder is a symlink (its target may change)
    retry_at: float | None = None  # monotonic: place it again then (locked, error, switching)
    logged: str = field(default="", repr=False)  # the last reason logged (each is logged once)


class Fleet(Loop):
    """Many model pipelines over one scheduler."""

    watch_flag = "--models-root"

    def __init__(self, config: Config, args: dict, clock, environ: dict[str, str],
                 make_reporter: Callable[[Config], Reporter], cwd: Path, executor=None, spawn=None) -> None:
        """`config`: the fleet's own (its sft_root is a placeholder); `args`: the flags given on
        the command line, from which each model's configuration is built with its profile."""
        super().__init__(config, clock, environ)
        self.args = {k: v for k, v in args.items() if k != "sft_root"}
        self.environ = dict(environ)
        self.cwd = cwd
        self.make_reporter = make_reporter
        self.scheduler = make_scheduler(config, self.environ, executor, clock, self.notify, spawn)
        self.profiles = ProfilesFile(config.profiles, config.profiles_data_root) if config.profiles else None
        self.finder = ModelFinder(config.models_root, config.model_filter)
        self.entries: dict[Path, Entry] = {}
        self.members: dict[str, Member] = {}  # by identity key (EvalKey.model)
        self._closing: dict[str, threading.Thread] = {}
        self._served: dict[str, int] = {}
        self._counter = itertools.count(1)
        self._strict = config.order == "model-then-step"
        self._hinted: set[str] = set()  # models whose --force-eval hint is in the log

    # ----- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._refresh(self.clock.monotonic())
        watching = sum(1 for e in self.entries.values() if e.status == Status.WATCHING)
        log.info("fleet: %d model folder(s) under %s; %d watched", len(self.entries),
                 ", ".join(str(r) for r in self.config.models_root), watching)
        freeze_loaded()

    def close(self) -> None:
        """Stop every running eval and wait for them, then close every model (in parallel: each
        finishes its W&B run) and release their locks."""
        self.backfill.finish(stopped=True)
        self.request_stop()
        try:
            self._finish_running()
        finally:
            self.notifier.flush()  # held notices go now, while the reporters can still send alerts
            try:
                for member in list(self.members.values()):
                    self._close_member(member, final=True)
                for thread in list(self._closing.values()):
                    thread.join()
            finally:
                self.notifier.close()

    def _close_member(self, member: Member, final: bool = False) -> None:
        """Close in a thread of its own: a W&B run finishing never holds up the other models.
        `final`: the fleet is closing (the notifier still asks its reporter about an outage)."""
        self.members.pop(member.key, None)
        self._served.pop(member.key, None)
        if not final:
            self.notifier.forget(member.key)

        def close() -> None:
            try:
                if member.lock_lost:
                    member.pipeline.reporter.abandon()
                else:
                    member.pipeline.close()
            except LockLost as exc:
                log.error("model %s: %s; this fleet writes nothing more for it", member.name, exc)
                member.pipeline.reporter.abandon()
            except Exception:  # noqa: BLE001 - one model's close must not stop the others'
                log.exception("model %s: closing failed", member.name)
            finally:
                if not member.lock_lost:
                    member.lock.release()
                self._closing.pop(member.key, None)

        with about(member.name):
            thread = labels.thread(close, f"close-{member.name}")
        self._closing[member.key] = thread
        thread.start()

    # ----- which models -------------------------------------------------------------------------
    def _refresh(self, now: float) -> None:
        """Profiles changed? Model folders added or removed? Locked or failed models due again?"""
        changed = self.profiles.refresh() if self.profiles is not None else False
        folders = self.finder.scan()
        for path, entry in list(self.entries.items()):
            if path in folders or entry.folder.root in self.finder.missing:
                continue  # (a missing root: its models wait, as a single sidecar waits for its root)
            if entry.status != Status.REMOVED:
                log.warning("model %s: its folder %s was removed; its state stays in %s", entry.folder.name, path,
                            entry.config.state_dir if entry.config else self.config.state_dir)
                self._retire(entry, "its folder was removed")
                entry.status, entry.reason, entry.retry_at = Status.REMOVED, "its folder was removed", None
            self.finder.forget(path)
        # real folders first: a symlink to a model folder is the duplicate, not the folder itself
        for path, folder in sorted(folders.items(), key=lambda kv: (os.path.islink(kv[0]), kv[0])):
            entry = self.entries.get(path)
            if entry is None:
                entry = self.entries[path] = Entry(folder, link=os.path.islink(path))
            due = entry.retry_at is not None and now >= entry.retry_at
            if not entry.status or entry.status == Status.REMOVED or changed or due or self._repointed(entry):
                self._place(entry, now)
        for member in list(self.members.values()):
            if member.retiring and not self._running(member.key):
                self._close_member(member)
                entry = self._entry_of(member)
                if entry is not None and entry.member is member:
                    entry.member = None
                    if entry.status != Status.REMOVED:  # placed again: its new profile, or its lock back
                        entry.status, entry.retry_at = "", now

    def _entry_of(self, member: Member) -> Entry | None:
        return self.entries.get(member.path)

    def _place(self, entry: Entry, now: float) -> None:
        """Resolve the folder's profile and watch it with that configuration (or say why not)."""
        name = entry.folder.name
        entry.retry_at = None
        values, source = {}, "the command line"
        if self.profiles is not None:
            resolved = self.profiles.profiles.resolve(name)
            if resolved.values is None:
                self._retire(entry, "its profile no longer matches")
                self._set(entry, Status.NO_PROFILE, resolved.reason, logger=log.info)
                return
            values, source = resolved.values, resolved.source
        try:
            config = self.model_config(entry.folder, values)
        except SidecarError as exc:
            self._retire(entry, "its profile changed")
            self._set(entry, Status.ERROR, f"profile from {source}: {exc}", logger=log.error)
            entry.retry_at = now + self.config.poll_interval_seconds
            return
        entry.source = source
        member = entry.member
        if member is not None:
            if member.config == config and not member.retiring:
                return  # the profile change did not change this model's flags
            self._retire(entry, "its profile changed")
            entry.config = config
            entry.retry_at = now + SWITCH_RETRY_SECONDS  # the new configuration starts once the old one closed
            return
        entry.config = config
        key = config.identity.key
        other = self.members.get(key)
        if other is not None and other.path != entry.folder.path:
            self._set(entry, Status.DUPLICATE, f"the same model as {other.path} (a symlink to it?); watched there")
            entry.retry_at = now + self.config.poll_interval_seconds
            return
        clash = self._clash(entry, config)
        if clash:
            self._set(entry, Status.ERROR, clash, logger=log.error)
            entry.retry_at = now + self.config.poll_interval_seconds
            return
        if key in self.members or key in self._closing:
            self._set(entry, Status.RETIRING, "its previous configuration is closing")
            entry.retry_at = now + SWITCH_RETRY_SECONDS
            return
        self._start_member(entry, config, now)

    def _clash(self, entry: Entry, config: Config) -> str:
        """The model placed first keeps the output folders two model folders of one name share."""
        mine = output_folders(config)
        for other in self.members.values():
            if other.path != entry.folder.path and set(mine) & set(output_folders(other.config)):
                return clash_text(entry.folder.path, config, other.path)
        return ""

    def _repointed(self, entry: Entry) -> bool:
        """A symlinked model folder now points elsewhere (its configuration names the old target)."""
        member = entry.member
        if member is None or not entry.link or member.retiring:
            return False
        try:
            return Path(os.path.realpath(entry.folder.path)) != member.config.sft_root
        except OSError:
            return False

    def model_config(self, folder: ModelFolder, values: dict) -> Config:
        return model_config(self.args, self.environ, self.cwd, folder, values)

    def _start_member(self, entry: Entry, config: Config, now: float) -> None:
        name = entry.folder.name
        lock = ProcessLock(config.lock_file, config.lock_mode)
        try:
            lock.acquire()
        except LockHeld as exc:
            holder = exc.holder or "another process"
            self._set(entry, Status.LOCKED, f"locked by {holder} ({config.lock_file}); taken over when it stops")
            entry.retry_at = now + LOCK_RETRY_SECONDS
            return
        except SidecarError as exc:
            self._set(entry, Status.ERROR, str(exc), logger=log.error)
            entry.retry_at = now + self.config.poll_interval_seconds
            return
        member: Member
        with about(name):
            reporter = self.make_reporter(config)
        pipeline = ModelPipeline(config, self.clock, self.environ, reporter, self.scheduler,
                                 wake=self.wake.set, guard=lambda: member.check_lock())
        pipeline.batch_until_tick_end = True  # one write per model per tick for reused results (see there)
        pipeline.hints = False  # the fleet logs one line for all its models (`_hint`)
        self._wire(pipeline, f"{name}/")
        if entry.link and config.watch_mode == "events":
            log.warning("model %s: %s is a symlink; filesystem events do not follow it, so its new checkpoints are "
                        "found only when another event wakes the loop (use --watch-mode auto for a safety scan)",
                        name, entry.folder.path)
        member = Member(name, entry.folder.path, config, lock, pipeline)
        try:
            with about(name):
                pipeline.start()
        except SidecarError as exc:
            lock.release()
            self.notifier.forget(pipeline.model)
            self._set(entry, Status.ERROR, str(exc), logger=log.error)
            entry.retry_at = now + self.config.poll_interval_seconds
            return
        except BaseException:
            lock.release()
            self.notifier.forget(pipeline.model)
            raise
        self.members[member.key] = member
        entry.member = member
        self._set(entry, Status.WATCHING, f"run {pipeline.state.run_id}, state {config.state_file.name}",
                  logger=log.info, text=f"model {name}: watching {config.sft_root} (profile from {entry.source}; "
                                        f"state {config.state_file}; run id {pipeline.state.run_id})")

    def _set(self, entry: Entry, status: str, reason: str, logger=log.warning, text: str = "") -> None:
        entry.status, entry.reason = status, reason
        line = text or f"model {entry.folder.name}: {status}: {reason}"
        if line != entry.logged:
            entry.logged = line
            logger("%s", line)

    def _retire(self, entry: Entry, why: str) -> None:
        """Stop giving the folder's member new evals; it closes once its running evals end."""
        member = entry.member
        if member is not None and not member.retiring:
            member.retiring = why
            entry.status, entry.reason = Status.RETIRING, why
            log.info("model %s: %s; it stops once its running evals end", entry.folder.name, why)

    def _lose(self, member: Member, exc: LockLost) -> None:
        log.error("model %s: %s; this fleet writes nothing more for it (its running evals end on their own)",
                  member.name, exc)
        member.retiring = "another sidecar took its lock"
        entry = self._entry_of(member)
        if entry is not None:  # tried again like a model locked at start: taken back when that sidecar stops
            entry.status, entry.reason = Status.LOCKED, f"lost its lock: {exc}"
            entry.retry_at = self.clock.monotonic() + LOCK_RETRY_SECONDS

    def _running(self, key: str) -> int:
        return sum(1 for k in self.scheduler.running if k.model == key)

    # ----- events -------------------------------------------------------------------------------
    def _drain(self, record: bool = True) -> int:
        done = 0
        for event in self.scheduler.drain():
            member = self.members.get(event.key.model)
            if not record or member is None or member.lock_lost:
                if isinstance(event, Started):  # let the eval go on; it ends with the stop
                    event.recorded.set()
                continue
            try:
                with about(member.name):
                    done += member.pipeline.handle(event)
            except LockLost as exc:
                self._lose(member, exc)
        return done

    # ----- what the loop waits for ----------------------------------------------------------
    def _confirm_deadlines(self) -> list[float]:
        return [d for m in self.members.values() for d in m.pipeline.readiness.confirm_deadlines]

    def _wake_deadlines(self, now: float, poll: float) -> list[float]:
        deadlines = [d for m in self.members.values() if not m.retiring for d in m.pipeline.wake_deadlines(now)]
        deadlines += [e.retry_at for e in self.entries.values()
                      if e.retry_at is not None and e.folder.root not in self.finder.missing]
        if self.finder.missing or any(m.pipeline.root_missing for m in self.members.values()):
            deadlines.append(now + min(poll, ROOT_MISSING_RECHECK_SECONDS))
        if self._closing:
            deadlines.append(now + SWITCH_RETRY_SECONDS)
        return deadlines

    def _watched(self) -> dict[Path, object]:
        return {root: self.finder.identities.get(root) for root in self.config.models_root}

    def _pipelines(self) -> list[ModelPipeline]:
        return [m.pipeline for m in self.members.values() if m.pipeline.state is not None]

    # ----- one tick -----------------------------------------------------------------------------
    def tick(self) -> int:
        """One pass over every model; returns how many checkpoints got an outcome recorded."""
        now = self.clock.monotonic()
        done = self._drain()
        self._refresh(now)
        stopping = self.stop_event.is_set()
        planned: dict[str, list] = {}
        outstanding = len(self.scheduler.running)
        scanned: list[Member] = []
        for member in list(self.members.values()):
            if member.lock_lost or member.retiring or member.pipeline.state is None:
                continue
            try:
                member.check_lock()
                with about(member.name):
                    member.pipeline.resume_followed(stopping)
                    ready, vanished = member.pipeline.scan()
            except LockLost as exc:
                self._lose(member, exc)
                continue
            done += vanished
            outstanding += member.pipeline.backlog
            scanned.append(member)
            if ready:
                planned[member.key] = ready
        self._hint(scanned)
        self.backfill.update(outstanding)
        done += self._dispatch(planned)
        for member in list(self.members.values()):
            if member.lock_lost:
                continue
            try:
                with about(member.name):
                    member.pipeline.save(force=member.pipeline.dirty)
                    member.pipeline.report()
            except LockLost as exc:
                self._lose(member, exc)
        self.backfill.nudge()
        self.notifier.tick()
        return done

    def _hint(self, scanned: list[Member]) -> None:
        """One line for the models where --force-eval found nothing to run but processed checkpoints."""
        idle = [m for m in scanned if m.pipeline.force_eval_idle and m.key not in self._hinted]
        if not idle:
            return
        self._hinted.update(m.key for m in idle)
        log.info("--force-eval: nothing new to evaluate in %d model(s) (%s); their %d processed checkpoint(s) keep "
                 "their results (--force-eval makes new checkpoints run the eval script even when a metrics.json "
                 "exists; to re-evaluate processed ones, run that model alone, --sft-root with --force-eval-steps)",
                 len(idle), ", ".join(sorted(m.name for m in idle)), sum(m.pipeline.force_eval_idle for m in idle))

    def _dispatch(self, planned: dict[str, list]) -> int:
        """Free slots to ready checkpoints, models in turn (`order`), each model within its cap;
        what needs no eval (a reused metrics.json) is recorded whether or not a slot is free."""
        done = 0
        cap = self.config.max_parallel_per_model
        running = {key: self._running(key) for key in planned}
        names = {key: self.members[key].name for key in planned}
        slots_left = True
        for key, ckpt in interleave(planned, names, self._served, strict=self._strict):
            if self.stop_event.is_set():
                break
            member = self.members.get(key)
            if member is None or member.lock_lost or member.retiring:
                continue
            try:
                with about(member.name):
                    settled = member.pipeline.settle(ckpt)  # a reused result needs no slot: never waits for one
                    if settled is None and slots_left and not (cap and running[key] >= cap):
                        slot = self.scheduler.free_slot(f"{member.name}/{ckpt.name}")
                        slots_left = slot is not None  # all busy (or short of GPU memory): an eval's end wakes us
                        if slot is not None:
                            settled = member.pipeline.start_eval(ckpt, slot)
            except LockLost as exc:
                self._lose(member, exc)
                continue
            done += settled or 0
            if EvalKey(key, ckpt.step) in self.scheduler.running:
                running[key] += 1
                self._served[key] = next(self._counter)
        return done

    def skipped(self) -> list[str]:
        """Model folders not being evaluated now, with why (for the `--once` summary)."""
        return [f"{e.folder.name} ({e.status}: {e.reason})" for _, e in sorted(self.entries.items())
                if e.status in (Status.LOCKED, Status.ERROR, Status.DUPLICATE)]
