"""Replaying scripted histories through the sidecar's REAL loop, in one thread.

Everything is the sidecar's own code over real files in tmp_path (discovery, readiness walks,
the state file, the lock, metrics.json), except two stand-ins:

- `FakeClock` stands in for time: `time`, `monotonic`, `sleep` and `wait` move a fake clock, and
  alarms scheduled on it (a process ending, a checkpoint appearing, a stop) fire when fake time
  reaches them. A test runs hours of the loop in milliseconds and knows exactly when each thing
  happened.
- `ScriptedExecutor` stands in for the eval processes: it implements the `Executor` protocol and
  plays a script per checkpoint step (exits 0 after 30 fake seconds and writes metrics, exits 3,
  times out, is not started, runs until cancelled), and records every job it was given.

`harness(tmp_path, *flags)` builds a `Sidecar` over a real temp folder of checkpoint folders with
both stand-ins, the metrics reader run inline (`spawn`) and the NullReporter (W&B disabled).
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sidecar.checkpoints import Checkpoint
from sidecar.config import build_config, build_parser
from sidecar.executors.base import EvalJob, EvalResult, Finished, Outcome, Started
from sidecar.executors.local import LocalExecutor
from sidecar.watch.service import Sidecar
from sidecar.watch.state import read_state

PROG = "eval_wandb_sidecar.py"
MARKER = "trainer_state.json"


# ----- time ----------------------------------------------------------------------------------------------
@dataclass(order=True)
class Alarm:
    at: float  # fake monotonic time
    seq: int
    fn: Callable[[], None] = field(compare=False)
    active: bool = field(default=True, compare=False)


class FakeClock:
    """A stand-in for `sidecar.clock.SystemClock` (time only; no threads, no real waiting).

    `monotonic()` starts at `mono` and `time()` at the real wall time of creation (so the real
    mtimes of files a test writes compare with it as they would), and both move together, only
    when the loop sleeps or waits:

    - `sleep(s)`: fake time moves `s` seconds on, firing the alarms due on the way.
    - `wait(event, timeout)`: True at once if `event` is set; otherwise fake time moves on, firing
      the alarms due, until one of them sets `event` (True, at that alarm's time: a real thread's
      news wakes a real wait early too) or `timeout` seconds passed (False).
      With `timeout` None and no alarm left to set the event, the real loop would wait forever:
      `on_forever` is called if given (a stop hook, e.g. `Sidecar.request_stop`), else an
      AssertionError says so.

    Alarms (`at`, `after`) are what other threads would do: a process ending, a file appearing, a
    signal. Guards against a loop that never stops: fake time may not pass `horizon` (seconds
    since the start), and at most `max_waits` waits are allowed; both raise AssertionError.
    """

    def __init__(self, mono: float = 1000.0, on_forever: Callable[[], None] | None = None,
                 max_waits: int = 200_000) -> None:
        self._start = mono
        self._now = mono
        self._wall0 = time.time()
        self._alarms: list[Alarm] = []
        self._seq = itertools.count()
        self.on_forever = on_forever
        self.horizon: float | None = None
        self.max_waits = max_waits
        self.waits = 0

    # the SystemClock interface
    def time(self) -> float:
        return self._wall0 + (self._now - self._start)

    def monotonic(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self._advance(self._now + max(0.0, seconds))

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        self.waits += 1
        if self.waits > self.max_waits:
            raise AssertionError(f"the loop waited {self.max_waits} times (at {self.elapsed():g} fake seconds) "
                                 f"without stopping")
        if event.is_set():
            return True
        deadline = None if timeout is None else self._now + max(0.0, timeout)
        while True:
            alarm = self._next()
            if alarm is None or (deadline is not None and alarm.at > deadline):
                break
            self._fire(alarm)
            if event.is_set():
                return True
        if deadline is None:
            if self.on_forever is None:
                raise AssertionError(f"the loop would wait forever at {self.elapsed():g} fake seconds: it waits "
                                     f"without a timeout and nothing scheduled will wake it")
            self.on_forever()
            return event.is_set()
        self._advance(deadline)
        return event.is_set()

    # for tests
    def elapsed(self) -> float:
        """Fake seconds since the clock was made (tests speak in these)."""
        return self._now - self._start

    def at(self, seconds: float, fn: Callable[[], None]) -> Alarm:
        """Run `fn` when `seconds` fake seconds have passed since the start (at once if that is past)."""
        return self._schedule(self._start + seconds, fn)

    def after(self, seconds: float, fn: Callable[[], None]) -> Alarm:
        """Run `fn` `seconds` fake seconds from now."""
        return self._schedule(self._now + seconds, fn)

    def _schedule(self, mono: float, fn: Callable[[], None]) -> Alarm:
        alarm = Alarm(max(mono, self._now), next(self._seq), fn)
        heapq.heappush(self._alarms, alarm)
        return alarm

    def _next(self) -> Alarm | None:
        while self._alarms and not self._alarms[0].active:
            heapq.heappop(self._alarms)
        return self._alarms[0] if self._alarms else None

    def _fire(self, alarm: Alarm) -> None:
        heapq.heappop(self._alarms)
        alarm.active = False
        self._move(alarm.at)
        alarm.fn()

    def _advance(self, target: float) -> None:
        while (alarm := self._next()) is not None and alarm.at <= target:
            self._fire(alarm)
        self._move(target)

    def _move(self, mono: float) -> None:
        if self.horizon is not None and mono - self._start > self.horizon:
            raise AssertionError(f"fake time passed {self.horizon:g} s: the loop did not stop")
        self._now = max(self._now, mono)


# ----- processes -----------------------------------------------------------------------------------------
def default_metrics(step: int) -> dict:
    return {"HR@10": step / 10000, "NDCG@10": step / 20000}


@dataclass(frozen=True)
class Step:
    """What one scripted attempt does: ends `after` fake seconds from its start (inf: only a
    cancel ends it) the way `outcome`/`returncode`/`error` say, writing `metrics` (a dict, a
    function of the step giving one, raw text, or None: nothing) to its metrics.json as it ends.
    `started` False: the executor sends no Started (nothing was started). `raises`: `start`
    itself raises this (as `threading.Thread.start` does when no thread can be made)."""

    after: float = 30.0
    outcome: Outcome = Outcome.EXITED
    returncode: int | None = 0
    metrics: dict | str | Callable[[int], dict] | None = None
    error: str = ""
    consume_attempt: bool = True
    started: bool = True
    raises: BaseException | None = None
    deaf: bool = False  # not even a cancel ends it (an executor that loses an eval's Finished)


def succeeds(metrics: dict | str | Callable[[int], dict] | None = default_metrics, after: float = 30.0) -> Step:
    return Step(after, metrics=metrics)


def exits(code: int, after: float = 30.0, metrics=None) -> Step:
    return Step(after, returncode=code, metrics=metrics)


def times_out(after: float) -> Step:
    return Step(after, Outcome.TIMED_OUT, -15)


def not_started(error: str = "No such file or directory", consume_attempt: bool = True) -> Step:
    return Step(0.0, Outcome.NOT_STARTED, None, error=error, consume_attempt=consume_attempt, started=False)


def runs_until_cancelled() -> Step:
    return Step(math.inf)


def never_ends() -> Step:
    return Step(math.inf, deaf=True)


@dataclass
class Run:
    """One job the scripted executor was given, and what became of it (times: fake seconds)."""

    key: object
    job: EvalJob
    step: Step
    started_at: float
    running_with: int  # how many of its evals ran at once, this one included, when it started
    started: Started | None = None
    ended_at: float | None = None
    result: EvalResult | None = None
    recorded_before_end: bool | None = None  # whether the loop had set Started.recorded by the end
    alarm: Alarm | None = None
    emit: Callable | None = None


class ScriptedExecutor(LocalExecutor):
    """A stand-in for the eval processes, implementing the `Executor` protocol (the local
    executor's slots, tags, ownership and log line, inherited; recovery only noted), driven by
    the fake clock.

    `script`: step -> the attempts of that step in order (a `Step` each); a step without a script
    left plays `default` (None: it is noted in `unscripted`, and the attempt is not started).
    `start` sends `Started` at once (with a fake pid); when the attempt's time has come it writes
    the metrics file (at `metrics_path(job)`, set by the harness from the pipeline's own
    `ModelPipeline.metrics_path`) and sends one `Finished`. `cancel_all` ends every running
    attempt as CANCELLED at the current fake time.
    Every job is kept in `runs`."""

    name = "local"

    def __init__(self, clock: FakeClock, slots: tuple[str, ...] = ("0",), script: dict[int, list[Step]] | None = None,
                 default: Step | None = None) -> None:
        super().__init__(slots)
        self.clock = clock
        self.script = {step: list(steps) for step, steps in (script or {}).items()}
        self.default = default
        self.metrics_path: Callable[[EvalJob], Path] | None = None
        self.runs: list[Run] = []
        self.active: dict[object, Run] = {}
        self.recovered: list[dict] = []
        self.unscripted: list[int] = []
        self.cancelled = False
        self.left_running = False
        self._pids = itertools.count(40001)

    def recover(self, record: dict) -> bool:
        self.recovered.append(dict(record))
        return False

    def resume(self, key, record: dict, job: EvalJob, emit) -> None:
        raise NotImplementedError("a scripted local eval is never resumed")

    def start(self, key, job: EvalJob, emit) -> None:
        steps = self.script.get(job.step)
        if steps:
            step = steps.pop(0)
        elif self.default is not None:
            step = self.default
        else:
            self.unscripted.append(job.step)
            step = not_started(f"no scripted attempt left for step {job.step}")
        if step.raises is not None:
            raise step.raises
        run = Run(key, job, step, self.clock.elapsed(), len(self.active) + 1, emit=emit)
        self.runs.append(run)
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log_path, "a", encoding="utf-8") as log:
            log.write(f"scripted attempt {job.tag}: {step}\n")
        if step.started:
            run.started = Started(key, {"pid": next(self._pids), "pid_start": "12345"})
            self.active[key] = run
            emit(run.started)
        if self.cancelled and step.started:
            self.clock.after(0.0, lambda: self._end(run, emit, EvalResult(Outcome.CANCELLED, -15, 0.0)))
        elif math.isfinite(step.after):
            result = EvalResult(step.outcome, step.returncode, step.after, step.error, step.consume_attempt)
            run.alarm = self.clock.after(step.after, lambda: self._end(run, emit, result, natural=True))

    def _end(self, run: Run, emit, result: EvalResult, natural: bool = False) -> None:
        if run.result is not None:
            return
        if run.alarm is not None:
            run.alarm.active = False
        self.active.pop(run.key, None)
        run.ended_at, run.result = self.clock.elapsed(), result
        run.recorded_before_end = run.started.recorded.is_set() if run.started else None
        metrics = run.step.metrics
        if natural and metrics is not None:
            path = self.metrics_path(run.job)
            path.parent.mkdir(parents=True, exist_ok=True)
            if callable(metrics):
                metrics = metrics(run.job.step)
            path.write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
        emit(Finished(run.key, result))

    def cancel_all(self) -> None:
        """Every running attempt ends CANCELLED at the current fake time (as a process group that
        goes at once on SIGTERM); never blocks."""
        self.cancelled = True
        for run in list(self.active.values()):
            if run.step.deaf:
                continue
            if run.alarm is not None:
                run.alarm.active = False
            self.clock.after(0.0, lambda run=run: self._end(run, run.emit, EvalResult(
                Outcome.CANCELLED, -15, self.clock.elapsed() - run.started_at)))

    def leave_running(self) -> None:
        self.left_running = True


# ----- the sidecar over real folders ---------------------------------------------------------------------
class Harness:
    """A real `Sidecar` over real folders in tmp_path with a fake clock and scripted evals.

    Folders (awkward names on purpose): `repo` (the repo root, with the eval script and data files),
    `sft` (the SFT root), state and logs under the repo root. Made again over the same tmp_path,
    it finds what an earlier harness left (a restart)."""

    def __init__(self, tmp_path: Path, flags: tuple[str, ...], script: dict[int, list[Step]] | None = None,
                 default: Step | None = None, marker: str | None = MARKER) -> None:
        self.repo = tmp_path / "repo ü 'q'"
        self.sft = self.repo / "saves" / "model (run 1)"
        data = self.repo / "data"
        for folder in (self.sft, data):
            folder.mkdir(parents=True, exist_ok=True)
        (self.repo / "evaluate_sft_3b.sh").write_text("exit 99  # never run: the scripted executor plays it\n")
        (data / "test.json").write_text("[]")
        (data / "id2sid.json").write_text("{}")
        self.marker = marker
        args = ["--repo-root", str(self.repo), "--sft-root", str(self.sft),
                "--eval-script", str(self.repo / "evaluate_sft_3b.sh"),
                "--test-data-path", str(data / "test.json"), "--index-path", str(data / "id2sid.json"),
                "--disable-wandb", "--watch-mode", "poll", "--checkpoint-ready-seconds", "20",
                *(["--ready-marker", marker] if marker else []), *flags]
        self.environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        self.config = build_config(vars(build_parser(PROG).parse_args(args)), self.environ, tmp_path)
        self.clock = FakeClock()
        self.executor = ScriptedExecutor(self.clock, self.config.gpu_slots, script, default)
        self.sidecar = Sidecar(self.config, self.clock, self.environ, executor=self.executor,
                               spawn=lambda fn, name: fn())
        self.executor.metrics_path = self._metrics_path_of

    def _metrics_path_of(self, job: EvalJob) -> Path:
        folder = Path(job.env["CKPT_LIST"])
        return self.sidecar.pipeline.metrics_path(Checkpoint(job.step, folder.name, folder.parent))

    # ----- files ------------------------------------------------------------------------------------
    def checkpoint(self, step: int, marker: bool = True, age: float = 0.0) -> Path:
        """A checkpoint folder with one weights file (and the ready marker, if the harness uses
        one and `marker`), its files `age` seconds old."""
        folder = self.sft / f"checkpoint-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"w" * 64)
        if marker and self.marker:
            (folder / self.marker).write_text(json.dumps({"global_step": step}))
        if age:
            old = time.time() - age
            for path in folder.rglob("*"):
                os.utime(path, (old, old))
        return folder

    def delete(self, step: int) -> None:
        shutil.rmtree(self.sft / f"checkpoint-{step}")

    def metrics_path(self, step: int) -> Path:
        return self.config.results_root / self.sft.name / f"checkpoint-{step}" / "metrics.json"

    def log_path(self, step: int) -> Path:
        return self.config.log_dir / self.config.identity.safe_model / f"checkpoint-{step}.log"

    def state(self):
        """The state file as the sidecar's own reader reads it."""
        return read_state(self.config.state_file)

    def state_json(self) -> dict:
        return json.loads(self.config.state_file.read_text(encoding="utf-8"))

    # ----- running ----------------------------------------------------------------------------------
    @property
    def runs(self) -> list[Run]:
        return self.executor.runs

    def run_once(self) -> int:
        """start, run_once, close (as `--once` does); returns run_once's count of outcomes."""
        done = self._session(self.sidecar.run_once)
        self._check_script()
        return done

    def run_forever(self, stop_at: float) -> None:
        """start, run_forever (poll mode, no watcher) until a stop is requested at `stop_at` fake
        seconds (as SIGTERM would), close."""
        self.clock.at(stop_at, self.sidecar.request_stop)
        self.clock.horizon = stop_at + 3600.0
        self._session(lambda: self.sidecar.run_forever(watcher=None))
        self._check_script()

    def _session(self, body):
        """start, body, close (which also stops what still runs when the body failed, so a failing
        test ends at once), as the entry point does."""
        self.sidecar.start()
        try:
            return body()
        finally:
            self.sidecar.close()

    def _check_script(self) -> None:
        assert not self.executor.unscripted, f"evals started that the test did not script: {self.executor.unscripted}"


def harness(tmp_path: Path, *flags: str, script: dict[int, list[Step]] | None = None,
            default: Step | None = None, marker: str | None = MARKER) -> Harness:
    """A Sidecar over real folders under `tmp_path` with `flags` (after the harness's own: W&B
    disabled, --watch-mode poll, --ready-marker trainer_state.json unless `marker` is None), the
    fake clock, the scripted executor (its slots from the config's GPU slots), the metrics
    reader run inline and the NullReporter."""
    return Harness(tmp_path, flags, script, default, marker)
