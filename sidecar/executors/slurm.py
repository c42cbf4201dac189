"""Slurm executor: each evaluation is a Slurm batch job (SPEC §2.4, §2.8).

The job runs `bash <eval-script> <sft-root>` in the repo root with the sidecar's environment plus
the injected variables, writing to the per-checkpoint log file. A worker thread tracks one job
with `scontrol show job` until it ends; a job the controller has forgotten is looked up with
`sacct` (the accounting database, else the job completion file) and, failing that, its
metrics.json decides. Slurm commands run through `executor.run_command`: never through a shell.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import NamedTuple

from ..crash import crash_point
from .base import EvalJob, EvalResult
from .processes import run_command

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60.0  # seconds one sbatch/scontrol/sacct call may take
CANCEL_WAIT = 15.0  # seconds (beyond the kill grace) to wait for a cancelled job to end at shutdown
# Job states in which a job may still run (anything else is final).
ACTIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "POWER_UP_NODE"})
# Final states that say nothing about the eval itself: they do not use up an attempt.
NOT_THE_EVALS_FAULT = frozenset({"PREEMPTED", "NODE_FAIL", "BOOT_FAIL"})
# Options the sidecar sets itself, or that would break tracking (several jobs, a blocking sbatch,
# nothing submitted); --slurm-args must not hold them, nor any abbreviation sbatch would accept.
RESERVED_LONG = ("--parsable", "--job-name", "--output", "--error", "--open-mode", "--chdir", "--export", "--comment",
                 "--wrap", "--array", "--wait", "--test-only")
RESERVED_SHORT = ("-J", "-o", "-e", "-D", "-a", "-W")
# sbatch failures that say nothing about the eval: backed off, but no attempt is used up.
TRANSIENT_SUBMIT = ("unable to contact slurm controller", "socket timed out", "zero bytes were transmitted",
                    "communication connection failure", "backup controller in standby", "slurmctld is busy",
                    "temporarily unavailable", "try again")
WRAPPER = """#!/bin/bash
# Written by eval sidecar: the Slurm job runs the eval script with bash, as a local eval does.
echo "slurm job ${SLURM_JOB_ID:-?} on $(hostname) runs: bash $*"
exec bash "$@"
"""


class JobInfo(NamedTuple):
    state: str
    exit_code: int | None
    signal: int
    reason: str = ""
    node: str = ""
    runtime: float = 0.0  # seconds this run of the job has been running (reset by a requeue)
    comment: str | None = None  # None: not reported (sacct)


class ControllerUnreachable(Exception):
    pass


def check_sbatch_args(args: tuple[str, ...]) -> str | None:
    """Why `args` cannot be passed to sbatch (None if they can): an option the sidecar sets itself
    (or an abbreviation of one, which sbatch accepts), or a word that is no option's value (sbatch
    would take it for the batch script)."""
    value_may_follow = False
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name = arg.split("=", 1)[0]
            taken = next((r for r in RESERVED_LONG if r.startswith(name) and len(name) > 3), None)
            if taken:
                return f"{name} is set by the sidecar ({taken}: job name, log file, folder, environment, one job per eval)"
            value_may_follow = "=" not in arg
        elif arg.startswith("-") and len(arg) > 1:
            if arg[:2] in RESERVED_SHORT:
                return f"{arg[:2]} is set by the sidecar (job name, log file, folder, environment, one job per eval)"
            value_may_follow = len(arg) == 2
        elif value_may_follow:
            value_may_follow = False
        else:
            return f"{arg!r} is not an option (sbatch would take it for the batch script)"
    return None


def _seconds(text: str) -> float:
    """Slurm's `[D-]HH:MM:SS` (or MM:SS) as seconds; 0 if unparsable."""
    days, _, clock = text.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        total = 0
        for part in parts:
            total = total * 60 + part
        return total + (int(days) * 86400 if days else 0)
    except ValueError:
        return 0.0


def _exit_code(text: str) -> tuple[int | None, int]:
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, 0


