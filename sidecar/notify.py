"""Notifications (`--notify-command`, `--wandb-alerts`): tell the user when something happens.

Events: `new_best` (an evaluated row beats every other row's --keep-best-metric), `eval_failed`
(a failed attempt that is retried), `given_up` (the last attempt failed), `vanished` (a checkpoint
deleted before or during its eval), `outage` (W&B unreachable for --notify-outage-minutes) and
`outage_over` (reachable again after an outage event).

The loop hands every recorded outcome to `Notifier.outcome` and calls `Notifier.tick` once a pass;
both run in the loop's thread and only decide. Each kind goes out at most once a minute (`Gate`,
pure): an event within the minute after the last one of its kind is held, and the events held are
folded into one notice (the latest event, with how many it stands for) sent when the minute ends,
or at shutdown. A notice becomes the command's environment (`environment`, pure) and goes to a
worker thread (`Runner`) that runs the command without a shell, in its own process group, with a
timeout: the loop never waits for it, and a failing command is one warning per kind of failure.

Reused results (a metrics.json that was already there, e.g. thousands at a restart) are never a
`new_best`: they were evaluated earlier. They raise the bar silently, so a later evaluation is
judged against them too.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import labels
from .errors import ConfigError
from .reporters.rows import metric_value
from .executors.processes import terminate
from .watch.outcome import Counted, clock_text, plural
from .watch.state import utc_iso

log = logging.getLogger(__name__)

EVENTS = ("new_best", "eval_failed", "given_up", "vanished", "outage", "outage_over")
RATE_SECONDS = 60.0  # at most one notice of a kind this often
# While W&B reports, the loop passes at least this often to look at its outage (a tenth of
# --notify-outage-minutes, 5 to 60 s; a pass re-lists the roots): the reporter's worker does not wake the loop when W&B goes away.
OUTAGE_RECHECK_MIN, OUTAGE_RECHECK_MAX = 5.0, 60.0
KILL_GRACE_SECONDS = 1.0  # a command past its timeout: SIGTERM to its group, then SIGKILL after this
SHUTDOWN_EXTRA_SECONDS = 5.0  # the shutdown waits for notices at most --notify-timeout-seconds plus this
ALERTED = ("new_best", "given_up")  # sent as W&B alerts too with --wandb-alerts
ALERT_LEVEL = {"new_best": "INFO", "given_up": "WARN"}
# Every notice sets each of these (empty when it does not apply), so a script can use `set -u`.
VARIABLES = ("SIDECAR_EVENT", "SIDECAR_MODEL", "SIDECAR_STEP", "SIDECAR_CHECKPOINT", "SIDECAR_METRIC",
             "SIDECAR_VALUE", "SIDECAR_PREVIOUS_BEST", "SIDECAR_ERROR", "SIDECAR_ATTEMPTS", "SIDECAR_LOG",
             "SIDECAR_LOG_TAIL", "SIDECAR_RUN_URL", "SIDECAR_SINCE", "SIDECAR_TIME", "SIDECAR_COALESCED",
             "SIDECAR_STEPS", "SIDECAR_TEXT", "SIDECAR_TEXT_JSON")


# ----- events and notices (data) -------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One thing that happened, as the command and the alert tell it."""

    kind: str  # one of EVENTS
    at: float  # time.time() it happened
    model: str = ""  # the model's name (outage: every model whose W&B run is unreachable)
    key: str = ""  # the model's configuration key (whose W&B run gets the alert)
    step: int | None = None
    checkpoint: str = ""
    metric: str = ""
    value: float | None = None
    previous_best: float | None = None
    error: str = ""  # eval_failed / given_up: the failure, one line; vanished: why
    attempts: int | None = None
    max_attempts: int | None = None
    log: str = ""  # the checkpoint's eval log, when there is one
    log_tail: str = ""  # eval_failed / given_up: the last line the eval printed
    run_url: str = ""
    since: float | None = None  # outage / outage_over: when W&B became unreachable (time.time())
    fleet: bool = False  # one of many models: its step is named `model/step` in SIDECAR_STEPS

    @property
    def ref(self) -> str | None:
        """How SIDECAR_STEPS names this event's checkpoint: `500`, in fleet mode `model/500`."""
        if self.step is None:
            return None
        return f"{self.model}/{self.step}" if self.fleet else str(self.step)


