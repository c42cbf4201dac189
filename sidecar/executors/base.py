"""The executor contract: what one evaluation is (`EvalJob`), how it ended (`EvalResult` with one
`Outcome`), the typed events an executor sends while it runs, and the `Executor` protocol that
the local and the Slurm executor implement.

An executor never decides whether an eval succeeded for the sidecar (that is `watch.outcome`'s
`judge`); it only says what happened to the process or job.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol


RECORD_WAIT = 10.0  # seconds a started eval waits for what names it to be saved in state (a kill -9 then finds it)


def log_header(what: str, cwd: Path) -> bytes:
    """The line the sidecar writes into an eval's log file before the eval's own output."""
    return f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} sidecar {what} (cwd {cwd})\n".encode("utf-8", "replace")


@dataclass(frozen=True)
class EvalJob:
    """One evaluation to run: `bash <eval-script> <sft-root>` with its environment and log file."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    timeout: float = 0.0  # seconds of running time before it is stopped (0 = never)
    name: str = ""  # a Slurm job name
    tag: str = ""  # names this attempt for good (local: its processes' environment; Slurm: the job's comment)
    attach: str = ""  # a Slurm job id submitted by an earlier sidecar: track it, submit nothing
    gpus: str = ""  # the CUDA_VISIBLE_DEVICES list of its slot (recorded in state for a local eval)
    step: int = 0  # the checkpoint's step (a local attempt tag begins with it)


class Outcome(enum.Enum):
    """How an eval's process or job ended, as the executor saw it."""

    EXITED = "exited"  # it ran and ended; `returncode` (and `error`) say how
    TIMED_OUT = "timed out"  # stopped after --eval-timeout-seconds
    CANCELLED = "cancelled"  # stopped by shutdown before it ended: the checkpoint stays pending
    NOT_STARTED = "not started"  # it could not be started (`error` says why)
    DETACHED = "detached"  # left running on purpose at shutdown (a Slurm job): it stays in flight
    UNKNOWN = "unknown"  # the job left no record: its metrics.json decides
    NOT_SUBMITTED = "not submitted"  # an adopted attempt had no job: the earlier sidecar died before sbatch


@dataclass(frozen=True)
class EvalResult:
    outcome: Outcome
    returncode: int | None = None  # None when there is no exit status (not started, cancelled, ...)
    duration: float = 0.0
    error: str = ""  # the executor's own account ("slurm job 12 FAILED exit 3", "No such file")
    consume_attempt: bool = True  # False: the failure was not the eval's (preemption, a full disk)


# ----- events: executor threads -> the sidecar's main thread (typed, never positional tuples) ---------
@dataclass(frozen=True)
class Started:
    """The eval exists: `info` names it for good (pid and start time, or the Slurm job id). The
    executor waits on `recorded` (bounded) until the main thread has saved it as in flight."""

    key: object
    info: dict
    recorded: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass(frozen=True)
class Updated:
    """What the executor learnt while the eval runs (a Slurm job's state and node)."""

    key: object
    info: dict


@dataclass(frozen=True)
class Finished:
    """The eval ended (or was left running, `Outcome.DETACHED`)."""

    key: object
    result: EvalResult


Emit = Callable[[object], None]  # takes a Started, Updated or Finished


class Executor(Protocol):
    """Runs evaluations. `start` and `resume` return at once; the executor then sends `Started`
    (at most once), any `Updated`, and exactly one `Finished` through `emit`, from its own threads
    (whatever goes wrong in them: a job without its `Finished` would be waited for at shutdown)."""

    name: str  # "local" or "slurm"

    def slots(self) -> list[str]:
        """One entry per eval that may run at once: the CUDA_VISIBLE_DEVICES list it gets."""
        ...

    def prepare(self, job: EvalJob) -> tuple[EvalJob, dict]:
        """A new attempt: the job to start (with its attempt tag) and the in-flight fields to save
        in state BEFORE `start`, so that a kill -9 at any later moment leaves a record naming it."""
        ...

    def owns(self, record: dict) -> bool:
        """Whether an in-flight record (left by an earlier sidecar) names an eval of this kind."""
        ...

    def recover(self, record: dict) -> bool:
        """An in-flight record an earlier sidecar left: True if the eval outlives its sidecar and is
        followed again (`resume`); False if it was stopped (what it left running is stopped here)
        and the checkpoint is evaluated again."""
        ...

    def resume(self, key: object, record: dict, job: EvalJob, emit: Emit) -> None:
        """Follow an eval an earlier sidecar started (`recover` said True)."""
        ...

    def start(self, key: object, job: EvalJob, emit: Emit) -> None:
        """Start a prepared attempt."""
        ...

    def where(self, job: EvalJob) -> str:
        """Where the job runs, for the log line "evaluating checkpoint-N <this> (log: ...)"."""
        ...

    def missing_commands(self) -> list[str]:
        """Commands this executor needs that are not on PATH here."""
        ...

    def cancel_all(self) -> None:
        """Stop everything, from any thread, without blocking (never from a signal handler itself:
        see `signals`): local evals are terminated; Slurm jobs are left running unless the user
        asked to cancel them."""
        ...

    def leave_running(self) -> None:
        """Another sidecar took this configuration over: what can outlive us is left to it."""
        ...
