"""The scheduler: which evals run where, and the messages their threads send back.

It owns the executors (the configured one, plus spares built when a record an earlier sidecar
left belongs to another kind: a local sidecar follows the Slurm jobs a Slurm sidecar left, a
Slurm sidecar stops the local evals a local one left; routed by `Executor.owns`), the slots of
the configured executor, and the running evals. It knows nothing of state files or W&B: a
pipeline (one model) hands it prepared jobs and receives its events, so many pipelines can later
share one scheduler.

Threads: executors send `Started`/`Updated`/`Finished` from their own threads; a finished eval's
metrics.json is read in a short reader thread (a half-written file is read again after a
delay); everything reaches the main thread through one queue as typed events (`drain`).

With `--gpu-free-memory-mb` (`MemoryGate`), an idle slot is free only when each of its GPUs has
that much memory free (nvidia-smi, read at most once per `--gpu-free-check-seconds`); a slot
refused for memory wakes the loop again (`on_event`) when that interval ends.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import labels
from ..crash import crash_point
from ..errors import MetricsError
from ..executors.base import EvalJob, EvalResult, Executor, Finished, Started
from ..gpu_memory import GpuReadError, read_free, short_gpus, short_text, slot_gpus
from .attribution import fingerprint
from .metrics import read_metrics
from .outcome import wants_metrics

log = logging.getLogger(__name__)

REREAD_DELAY_SECONDS = 2.0  # a half-written metrics.json is read again after this delay


@dataclass(frozen=True)
class EvalKey:
    """Names one eval across threads: the model (pipeline) and the checkpoint step."""

    model: str
    step: int


class Phase(enum.Enum):
    """A running eval's life, as its executor reported it: handed to the executor; known to exist
    (its pid or job id, `Started`); ended (`Finished`: its metrics are being read). An executor's
    second `Started` or `Finished` is dropped by it."""

    LAUNCHED = "launched"
    RUNNING = "running"
    ENDED = "ended"


@dataclass
class Running:
    key: EvalKey
    executor: Executor
    slot: int | None  # the slot of the configured executor it holds (None: it holds none)
    metrics_path: Path
    log_path: Path
    subject: object = None  # what the pipeline evaluates (its Checkpoint); opaque here
    phase: Phase = Phase.LAUNCHED
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def advance(self, to: Phase) -> bool:
        """Move to a later phase (from an executor's thread); False if it was there already."""
        order = list(Phase)
        with self.lock:
            if order.index(to) <= order.index(self.phase):
                return False
            self.phase = to
            return True


@dataclass(frozen=True)
class Completed:
    """An eval ended and its metrics.json was read (if it may have succeeded): for the pipeline's
    judge. `read`: the (size, mtime_ns) of the file as it was read."""

    key: EvalKey
    result: EvalResult
    metrics: dict | MetricsError | None
    read: tuple | None
    running: Running


class Scheduler:
    """Starts prepared evals on free slots and turns what executor threads say into events."""

    def __init__(self, executor: Executor, spares: tuple[Callable[[], Executor], ...] = (), sleep=time.sleep,
                 on_event: Callable[[bool], None] | None = None, spawn=None, gpu_free_mb: int = 0,
                 gpu_check_seconds: float = 30.0, read_gpus=read_free, once: bool = False) -> None:
        """`spares`: factories of the other kinds of executor (built only when a record needs one);
        `spawn(fn, name)` runs the metrics reader of a finished eval (default: a daemon thread;
        the in-process loop tests run it inline). `gpu_free_mb` (0: off): a slot of the configured
        executor is free only when each of its GPUs has this many MiB free (`MemoryGate`; `once`:
        a `once` run, which leaves a wait to the next run when none of its evals runs)."""
        self.executor = executor
        self._spare_factories = list(spares)
        self._spares: list[Executor] = []
        self._sleep = sleep
        self._on_event = on_event or (lambda urgent: None)
        self._events: queue.Queue = queue.Queue()
        self.running: dict[EvalKey, Running] = {}
        self._stopping = False
        self._spawn = spawn or _thread
        self.gate = MemoryGate(gpu_free_mb, gpu_check_seconds, lambda: self._on_event(False), read_gpus,
                               once=once) if gpu_free_mb > 0 else None

    # ----- routing and slots --------------------------------------------------------------------
    def route(self, record: dict) -> Executor:
        """The executor that owns an in-flight record an earlier sidecar left (the configured one
        when no kind claims it)."""
        if self.executor.owns(record):
            return self.executor
        for spare in self._spares:
            if spare.owns(record):
                return spare
        while self._spare_factories:
            spare = self._spare_factories.pop(0)()
            self._spares.append(spare)
            if self._stopping:
                spare.cancel_all()
            if spare.owns(record):
                return spare
        return self.executor

    def idle_slots(self) -> list[int]:
        """The slots of the configured executor no eval holds, in order."""
        slots = len(self.executor.slots())
        mine = [r for r in self.running.values() if r.executor is self.executor]
        if len(mine) >= slots:
            return []
        taken = {r.slot for r in mine}
        return [i for i in range(slots) if i not in taken]

    def free_slot(self, what: str = "") -> int | None:
        """A slot of the configured executor that may start an eval now (for `what`, e.g.
        "checkpoint-300", named in the log), or None: every slot is busy or, with the memory gate,
        no idle slot has enough free GPU memory (the loop is woken again when it is asked anew)."""
        idle = self.idle_slots()
        if not idle or self.gate is None:
            return idle[0] if idle else None
        return self.gate.pick(idle, self.executor.slots(), what, busy=len(idle) < len(self.executor.slots()))

    def cuda(self, slot: int) -> str:
        return self.executor.slots()[slot]

    # ----- starting -----------------------------------------------------------------------------
    def start(self, key: EvalKey, job: EvalJob, slot: int, metrics_path: Path, subject=None) -> None:
        """Start a prepared eval on `slot` of the configured executor."""
        running = self.running[key] = Running(key, self.executor, slot, metrics_path, job.log_path, subject)
        try:
            self.executor.start(key, job, lambda event: self._emit(running, event))
        except BaseException:
            del self.running[key]  # nothing runs: its in-flight record makes the next start run it again
            raise

    def resume(self, key: EvalKey, record: dict, job: EvalJob, metrics_path: Path, subject=None) -> None:
        """Follow an eval an earlier sidecar started, on the executor that owns its record."""
        executor = self.route(record)
        idle = self.idle_slots() if executor is self.executor else []
        slot = idle[0] if idle else None  # it runs already: it holds a slot whatever the memory
        running = self.running[key] = Running(key, executor, slot, metrics_path, job.log_path, subject)
        executor.resume(key, record, job, lambda event: self._emit(running, event))

    # ----- messages -----------------------------------------------------------------------------
    def _emit(self, running: Running, event) -> None:
        """From executor threads. A finished eval's metrics are read in a reader thread first."""
        if isinstance(event, Finished):
            if running.advance(Phase.ENDED):
                try:
                    self._spawn(lambda: self._read(event, running), f"read-{event.key.step}")
                except RuntimeError:  # no thread can be started now: read it here
                    self._read(event, running)
            return
        if isinstance(event, Started) and not running.advance(Phase.RUNNING):
            event.recorded.set()  # a second Started, or one after the end: nothing to record
            return
        self._events.put(event)
        self._on_event(isinstance(event, Started))

    def _read(self, event: Finished, running: Running) -> None:
        metrics: dict | MetricsError | None = None
        read = None
        path = running.metrics_path
        try:
            crash_point("eval-finished")
            if wants_metrics(event.result):
                try:
                    metrics = read_metrics(path, REREAD_DELAY_SECONDS, self._sleep)
                    read = fingerprint(path)
                    crash_point("metrics-read")
                except MetricsError as exc:
                    metrics = exc
        finally:
            self._events.put(Completed(event.key, event.result, metrics, read, running))
            self._on_event(True)

    def drain(self):
        """The events that arrived, one at a time (main thread): what is not taken yet stays queued
        if handling one fails. A `Completed` eval leaves `running` as it is taken."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, Completed):
                self.running.pop(event.key, None)
                if self.gate is not None:
                    self.gate.forget()  # its slot's memory, read while it ran, is free again
            yield event

    # ----- stopping -----------------------------------------------------------------------------
    def cancel_all(self) -> None:
        """From any thread, never blocks: every executor stops (or leaves running) what it runs."""
        self._stopping = True
        if self.gate is not None:
            self.gate.close()
        for executor in (self.executor, *self._spares):
            executor.cancel_all()

    def leave_running(self) -> None:
        for executor in (self.executor, *self._spares):
            executor.leave_running()

    def missing_commands(self, records: list[dict]) -> list[str]:
        """Commands the executors of these in-flight records need that are not on PATH."""
        needed: list[str] = []
        for record in records:
            for command in self.route(record).missing_commands():
                if command not in needed:
                    needed.append(command)
        return needed


class MemoryGate:
    """`--gpu-free-memory-mb`: which idle slot has enough free GPU memory to start an eval.

    nvidia-smi is read at most once per `every` seconds (the reading is reused meanwhile, and
    dropped when an eval ends: its slot's memory comes back). When no idle slot has enough, a
    timer calls `notify` once `every` seconds have passed, so the loop asks again. The log says
    when checkpoints start waiting (INFO; a WARNING when the memory cannot be read: then they
    wait too, as the option protects a training run sharing the GPUs) and when one starts again:
    two lines per wait, not one per check. A `once` run asks again while its evals run, and leaves
    the rest to the next run (it does not wait for a training run to free the GPUs). Main thread
    only, but for the timer's flags."""

    def __init__(self, need_mb: int, every: float, notify: Callable[[], None], read=read_free,
                 clock=time.monotonic, once: bool = False) -> None:
        self.need_mb = need_mb
        self.every = every
        self.once = once
        self._notify = notify
        self._read = read
        self._clock = clock
        self._held: tuple[dict[int, int] | GpuReadError, float] | None = None  # the last reading, and when
        self._stale = False  # set by the timer: the interval ended
        self._timer: threading.Timer | None = None
        self._closed = False
        self.waiting: str | None = None  # None, "memory" or "unreadable": what the log last said

    def reading(self) -> dict[int, int] | GpuReadError:
        """Free MiB by GPU: the last reading while it is younger than `every` seconds, else a new one."""
        now = self._clock()
        if self._held is None or self._stale or now - self._held[1] >= self.every:
            self._stale = False
            try:
                self._held = (self._read(), now)
            except GpuReadError as exc:
                self._held = (exc, now)
        return self._held[0]

    def forget(self) -> None:
        self._held = None

    def pick(self, idle: list[int], slots: list[str], what: str, busy: bool = False) -> int | None:
        """The first of the `idle` slots each of whose GPUs has `need_mb` MiB free, or None.
        `busy`: other slots run evals now (a `once` run waits for them, and asks again meanwhile)."""
        reading = self.reading()
        who = f"{what} waits" if what else "ready checkpoints wait"
        again = f"asking again every {self.every:g} s"
        if self.once:
            again = (f"{again} while this run's evals go on, then the next run does" if busy
                     else "the next run asks again")
        if isinstance(reading, GpuReadError):
            self._refused("unreadable", logging.WARNING, f"--gpu-free-memory-mb {self.need_mb}: cannot read the "
                          f"free GPU memory ({reading}); {who} until it can; {again}")
            return None
        short: list[tuple[int, int | None]] = []
        for slot in idle:
            lacking = short_gpus(slots[slot], reading, self.need_mb)
            if not lacking:
                self._granted(slots[slot], reading, what)
                return slot
            short += [gpu for gpu in lacking if gpu not in short]
        self._refused("memory", logging.INFO, f"{short_text(short)}, --gpu-free-memory-mb {self.need_mb}: "
                      f"{who}; {again}")
        return None

    def _refused(self, kind: str, level: int, text: str) -> None:
        if self.waiting != kind:
            log.log(level, "%s", text)
            self.waiting = kind
        if self._timer is None and not self._closed:
            self._timer = threading.Timer(self.every, self._expired)
            self._timer.daemon = True
            self._timer.name = "gpu-memory-check"
            self._timer.start()

    def _granted(self, slot: str, reading: dict[int, int], what: str) -> None:
        if self.waiting is not None:
            gpus = slot_gpus(slot) or tuple(sorted(reading))
            free = ", ".join(f"GPU {gpu} has {reading[gpu]} MiB free" for gpu in gpus)
            log.info("%s now (--gpu-free-memory-mb %d): %s", free, self.need_mb,
                     f"{what} starts" if what else "evals start again")
            self.waiting = None

    def _expired(self) -> None:
        """From the timer's thread: the interval ended; the loop asks again."""
        self._timer = None
        self._stale = True
        if not self._closed:
            self._notify()

    def close(self) -> None:
        """From any thread: no more wake-ups."""
        self._closed = True
        timer = self._timer
        if timer is not None:
            timer.cancel()


def _thread(fn, name: str) -> None:
    labels.thread(fn, name).start()