@dataclass(frozen=True)
class Notice:
    """What goes out: the latest event of a kind and how many events it stands for (itself
    included): those of its minute are folded into it, none is dropped unsaid."""

    event: Event
    count: int = 1
    steps: tuple[str, ...] = ()  # the checkpoints of the events folded in, oldest first (`Event.ref`)

    @staticmethod
    def of(event: Event) -> "Notice":
        return Notice(event, 1, () if event.ref is None else (event.ref,))

    def fold(self, event: Event) -> "Notice":
        """`event` came after this notice's within its minute: it is sent instead, standing for
        both. A new best of the same model keeps the best before the first one (`0.30 -> 0.41`
        over the minute, not the step between)."""
        if event.kind == "new_best" and event.key == self.event.key:
            event = replace(event, previous_best=self.event.previous_best)
        steps = self.steps + (() if event.ref is None else (event.ref,))
        return Notice(event, self.count + 1, steps)


# ----- the rate: at most one notice a kind a minute (pure) ---------------------------------------
class Gate:
    """Decides when each notice goes out; `now` is monotonic seconds. The first event of a kind
    goes at once; one within `every` seconds of the last notice of its kind is held, and what
    is held goes as one notice when those seconds are up (`due`), or at shutdown (`drain`)."""

    def __init__(self, every: float = RATE_SECONDS, by_model: bool = False) -> None:
        self.every = every
        self.by_model = by_model  # one pace per kind and model (W&B alerts: each model's run gets its own)
        self._last: dict = {}  # kind (or kind, model key) -> when its last notice went out
        self._held: dict = {}

    def offer(self, event: Event, now: float) -> Notice | None:
        """The notice to send now, or None when the event is held for the end of the minute."""
        kind = (event.kind, event.key) if self.by_model else event.kind
        held = self._held.get(kind)
        if held is not None:
            self._held[kind] = held.fold(event)
            return None
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self._held[kind] = Notice.of(event)
            return None
        self._last[kind] = now
        return Notice.of(event)

    def due(self, now: float) -> list[Notice]:
        """The held notices whose minute is over (they go out now), in the order they were held."""
        out = []
        for kind in [k for k in self._held if now - self._last[k] >= self.every]:
            out.append(self._held.pop(kind))
            self._last[kind] = now
        return out

    def deadline(self) -> float | None:
        """When (monotonic) the next held notice is due, or None."""
        return min((self._last[k] + self.every for k in self._held), default=None)

    def drain(self) -> list[Notice]:
        """Everything held, to go out now (shutdown)."""
        out, self._held = list(self._held.values()), {}
        return out


# ----- judging a new best (pure) ---------------------------------------------------------------------
def beats(value: float, other: float, lower_better: bool) -> bool:
    """Strictly better."""
    return value < other if lower_better else value > other


def best_of(rows: dict, metric: str, lower_better: bool, skip: int | None = None) -> tuple[float, int] | None:
    """(value, step) of the best row but `skip`'s (a tie keeps the earlier step), or None."""
    best: tuple[float, int] | None = None
    for step in sorted(rows):
        value = metric_value(rows[step], metric)
        if step != skip and value is not None and (best is None or beats(value, best[0], lower_better)):
            best = (value, step)
    return best


# ----- what the command sees (pure) -----------------------------------------------------------------
def number_text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def describe(notice: Notice) -> str:
    """One line saying what happened, for a chat message or an alert."""
    e = notice.event
    who = f"{e.model}: " if e.model else ""
    if e.kind == "new_best":
        was = f" (was {number_text(e.previous_best)})" if e.previous_best is not None else " (the first result)"
        text = f"{who}new best {e.metric} = {number_text(e.value)} at {e.checkpoint}{was}"
    elif e.kind == "eval_failed":
        text = f"{who}{e.error} (attempt {e.attempts} of {e.max_attempts}); it is retried"
        text += f"; its log ends: {e.log_tail}" if e.log_tail else ""
    elif e.kind == "given_up":
        text = f"{who}gave up on {e.checkpoint} after {plural(e.attempts or 0, 'attempt')}: {e.error}"
        text += f"; its log ends: {e.log_tail}" if e.log_tail else ""
    elif e.kind == "vanished":
        text = f"{who}{e.checkpoint} was {e.error}"
    elif e.kind == "outage":
        text = f"{who}W&B unreachable since {clock_text(e.since or e.at, e.at)}; rows wait in the state file"
    else:
        minutes = max(0.0, e.at - (e.since or e.at)) / 60
        text = f"{who}W&B reachable again after {minutes:.0f} min"
    if notice.count > 1:
        text += f" ({notice.count} {e.kind} events in the last minute; this is the latest)"
    return text


