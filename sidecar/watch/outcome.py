"""Judging an eval: what its result and metrics mean for the checkpoint (pure, no I/O).

`judge` turns what the executor saw (`EvalResult`) and what the metrics reader found into one
`Verdict`; the pipeline applies it to the state and logs it. `RunTally` counts what a run
recorded (for the backfill's progress and the `once` run's last line, `once_summary`).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from ..errors import MetricsError
from ..executors.base import EvalResult, Outcome


class Decision(enum.Enum):
    SUCCESS = "success"  # record the metrics as the checkpoint's row
    FAILURE = "failure"  # count a failed attempt (or not: `consume_attempt`) and retry later
    VANISHED = "vanished"  # the checkpoint was deleted during its eval: recorded, never retried
    KEEP_EARLIER = "keep earlier"  # a re-evaluation whose checkpoint is gone: the recorded row stands
    PENDING = "pending"  # not run to an end (shutdown, never submitted): the checkpoint stays pending
    IN_FLIGHT = "in flight"  # left running on purpose (a Slurm job): a restarted sidecar follows it


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    error: str = ""  # for FAILURE / VANISHED / KEEP_EARLIER: what went wrong, one line
    consume_attempt: bool = True


@dataclass(frozen=True)
class Evidence:
    """What the pipeline knows about the checkpoint when its eval ends."""

    name: str  # checkpoint-<N>
    metrics_path: str
    timeout: float = 0.0  # --eval-timeout-seconds
    present: bool = True  # the checkpoint folder still exists
    reevaluation: bool = False  # the step already has a recorded row (--force-eval-steps)
    foreign: bool = False  # the metrics.json read is the very file another configuration left there
    metrics_fresh: bool = True  # the metrics.json was written after the job was submitted (Slurm)


def judge(result: EvalResult, metrics: dict | MetricsError | None, seen: Evidence) -> Verdict:
    """The verdict on one ended eval; `metrics`: the metrics.json read after it (a dict), why it
    could not be read (MetricsError), or None when it was not read (the eval did not succeed)."""
    name, outcome = seen.name, result.outcome
    if outcome is Outcome.DETACHED:
        return Verdict(Decision.IN_FLIGHT)
    if outcome in (Outcome.CANCELLED, Outcome.NOT_SUBMITTED):
        return Verdict(Decision.PENDING)
    if outcome is Outcome.UNKNOWN:
        if isinstance(metrics, dict) and seen.metrics_fresh:
            return Verdict(Decision.SUCCESS)
        reason = metrics if not isinstance(metrics, dict) else "its metrics.json is older than the job"
        error = f"eval of {name}: {result.error}, and {reason}"
    elif outcome is Outcome.NOT_STARTED:
        error = f"eval of {name} could not start: {result.error}"
    elif outcome is Outcome.TIMED_OUT:
        error = f"eval of {name} timed out after {seen.timeout:g} s"
    elif result.error:
        error = f"eval of {name}: {result.error} after {result.duration:.1f} s"
    elif result.returncode != 0:
        code = result.returncode if result.returncode is not None else -1
        how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
        error = f"eval of {name} {how} after {result.duration:.1f} s"
    elif not isinstance(metrics, dict):
        error = f"eval of {name} exited 0 but {metrics if metrics is not None else 'its metrics were not read'}"
    elif seen.foreign:
        error = (f"eval of {name} exited 0 but did not write {seen.metrics_path}: the file there is another "
                 f"configuration's")
    else:
        return Verdict(Decision.SUCCESS)
    if not seen.present and seen.reevaluation:
        return Verdict(Decision.KEEP_EARLIER, f"it was deleted during its re-evaluation ({error})")
    if not seen.present:
        return Verdict(Decision.VANISHED, error)
    return Verdict(Decision.FAILURE, error, result.consume_attempt)


def wants_metrics(result: EvalResult) -> bool:
    """Whether the metrics.json is read after this result (only an eval that may have succeeded)."""
    if result.outcome is Outcome.UNKNOWN:
        return True
    return result.outcome is Outcome.EXITED and result.returncode == 0 and not result.error


# ----- what a run did (the backfill's progress, the `once` summary) -------------------------------
class Counted(enum.Enum):
    """One recorded outcome, as a run counts it."""

    EVALUATED = "evaluated"  # the eval ran and its metrics were recorded
    REUSED = "reused"  # a metrics.json already there was recorded (no eval)
    FAILED = "failed"  # a failed attempt; retried later
    GIVEN_UP = "given up"  # a failed attempt that was the last one allowed
    VANISHED = "vanished"  # the checkpoint was deleted before or during its eval


@dataclass
class RunTally:
    """The outcomes recorded since the sidecar started. A checkpoint that fails and then succeeds
    in the same run counts as evaluated only; `failed` holds the checkpoints whose last outcome
    in this run is a failure: (model, step) -> its failure record, with `label` (how to name it)
    and `max_attempts` added."""

    evaluated: int = 0
    reused: int = 0
    vanished: int = 0
    failed: dict = field(default_factory=dict)

    def add(self, kind: Counted, model: str, step: int, failure: dict | None = None) -> None:
        key = (model, step)
        if kind in (Counted.FAILED, Counted.GIVEN_UP):
            self.failed[key] = dict(failure or {})
            return
        self.failed.pop(key, None)
        if kind is Counted.EVALUATED:
            self.evaluated += 1
        elif kind is Counted.REUSED:
            self.reused += 1
        else:
            self.vanished += 1


def clock_text(wall: float, now_wall: float) -> str:
    """A local time for a message: `14:05:12` when it is within 12 hours, else with the date."""
    fmt = "%H:%M:%S" if abs(wall - now_wall) < 12 * 3600 else "%Y-%m-%d %H:%M:%S"
    return time.strftime(fmt, time.localtime(wall))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def when_retried(retry_after: float, now_wall: float, once: bool) -> str:
    """When a failed checkpoint runs again: `retry in 300 s`; in a `once` run, whose process exits
    before a later retry, `the next run retries it (from 14:05:12 on)`."""
    delay = retry_after - now_wall
    if once and delay > 0:
        return f"the next run retries it (from {clock_text(retry_after, now_wall)} on)"
    return f"retry in {delay:.0f} s"


def retry_text(failure: dict, max_attempts: int, now_wall: float, once: bool) -> str:
    """The end of a failed attempt's warning: `attempt 1 of 3, retry in 300 s`, or in a `once` run
    `attempt 1 of 3; the next run retries it (from 14:05:12 on)`."""
    when = when_retried(float(failure.get("retry_after", now_wall)), now_wall, once)
    joint = "; " if when.startswith("the next run") else ", "
    return f"attempt {int(failure.get('attempts', 0))} of {max_attempts}{joint}{when}"


def _failed_part(failures: list[dict], now_wall: float) -> str:
    if not failures:
        return "0 failed"
    retried = [f for f in failures if not f.get("given_up")]
    given_up = [f for f in failures if f.get("given_up")]
    if len(failures) == 1:
        f = failures[0]
        if given_up:
            what = f"given up after {plural(int(f.get('attempts', 0)), 'attempt')}; --retry-failed runs it again"
        else:
            attempts = int(f.get("attempts", 0))
            what = (f"attempt {attempts} of {int(f.get('max_attempts', 0))}" if attempts else
                    "not started, not counted as an attempt") + "; retried by the next run"
            if float(f.get("retry_after", 0.0)) > now_wall:
                what += f" from {clock_text(float(f['retry_after']), now_wall)} on"
        return f"1 failed ({f.get('label', '?')}: {what})"
    names = ", ".join(str(f.get("label", "?")) for f in failures[:5]) + (", ..." if len(failures) > 5 else "")
    bits = []
    if retried:
        first = min(float(f.get("retry_after", 0.0)) for f in retried)
        bits.append(f"{len(retried)} retried by the next run"
                    + (f" from {clock_text(first, now_wall)} on" if first > now_wall else ""))
    if given_up:
        bits.append(f"{len(given_up)} given up (--retry-failed runs them again)")
    return f"{len(failures)} failed ({names}; {', '.join(bits)})"


def once_summary(tally: RunTally, not_ready: int, retries: list[float], skipped: list[str], now_wall: float,
                 stopped: bool = False, gpu_waiting: int = 0) -> str:
    """The last line of a `once` run: evaluated / reused / failed / waiting, then the models not
    evaluated (fleet mode). `not_ready`: wanted checkpoints not ready yet (or, when `stopped`,
    not reached before the stop); `retries`: the retry times of checkpoints that failed in an
    earlier run and whose retry is not due yet; `gpu_waiting`: of `not_ready`, those ready but
    waiting for free GPU memory (--gpu-free-memory-mb)."""
    failures = [tally.failed[k] for k in sorted(tally.failed, key=lambda k: (str(k[0]), k[1]))]
    parts = [f"{tally.evaluated} evaluated", f"{tally.reused} reused (metrics.json existed)",
             _failed_part(failures, now_wall)]
    if tally.vanished:
        parts.append(f"{tally.vanished} vanished (deleted before or during their eval)")
    why = "left for the next run: stopped first" if stopped else "not ready yet"
    gpu_waiting = 0 if stopped else min(gpu_waiting, not_ready)
    if gpu_waiting:
        why = (f"{not_ready - gpu_waiting} not ready yet, {gpu_waiting} for free GPU memory"
               if gpu_waiting < not_ready else "for free GPU memory")
    if retries:
        first = clock_text(min(retries), now_wall)
        retry = (f"to retry an earlier failure from {first} on" if len(retries) == 1
                 else f"to retry earlier failures, the first from {first} on")
        both = f"{not_ready} {why}, {len(retries)} {retry}" if not_ready and not gpu_waiting \
            else f"{why}, {len(retries)} {retry}" if not_ready else retry
        parts.append(f"{not_ready + len(retries)} waiting ({both})")
    else:
        parts.append(f"{not_ready} waiting ({why})")
    line = "once: " + ", ".join(parts)
    if skipped:
        line += f"; {len(skipped)} model(s) not evaluated: {'; '.join(skipped)}"
    return line
