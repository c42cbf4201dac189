"""The executor contract: what one evaluation is (`EvalJob`) and how it ended (`EvalResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvalJob:
    """One evaluation to run: `bash <eval-script> <sft-root>` with its environment and log file."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    timeout: float = 0.0  # seconds of running time before it is stopped (0 = never)
    name: str = ""  # a Slurm job name
    tag: str = ""  # names this attempt's Slurm job for good (its comment; saved in state before sbatch)
    attach: str = ""  # a Slurm job id submitted by an earlier sidecar: track it, submit nothing
    adopt: bool = False  # an earlier sidecar died around sbatch: find its job by `tag`, submit nothing


@dataclass(frozen=True)
class EvalResult:
    returncode: int | None  # None when the process could not be started
    duration: float
    timed_out: bool = False
    cancelled: bool = False
    start_error: str = ""
    error: str = ""  # the executor's own account of a failure (e.g. "slurm job 12 FAILED exit 3")
    consume_attempt: bool = True  # False: the failure was not the eval's (preemption, node failure)
    detached: bool = False  # left running on purpose at shutdown (a Slurm job); it stays in flight
    unknown_outcome: bool = False  # the job left no record; its metrics.json decides
    not_submitted: bool = False  # `adopt` found no job: the earlier sidecar died before sbatch