def environment(notice: Notice) -> dict[str, str]:
    """The SIDECAR_* variables of a notice (each of VARIABLES, empty when it does not apply)."""
    e = notice.event
    text = describe(notice)
    values = {
        "SIDECAR_EVENT": e.kind, "SIDECAR_MODEL": e.model, "SIDECAR_STEP": "" if e.step is None else str(e.step),
        "SIDECAR_CHECKPOINT": e.checkpoint, "SIDECAR_METRIC": e.metric, "SIDECAR_VALUE": number_text(e.value),
        "SIDECAR_PREVIOUS_BEST": number_text(e.previous_best), "SIDECAR_ERROR": e.error,
        "SIDECAR_ATTEMPTS": "" if e.attempts is None else str(e.attempts), "SIDECAR_LOG": e.log,
        "SIDECAR_LOG_TAIL": e.log_tail, "SIDECAR_RUN_URL": e.run_url, "SIDECAR_SINCE": "" if e.since is None else utc_iso(e.since),
        "SIDECAR_TIME": utc_iso(e.at), "SIDECAR_COALESCED": str(notice.count),
        "SIDECAR_STEPS": " ".join(notice.steps), "SIDECAR_TEXT": text,
        "SIDECAR_TEXT_JSON": json.dumps(text),
    }
    return {name: values[name] for name in VARIABLES}


def resolve_program(argv: tuple[str, ...], cwd: Path, path_env: str | None) -> list[str]:
    """The command with its program found: a name is looked up on PATH, a path with a `/` is taken
    from `cwd` (--repo-root, where the command runs). ConfigError (exit 2) when it is not there."""
    program = argv[0]
    if "/" not in program:
        found = shutil.which(program, path=path_env)
        if found is None:
            raise ConfigError(f"--notify-command: {program!r} not found on PATH")
        return list(argv)
    path = Path(program) if os.path.isabs(program) else cwd / program
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ConfigError(f"--notify-command: {path} is not an executable file")
    return [str(path), *argv[1:]]


# ----- running the command (the worker thread) -------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    kind: str
    env: dict


_STOP = object()


