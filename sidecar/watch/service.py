"""The service: the lock, the loop and the tick, wiring a model's pipeline to the scheduler.

One tick: take the events of running evals -> the pipeline scans and plans -> free slots get
evals -> the state is saved -> rows go to the reporter. Everything a checkpoint goes through is
in `pipeline`; which eval runs where in `scheduler`; what an ended eval means in `outcome`.
Many checkpoints ready at once make a backfill (`Backfill`): one progress instead of a line each.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
from pathlib import Path

from ..config import Config
from ..crash import crash_point
from ..errors import EXIT_OK, EXIT_ONCE_FAILED, ConfigError, LockLost
from ..executors.base import Started
from ..executors.local import LocalExecutor
from ..labels import about
from ..notify import make_notifier
from ..progress import Progress, on_terminal
from ..reporters.base import NullReporter, Reporter
from .outcome import Counted, RunTally, once_summary
from .pipeline import ModelPipeline
from .plan import next_wake
from .scheduler import Scheduler
from .state import ProcessLock
from .watcher import Watcher, WatcherUnavailable

log = logging.getLogger(__name__)

EVENT_MIN_GAP = 0.2  # seconds between two ticks woken by filesystem events
ROOT_MISSING_RECHECK_SECONDS = 5.0  # while --sft-root is gone, look for it at least this often
FINISH_WAIT = 60.0  # seconds beyond the kill grace period that close() waits for stopped evals to end
BACKFILL_MIN = 20  # more checkpoints than this ready (or running) at once make a backfill
PROGRESS_ENV = "SIDECAR_PROGRESS_SECONDS"  # a backfill's progress line in a log comes this often
PROGRESS_SECONDS = 60.0
BAR_REFRESH_SECONDS = 1.0  # a bar's clock moves on at least this often, even while one long eval runs


def slurm_executor(config: Config, environ: dict[str, str]):
    from ..executors.slurm import SlurmExecutor

    return SlurmExecutor(config.slurm_args, poll_seconds=config.slurm_poll_seconds,
                         grace_seconds=config.eval_kill_grace_seconds, cancel_on_exit=config.slurm_cancel_on_exit,
                         environ=environ, script_dir=config.state_dir, max_parallel=config.max_parallel,
                         gpus=config.gpu_slots[0])


def local_executor(config: Config) -> LocalExecutor:
    return LocalExecutor(config.gpu_slots, grace_seconds=config.eval_kill_grace_seconds)


def make_executor(config: Config, environ: dict[str, str]):
    if config.executor == "slurm":
        return slurm_executor(config, environ)
    return local_executor(config)


MISSING = "missing"  # a watched root that cannot be listed now


def make_scheduler(config: Config, environ: dict[str, str], executor, clock, notify, spawn=None) -> Scheduler:
    """The configured executor (or `executor`), with the other kinds as spares for records an
    earlier sidecar left."""
    spares = (lambda: slurm_executor(config, environ), lambda: local_executor(config))
    gpu_free_mb = config.gpu_free_memory_mb if config.executor == "local" else 0  # Slurm chooses the GPUs
    return Scheduler(executor or make_executor(config, environ), spares=spares, sleep=clock.sleep,
                     on_event=notify, spawn=spawn, gpu_free_mb=gpu_free_mb,
                     gpu_check_seconds=config.gpu_free_check_seconds, once=config.once)


def progress_seconds(environ: dict[str, str]) -> float:
    """How often a backfill logs its progress line (SIDECAR_PROGRESS_SECONDS, default 60)."""
    raw = environ.get(PROGRESS_ENV, "")
    if not raw.strip():
        return PROGRESS_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{PROGRESS_ENV}={raw!r}: expected a number of seconds above 0 (default {PROGRESS_SECONDS:g})")
    return value


class Backfill:
    """Many checkpoints ready at once (a restart over thousands whose metrics.json exist, a
    sidecar started late): one progress over them, a bar with N/M and an ETA on a terminal, else
    a log line every `every` seconds, and one summary line at the end, while each checkpoint's
    own line moves to DEBUG. It starts when more than BACKFILL_MIN checkpoints are ready or
    running at once (a training run's new checkpoint now and then never does), takes in what
    becomes ready meanwhile, and ends when nothing is left to run. In fleet mode one progress
    counts every model's checkpoints (the models share the slots, so only the whole has an ETA).

    A log line comes when a checkpoint is done and `every` seconds passed since the last one:
    while one eval runs for an hour the log stays quiet rather than repeating the same N/M.
    A bar is redrawn every BAR_REFRESH_SECONDS meanwhile, so that its clock shows it is alive."""

    def __init__(self, clock, every: float) -> None:
        self.clock = clock
        self.every = every
        self.progress: Progress | None = None
        self.bar = False
        self.counts = RunTally()  # the outcomes of this backfill
        self._models: set[str] = set()
        self._nudged = 0.0

    @property
    def active(self) -> bool:
        return self.progress is not None

    def update(self, outstanding: int) -> None:
        """After a tick's scans: `outstanding` checkpoints are ready and due, or running."""
        if self.progress is None:
            if outstanding > BACKFILL_MIN:
                self._begin(outstanding)
        elif outstanding == 0:
            self.finish()
        else:
            self.progress.grow(self.progress.done + outstanding)

    def _begin(self, total: int) -> None:
        bar = self.bar = on_terminal()
        how = "a progress bar below" if bar else f"a progress line at most every {self.every:g} s"
        with about(""):
            log.info("backfill: %d checkpoints are ready at once; %s, each checkpoint's own line at DEBUG", total, how)
            self.progress = Progress("backfill", total, log, every=self.every, bar=bar, clock=self.clock.monotonic)
        self.counts = RunTally()
        self._models = set()
        self._nudged = self.clock.monotonic()

    def counted(self, kind: Counted, model: str, step: int, failure: dict | None) -> None:
        if self.progress is None:
            return
        self.counts.add(kind, model, step, failure)
        self._models.add(model)
        with about(""):  # the progress is the fleet's, not the model's whose outcome this is
            self.progress.advance(timed=kind is not Counted.REUSED)

    def nudge(self) -> None:
        """Once a tick: redraw the bar (its clock and ETA move on while a long eval runs)."""
        if self.progress is not None and self.bar:
            self._nudged = self.clock.monotonic()
            self.progress.advance(0)

    def deadline(self) -> float | None:
        """When the loop should wake to redraw the bar (monotonic), or None."""
        return self._nudged + BAR_REFRESH_SECONDS if self.progress is not None and self.bar else None

    def finish(self, stopped: bool = False) -> None:
        """The summary line (`backfill: 1000/1000 checkpoints in 3m05s (12 evaluated, 988 reused, 0 failed)`)."""
        progress, self.progress = self.progress, None
        if progress is None:
            return
        with about(""):
            text = progress.close()
            counts = self.counts
            parts = [f"{counts.evaluated} evaluated", f"{counts.reused} reused", f"{len(counts.failed)} failed"]
            if counts.vanished:
                parts.append(f"{counts.vanished} vanished")
            models = f" of {len(self._models)} models" if len(self._models) > 1 else ""
            log.info("%s%s (%s)%s", text, models, ", ".join(parts), "; stopped" if stopped else "")


def freeze_loaded() -> None:
    """Loaded states live as long as the process: keep the garbage collector from walking them
    again and again (with 50,000 rows a full collection stalls a tick by ~150 ms)."""
    gc.collect()
    gc.freeze()


class Loop:
    """What a single-model sidecar and a fleet share: the stop, the wake-ups, the two loops and
    the wait for stopped evals. A subclass has a `scheduler` and supplies the tick and what the
    loop waits for (`_drain`, `_confirm_deadlines`, `_wake_deadlines`, `_watched`)."""

    watch_flag = "--sft-root"  # named when a watched root is replaced

    def __init__(self, config: Config, clock, environ: dict[str, str] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self._prompt = threading.Event()  # wake-ups that skip the event-burst gap: a ready marker, an eval's news
        self.scheduler: Scheduler
        self.tally = RunTally()  # every outcome recorded since the start (the `once` summary)
        self.backfill = Backfill(clock, progress_seconds(environ or {}))
        # --notify-command / --wandb-alerts (a program not found is ConfigError here, before the lock)
        self.notifier = make_notifier(config, clock, environ or {})

    def _wire(self, pipeline: ModelPipeline, label: str = "") -> None:
        """Count the pipeline's outcomes here (and tell the notifier); `label` goes before its
        checkpoints' names in the `once` summary (a fleet's model)."""
        model = pipeline.model
        self.notifier.watch(pipeline, pipeline.config.identity.safe_model)

        def counted(kind: Counted, step: int, failure: dict | None = None) -> None:
            self.notifier.outcome(model, kind, step, failure)
            if failure is not None and label:
                failure = {**failure, "label": f"{label}{failure.get('label', '')}"}
            self.tally.add(kind, model, step, failure)
            self.backfill.counted(kind, model, step, failure)

        pipeline.on_outcome = counted
        pipeline.in_backfill = lambda: self.backfill.active

    def once_result(self) -> tuple[str, int]:
        """After `run_once`: its last line (evaluated / reused / failed / waiting, and the models
        not evaluated) and the exit code (EXIT_ONCE_FAILED when a checkpoint's last outcome in this
        run is a failure: the next run retries it)."""
        now = self.clock.time()
        not_ready, retries = 0, []
        for pipeline in self._pipelines():
            failed_here = {step for model, step in self.tally.failed if model == pipeline.model}
            count, times = pipeline.waiting(now, failed_here)
            not_ready += count
            retries += times
        gate = self.scheduler.gate
        gpu_waiting = sum(p.backlog for p in self._pipelines()) if gate is not None and gate.waiting else 0
        text = once_summary(self.tally, not_ready, retries, self.skipped(), now, stopped=self.stop_event.is_set(),
                            gpu_waiting=gpu_waiting)
        return text, EXIT_ONCE_FAILED if self.tally.failed else EXIT_OK

    def notify(self, urgent: bool = False) -> None:
        """Something changed (from another thread): the watcher saw a file event (`urgent`: a
        ready marker), or an eval sent news (urgent)."""
        if urgent:
            self._prompt.set()
        self.wake.set()

    def request_stop(self) -> None:
        """Stop the loop and every running eval (their steps stay pending); from any thread (the
        signal relay's: never from a signal handler itself, see `signals`)."""
        self.stop_event.set()
        self._prompt.set()
        self.scheduler.cancel_all()
        self.wake.set()

    def _finish_running(self, record: bool = True) -> None:
        """Wait for the (cancelled) evals to end and record them as pending (with `record` False,
        only let them go on and end). An eval that does not end within FINISH_WAIT seconds of its
        grace period stays in flight in the state file (the next start settles it)."""
        deadline = self.clock.monotonic() + self.config.eval_kill_grace_seconds + FINISH_WAIT
        while self.scheduler.running:
            self._drain(record)
            if not self.scheduler.running:
                return
            if self.clock.monotonic() > deadline:
                log.error("%s did not end after the stop; left in flight for the next start to settle",
                          ", ".join(f"checkpoint-{k.step}" for k in sorted(self.scheduler.running, key=str)))
                return
            self.clock.wait(self.wake, 0.1)
            self.wake.clear()

    # ----- hooks --------------------------------------------------------------------------------
    def tick(self) -> int:
        raise NotImplementedError

    def _drain(self, record: bool = True) -> int:
        raise NotImplementedError

    def _confirm_deadlines(self) -> list[float]:
        """When checkpoints there at start-up end their confirmation (run_once waits for them)."""
        raise NotImplementedError

    def _wake_deadlines(self, now: float, poll: float) -> list[float]:
        raise NotImplementedError

    def _watched(self) -> dict[Path, object]:
        """Each watched root's identity: (st_dev, st_ino), MISSING, or None (not looked at yet)."""
        raise NotImplementedError

    def skipped(self) -> list[str]:
        """What is watched but not evaluated now, with why (for the `--once` summary); none here."""
        return []

    def _pipelines(self) -> list[ModelPipeline]:
        """The pipelines open now (for the `once` summary)."""
        raise NotImplementedError

    # ----- loops ------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Tick until nothing ready is left and no eval runs (or a stop is requested); returns
        how many checkpoints got an outcome."""
        total = 0
        while not self.stop_event.is_set():
            done = self.tick()
            total += done
            running = bool(self.scheduler.running)
            if not running and done == 0:
                confirming = self._confirm_deadlines()
                if not confirming:
                    break
                # checkpoints there at start-up become ready after a short confirmation (readiness)
                self.clock.wait(self.stop_event, max(0.0, min(confirming) - self.clock.monotonic()))
                continue
            if running and done == 0:
                # an eval finishing (or a signal) wakes us; a backfill's progress line and a held notice too
                deadline = min((d for d in (self.backfill.deadline(), self.notifier.deadline()) if d is not None),
                               default=None)
                self.clock.wait(self.wake, None if deadline is None else max(0.0, deadline - self.clock.monotonic()))
                self.wake.clear()
        return total

    def run_forever(self, watcher: Watcher | None = None, watchers: tuple[Watcher, ...] = ()) -> None:
        """Tick on every wake-up until stopped (`watcher`, or `watchers`: one per watched root).

        Wake-ups: filesystem events (events/auto), the poll deadline (poll/auto, and whenever
        a root is missing), the end of the earliest quiet period, the next retry.
        """
        cfg = self.config
        poll = cfg.poll_interval_seconds
        watching = [w for w in (watcher, *watchers) if w is not None]
        use_events = cfg.watch_mode in ("auto", "events") and bool(watching)
        started: list[Watcher] = []
        if use_events:
            try:
                for one in watching:
                    name = one.start()
                    started.append(one)
                    log.info("watching %s with %s%s", one.root, name,
                             f" and a safety scan every {poll:g} s" if cfg.watch_mode == "auto" else "")
            except WatcherUnavailable as exc:
                for one in started:
                    one.stop()
                started = []
                if cfg.watch_mode == "events":
                    raise ConfigError(f"--watch-mode events: filesystem events are unavailable ({exc}); "
                                      f"use --watch-mode auto or poll") from exc
                log.warning("filesystem events are unavailable (%s); polling every %g s instead", exc, poll)
                use_events = False
        use_poll = cfg.watch_mode != "events" or not use_events
        try:
            self._loop(poll, use_poll, {w.root: w for w in started})
        finally:
            for one in started:
                one.stop()

    def _loop(self, poll: float, use_poll: bool, watchers: dict[Path, Watcher]) -> None:
        poll_deadline = self.clock.monotonic() + poll
        while not self.stop_event.is_set():
            started = self.clock.monotonic()
            before = self._watched()
            done = self.tick()
            replaced = [root for root, now in self._watched().items() if root in watchers
                        and before.get(root) is not None and now not in (None, MISSING, before.get(root))]
            for root in replaced:
                watcher = watchers[root]
                watcher.stop()  # the root was replaced (or is back): watch the new folder
                try:
                    watcher.start()
                    log.info("%s %s was replaced by another folder; watching the new one", self.watch_flag, root)
                except WatcherUnavailable as exc:
                    log.warning("filesystem events stopped (%s); polling every %g s instead", exc, poll)
                    del watchers[root]
                    use_poll = True
            if replaced:
                continue  # scan again: what was written before the new watch started sent no event
            now = self.clock.monotonic()
            if now >= poll_deadline:
                poll_deadline = now + poll
            if done:
                continue
            deadlines = self._wake_deadlines(now, poll)
            deadlines += [d for d in (self.backfill.deadline(), self.notifier.deadline()) if d is not None]
            self.clock.wait(self.wake, next_wake(now, poll_deadline if use_poll else None, deadlines))
            self.wake.clear()
            # A burst of events (a trainer writing a big file) wakes the loop at most every
            # EVENT_MIN_GAP seconds: each tick re-lists the root. A ready marker appearing, an
            # eval starting or finishing, or a stop cuts the wait short.
            gap = EVENT_MIN_GAP - (self.clock.monotonic() - started)
            if gap > 0:
                self.clock.wait(self._prompt, gap)
            self._prompt.clear()


class Sidecar(Loop):
    """One model configuration's pipeline over one scheduler, under the configuration's lock."""

    def __init__(self, config: Config, clock, environ: dict[str, str], executor=None,
                 reporter: Reporter | None = None, spawn=None) -> None:
        super().__init__(config, clock, environ)
        environ = dict(environ)
        self.scheduler = make_scheduler(config, environ, executor, clock, self.notify, spawn)
        self.pipeline = ModelPipeline(config, clock, environ, reporter or NullReporter(), self.scheduler,
                                      wake=self.wake.set, guard=self._check_lock)
        self._wire(self.pipeline)
        self.lock = ProcessLock(config.lock_file, config.lock_mode)
        self._lock_lost = False  # another sidecar holds the lock file now: write nothing more

    @property
    def state(self):
        return self.pipeline.state

    # ----- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Take the lock, then load the state and settle leftovers of a previous run; any failure
        after the lock was taken releases it (a soft-lock marker must not outlive us)."""
        self.lock.acquire()
        try:
            self.pipeline.start()
        except BaseException:
            self.lock.release()
            raise
        freeze_loaded()

    def close(self) -> None:
        """Stop the evals still running (an error may have ended the loop) and wait for them, flush
        state, close the reporter, release the lock. If another sidecar took the lock (found now or
        earlier), stop our evals and write nothing more."""
        crash_point("shutdown")
        self.backfill.finish(stopped=True)
        try:
            if not self._lock_lost:
                self.request_stop()
                try:
                    if self.state is not None:
                        self._finish_running()
                finally:
                    self.notifier.flush()  # held notices go now, while the reporter can still send alerts
                    if not self._lock_lost:
                        self.pipeline.close()
        finally:
            try:
                if self._lock_lost:  # the lock file is the new holder's: not released by us
                    self.scheduler.leave_running()  # Slurm jobs are the new holder's (it re-attaches to them)
                    self.pipeline.reporter.abandon()
                    self.request_stop()
                    self._finish_running(record=False)
                else:
                    self.lock.release()
            finally:
                self.notifier.close()

    def _check_lock(self) -> None:
        """The lock file removed or replaced under us: take it again, or (another sidecar holds it
        now) raise LockLost; also before every state write."""
        try:
            self.lock.check()
        except LockLost:
            self._lock_lost = True
            raise

    def _drain(self, record: bool = True) -> int:
        done = 0
        for event in self.scheduler.drain():
            if record:
                done += self.pipeline.handle(event)
            elif isinstance(event, Started):  # let the eval go on; it ends with the stop
                event.recorded.set()
        return done

    # ----- what the loop waits for ----------------------------------------------------------
    def _confirm_deadlines(self) -> list[float]:
        return self.pipeline.readiness.confirm_deadlines

    def _wake_deadlines(self, now: float, poll: float) -> list[float]:
        deadlines = self.pipeline.wake_deadlines(now)
        if self.pipeline.root_missing:  # its return wakes the watcher's parent watch; this is the safety net
            deadlines.append(now + min(poll, ROOT_MISSING_RECHECK_SECONDS))
        return deadlines

    def _pipelines(self) -> list[ModelPipeline]:
        return [self.pipeline]

    def _watched(self) -> dict[Path, object]:
        pipeline = self.pipeline
        return {self.config.sft_root: MISSING if pipeline.root_missing else pipeline.discoverer.identity}

    # ----- one tick -----------------------------------------------------------------------------
    def tick(self) -> int:
        """One pass; returns how many checkpoints got an outcome recorded (success, failure, vanished)."""
        pipeline = self.pipeline
        assert pipeline.state is not None, "start() first"
        self._check_lock()
        done = self._drain()
        pipeline.resume_followed(self.stop_event.is_set())
        planned, vanished = pipeline.scan()
        done += vanished
        self.backfill.update(pipeline.backlog + len(self.scheduler.running))
        slots_left = True
        for ckpt in planned:
            if self.stop_event.is_set():
                break
            settled = pipeline.settle(ckpt)  # a reused result needs no slot: never waits for one
            if settled is not None:
                done += settled
                continue
            slot = self.scheduler.free_slot(ckpt.name) if slots_left else None
            if slot is None:
                slots_left = False  # every slot busy (or short of GPU memory): a finished eval or the check wakes us
                continue
            done += pipeline.start_eval(ckpt, slot)
        pipeline.save(force=pipeline.dirty)
        pipeline.report()
        self.backfill.nudge()
        self.notifier.tick()
        return done
