"""Judging an eval: what its result and metrics mean for the checkpoint (pure, no I/O).

`judge` turns what the executor saw (`EvalResult`) and what the metrics reader found into one
`Verdict`; the pipeline applies it to the state and logs it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