class Runner:
    """Runs the command for each notice, one at a time, in a worker thread; the caller never
    waits. A failure (cannot start, non-zero exit, timeout) is a warning the first time for each
    kind of failure, then DEBUG."""

    def __init__(self, argv: list[str], cwd: Path, timeout: float) -> None:
        self.argv = argv
        self.cwd = cwd
        self.timeout = timeout
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None  # monotonic: at shutdown, nothing runs past this
        self._warned: set[str] = set()  # the kinds of failure warned about

    def submit(self, kind: str, env: dict[str, str]) -> None:
        if self._thread is None:
            self._thread = labels.thread(self._work, "notify")
            self._thread.start()
        self._queue.put(_Job(kind, env))

    def close(self, budget: float) -> None:
        """Run what is queued, for at most `budget` seconds in all (a command still running then
        is stopped); notices left unsent are one warning."""
        if self._thread is None:
            return
        self._deadline = time.monotonic() + budget
        self._queue.put(_STOP)
        self._thread.join(budget + KILL_GRACE_SECONDS + 1.0)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            left = None if self._deadline is None else self._deadline - time.monotonic()
            if left is not None and left <= 0:
                self._give_up(job)
                return
            try:
                self._run(job, self.timeout if left is None else min(self.timeout, left))
            except Exception:  # noqa: BLE001 - a notification never stops anything
                log.warning("--notify-command for %s failed", job.kind, exc_info=True)

    def _give_up(self, job: _Job) -> None:
        kinds = [job.kind]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                break
            kinds.append(item.kind)
        log.warning("%s not sent (%s): the shutdown waits at most --notify-timeout-seconds + %g s for "
                    "notifications", plural(len(kinds), "notification"), ", ".join(kinds), SHUTDOWN_EXTRA_SECONDS)

    def _run(self, job: _Job, timeout: float) -> None:
        started = time.monotonic()
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.Popen(self.argv, cwd=self.cwd, env=job.env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                self._failed("start", job.kind, f"cannot run {self.argv[0]!r} ({exc.strerror or exc})")
                return
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                terminate(proc.pid, grace=KILL_GRACE_SECONDS, reap=proc.poll)
                proc.wait()
                why = (f"did not end within {timeout:g} s (--notify-timeout-seconds)" if timeout >= self.timeout
                       else "was still running when the shutdown's wait for notifications ended")
                self._failed("timeout", job.kind, f"{self.argv[0]} {why} and was stopped")
                return
            took = time.monotonic() - started
            if code != 0:
                how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
                said = _last_line(out)
                self._failed("exit", job.kind, f"{self.argv[0]} {how} after {took:.1f} s"
                                               + (f" ({said})" if said else ""))
                return
            log.debug("--notify-command for %s: done in %.2f s", job.kind, took)

    def _failed(self, how: str, kind: str, text: str) -> None:
        if how in self._warned:
            log.debug("--notify-command for %s: %s", kind, text)
            return
        self._warned.add(how)
        log.warning("--notify-command for %s: %s; evaluation goes on (later failures like this are logged at DEBUG)",
                    kind, text)


def _tail_lines(fh) -> list[str]:
    """The non-empty lines of the last 4 KiB of the binary file `fh`."""
    fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
    return [line.strip() for line in fh.read().decode(errors="replace").splitlines() if line.strip()]


def _last_line(out) -> str:
    """The last non-empty line the command printed (at most 200 characters)."""
    lines = _tail_lines(out)
    return lines[-1][:200] if lines else ""


LOG_HEADER = "===== "  # how the sidecar's line before each attempt's output starts (executors.base.log_header)


def log_tail(path: str) -> str:
    """The last line the latest attempt printed to its eval log ('' when it printed none)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            lines = _tail_lines(fh)
    except OSError:
        return ""
    headers = [i for i, line in enumerate(lines) if line.startswith(LOG_HEADER)]
    lines = lines[headers[-1] + 1:] if headers else lines
    return lines[-1][:200] if lines else ""


# ----- the notifier (the loop's side) -----------------------------------------------------------------
class _Watched:
    """A pipeline the notifier hears from, and the best row it has seen (None: not computed yet)."""

    def __init__(self, pipeline, name: str) -> None:
        self.pipeline = pipeline
        self.name = name
        self.best: tuple[float, int] | None = None
        self.known = False  # `best` has been computed from the rows


class Notifier:
    """Turns outcomes and W&B outages into notices, paced by a `Gate`, sent by a `Runner` (the
    command) and the model's reporter (`--wandb-alerts`). Everything here runs in the loop's
    thread; nothing it does can stop an evaluation."""

    def __init__(self, config, clock, environ: dict[str, str], runner: Runner | None = None) -> None:
        self.config = config
        self.clock = clock
        self.environ = dict(environ)
        self.gate = Gate()  # the command's pace: one notice a kind a minute
        self.alert_gate = Gate(by_model=True)  # --wandb-alerts: each run's own, so no model's alert is folded away
        self.runner = runner
        self.alerts = config.wandb_alerts
        self.fleet = bool(getattr(config, "models_root", ()))
        self.outage_seconds = config.notify_outage_minutes * 60
        self.recheck = min(OUTAGE_RECHECK_MAX, max(OUTAGE_RECHECK_MIN, self.outage_seconds / 10))
        self._watched: dict[str, _Watched] = {}
        self._outage_since: float | None = None  # an outage event went out for the outage that began then
        self._outage_models = ""  # ... naming these models
        self._broken = False

    # ----- what is watched ------------------------------------------------------------------------
    def watch(self, pipeline, name: str) -> None:
        """Hear from this pipeline (its rows, logs and reporter); `name` names it in notices."""
        self._watched[pipeline.model] = _Watched(pipeline, name)

    def forget(self, key: str) -> None:
        self._watched.pop(key, None)

    # ----- the loop's calls -----------------------------------------------------------------------
    def outcome(self, key: str, kind: Counted, step: int, failure: dict | None = None) -> None:
        """A recorded outcome of pipeline `key` (after its row or failure is in its state)."""
        try:
            event = self._event(key, kind, step, failure)
            if event is not None:
                self._offer(event)
        except Exception:  # noqa: BLE001 - a notification never stops an evaluation
            self._internal_error()

    def tick(self) -> None:
        """Once a pass: W&B outages begun or over, and the held notices whose minute is over."""
        try:
            self._check_outage()
            now = self.clock.monotonic()
            for notice in self.gate.due(now):
                self._run(notice)
            for notice in self.alert_gate.due(now):
                self._alert(notice)
        except Exception:  # noqa: BLE001
            self._internal_error()

    def deadline(self) -> float | None:
        """When (monotonic) the loop should pass again for a held notice or an outage, or None."""
        deadlines = [d for d in (self.gate.deadline(), self.alert_gate.deadline()) if d is not None]
        if any(w.pipeline.reporter.enabled for w in self._watched.values()):
            now_mono = self.clock.monotonic()
            deadlines.append(now_mono + self.recheck)
            down = self._unreachable()
            if down and self._outage_since is None:
                deadlines.append(now_mono + max(0.0, min(down.values()) + self.outage_seconds - self.clock.time()))
        return min(deadlines, default=None)

    def flush(self) -> None:
        """At shutdown, before the reporters close: an outage long enough is told, and every held
        notice goes out now."""
        try:
            self._check_outage()
            for notice in self.alert_gate.drain():
                self._alert(notice)
            for notice in self.gate.drain():
                self._run(notice)
        except Exception:  # noqa: BLE001
            self._internal_error()

    def close(self) -> None:
        """After `flush` and the reporters' close: an outage they found while closing (a `once`
        run's W&B is first tried then) is told; then wait for the commands still to run, at most
        --notify-timeout-seconds plus SHUTDOWN_EXTRA_SECONDS in all."""
        self.alerts = False  # the runs are finished
        self.flush()
        if self.runner is not None:
            self.runner.close(self.config.notify_timeout_seconds + SHUTDOWN_EXTRA_SECONDS)

    # ----- events ---------------------------------------------------------------------------------
    def _event(self, key: str, kind: Counted, step: int, failure: dict | None) -> Event | None:
        watched = self._watched.get(key)
        if watched is None:
            return None
        pipeline = watched.pipeline
        base = Event("", self.clock.time(), model=watched.name, key=key, step=step, checkpoint=f"checkpoint-{step}",
                     run_url=pipeline.reporter.run_url() or "", fleet=self.fleet)
        if kind in (Counted.EVALUATED, Counted.REUSED):
            return self._judge_best(watched, kind is Counted.EVALUATED, step, base)
        if kind is Counted.VANISHED:
            record = pipeline.state.vanished.get(step) or {}
            name = str(record.get("checkpoint") or base.checkpoint)
            why = str(record.get("reason") or "deleted during its re-evaluation; its earlier result stands")
            return replace(base, kind="vanished", checkpoint=name, error=why, log=self._log_of(pipeline, name))
        failure = failure or {}
        name = str(failure.get("checkpoint") or base.checkpoint)
        error, _, seen = str(failure.get("error", "")).rpartition("; see ")
        if not error:
            error, seen = seen, ""
        seen = seen or self._log_of(pipeline, name)
        return replace(base, kind="given_up" if kind is Counted.GIVEN_UP else "eval_failed", checkpoint=name,
                       error=error, attempts=int(failure.get("attempts", 0)),
                       max_attempts=int(failure.get("max_attempts", 0)) or None, log=seen, log_tail=log_tail(seen))

    def _judge_best(self, watched: _Watched, evaluated: bool, step: int, base: Event) -> Event | None:
        """A new best: an evaluated row strictly better than every other row (reused ones count
        as the bar, never as a new best: a restart over thousands of them says nothing)."""
        pipeline = watched.pipeline
        cfg = pipeline.config
        metric, lower = cfg.keep_best_metric, cfg.keep_best_lower_better
        rows = pipeline.state.rows
        value = metric_value(rows.get(step), metric)
        if not evaluated:
            if watched.known and watched.best is not None and watched.best[1] == step:
                watched.known = False  # the best row was replaced: computed again when needed
            elif watched.known and value is not None and (watched.best is None
                                                          or beats(value, watched.best[0], lower)):
                watched.best = (value, step)
            return None
        if not watched.known or (watched.best is not None and watched.best[1] == step):
            previous = best_of(rows, metric, lower, skip=step)
        else:
            previous = watched.best
        watched.best, watched.known = previous, True
        if value is None or (previous is not None and not beats(value, previous[0], lower)):
            return None
        watched.best = (value, step)
        return replace(base, kind="new_best", metric=metric, value=value,
                       previous_best=None if previous is None else previous[0],
                       log=self._log_of(pipeline, base.checkpoint))

    @staticmethod
    def _log_of(pipeline, name: str) -> str:
        path = pipeline._log_path(name)
        return str(path) if path.is_file() else ""

    def _unreachable(self) -> dict[str, float]:
        """Model name -> since when its W&B run is unreachable (time.time())."""
        down = {}
        for watched in self._watched.values():
            since = watched.pipeline.reporter.outage_since()
            if since is not None:
                down[watched.name] = since
        return down

    def _check_outage(self) -> None:
        down = self._unreachable()
        now = self.clock.time()
        if down and self._outage_since is None:
            since = min(down.values())
            if now - since >= self.outage_seconds:
                self._outage_since, self._outage_models = since, " ".join(sorted(down))
                self._offer(Event("outage", now, model=self._outage_models, since=since))
        elif not down and self._outage_since is not None:
            since, self._outage_since = self._outage_since, None
            self._offer(Event("outage_over", now, model=self._outage_models, since=since))

    # ----- sending --------------------------------------------------------------------------------
    def _offer(self, event: Event) -> None:
        now = self.clock.monotonic()
        if self.runner is not None:
            notice = self.gate.offer(event, now)
            if notice is not None:
                self._run(notice)
        if self.alerts and event.kind in ALERTED:
            notice = self.alert_gate.offer(event, now)
            if notice is not None:
                self._alert(notice)

    def _with_url(self, notice: Notice) -> Notice:
        """The run's page, which may have opened since the event (a run opens lazily)."""
        event = notice.event
        watched = self._watched.get(event.key)
        if watched is not None and not event.run_url:
            return replace(notice, event=replace(event, run_url=watched.pipeline.reporter.run_url() or ""))
        return notice

    def _run(self, notice: Notice) -> None:
        if self.runner is not None:
            notice = self._with_url(notice)
            self.runner.submit(notice.event.kind, {**self.environ, **environment(notice)})

    def _alert(self, notice: Notice) -> None:
        event = notice.event
        watched = self._watched.get(event.key)
        if self.alerts and watched is not None:
            title = f"{event.model}: new best {event.metric}" if event.kind == "new_best" else \
                f"{event.model}: gave up on {event.checkpoint}"
            watched.pipeline.reporter.alert(title, describe(self._with_url(notice)), ALERT_LEVEL[event.kind])

    def _internal_error(self) -> None:
        if not self._broken:
            self._broken = True
            log.warning("a notification could not be made; evaluation goes on", exc_info=True)
        else:
            log.debug("a notification could not be made", exc_info=True)


class NoNotifier:
    """Notifications off (no --notify-command, no --wandb-alerts): every call does nothing."""

    def watch(self, pipeline, name: str) -> None:
        return None

    def forget(self, key: str) -> None:
        return None

    def outcome(self, key: str, kind: Counted, step: int, failure: dict | None = None) -> None:
        return None

    def tick(self) -> None:
        return None

    def deadline(self) -> float | None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def make_notifier(config, clock, environ: dict[str, str]):
    """The notifier the flags ask for (NoNotifier when none); a --notify-command whose program is
    not there is ConfigError (exit 2) now, at start-up, not a warning at the first event."""
    if not config.notify_command and not config.wandb_alerts:
        return NoNotifier()
    runner = None
    if config.notify_command:
        argv = resolve_program(config.notify_command, config.repo_root, environ.get("PATH", os.defpath))
        runner = Runner(argv, config.repo_root, config.notify_timeout_seconds)
    if config.wandb_alerts and not (config.reporting and config.wandb_mode == "online"):
        mode = config.wandb_mode if config.reporting else "disabled"
        log.warning("--wandb-alerts: W&B is %s here; alerts are sent by online runs only", mode)
    return Notifier(config, clock, environ, runner)
