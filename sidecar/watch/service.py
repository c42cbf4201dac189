"""The service: one tick is discover -> readiness -> plan -> evaluate -> record -> report.

This is the one place where the pieces are wired together; follow a checkpoint from
`tick` to the reporter without jumping elsewhere.
"""

from __future__ import annotations

import gc
import logging
import queue
import secrets
import shutil
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from .attribution import fingerprint, non_default_eval_flags, producer, record_producer
from ..config import FLAGS, Config
from .discover import Checkpoint, Discoverer, RootMissing
from ..errors import ConfigError, LockLost, MetricsError, StateWriteError
from ..crash import crash_point
from ..executors.base import EvalJob, EvalResult
from ..executors.local import LocalExecutor
from ..executors.processes import ATTEMPT_ENV, reap_orphan
from ..files import not_regular
from .metrics import read_metrics
from .pins import Pins
from .plan import (RESERVED, Policy, build_row, is_given_up, next_retry, next_wake, plan, record_failure, record_success, record_vanished, reset_failures)
from .readiness import ReadinessTracker
from ..reporters.base import NullReporter, Reporter, Snapshot, run_key
from .reporting import apply_delivery, reconcile_state, retarget
from ..executors.slurm import SlurmExecutor
from .state import ProcessLock, State, StateStore, utc_iso
from .watcher import Watcher, WatcherUnavailable

log = logging.getLogger(__name__)

EVENT_MIN_GAP = 0.2  # seconds between two ticks woken by filesystem events
SAVE_BATCH_SECONDS = 1.0  # reused metrics (backfill) are saved at most this often, and at tick end
REREAD_DELAY_SECONDS = 2.0  # a half-written metrics.json is read again after this delay
IN_FLIGHT_SAVE_WAIT = 10.0  # seconds an eval worker waits for its in-flight record to be saved
ROOT_MISSING_RECHECK_SECONDS = 5.0  # while --sft-root is gone, look for it at least this often


def policy_for(config: Config) -> Policy:
    return Policy(order=config.order, max_per_tick=config.max_pending_per_cycle,
                  max_attempts=config.max_attempts, backoff_seconds=config.retry_backoff_seconds,
                  force_steps=config.force_eval_steps)


@dataclass
class _Running:
    ckpt: Checkpoint
    slot: int | None  # the GPU slot of a local eval; None for a Slurm job
    thread: threading.Thread
    log_path: Path


def slurm_executor(config: Config, environ: dict[str, str]) -> SlurmExecutor:
    return SlurmExecutor(config.slurm_args, poll_seconds=config.slurm_poll_seconds,
                         grace_seconds=config.eval_kill_grace_seconds, cancel_on_exit=config.slurm_cancel_on_exit,
                         environ=environ, script_dir=config.state_dir)


def make_executor(config: Config, environ: dict[str, str]):
    if config.executor == "slurm":
        return slurm_executor(config, environ)
    return LocalExecutor(grace_seconds=config.eval_kill_grace_seconds)