def parse_scontrol(text: str) -> JobInfo | None:
    """The job state from one line of `scontrol show job -o` (None if it holds no JobState)."""
    fields = dict(f.split("=", 1) for f in text.splitlines()[0].split() if "=" in f) if text.strip() else {}
    if "JobState" not in fields:
        return None
    code, sig = _exit_code(fields.get("ExitCode", ""))
    node = fields.get("BatchHost") or fields.get("NodeList", "")
    comment = fields.get("Comment", "")
    return JobInfo(fields["JobState"], code, sig, fields.get("Reason", ""), "" if node == "(null)" else node,
                   _seconds(fields.get("RunTime", "")), "" if comment == "(null)" else comment)


def parse_sacct(text: str) -> JobInfo | None:
    """The job state from `sacct -n -P -o State,ExitCode` output (its first line: the job itself)."""
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            code, sig = _exit_code(parts[1])
            return JobInfo(parts[0].split()[0], code, sig)  # "CANCELLED by 0" -> CANCELLED
    return None


def describe(job_id: str, info: JobInfo) -> str:
    """One line for a failed job: "slurm job 12 FAILED exit 3"."""
    text = f"slurm job {job_id} {info.state}"
    if info.exit_code is not None:
        text += f" exit {info.exit_code}"
    if info.signal:
        text += f" signal {info.signal}"
    if info.reason and info.reason not in ("None", "NonZeroExitCode"):
        text += f" ({info.reason})"
    return text


def _one_line(stderr: str) -> str:
    lines = [re.sub(r"^s\w+: (error: )?", "", ln.strip()) for ln in stderr.splitlines() if ln.strip()]
    return "; ".join(lines) or "no message"


