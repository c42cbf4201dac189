"""The pipeline of one model configuration: discover -> readiness -> plan -> evaluate -> judge ->
state -> report.

A pipeline owns its state file, readiness tracker, policy, pins and reporter; it hands prepared
evals to a `Scheduler` (shared slots and executors) and applies the events that come back. Follow
a checkpoint from `scan` through `dispatch` and `handle` to `report`.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import replace
from pathlib import Path

from ..checkpoints import Checkpoint
from ..config import FLAGS, Config
from ..crash import crash_point
from ..errors import LockLost, MetricsError, StateWriteError
from ..executors.base import EvalJob, Outcome, Started, Updated
from ..files import not_regular
from ..reporters.base import ReportBatch, Reporter
from ..reporters.rows import RESERVED
from .attribution import fingerprint, non_default_eval_flags, producer, record_producer
from .discover import Discoverer, RootMissing
from .keep_best import Keeper
from .metrics import read_metrics
from .outcome import Counted, Decision, Evidence, judge, plural, retry_text, when_retried
from .pins import Pins
from .plan import (Policy, build_row, next_retry, plan, record_failure, record_success, record_vanished,
                   still_wanted, wants)
from .readiness import ReadinessTracker
from .recovery import adopt_state, reconcile_reporting, triage_in_flight
from .reporting import apply_delivery
from .scheduler import Completed, EvalKey, Scheduler
from .state import State, StateStore, utc_iso
from .training import training_context

log = logging.getLogger(__name__)

SAVE_BATCH_SECONDS = 1.0  # reused metrics (backfill) are saved at most this often, and at tick end


def policy_for(config: Config) -> Policy:
    return Policy(order=config.order, max_per_tick=config.max_pending_per_cycle,
                  max_attempts=config.max_attempts, backoff_seconds=config.retry_backoff_seconds,
                  force_steps=config.force_eval_steps)


class ModelPipeline:
    """Evaluates every ready checkpoint of one model configuration exactly once and records it."""

    def __init__(self, config: Config, clock, environ: dict[str, str], reporter: Reporter,
                 scheduler: Scheduler, wake=None, guard=None) -> None:
        """`guard()` runs right before every state file replacement: it raises LockLost when another
        sidecar holds this configuration's lock now, so that nothing of ours overwrites its state
        (checked after the slow part of a write, the fsync, to leave the least time between)."""
        self.config = config
        self.clock = clock
        self.environ = dict(environ)
        self.reporter = reporter
        self.scheduler = scheduler
        self.model = config.identity.key
        self.policy = policy_for(config)
        self.store = StateStore(config.state_file)
        self.discoverer = Discoverer(config.sft_root)
        self.readiness = ReadinessTracker(config.checkpoint_ready_seconds, config.ready_marker)
        self.pins = Pins(config.state_dir, config.sft_root.name) if config.pin_checkpoints else None
        self.keeper = Keeper(config.state_dir, config.sft_root, config.keep_best, config.keep_best_metric,
                             config.keep_best_lower_better, config.identity.key, config.state_file,
                             movable=self.pins.root if self.pins else None) if config.keep_best > 0 else None
        self.host = socket.gethostname()
        self._wake = wake or (lambda: None)
        self._guard = guard or (lambda: None)
        self.state: State | None = None
        self.root_missing = False
        self._interrupted: set[int] = set()  # in flight when a previous sidecar died: run again
        self._follow: dict[int, dict] = {}  # evals that outlived their sidecar (Slurm jobs): follow them
        self._foreign: dict[int, tuple | None] = {}  # step -> another configuration's metrics.json (size, mtime)
        self._warned_unattributed = False
        self._told_foreign = False  # a backfill said once why it re-evaluates other configurations' results
        self._first_scan = True
        self._startup = True  # the first scan lists the folders there at start-up (readiness)
        self._submitted: tuple = ()
        self._seal = False  # a killed online sidecar may have lost its last table and summary: write them
        self.dirty = False
        # With many pipelines (a fleet) a round over the models can take longer than the batch
        # interval: each reused row would then rewrite its model's state. Batched writes wait for
        # the end of the tick instead (reused results are found again if a crash loses them).
        self.batch_until_tick_end = False
        self._last_save = float("-inf")
        self._save_failing = False
        self._save_error = ""
        # The loop's hooks: it counts every recorded outcome (a backfill's progress, the `once`
        # summary), and while a backfill runs each checkpoint's own lines are at DEBUG.
        self.on_outcome = lambda kind, step, failure=None: None
        self.in_backfill = lambda: False
        self.backlog = 0  # checkpoints ready and due at the last scan (before --max-pending-per-cycle)
        self.force_eval_idle = 0  # --force-eval with nothing to run: the processed checkpoints it leaves as they are
        self.hints = True  # log start-up hints here (a fleet gathers its models' into one line)

    # ----- start ------------------------------------------------------------------------------
    def start(self) -> None:
        """Load (or create and upgrade) the state and settle what a previous run left."""
        cfg = self.config
        state = adopt_state(self.store.load(), cfg, self.store.path)
        triage = triage_in_flight(state, self.scheduler)
        self._interrupted, self._follow = triage.interrupted, triage.follow
        redo = self._interrupted & state.processed - self.policy.force_steps
        if redo:  # a re-evaluation (--force-eval-steps) cut short: finish it, as its flag asked
            self.policy = replace(self.policy, force_steps=self.policy.force_steps | redo)
        if self.keeper is not None:
            for kept in self.keeper.start(state.rows, busy=set(state.in_flight) | self.policy.force_steps):
                if kept.step not in state.processed or kept.step in self.policy.force_steps:
                    self.readiness.ready.add(kept.step)  # a kept copy is complete by construction
        if self.pins is not None:
            state.pins_dir = str(self.pins.root)
            self.pins.clean_temp()
            for pinned in self.pins.existing():
                if pinned.step in state.processed and pinned.step not in self.policy.force_steps:
                    self.pins.unpin(pinned.name)  # its step is done: a leftover of a crash
                else:
                    self.readiness.ready.add(pinned.step)  # a pin is complete by construction
        if self.reporter.enabled:
            self._seal = reconcile_reporting(state, cfg, self.reporter)
        self.state = state
        self.reporter.bind(state.run_id, state.run_name, on_delivery=self._wake)
        self.save(force=True)

    # ----- one pass ---------------------------------------------------------------------------
    def running_steps(self) -> set[int]:
        return {k.step for k in self.scheduler.running if k.model == self.model}

    def resume_followed(self, stopping: bool) -> None:
        """Follow the evals a previous sidecar left running (Slurm jobs) instead of starting them again."""
        if stopping or not self._follow:
            return  # they stay in flight in the state file for the next start
        cfg = self.config
        for step, entry in sorted(self._follow.items()):
            name = str(entry.get("checkpoint") or f"checkpoint-{step}")
            path = Path(entry["path"]) if entry.get("path") else cfg.sft_root / name
            ckpt = Checkpoint(step, name, path.parent)
            job = replace(self._job(ckpt, [], {}), tag=str(entry.get("slurm_tag") or ""),
                          attach=str(entry.get("job_id") or ""))
            self.scheduler.resume(EvalKey(self.model, step), entry, job, self.metrics_path(ckpt), ckpt)
        self._follow.clear()

    def scan(self) -> tuple[list[Checkpoint], int]:
        """Discover and walk the root: (the checkpoints to evaluate now, in order; how many outcomes
        were recorded: checkpoints that vanished before their eval)."""
        state = self.state
        self.backlog = 0
        try:
            found = self.discoverer.scan()
        except RootMissing as exc:
            if not self.root_missing:
                log.warning("--sft-root is missing or unreadable (%s); waiting for it to come back", exc)
                self.root_missing = True
            self.readiness.new_pass()  # quiet periods of checkpoints gone with it
            self._startup = False  # what appears with the root was not there at start-up
            return [], 0
        if self.root_missing:
            log.info("--sft-root %s is back", self.config.sft_root)
            self.root_missing = False
        if self.pins is not None:  # a pinned checkpoint lives on after rotation deleted the original
            names = {c.step for c in found}
            found = sorted(found + [p for p in self.pins.existing() if p.step not in names])
        if self.keeper is not None:  # so is a kept copy (re-evaluated by --force-eval-steps)
            found = self.keeper.with_kept(found)
        crash_point("after-discovery")
        now_wall, now_mono = self.clock.time(), self.clock.monotonic()
        first_scan, self._startup = self._startup, False
        if self._first_scan:
            self._first_scan = False
            absent = sorted(set(self.config.force_eval_steps) - {c.step for c in found})
            if absent:
                log.warning("--force-eval-steps: no checkpoint folder for step(s) %s; nothing to re-evaluate there",
                            ", ".join(map(str, absent)))
        running = self.running_steps()
        if self.discoverer.unchanged and not (first_scan or state.pending or self._interrupted or running
                                              or self.pins is not None):
            # the same folders as at the last pass, none of them wanted then: nothing can be wanted now
            self.readiness.new_pass()
            return [], 0
        done = self._settle_vanished(found, running, now_wall)
        if found and state.last_seen_step != found[-1].step:
            state.last_seen_step = found[-1].step
            self.dirty = True
        ready = [c for c in self._ready(found, now_mono, now_wall, first_scan) if c.step not in running]
        if first_scan:
            self._force_eval_hint(found)
        self.backlog = sum(1 for c in ready if wants(c.step, state, now_wall, self.policy))
        return plan(ready, state, now_wall, self.policy), done

    def _force_eval_hint(self, found: list[Checkpoint]) -> None:
        """--force-eval with nothing to run but processed checkpoints here: it does not re-evaluate
        those (it makes new checkpoints run the eval script over an existing metrics.json)."""
        state = self.state
        if not self.config.force_eval or self.config.force_eval_steps or state.pending:
            return
        done = [c.step for c in found if c.step in state.processed]
        self.force_eval_idle = len(done)
        if done and self.hints:
            example = ",".join(map(str, done[-2:]))
            log.info("--force-eval: nothing new to evaluate; the %d processed checkpoint(s) keep their results "
                     "(--force-eval makes new checkpoints run the eval script even when a metrics.json exists; "
                     "--force-eval-steps %s re-evaluates processed ones)", len(done), example)

    def _settle_vanished(self, found: list[Checkpoint], running: set[int], now_wall: float) -> int:
        """Seen-but-unprocessed steps that are gone now were rotated away before their eval."""
        state = self.state
        present = {c.step for c in found}
        for step in sorted(self._interrupted & state.processed - present - running):
            # a re-evaluation a killed sidecar left, of a checkpoint deleted since
            self._drop_reevaluation(step, "it was deleted while it was being re-evaluated")
        known = set(state.pending) | self._interrupted | set(state.failed)
        gone = sorted(s for s in known if s not in present and s not in state.processed and s not in state.vanished
                      and s not in running and still_wanted(s, state, self.policy))
        for step in gone:
            name = state.failed.get(step, {}).get("checkpoint", f"checkpoint-{step}")
            log.warning("%s was deleted before it was evaluated; recorded as vanished", name)
            record_vanished(state, step, name, "deleted before its eval", now_wall)
            self._interrupted.discard(step)
            self.readiness.forget(step)
            self.on_outcome(Counted.VANISHED, step)
        if gone:
            self.dirty = True
        return len(gone)

    def _ready(self, found: list[Checkpoint], now_mono: float, now_wall: float, first_scan: bool) -> list[Checkpoint]:
        """Walk only checkpoints still wanted and not yet known ready; record the pending list.
        `first_scan`: these folders were there when the sidecar started (see `readiness`)."""
        state = self.state
        ready: list[Checkpoint] = []
        pending: list[int] = []
        self.readiness.new_pass()
        for ckpt in found:
            if not still_wanted(ckpt.step, state, self.policy):
                continue
            pending.append(ckpt.step)
            ok, reason = self.readiness.is_ready(ckpt.step, ckpt.path, now_mono, now_wall, first_scan)
            if not ok:
                log.debug("%s not ready: %s", ckpt.name, reason)
                continue
            ready.append(self._pinned(ckpt))
        if pending != state.pending:
            state.pending = pending
            self.dirty = True
        return ready

    def wake_deadlines(self, now_mono: float) -> list[float]:
        """Monotonic times this pipeline needs a pass: quiet periods ending, the next retry."""
        deadlines = list(self.readiness.deadlines)
        wall = self.clock.time()
        retry = next_retry(self.state, self.policy, after=wall)
        if retry is not None:
            deadlines.append(now_mono + (retry - wall))
        return deadlines

    def waiting(self, now_wall: float, failed_here: set[int]) -> tuple[int, list[float]]:
        """For the `once` summary: (how many wanted checkpoints were not ready at the last scan;
        the retry times of those that failed in an earlier run and are not due yet). Steps in
        `failed_here` failed in this run: they are counted as failed, not here."""
        state = self.state
        not_ready, retries = 0, []
        for step in state.pending if state is not None else ():
            if step in failed_here or not still_wanted(step, state, self.policy):
                continue
            retry_after = float(state.failed.get(step, {}).get("retry_after", 0.0))
            if retry_after > now_wall:
                retries.append(retry_after)
            else:
                not_ready += 1
        return not_ready, retries

    # ----- dispatch ---------------------------------------------------------------------------
    def metrics_path(self, ckpt: Checkpoint) -> Path:
        return self.config.results_root / ckpt.parent_name / ckpt.name / "metrics.json"

    def dispatch(self, ckpt: Checkpoint, slot: int) -> int:
        """Record at once what needs no eval (reused metrics.json, a vanished folder); otherwise
        start the eval on `slot`. Returns how many outcomes were recorded."""
        settled = self.settle(ckpt)
        return settled if settled is not None else self.start_eval(ckpt, slot)

    def settle(self, ckpt: Checkpoint) -> int | None:
        """Record what needs no eval, and no slot: a reused metrics.json, a vanished folder, an
        unusable metrics path (returns the outcomes recorded); None when `ckpt` needs an eval."""
        cfg, state, step = self.config, self.state, ckpt.step
        metrics_path = self.metrics_path(ckpt)
        rerun = cfg.force_eval or step in self.policy.force_steps or step in self._interrupted
        unusable = not_regular(metrics_path)
        if unusable:  # a FIFO or a device would block or flood the eval that writes it, and us
            record = record_failure(state, ckpt, f"{metrics_path} {unusable}; remove it (the eval script writes "
                                    f"its results there)", self.clock.time(), self.policy)
            log.error("%s", record["error"])
            self._count_failure(ckpt.step, record)
            self.dirty = True
            self.save(force=True)
            return 1
        if not rerun and self._reuse(ckpt, metrics_path):
            return 1
        if not ckpt.path.is_dir():
            log.warning("%s was deleted before its eval; recorded as vanished", ckpt.name)
            record_vanished(state, step, ckpt.name, "deleted before its eval", self.clock.time())
            self.on_outcome(Counted.VANISHED, step)
            self.dirty = True
            return 1
        return None

    def start_eval(self, ckpt: Checkpoint, slot: int) -> int:
        """Start the eval of `ckpt` on `slot` (its in-flight record saved first); 0, or 1 when it
        could not be started (recorded as a failure that uses no attempt)."""
        cfg, state, step = self.config, self.state, ckpt.step
        metrics_path = self.metrics_path(ckpt)
        cuda = self.scheduler.cuda(slot)
        job = replace(self._job(ckpt, ["bash", str(cfg.eval_script), str(cfg.sft_root)],
                                {**self.environ, **cfg.eval_env(ckpt.path, cuda_list=cuda)}), gpus=cuda)
        # The attempt's record (its tag, the state of metrics.json) is saved before the eval
        # exists: whatever happens next, a restart finds what it started and judges its result.
        job, record = self.scheduler.executor.prepare(job)
        state.in_flight[step] = {**self._in_flight_entry(ckpt), **record, "metrics_before": self._metrics_mtime(ckpt)}
        self.dirty = True
        if not self.save(force=True):
            return self._not_started(ckpt)
        self._chat("evaluating %s %s (log: %s)", ckpt.name, self.scheduler.executor.where(job), job.log_path)
        self.scheduler.start(EvalKey(self.model, step), job, slot, metrics_path, ckpt)
        return 0

    def _reuse(self, ckpt: Checkpoint, metrics_path: Path) -> bool:
        """A metrics.json already there is this checkpoint's result (as the original tool did),
        unless another configuration of this model produced it. True if recorded."""
        try:
            metrics = read_metrics(metrics_path)
        except MetricsError as exc:
            if exc.reason != "not found":
                log.info("%s; running the eval script for %s", exc, ckpt.name)
            return False
        made_by = producer(metrics_path)
        if made_by is None or made_by == self.model:
            if made_by is None:
                self._warn_unattributed(metrics_path)
            self._succeed(ckpt, metrics, metrics_path, evaluated=False)
            return True
        text = ("%s was produced by another configuration of this model (run eval-%s); evaluating %s with this one "
                "(the eval script overwrites it)")
        if self.in_backfill() and not self._told_foreign:  # once in a backfill, so the evals are explained
            self._told_foreign = True
            log.info(text + "; the same for every such checkpoint of this backfill (--log-level DEBUG names each)",
                     metrics_path, made_by, ckpt.name)
        else:
            self._chat(text, metrics_path, made_by, ckpt.name)
        self._foreign[ckpt.step] = fingerprint(metrics_path)
        return False

    def _warn_unattributed(self, metrics_path: Path) -> None:
        """Once: a metrics.json no sidecar eval produced is reused under non-default eval flags,
        so it may hold another configuration's numbers."""
        if self._warned_unattributed:
            return
        self._warned_unattributed = True
        changed = non_default_eval_flags(self.config, FLAGS)
        if changed:
            log.warning("reusing metrics.json files this sidecar did not produce (e.g. %s) as results of this "
                        "configuration (%s); if they came from other flags, start once with --force-eval",
                        metrics_path, ", ".join(changed))

    def _not_started(self, ckpt: Checkpoint) -> int:
        """The in-flight record could not be saved: the eval is not started (a kill -9 would leave it
        untracked); retried later, using no attempt (the failure is the sidecar's disk's)."""
        self.state.in_flight.pop(ckpt.step, None)
        now = self.clock.time()
        record = record_failure(self.state, ckpt, f"{ckpt.name} was not started (its in-flight record must be saved "
                                f"first): {self._save_error}", now, self.policy, consume_attempt=False)
        log.warning("%s; not counted as an attempt, %s", record["error"], self._retry(record, now))
        return 0

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

    def _chat(self, msg: str, *args) -> None:
        """A checkpoint's own progress line: INFO, but DEBUG during a backfill (its progress shows
        instead: one line per checkpoint of thousands says nothing)."""
        log.log(logging.DEBUG if self.in_backfill() else logging.INFO, msg, *args)

    def _log_path(self, name: str) -> Path:
        return self.config.log_dir / self.config.identity.safe_model / f"{name}.log"

    def _in_flight_entry(self, ckpt: Checkpoint) -> dict:
        now = self.clock.time()
        return {"checkpoint": ckpt.name, "path": str(ckpt.path), "started": utc_iso(now), "started_at": now,
                "host": self.host}

    def _job(self, ckpt: Checkpoint, argv: list[str], env: dict[str, str]) -> EvalJob:
        """The eval of `ckpt`: its log file, timeout, Slurm job name and the prefix of its attempt tag."""
        cfg = self.config
        return EvalJob(argv, cfg.repo_root, env, self._log_path(ckpt.name), cfg.eval_timeout_seconds,
                       f"sidecar-{cfg.identity.safe_model}-{ckpt.step}", f"eval-sidecar:{self.model}:{ckpt.step}",
                       step=ckpt.step)

    def _metrics_mtime(self, ckpt: Checkpoint) -> int | None:
        seen = fingerprint(self.metrics_path(ckpt))
        return seen[1] if seen else None

    # ----- events from running evals ----------------------------------------------------------
    def handle(self, event) -> int:
        """Apply one event of this pipeline's evals; returns how many outcomes were recorded."""
        step = event.key.step
        if isinstance(event, Started):
            try:
                running = self.scheduler.running.get(event.key)
                if running is not None:
                    self._mark_in_flight(running.subject, event.info)
            finally:
                event.recorded.set()  # the executor goes on: what names the eval is saved
            return 0
        if isinstance(event, Updated):
            entry = self.state.in_flight.get(step)
            if entry is not None:
                entry.update(event.info)
                self.dirty = True
                self.save(force=True)
            return 0
        assert isinstance(event, Completed)
        self._record(event)
        return 1

    def _mark_in_flight(self, ckpt: Checkpoint, info: dict) -> None:
        """Record what names the running eval (pid and start time, or Slurm job id) before it goes on."""
        previous = self.state.in_flight.get(ckpt.step) or {}
        entry = {**previous, "host": self.host} if previous else self._in_flight_entry(ckpt)
        entry.update(info)
        self.state.in_flight[ckpt.step] = entry
        self.dirty = True
        self.save(force=True)

    def _record(self, done: Completed) -> None:
        """Judge one ended eval and record the verdict."""
        state, ckpt, result = self.state, done.running.subject, done.result
        step, log_path = ckpt.step, done.running.log_path
        entry = state.in_flight.get(step, {})
        before, written = entry.get("metrics_before"), self._metrics_mtime(ckpt)
        evidence = Evidence(ckpt.name, str(self.metrics_path(ckpt)), self.config.eval_timeout_seconds,
                            present=ckpt.path.is_dir(), reevaluation=step in state.processed,
                            foreign=done.read is not None and self._foreign.get(step) == done.read,
                            metrics_fresh=written is not None and (not isinstance(before, int) or written > before))
        verdict = judge(result, done.metrics, evidence)
        now = self.clock.time()
        decision = verdict.decision
        if decision is Decision.IN_FLIGHT:
            log.info("%s: %s; a restarted sidecar re-attaches to it", ckpt.name, result.error)
        elif decision is Decision.PENDING:
            state.in_flight.pop(step, None)
            if result.outcome is Outcome.NOT_SUBMITTED:
                log.info("%s: the previous sidecar stopped before its Slurm job was submitted; it is evaluated again",
                         ckpt.name)
            else:
                log.info("eval of %s was stopped by shutdown; it stays pending", ckpt.name)
        elif decision is Decision.SUCCESS:
            self._foreign.pop(step, None)
            self._succeed(ckpt, done.metrics, self.metrics_path(ckpt), evaluated=True, read=done.read)
            return
        elif decision is Decision.KEEP_EARLIER:
            self._drop_reevaluation(step, verdict.error)
            self.on_outcome(Counted.VANISHED, step)
        elif decision is Decision.VANISHED:
            log.warning("%s was deleted during its eval; recorded as vanished", ckpt.name)
            record_vanished(state, step, ckpt.name, "deleted during its eval", now)
            self.on_outcome(Counted.VANISHED, step)
        else:
            self._record_failure(ckpt, verdict.error, verdict.consume_attempt, log_path, now)
        self._interrupted.discard(step)
        self.dirty = True
        self.save(force=True)

    def _record_failure(self, ckpt: Checkpoint, error: str, consume: bool, log_path: Path, now: float) -> None:
        record = record_failure(self.state, ckpt, f"{error}; see {log_path}", now, self.policy, consume_attempt=consume)
        if not consume:  # not the eval's doing (preemption, node failure, a full disk)
            log.warning("%s; not counted as an attempt, %s (see %s)", error, self._retry(record, now), log_path)
        elif record.get("given_up"):
            self._unpin(ckpt.name)
            log.error("%s; giving up after %s (see %s)", error, plural(int(record["attempts"]), "attempt"), log_path)
        else:
            log.warning("%s; %s (see %s)", error, retry_text(record, self.policy.max_attempts, now, self.config.once),
                        log_path)
        self._count_failure(ckpt.step, record)

    def _retry(self, record: dict, now: float) -> str:
        return when_retried(float(record["retry_after"]), now, self.config.once)

    def _count_failure(self, step: int, record: dict) -> None:
        kind = Counted.GIVEN_UP if record.get("given_up") else Counted.FAILED
        self.on_outcome(kind, step, {**record, "max_attempts": self.policy.max_attempts,
                                     "label": record.get("checkpoint") or f"checkpoint-{step}"})

    def _drop_reevaluation(self, step: int, why: str) -> None:
        """Give up re-evaluating a processed step whose checkpoint is gone: its recorded result stands."""
        log.warning("checkpoint-%s: %s; its earlier result stands", step, why)
        self.state.in_flight.pop(step, None)
        self._interrupted.discard(step)
        self.policy = replace(self.policy, force_steps=self.policy.force_steps - {step})
        self.dirty = True

    def _succeed(self, ckpt: Checkpoint, metrics: dict, metrics_path: Path, evaluated: bool, read=None) -> None:
        clashing = [k for k in metrics if k in RESERVED]
        if clashing:
            log.warning("metrics.json at %s: ignoring %s (the name of a row field)", metrics_path, ", ".join(clashing))
        row = build_row(ckpt, metrics, str(metrics_path), self.config.eval_params(),  # read before its pin goes
                        training_context(ckpt.path, ckpt.step) if self.config.training_context else None)
        kept = []
        if self.keeper is not None:  # before its pin goes: a pin kept is moved, not linked twice
            defer = not evaluated and ckpt.parent == self.config.sft_root  # kept at the pass's end (report)
            kept = self.keeper.offer(ckpt, row, self.state.rows, self.running_steps(), defer=defer)
        self._unpin(ckpt.name)
        if evaluated and read is not None:
            record_producer(metrics_path, self.model, read)
        record_success(self.state, row)
        self.readiness.forget(ckpt.step)
        self._interrupted.discard(ckpt.step)
        if ckpt.step in self.policy.force_steps:
            self.policy = replace(self.policy, force_steps=self.policy.force_steps - {ckpt.step})
        self.dirty = True
        shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("HR@10", "NDCG@10") if k in metrics)
        self._chat("%s %s%s", "evaluated" if evaluated else "recorded existing metrics of", ckpt.name,
                   f": {shown}" if shown else "")
        for line in kept:
            self._chat("%s", line)
        self.on_outcome(Counted.EVALUATED if evaluated else Counted.REUSED, ckpt.step)
        # A finished evaluation is saved at once; reused metrics.json files are batched (a
        # backfill of 10,000 must not rewrite the state 10,000 times).
        self.save(force=evaluated)
        if evaluated:
            crash_point("state-written")

    # ----- persistence and reporting ----------------------------------------------------------
    def save(self, force: bool = False) -> bool:
        """Write the state if it changed (batched unless `force`); False if the write failed."""
        if not self.dirty and not force:
            return True
        now = self.clock.monotonic()
        if not force and (self.batch_until_tick_end or now - self._last_save < SAVE_BATCH_SECONDS):
            return True
        try:
            self.store.save(self.state, self.clock.time(), guard=self._guard)
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
        self.dirty = False
        self._last_save = now
        return True

    def report(self) -> None:
        """Hand rows already saved in state to the reporter (it never blocks the evaluator). Runs at
        the end of every pass: the pass's reused results are kept now (`Keeper.settle`)."""
        if self.keeper is not None:
            for line in self.keeper.settle(self.state.rows, self.running_steps()):
                self._chat("%s", line)
        self.collect()
        state = self.state
        if self.dirty or not self.reporter.enabled or not (state.unreported or state.sent or self._seal):
            return
        pending = {s: state.rows[s] for s in state.unreported if s in state.rows}
        key = (frozenset((s, state.revisions.get(s, 0)) for s in pending), bool(state.sent), self._seal)
        if key != self._submitted:
            self.reporter.report(ReportBatch(pending, dict(state.rows), dict(state.sent), state.sent_run, self._seal))
            self._submitted = key

    def collect(self) -> None:
        """Apply what the reporter wrote and learnt: rows leave `unreported` when written and
        `wandb_sent` when the server confirms them; segments record their steps."""
        deliveries = self.reporter.collect()
        if not deliveries:
            return
        for delivery in deliveries:
            apply_delivery(self.state, delivery)
        self.dirty = True
        self.save(force=True)

    def close(self) -> None:
        """Flush the state and finish the reporter's run (after every eval has ended). If another
        sidecar took the lock meanwhile, LockLost leaves the run unfinished: the service abandons
        it (the new holder writes to it now)."""
        try:
            if self.state is not None:
                self.save(force=True)
                self.report()
        except LockLost:
            raise
        except BaseException:
            self.reporter.close()
            raise
        self.reporter.close()
        if self.state is not None:
            self.collect()
            self.save(force=self.dirty)