class Sidecar:
    """Evaluates every ready checkpoint of one model configuration exactly once and records it."""

    def __init__(self, config: Config, clock, environ: dict[str, str], executor=None,
                 reporter: Reporter | None = None) -> None:
        self.config = config
        self.clock = clock
        self.environ = dict(environ)
        self.executor = executor or make_executor(config, self.environ)
        self._slurm = self.executor if isinstance(self.executor, SlurmExecutor) else None
        self.reporter = reporter or NullReporter()
        self.policy = policy_for(config)
        self.store = StateStore(config.state_file)
        self.lock = ProcessLock(config.lock_file, config.lock_mode)
        self.discoverer = Discoverer(config.sft_root)
        self.readiness = ReadinessTracker(config.checkpoint_ready_seconds, config.ready_marker)
        self.state: State | None = None
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self._prompt = threading.Event()  # wake-ups that skip the event-burst gap: a ready marker, an eval's news
        self._ready: set[int] = set()  # steps found ready (never re-walked)
        self._interrupted: set[int] = set()  # in flight when a previous sidecar died: re-run
        self._quiet_deadlines: list[float] = []
        self._confirm_deadlines: list[float] = []  # checkpoints there at start-up, confirming they are still
        self._dirty = False
        self._last_save = float("-inf")
        self._root_missing = False
        self._save_failing = False
        self._save_error = ""
        self._warned_unattributed = False
        self._lock_lost = False  # another sidecar holds the lock file now: write nothing more
        self._foreign: dict[int, tuple | None] = {}  # step -> another configuration's metrics.json (size, mtime)
        self._submitted: tuple = ()
        self._seal = False  # a killed online sidecar may have lost its last table and summary: write them
        self._first_scan = True
        self._startup = True  # the first scan lists the folders there at start-up (readiness)
        self._running: dict[int, _Running] = {}  # step -> eval in a worker thread
        self._reattach: dict[int, dict] = {}  # Slurm jobs a previous sidecar left in flight
        self.pins = Pins(config.state_dir, config.sft_root.name) if config.pin_checkpoints else None
        self._events: queue.Queue = queue.Queue()  # worker -> main thread: started / finished
        self.host = socket.gethostname()

    # ----- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Take the lock, load (or create and upgrade) the state, settle leftovers of a previous run."""
        cfg = self.config
        self.lock.acquire()
        try:
            state = self.store.load()
        except BaseException:
            self.lock.release()
            raise
        identity = cfg.identity
        if state is None:
            state = State(identity.key, cfg.wandb_run_id or identity.default_run_id,
                          cfg.wandb_run_name or identity.default_run_name)
        else:
            if state.upgraded_from is not None:
                log.info("state file %s is version %s; upgrading it in place (nothing is dropped)",
                         self.store.path, state.upgraded_from)
            state.model_config_key = identity.key
            state.run_id = cfg.wandb_run_id or state.run_id or identity.default_run_id
            state.run_name = cfg.wandb_run_name or state.run_name or identity.default_run_name
        params = cfg.eval_params()
        if state.eval_params and state.eval_params != params:
            changed = ", ".join(f"{k} {state.eval_params.get(k)!r} -> {v!r}" for k, v in params.items()
                                if state.eval_params.get(k) != v)
            log.warning("decoding parameters changed since the last start (%s); new rows record them in eval_params",
                        changed)
        state.eval_params = params
        for step, entry in state.in_flight.items():
            entry.pop("interrupted", None)
            if entry.get("job_id") or entry.get("slurm_tag"):
                self._reattach[step] = entry  # a Slurm job outlives its sidecar: track it again
                continue
            self._interrupted.add(step)
            entry["interrupted"] = True
            if entry.get("host") == self.host:
                pid = entry.get("pid")
                reap_orphan(pid if isinstance(pid, int) and pid > 1 else None, str(entry.get("pid_start", "")),
                            str(entry.get("attempt", "")), grace=cfg.eval_kill_grace_seconds)
            log.warning("checkpoint-%s was being evaluated when the previous sidecar stopped; it will be evaluated again",
                        step)
        redo = self._interrupted & state.processed - self.policy.force_steps
        if redo:  # a re-evaluation (--force-eval-steps) cut short: finish it, as its flag asked
            self.policy = replace(self.policy, force_steps=self.policy.force_steps | redo)
        if cfg.retry_failed and state.failed:
            log.info("--retry-failed: %d failed checkpoint(s) get a fresh attempt budget", reset_failures(state))
        if state.upgraded_from == 1 and state.rows and not state.segments:
            # The original tool reported its rows as it went: never log them a second time.
            state.segments.append({"dir": "", "mode": "original tool", "closed": True, "steps": sorted(state.rows)})
        if self._reattach and self._slurm is None:
            missing = [b for b in ("scontrol", "squeue", "scancel") if shutil.which(b) is None]
            if missing:
                self.lock.release()
                jobs = ", ".join(f"checkpoint-{s}" for s in sorted(self._reattach))
                raise ConfigError(f"the state file has Slurm jobs in flight ({jobs}) but {', '.join(missing)} "
                                  f"is not on PATH here; start this sidecar where Slurm's commands work")
        self.state = state
        if self.pins is not None:
            state.pins_dir = str(self.pins.root)
            self.pins.clean_temp()
            for pinned in self.pins.existing():
                if pinned.step in state.processed and pinned.step not in self.policy.force_steps:
                    self.pins.unpin(pinned.name)  # its step is done: a leftover of a crash
                else:
                    self._ready.add(pinned.step)  # a pin is complete by construction
        if self.reporter.enabled:
            if getattr(self.reporter, "mode", "") == "online" and cfg.wandb_resume == "never" and state.segments:
                self.lock.release()
                raise ConfigError(f"--wandb-resume never: the run {state.run_id} already holds rows of this state "
                                  f"({len(state.segments)} W&B segment(s)); wandb would refuse to continue it and "
                                  f"nothing more would reach W&B (use --wandb-resume allow)")
            self._reconcile_segments()
        self.reporter.bind(state.run_id, state.run_name, on_delivery=self.wake.set)
        self._save(force=True)
        # The loaded state lives as long as the process: keep the garbage collector from walking
        # it again and again (with 50,000 rows a full collection stalls a tick by ~150 ms).
        gc.collect()
        gc.freeze()

    def _reconcile_segments(self) -> None:
        """Read back segments a crash left open; queue every row no segment holds; a W&B run
        other than the one the rows went to gets them all."""
        state, cfg = self.state, self.config
        target = run_key(cfg.wandb_entity, cfg.wandb_project, state.run_id)
        previous = state.wandb_run
        if retarget(state, target):
            log.warning("the W&B run changed since rows were reported (%s -> %s): all %d row(s) are written to the "
                        "new run", previous or "an earlier run", target, len(state.rows))
        self._seal = getattr(self.reporter, "mode", "") == "online" and any(
            s.get("mode") == "online" and not s.get("closed") for s in state.segments)
        queued = reconcile_state(state, self.reporter)
        if queued:
            log.info("%d row(s) in state are in no W&B segment yet; they will be reported", queued)

    def notify(self, urgent: bool = False) -> None:
        """Something under the root changed (from the watcher's thread); `urgent`: a ready marker."""
        if urgent:
            self._prompt.set()
        self.wake.set()

    def request_stop(self) -> None:
        """Stop the loop, terminate running evals (their steps stay pending); from any thread (the
        signal relay's: never from a signal handler itself, see `signals`)."""
        self.stop_event.set()
        self._prompt.set()
        self.executor.cancel_all()
        if self._slurm is not None and self._slurm is not self.executor:
            self._slurm.cancel_all()
        self.wake.set()

    def close(self) -> None:
        """Flush state, close the reporter, release the lock."""
        crash_point("shutdown")
        if self._lock_lost:  # another sidecar owns this configuration now: stop our evals, write nothing
            for slurm in {id(x): x for x in (self._slurm, self.executor) if isinstance(x, SlurmExecutor)}.values():
                slurm.cancel_on_exit = False  # its jobs are the new holder's (it re-attaches to them)
            self.reporter.abandon()
            self.request_stop()
            self._finish_running(record=False)
            return
        try:
            if self.state is not None:
                self._finish_running()
                self._save(force=True)
                self._report()
        finally:
            try:
                self.reporter.close()
                if self.state is not None:
                    self._collect()
                    self._save(force=self._dirty)
            finally:
                self.lock.release()

    # ----- loops ------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Tick until nothing ready is left and no eval runs (or a stop is requested); returns
        how many checkpoints got an outcome."""
        total = 0
        while not self.stop_event.is_set():
            done = self.tick()
            total += done
            if not self._running and done == 0:
                if not self._confirm_deadlines:
                    break
                # checkpoints there at start-up become ready after a short confirmation (readiness)
                self.stop_event.wait(max(0.0, min(self._confirm_deadlines) - self.clock.monotonic()))
                continue
            if self._running and done == 0:
                self.wake.wait()  # an eval finishing (or a signal) wakes us
                self.wake.clear()
        return total

    def run_forever(self, watcher: Watcher | None = None) -> None:
        """Tick on every wake-up until stopped.

        Wake-ups: filesystem events (events/auto), the poll deadline (poll/auto, and whenever
        the root is missing), the end of the earliest quiet period, the next retry.
        """
        cfg = self.config
        poll = cfg.poll_interval_seconds
        use_events = cfg.watch_mode in ("auto", "events") and watcher is not None
        if use_events:
            try:
                name = watcher.start()
                log.info("watching %s with %s%s", cfg.sft_root, name,
                         f" and a safety scan every {poll:g} s" if cfg.watch_mode == "auto" else "")
            except WatcherUnavailable as exc:
                if cfg.watch_mode == "events":
                    raise ConfigError(f"--watch-mode events: filesystem events are unavailable ({exc}); "
                                      f"use --watch-mode auto or poll") from exc
                log.warning("filesystem events are unavailable (%s); polling every %g s instead", exc, poll)
                use_events = False
        use_poll = cfg.watch_mode != "events" or not use_events
        try:
            self._loop(poll, use_poll, watcher if use_events else None)
        finally:
            if use_events:
                watcher.stop()

    def _loop(self, poll: float, use_poll: bool, watcher: Watcher | None) -> None:
        poll_deadline = self.clock.monotonic() + poll
        while not self.stop_event.is_set():
            started = self.clock.monotonic()
            was_missing, watched = self._root_missing, self.discoverer.identity
            done = self.tick()
            replaced = watched is not None and self.discoverer.identity not in (None, watched)
            if watcher is not None and ((was_missing and not self._root_missing) or replaced):
                watcher.stop()  # the root was replaced: watch the new folder
                try:
                    watcher.start()
                    log.info("--sft-root %s was replaced by another folder; watching the new one", self.config.sft_root)
                except WatcherUnavailable as exc:
                    log.warning("filesystem events stopped (%s); polling every %g s instead", exc, poll)
                    watcher, use_poll = None, True
                continue  # scan again: what was written before the new watch started sent no event
            now = self.clock.monotonic()
            if now >= poll_deadline:
                poll_deadline = now + poll
            if done:
                continue
            deadlines = list(self._quiet_deadlines)
            wall = self.clock.time()
            retry = next_retry(self.state, self.policy, after=wall)
            if retry is not None:
                deadlines.append(now + (retry - wall))
            if self._root_missing:  # its return wakes the watcher's parent watch; this is the safety net
                deadlines.append(now + min(poll, ROOT_MISSING_RECHECK_SECONDS))
            timeout = next_wake(now, poll_deadline if use_poll else None, deadlines)
            self.wake.wait(timeout)
            self.wake.clear()
            # A burst of events (a trainer writing a big file) wakes the loop at most every
            # EVENT_MIN_GAP seconds: each tick re-lists the root. A ready marker appearing, an
            # eval starting or finishing, or a stop cuts the wait short.
            gap = EVENT_MIN_GAP - (self.clock.monotonic() - started)
            if gap > 0:
                self._prompt.wait(gap)
            self._prompt.clear()

    # ----- one tick -----------------------------------------------------------------------------
    def tick(self) -> int:
        """One pass; returns how many checkpoints got an outcome recorded (success, failure, vanished)."""
        state = self.state
        assert state is not None, "start() first"
        try:
            self.lock.check()  # the lock file removed or replaced under us: take it again, or stop
        except LockLost:
            self._lock_lost = True
            raise
        done = self._drain()
        if self._reattach:
            self._start_reattached()
        try:
            found = self.discoverer.scan()
        except RootMissing as exc:
            if not self._root_missing:
                log.warning("--sft-root is missing or unreadable (%s); waiting for it to come back", exc)
                self._root_missing = True
            self._quiet_deadlines, self._confirm_deadlines = [], []  # quiet periods of checkpoints gone with it
            self._startup = False  # what appears with the root was not there at start-up
            self._save(force=self._dirty)
            return done
        if self._root_missing:
            log.info("--sft-root %s is back", self.config.sft_root)
            self._root_missing = False
        if self.pins is not None:  # a pinned checkpoint lives on after rotation deleted the original
            names = {c.step for c in found}
            found = sorted(found + [p for p in self.pins.existing() if p.step not in names])
        crash_point("after-discovery")
        now_wall, now_mono = self.clock.time(), self.clock.monotonic()
        first_scan, self._startup = self._startup, False
        if self._first_scan:
            self._first_scan = False
            absent = sorted(set(self.config.force_eval_steps) - {c.step for c in found})
            if absent:
                log.warning("--force-eval-steps: no checkpoint folder for step(s) %s; nothing to re-evaluate there",
                            ", ".join(map(str, absent)))
        done += self._settle_vanished(found, now_wall)
        if found and state.last_seen_step != found[-1].step:
            state.last_seen_step = found[-1].step
            self._dirty = True
        ready = [c for c in self._ready_checkpoints(found, now_mono, now_wall, first_scan) if c.step not in self._running]
        for ckpt in plan(ready, state, now_wall, self.policy):
            if self.stop_event.is_set():
                break
            slot = self._free_slot()
            if slot is None:
                break  # every slot busy: the next finished eval wakes the loop
            done += self._dispatch(ckpt, slot)
        self._save(force=self._dirty)
        self._report()
        return done

    def _settle_vanished(self, found: list[Checkpoint], now_wall: float) -> int:
        """Seen-but-unprocessed steps that are gone now were rotated away before their eval."""
        state = self.state
        present = {c.step for c in found}
        for step in sorted(self._interrupted & state.processed - present - set(self._running)):
            # a re-evaluation a killed sidecar left, of a checkpoint deleted since
            self._drop_reevaluation(step, "it was deleted while it was being re-evaluated")
        watched = (set(state.pending) | self._interrupted
                   | {s for s, f in state.failed.items() if not is_given_up(f, self.policy)})
        gone = sorted(s for s in watched if s not in present and s not in state.processed and s not in state.vanished
                      and s not in self._running)
        for step in gone:
            name = state.failed.get(step, {}).get("checkpoint", f"checkpoint-{step}")
            log.warning("%s was deleted before it was evaluated; recorded as vanished", name)
            record_vanished(state, step, name, "deleted before its eval", now_wall)
            self._ready.discard(step)
            self._interrupted.discard(step)
            self.readiness.forget(step)
        if gone:
            self._dirty = True
        return len(gone)

    def _ready_checkpoints(self, found: list[Checkpoint], now_mono: float, now_wall: float,
                           first_scan: bool) -> list[Checkpoint]:
        """Walk only checkpoints not processed and not yet known ready; record the pending list.
        `first_scan`: these folders were there when the sidecar started (see `readiness`)."""
        state, policy = self.state, self.policy
        ready: list[Checkpoint] = []
        pending: list[int] = []
        self._quiet_deadlines = []
        self._confirm_deadlines = []
        for ckpt in found:
            step = ckpt.step
            if step in state.processed and step not in policy.force_steps:
                continue
            failure = state.failed.get(step)
            if failure is not None and is_given_up(failure, policy):
                continue
            pending.append(step)
            if step not in self._ready:
                ok, reason, wake_at = self.readiness.check(step, ckpt.path, now_mono, now_wall, first_scan)
                if not ok:
                    if wake_at is not None:
                        self._quiet_deadlines.append(wake_at)
                        if reason == "confirming":
                            self._confirm_deadlines.append(wake_at)
                    log.debug("%s not ready: %s", ckpt.name, reason)
                    continue
                log.debug("%s is ready (%s)", ckpt.name, reason)
                self._ready.add(step)
            ready.append(self._pinned(ckpt))
        if pending != state.pending:
            state.pending = pending
            self._dirty = True
        return ready

    # ----- evaluate and record ---------------------------------------------------------------
    def metrics_path(self, ckpt: Checkpoint) -> Path:
        return self.config.results_root / ckpt.parent_name / ckpt.name / "metrics.json"

    def _pinned(self, ckpt: Checkpoint) -> Checkpoint:
        """With --pin-checkpoints, the pin of a ready checkpoint (made now if needed), else itself."""
        if self.pins is None or ckpt.parent == self.pins.root:
            return ckpt
        try:
            return self.pins.pin(ckpt)
        except OSError as exc:
            if not ckpt.path.is_dir():
                return ckpt  # deleted while pinning: the normal vanished path records it
            log.warning("could not pin %s (%s); evaluating it in place", ckpt.name, exc.strerror or exc)
            return ckpt

    def _unpin(self, name: str) -> None:
        if self.pins is not None:
            self.pins.unpin(name)

    def _free_slot(self) -> int | None:
        """A free GPU slot for a local eval, or 0 while Slurm jobs in flight are below --max-parallel;
        None when everything is busy."""
        if self._slurm is self.executor:
            return 0 if len(self._running) < self.config.max_parallel else None
        busy = {r.slot for r in self._running.values()}
        return next((i for i in range(len(self.config.gpu_slots)) if i not in busy), None)

    def _slurm_executor(self) -> SlurmExecutor:
        """The Slurm executor; a local sidecar gets one to track jobs a Slurm sidecar left behind."""
        if self._slurm is None:
            self._slurm = slurm_executor(self.config, self.environ)
            if self.stop_event.is_set():
                self._slurm.cancel_all()
        return self._slurm

    def _log_path(self, name: str) -> Path:
        return self.config.log_dir / self.config.identity.safe_model / f"{name}.log"

    def _in_flight_entry(self, ckpt: Checkpoint) -> dict:
        now = self.clock.time()
        return {"checkpoint": ckpt.name, "path": str(ckpt.path), "started": utc_iso(now), "started_at": now,
                "host": self.host}

    def _job_name(self, ckpt: Checkpoint) -> str:
        return f"sidecar-{self.config.identity.safe_model}-{ckpt.step}"

    def _metrics_mtime(self, ckpt: Checkpoint) -> int | None:
        seen = fingerprint(self.metrics_path(ckpt))
        return seen[1] if seen else None

    def _start_reattached(self) -> None:
        """Track the Slurm jobs a previous sidecar submitted instead of submitting them again."""
        cfg = self.config
        if self.stop_event.is_set():
            return  # they stay in flight in the state file for the next start
        for step, entry in sorted(self._reattach.items()):
            name = str(entry.get("checkpoint") or f"checkpoint-{step}")
            path = Path(entry["path"]) if entry.get("path") else cfg.sft_root / name
            ckpt = Checkpoint(step, name, path.parent)
            log_path = self._log_path(name)
            job_id = str(entry.get("job_id") or "")
            job = EvalJob([], cfg.repo_root, {}, log_path, cfg.eval_timeout_seconds, self._job_name(ckpt),
                          str(entry.get("slurm_tag") or ""), attach=job_id, adopt=not job_id)
            self._start_worker(ckpt, job, None, self._slurm_executor())
        self._reattach.clear()

    def _dispatch(self, ckpt: Checkpoint, slot: int) -> int:
        """Record at once what needs no eval (reused metrics.json, a vanished folder); otherwise
        start the eval on `slot` in a worker thread. Returns how many outcomes were recorded."""
        cfg, state, step = self.config, self.state, ckpt.step
        metrics_path = self.metrics_path(ckpt)
        rerun = cfg.force_eval or step in self.policy.force_steps or step in self._interrupted
        unusable = not_regular(metrics_path)
        if unusable:  # a FIFO or a device would block or flood the eval that writes it, and us
            record = record_failure(state, ckpt, f"{metrics_path} {unusable}; remove it (the eval script writes "
                                    f"its results there)", self.clock.time(), self.policy)
            log.error("%s", record["error"])
            self._dirty = True
            self._save(force=True)
            return 1
        if not rerun:
            try:
                metrics = read_metrics(metrics_path)
            except MetricsError as exc:
                if exc.reason != "not found":
                    log.info("%s; running the eval script for %s", exc, ckpt.name)
            else:
                made_by = producer(metrics_path)
                if made_by is None or made_by == cfg.identity.key:
                    if made_by is None:
                        self._warn_unattributed(metrics_path)
                    self._succeed(ckpt, metrics, metrics_path, evaluated=False)
                    return 1
                log.info("%s was produced by another configuration of this model (run eval-%s); evaluating %s "
                         "with this one (the eval script overwrites it)", metrics_path, made_by, ckpt.name)
                self._foreign[step] = fingerprint(metrics_path)
        if not ckpt.path.is_dir():
            log.warning("%s was deleted before its eval; recorded as vanished", ckpt.name)
            record_vanished(state, step, ckpt.name, "deleted before its eval", self.clock.time())
            self._dirty = True
            return 1
        log_path = self._log_path(ckpt.name)
        argv = ["bash", str(cfg.eval_script), str(cfg.sft_root)]
        cuda = cfg.gpu_slots[slot]
        env = {**self.environ, **cfg.eval_env(ckpt.path, cuda_list=cuda)}
        if self._slurm is self.executor:
            # The attempt's random tag (the job's comment) and the state of metrics.json are saved
            # before sbatch: whatever happens next, a restart finds this job and judges its result.
            tag = f"eval-sidecar:{cfg.identity.key}:{step}:{secrets.token_hex(6)}"
            job = EvalJob(argv, cfg.repo_root, env, log_path, cfg.eval_timeout_seconds, self._job_name(ckpt), tag)
            state.in_flight[step] = {**self._in_flight_entry(ckpt), "slurm_tag": tag, "slurm_state": "SUBMITTING",
                                     "metrics_before": self._metrics_mtime(ckpt)}
            self._dirty = True
            if not self._save(force=True):
                return self._not_started(ckpt)
            log.info("evaluating %s as a Slurm job (log: %s)", ckpt.name, log_path)
            self._start_worker(ckpt, job, None, self.executor)
        else:
            # Saved before the child exists: a kill -9 at any moment after leaves a record whose
            # tag (in the eval's environment) finds every process the eval started.
            tag = f"{step}-{secrets.token_hex(8)}"
            state.in_flight[step] = {**self._in_flight_entry(ckpt), "attempt": tag}
            self._dirty = True
            if not self._save(force=True):
                return self._not_started(ckpt)
            log.info("evaluating %s on GPUs %s (log: %s)", ckpt.name, cuda or "-", log_path)
            job = EvalJob(argv, cfg.repo_root, {**env, ATTEMPT_ENV: tag}, log_path, cfg.eval_timeout_seconds, tag=tag)
            self._start_worker(ckpt, job, slot, self.executor)
        return 0

    def _drop_reevaluation(self, step: int, why: str) -> None:
        """Give up re-evaluating a processed step whose checkpoint is gone: its recorded result stands."""
        log.warning("checkpoint-%s: %s; its earlier result stands", step, why)
        self.state.in_flight.pop(step, None)
        self._interrupted.discard(step)
        self.policy = replace(self.policy, force_steps=self.policy.force_steps - {step})
        self._dirty = True

    def _not_started(self, ckpt: Checkpoint) -> int:
        """The in-flight record could not be saved: the eval is not started (a kill -9 would leave it
        untracked); retried later, using no attempt (the failure is the sidecar's disk's)."""
        self.state.in_flight.pop(ckpt.step, None)
        now = self.clock.time()
        record = record_failure(self.state, ckpt, f"{ckpt.name} was not started (its in-flight record must be saved "
                                f"first): {self._save_error}", now, self.policy, consume_attempt=False)
        log.warning("%s; not counted as an attempt, retry in %.0f s", record["error"], record["retry_after"] - now)
        return 0

    def _warn_unattributed(self, metrics_path: Path) -> None:
        """Once: a metrics.json no sidecar eval produced is reused (as the original tool did) under
        non-default eval flags, so it may hold another configuration's numbers."""
        if self._warned_unattributed:
            return
        self._warned_unattributed = True
        changed = non_default_eval_flags(self.config, FLAGS)
        if changed:
            log.warning("reusing metrics.json files this sidecar did not produce (e.g. %s) as results of this "
                        "configuration (%s); if they came from other flags, start once with --force-eval",
                        metrics_path, ", ".join(changed))

    def _start_worker(self, ckpt: Checkpoint, job: EvalJob, slot: int | None, executor) -> None:
        worker = threading.Thread(target=self._run_eval, args=(ckpt, job, executor), name=f"eval-{ckpt.step}",
                                  daemon=True)
        self._running[ckpt.step] = _Running(ckpt, slot, worker, job.log_path)
        worker.start()

    def _run_eval(self, ckpt: Checkpoint, job: EvalJob, executor) -> None:
        """Worker thread: run the eval and read its metrics; the main thread records the outcome."""
        metrics_path = self.metrics_path(ckpt)

        def started(info: dict) -> None:
            # Wait until the main thread has saved the in-flight record: a kill -9 from here on
            # leaves a state that names this eval (pid or Slurm job), so the next start stops
            # it or re-attaches to it (bounded wait).
            recorded = threading.Event()
            self._events.put(("started", ckpt.step, info, recorded))
            self._prompt.set()
            self.wake.set()
            recorded.wait(IN_FLIGHT_SAVE_WAIT)

        def updated(info: dict) -> None:
            self._events.put(("update", ckpt.step, info))
            self.wake.set()

        read = None  # (size, mtime_ns) of the metrics.json read, taken as it was read
        try:
            result = executor.run(job, on_start=started, on_update=updated)
            crash_point("eval-finished")
            metrics: dict | MetricsError | None = None
            if result.returncode == 0 and not result.cancelled and not result.timed_out:
                try:
                    metrics = read_metrics(metrics_path, REREAD_DELAY_SECONDS, self.clock.sleep)
                    read = fingerprint(metrics_path)
                    crash_point("metrics-read")
                except MetricsError as exc:
                    metrics = exc
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread as a failed start
            result, metrics = EvalResult(None, 0.0, start_error=f"{type(exc).__name__}: {exc}"), None
        self._events.put(("finished", ckpt.step, result, metrics, read))
        self._prompt.set()
        self.wake.set()

    def _acknowledge_only(self) -> None:
        """Let waiting workers go on and forget finished ones, recording nothing (the lock is lost)."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if event[0] == "started":
                event[3].set()
            elif event[0] == "finished" and event[1] in self._running:
                self._running.pop(event[1]).thread.join()

    def _drain(self) -> int:
        """Apply what the eval workers reported: in-flight records and outcomes (main thread only)."""
        done = 0
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return done
            kind, step = event[0], event[1]
            running = self._running.get(step)
            if kind == "started":
                try:
                    if running is not None:
                        self._mark_in_flight(running.ckpt, event[2], running.slot)
                finally:
                    event[3].set()
            elif kind == "update":
                entry = self.state.in_flight.get(step)
                if entry is not None and running is not None:
                    entry.update(event[2])
                    self._dirty = True
                    self._save(force=True)
            elif running is not None:
                running.thread.join()
                del self._running[step]
                self._record(running, event[2], event[3], event[4])
                done += 1

    def _record(self, running: "_Running", result: EvalResult, metrics, read=None) -> None:
        """Decide and record the outcome of one eval; `read`: the (size, mtime) of the metrics.json
        its metrics come from."""
        cfg, state, ckpt, log_path = self.config, self.state, running.ckpt, running.log_path
        step = ckpt.step
        now = self.clock.time()
        if result.detached:
            log.info("%s: %s; a restarted sidecar re-attaches to it", ckpt.name, result.error)
            self._save(force=True)
            return
        if result.cancelled:
            state.in_flight.pop(step, None)
            log.info("eval of %s was stopped by shutdown; it stays pending", ckpt.name)
            self._dirty = True
            self._save(force=True)
            return
        if result.not_submitted:
            state.in_flight.pop(step, None)
            log.info("%s: the previous sidecar stopped before its Slurm job was submitted; it is evaluated again",
                     ckpt.name)
            self._dirty = True
            self._save(force=True)
            return
        if result.unknown_outcome:
            written = self._metrics_mtime(ckpt)
            before = state.in_flight.get(step, {}).get("metrics_before")  # saved before sbatch
            fresh = written is not None and (not isinstance(before, int) or written > before)
            if isinstance(metrics, dict) and fresh:
                self._succeed(ckpt, metrics, self.metrics_path(ckpt), evaluated=True, read=read)
                return
            reason = metrics if not isinstance(metrics, dict) else "its metrics.json is older than the job"
            error = f"eval of {ckpt.name}: {result.error}, and {reason}"
        elif result.start_error:
            error = f"eval of {ckpt.name} could not start: {result.start_error}"
        elif result.timed_out:
            error = f"eval of {ckpt.name} timed out after {cfg.eval_timeout_seconds:g} s"
        elif result.error:
            error = f"eval of {ckpt.name}: {result.error} after {result.duration:.1f} s"
        elif result.returncode != 0:
            how = (f"was killed by signal {-result.returncode}" if result.returncode < 0
                   else f"exited {result.returncode}")
            error = f"eval of {ckpt.name} {how} after {result.duration:.1f} s"
        elif isinstance(metrics, MetricsError):
            error = f"eval of {ckpt.name} exited 0 but {metrics}"
        elif read is not None and self._foreign.get(step) == read:
            error = (f"eval of {ckpt.name} exited 0 but did not write {self.metrics_path(ckpt)}: the file there is "
                     f"another configuration's")
        else:
            self._foreign.pop(step, None)
            self._succeed(ckpt, metrics, self.metrics_path(ckpt), evaluated=True, read=read)
            return
        if not ckpt.path.is_dir() and step in state.processed:  # a re-evaluation (--force-eval-steps)
            self._drop_reevaluation(step, f"it was deleted during its re-evaluation ({error})")
        elif not ckpt.path.is_dir():
            log.warning("%s was deleted during its eval; recorded as vanished", ckpt.name)
            record_vanished(state, step, ckpt.name, "deleted during its eval", now)
        else:
            record = record_failure(state, ckpt, f"{error}; see {log_path}", now, self.policy,
                                    consume_attempt=result.consume_attempt)
            if not result.consume_attempt:  # Slurm's doing (preemption, node failure, controller down)
                log.warning("%s; not counted as an attempt, retry in %.0f s (see %s)", error,
                            record["retry_after"] - now, log_path)
            elif record.get("given_up"):
                self._unpin(ckpt.name)
                log.error("%s; giving up after %d attempts (see %s)", error, record["attempts"], log_path)
            else:
                log.warning("%s; attempt %d of %d, retry in %.0f s (see %s)", error, record["attempts"],
                            self.policy.max_attempts, record["retry_after"] - now, log_path)
        self._interrupted.discard(step)
        self._dirty = True
        self._save(force=True)

    def _finish_running(self, record: bool = True) -> None:
        """At shutdown: wait for the (cancelled) evals to end and record them as pending (or, with
        `record` False, only wait for them)."""
        while self._running:
            if not record:
                self._acknowledge_only()
            else:
                self._drain()  # also acknowledges `started` events the workers wait for
            if self._running:
                self.wake.wait(0.1)
                self.wake.clear()

    def _mark_in_flight(self, ckpt: Checkpoint, info: dict, slot: int | None) -> None:
        """Record what names the running eval (pid and start time, or Slurm job id) before it goes on."""
        entry = self._in_flight_entry(ckpt)
        previous = self.state.in_flight.get(ckpt.step) or {}
        if previous.get("slurm_tag") or previous.get("job_id") or previous.get("attempt"):
            entry = {**previous, "host": self.host}  # this attempt's record, saved before it started: keep it
        entry.update(info)
        if slot is not None:
            entry["gpus"] = self.config.gpu_slots[slot]
        self.state.in_flight[ckpt.step] = entry
        self._dirty = True
        self._save(force=True)

    def _succeed(self, ckpt: Checkpoint, metrics: dict, metrics_path: Path, evaluated: bool, read=None) -> None:
        self._unpin(ckpt.name)
        clashing = [k for k in metrics if k in RESERVED]
        if clashing:
            log.warning("metrics.json at %s: ignoring %s (the name of a row field)", metrics_path, ", ".join(clashing))
        row = build_row(ckpt, metrics, str(metrics_path), self.config.eval_params())
        if evaluated and read is not None:
            record_producer(metrics_path, self.config.identity.key, read)
        record_success(self.state, row)
        self._ready.discard(ckpt.step)
        self._interrupted.discard(ckpt.step)
        if ckpt.step in self.policy.force_steps:
            self.policy = replace(self.policy, force_steps=self.policy.force_steps - {ckpt.step})
        self._dirty = True
        shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("HR@10", "NDCG@10") if k in metrics)
        log.info("%s %s%s", "evaluated" if evaluated else "recorded existing metrics of", ckpt.name,
                 f": {shown}" if shown else "")
        # A finished evaluation is saved at once; reused metrics.json files are batched (a
        # backfill of 10,000 must not rewrite the state 10,000 times).
        self._save(force=evaluated)
        if evaluated:
            crash_point("state-written")

    # ----- persistence and reporting -------------------------------------------------------------
    def _save(self, force: bool = False) -> bool:
        """Write the state if it changed (batched unless `force`); False if the write failed."""
        if not self._dirty and not force:
            return True
        now = self.clock.monotonic()
        if not force and now - self._last_save < SAVE_BATCH_SECONDS:
            return True
        try:
            self.store.save(self.state, self.clock.time())
        except StateWriteError as exc:
            self._save_error = str(exc)
            if not self._save_failing:
                log.error("%s; will retry", exc)
                self._save_failing = True
            if self.config.once:
                raise
            return False
        if self._save_failing:
            log.info("state file %s written again", self.store.path)
            self._save_failing = False
        self._dirty = False
        self._last_save = now
        return True

    def _report(self) -> None:
        """Hand rows already saved in state to the reporter (it never blocks the evaluator)."""
        self._collect()
        state = self.state
        if self._dirty or not self.reporter.enabled or not (state.unreported or state.sent or self._seal):
            return
        pending = {s: state.rows[s] for s in state.unreported if s in state.rows}
        key = (frozenset((s, id(r)) for s, r in pending.items()), bool(state.sent), self._seal)
        if key != self._submitted:
            self.reporter.report(Snapshot(pending, dict(state.rows), dict(state.sent), state.sent_run, self._seal))
            self._submitted = key

    def _collect(self) -> None:
        """Apply what the reporter wrote and learnt: rows leave `unreported` when written and
        `wandb_sent` when the server confirms them; segments record their steps."""
        deliveries = self.reporter.collect()
        if not deliveries:
            return
        for delivery in deliveries:
            apply_delivery(self.state, delivery)
        self._dirty = True
        self._save(force=True)