class SlurmExecutor:
    """Submits evaluations with sbatch and waits for them in the calling (worker) thread."""

    def __init__(self, extra_args: tuple[str, ...] = (), poll_seconds: float = 10.0, grace_seconds: float = 10.0,
                 cancel_on_exit: bool = False, environ: dict[str, str] | None = None,
                 script_dir: Path | None = None) -> None:
        self.extra_args = tuple(extra_args)
        self.poll = poll_seconds
        self.grace = grace_seconds
        self.cancel_on_exit = cancel_on_exit
        self.environ = environ
        self.script_dir = script_dir
        self._stopping = threading.Event()
        self._script_lock = threading.Lock()  # worker threads submit concurrently

    # ----- the executor contract ----------------------------------------------------------------
    def run(self, job: EvalJob, on_start=None, on_update=None) -> EvalResult:
        """Submit the job (or re-attach to `job.attach`, or adopt this step's job still in the
        queue) and track it until it ends, the sidecar stops, or the timeout stops it."""
        started = time.monotonic()
        try:
            job.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log_path, "ab") as out:
                what = f"re-attaches to slurm job {job.attach}" if job.attach else f"submits to Slurm: {job.argv!r}"
                out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} sidecar {what} (cwd {job.cwd})\n"
                          .encode("utf-8", "replace"))
        except OSError as exc:
            return EvalResult(None, 0.0, start_error=f"cannot open log file {job.log_path}: {exc.strerror or exc}")
        state = "PENDING"
        if job.attach:
            job_id = job.attach
            log.info("re-attaching to slurm job %s (%s)", job_id, job.name)
        elif job.adopt:
            try:
                found = self._find_by_tag(job)
            except ControllerUnreachable as exc:
                return EvalResult(None, time.monotonic() - started, detached=True,
                                  error=f"the Slurm job of {job.name} could not be looked up ({exc})")
            if found is None:
                return EvalResult(None, time.monotonic() - started, not_submitted=True)
            job_id, state = found
            log.warning("the previous sidecar stopped right after submitting slurm job %s (%s, %s); tracking it "
                        "instead of submitting again", job_id, job.name, state)
        else:
            if self._stopping.is_set():
                return EvalResult(None, time.monotonic() - started, cancelled=True)  # nothing submitted yet
            job_id, error, transient = self._submit(job)
            if error:
                return EvalResult(None, time.monotonic() - started, start_error=error, consume_attempt=not transient)
            log.info("submitted slurm job %s (%s)", job_id, job.name)
            crash_point("slurm-submitted")  # before the job id is saved: a restart finds the job by its tag
        if on_start is not None:
            on_start({"job_id": job_id, "slurm_state": state})
        return self._track(job, job_id, state, on_update, started)

    def cancel_all(self) -> None:
        """Signal-safe: the tracking threads leave their jobs running (re-attached on the next
        start) or, with --slurm-cancel-on-exit, cancel them; nothing blocks here."""
        self._stopping.set()

    # ----- submission ----------------------------------------------------------------------------
    def _wrapper(self) -> Path:
        folder = self.script_dir or Path(".")
        path = folder / "slurm-job.sh"
        try:
            with self._script_lock:
                if path.is_file() and path.read_text() == WRAPPER:
                    return path
                folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                tmp.write_text(WRAPPER)
                tmp.replace(path)
        except OSError as exc:
            raise OSError(f"cannot write the Slurm job script {path}: {exc.strerror or exc}") from exc
        return path

    def _submit(self, job: EvalJob) -> tuple[str, str, bool]:
        """(job id, "", False) or ("", one-line error, whether the failure is Slurm's, not the job's)."""
        try:
            script = self._wrapper()
        except OSError as exc:
            return "", str(exc), False
        log_file = str(job.log_path).replace("%", "%%")  # Slurm expands %j etc. in file names
        # The injected variables travel in sbatch's own environment with --export=ALL: a value
        # holding a comma could not be passed inside --export=ALL,NAME=value.
        argv = ["sbatch", "--parsable", *self.extra_args, f"--job-name={job.name}", f"--output={log_file}",
                f"--error={log_file}", "--open-mode=append", f"--chdir={job.cwd}", "--export=ALL",
                f"--comment={job.tag}", str(script), *job.argv[1:]]
        rc, out, err = run_command(argv, COMMAND_TIMEOUT, env=job.env)
        if rc != 0:
            message = _one_line(err)
            transient = rc == 124 or any(t in message.lower() for t in TRANSIENT_SUBMIT)
            return "", f"slurm submission failed (sbatch exit {rc}): {message}", transient
        job_id = out.strip().split(";")[0]
        if not re.fullmatch(r"\d+", job_id):
            return "", f"slurm submission failed: sbatch printed no job id ({out.strip()[:200]!r})", False
        return job_id, "", False

    def _find_by_tag(self, job: EvalJob) -> tuple[str, str] | None:
        """The job an earlier sidecar submitted for this attempt (it died before saving the id):
        matched by name and by the comment holding the attempt's random tag, in any state; None if
        there is none. Raises ControllerUnreachable if the sidecar stops before Slurm answered."""
        while True:
            rc, out, err = run_command(["squeue", "-h", "-t", "all", "-n", job.name, "-o", "%i|%T|%k"],
                                       COMMAND_TIMEOUT, env=self.environ)
            if rc == 0:
                for line in out.splitlines():
                    parts = line.strip().split("|", 2)
                    if len(parts) == 3 and parts[2] == job.tag:
                        return parts[0], parts[1]
                return None
            log.warning("cannot ask Slurm for the job of %s (%s); will ask again", job.name, _one_line(err))
            if self._stopping.wait(self.poll):
                raise ControllerUnreachable(_one_line(err))

    # ----- tracking ----------------------------------------------------------------------------
    def query(self, job_id: str) -> JobInfo | None:
        """The job's state from the controller; None if the controller no longer knows it."""
        rc, out, err = run_command(["scontrol", "show", "job", "-o", job_id], COMMAND_TIMEOUT, env=self.environ)
        if rc == 0:
            info = parse_scontrol(out)
            if info is not None:
                return info
        if "invalid job id" in err.lower():
            return None
        raise ControllerUnreachable(_one_line(err) if rc != 0 else f"unexpected output {out[:200]!r}")

    def lookup_finished(self, job_id: str) -> JobInfo | None:
        """A job gone from the controller: its record in accounting, else in the job completion file."""
        for extra in ((), ("-c",)):
            rc, out, _ = run_command(["sacct", *extra, "-n", "-P", "-j", job_id, "-o", "State,ExitCode"],
                                     COMMAND_TIMEOUT, env=self.environ)
            info = parse_sacct(out) if rc == 0 else None
            if info is not None:
                return info
        return None

    def _cancel(self, job_id: str) -> None:
        rc, _, err = run_command(["scancel", job_id], COMMAND_TIMEOUT, env=self.environ)
        if rc != 0:
            log.warning("scancel %s failed: %s", job_id, _one_line(err))

    def _track(self, job: EvalJob, job_id: str, state: str, on_update, started: float) -> EvalResult:
        timed_out = cancelling = False
        cancel_deadline = 0.0
        unreachable = ""
        while True:
            try:
                info = self.query(job_id)
            except ControllerUnreachable as exc:
                if not unreachable:
                    log.warning("cannot ask Slurm about job %s (%s); will keep asking", job_id, exc)
                unreachable = str(exc)
                info = JobInfo(state, None, 0)
            else:
                if unreachable:
                    log.info("Slurm answers again about job %s", job_id)
                    unreachable = ""
            elapsed = time.monotonic() - started
            if info is not None and job.tag and info.comment is not None and info.comment != job.tag:
                log.warning("slurm job %s is not the job of %s (its comment is %r); it is left alone", job_id,
                            job.name, info.comment)
                return self._gone(job_id, elapsed, cancelling, accounting=False)
            if info is None:
                return self._gone(job_id, elapsed, cancelling)
            if info.state != state:
                log.info("slurm job %s (%s) is %s%s", job_id, job.name, info.state,
                         f" on {info.node}" if info.node and info.state == "RUNNING" else "")
                state = info.state
                if on_update is not None:
                    on_update({"slurm_state": state, **({"node": info.node} if info.node else {})})
            if state not in ACTIVE:
                return self._outcome(job_id, info, elapsed, timed_out, cancelling)
            if job.timeout > 0 and state == "RUNNING" and not timed_out and info.runtime > job.timeout:
                # Slurm's own RunTime: a requeued job starts again from 0, and a restart of the
                # sidecar does not reset it.
                log.warning("slurm job %s ran longer than %g s; cancelling it", job_id, job.timeout)
                self._cancel(job_id)
                timed_out = True
            if self._stopping.is_set():
                if not self.cancel_on_exit:
                    return EvalResult(None, elapsed, detached=True, error=f"slurm job {job_id} left {state}")
                if not cancelling:
                    log.info("cancelling slurm job %s (--slurm-cancel-on-exit)", job_id)
                    self._cancel(job_id)
                    cancelling = True
                    cancel_deadline = time.monotonic() + self.grace + CANCEL_WAIT
                elif time.monotonic() > cancel_deadline:
                    log.warning("slurm job %s is still %s after scancel; leaving it", job_id, state)
                    return EvalResult(None, elapsed, cancelled=True)
                time.sleep(0.5)
            elif timed_out:
                time.sleep(min(self.poll, 1.0))
            else:
                self._stopping.wait(self.poll)

    def _outcome(self, job_id: str, info: JobInfo, elapsed: float, timed_out: bool, cancelling: bool) -> EvalResult:
        if cancelling and info.state != "COMPLETED":
            return EvalResult(None, elapsed, cancelled=True)
        if timed_out and info.state != "COMPLETED":
            return EvalResult(info.exit_code, elapsed, timed_out=True)
        if info.state == "COMPLETED" and info.exit_code in (0, None) and not info.signal:
            return EvalResult(0, elapsed)
        return EvalResult(info.exit_code if info.exit_code is not None else -1, elapsed, error=describe(job_id, info),
                          consume_attempt=info.state not in NOT_THE_EVALS_FAULT)

    def _gone(self, job_id: str, elapsed: float, cancelling: bool, accounting: bool = True) -> EvalResult:
        """The controller does not know the job (any more): accounting, else its metrics.json decide."""
        info = self.lookup_finished(job_id) if accounting else None
        if info is not None:
            return self._outcome(job_id, info, elapsed, False, cancelling)
        if cancelling:
            return EvalResult(None, elapsed, cancelled=True)
        log.warning("slurm job %s is no longer known to Slurm (no accounting record); its metrics.json decides",
                    job_id)
        return EvalResult(0, elapsed, unknown_outcome=True,
                          error=f"slurm job {job_id} is no longer known to Slurm and has no accounting record")
