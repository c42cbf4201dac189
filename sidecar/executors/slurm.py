"""Slurm executor: each evaluation is a Slurm batch job (SPEC §2.4, §2.8).

The job runs `bash <eval-script> <sft-root>` in the repo root with the sidecar's environment plus
the injected variables, writing to the per-checkpoint log file. sbatch runs in a short-lived
thread per submission; ONE watcher thread then follows every job with one batched `squeue` per
poll. A job that ended (or left the queue) is settled once: `scontrol show job` for its exit
code, else `sacct` (the accounting database, else the job completion file) and, failing that,
its metrics.json decides. Slurm commands run through `processes.run_command`: never through a shell.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from .. import labels
from ..crash import crash_point
from .base import RECORD_WAIT, Emit, EvalJob, EvalResult, Finished, Outcome, Started, Updated, log_header
from .processes import run_command

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60.0  # seconds one sbatch/scontrol/sacct call may take
CANCEL_WAIT = 15.0  # seconds (beyond the kill grace) to wait for a cancelled job to end at shutdown
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel")  # what the executor runs (sacct is optional)
# One line per job: id, state, reason, batch host, time used (reset by a requeue), comment (last:
# a comment may hold "|").
SQUEUE_FORMAT = "%i|%T|%r|%B|%M|%k"
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


def _slurm(argv: list[str], env: dict[str, str] | None) -> tuple[int, str, str]:
    """A Slurm command's (returncode, stdout, stderr); one that cannot be run (not executable, say)
    returns 126 with the reason, as a shell would."""
    try:
        return run_command(argv, COMMAND_TIMEOUT, env=env)
    except OSError as exc:
        return 126, "", f"cannot run {argv[0]}: {exc.strerror or exc}"


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """The jobs in `squeue -h -o SQUEUE_FORMAT` output, by job id. squeue reports no exit code
    (`exit_code` None) and "n/a" or "(null)" for a missing host or comment (here "")."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 5)
        if len(parts) != 6 or not parts[0] or not parts[1]:
            continue
        job_id, state, reason, node, used, comment = parts
        jobs[job_id] = JobInfo(state, None, 0, reason, "" if node in ("n/a", "(null)") else node, _seconds(used),
                               "" if comment == "(null)" else comment)
    return jobs


def final_result(job_id: str, info: JobInfo, elapsed: float, *, timed_out: bool, cancelling: bool) -> EvalResult:
    """What a job in a final state means for its eval: cancelled at shutdown and timed out win
    over how it ended (unless it COMPLETED); a failed job is EXITED with its exit code and why."""
    if cancelling and info.state != "COMPLETED":
        return EvalResult(Outcome.CANCELLED, duration=elapsed)
    if timed_out and info.state != "COMPLETED":
        return EvalResult(Outcome.TIMED_OUT, info.exit_code, elapsed)
    if info.state == "COMPLETED" and info.exit_code in (0, None) and not info.signal:
        return EvalResult(Outcome.EXITED, 0, elapsed)
    return EvalResult(Outcome.EXITED, info.exit_code if info.exit_code is not None else -1, elapsed,
                      error=describe(job_id, info), consume_attempt=info.state not in NOT_THE_EVALS_FAULT)


@dataclass(eq=False)
class _Tracked:
    """One job the watcher follows, as last seen."""

    key: object
    job: EvalJob
    job_id: str
    emit: Emit
    started: float  # time.monotonic() when start/resume was called
    state: str
    timed_out: bool = False  # scancel sent: it ran longer than job.timeout
    cancel_deadline: float | None = None  # scancel sent at shutdown (--slurm-cancel-on-exit); given up after

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class SlurmExecutor:
    """Submits evaluations with sbatch; one watcher thread follows all their jobs."""

    name = "slurm"

    def __init__(self, extra_args: tuple[str, ...] = (), poll_seconds: float = 10.0, grace_seconds: float = 10.0,
                 cancel_on_exit: bool = False, environ: dict[str, str] | None = None,
                 script_dir: Path | None = None, max_parallel: int = 1, gpus: str = "") -> None:
        self.extra_args = tuple(extra_args)
        self.poll = poll_seconds
        self.grace = grace_seconds
        self.cancel_on_exit = cancel_on_exit
        self.environ = environ
        self.script_dir = script_dir
        self.max_parallel = max_parallel
        self.gpus = gpus
        self._stopping = threading.Event()  # cancel_all was called: submit nothing more
        self._wake = threading.Event()  # the watcher looks again now (a new job, cancel_all)
        self._script_lock = threading.Lock()  # submission threads write the job script concurrently
        self._lock = threading.Lock()  # guards _tracked, _watcher, _helpers (never held while a command runs)
        self._tracked: dict[int, _Tracked] = {}
        self._ids = itertools.count()
        self._watcher: threading.Thread | None = None  # the last watcher started (join waits for it)
        self._watching = False  # a watcher runs and will see jobs added now
        self._helpers: set[threading.Thread] = set()  # submission and resume threads still running
        self._unreachable = ""  # why the controller did not answer (one warning per outage)

    # ----- the executor protocol ----------------------------------------------------------------
    def slots(self) -> list[str]:
        return [self.gpus] * self.max_parallel

    def prepare(self, job: EvalJob) -> tuple[EvalJob, dict]:
        """The attempt's random tag (`job.tag` is its prefix, "eval-sidecar:KEY:STEP") becomes the
        job's comment; saved in state before sbatch runs, it finds the job after a kill -9 of the
        sidecar between sbatch and saving the job id."""
        tag = f"{job.tag or 'eval-sidecar'}:{secrets.token_hex(6)}"
        return replace(job, tag=tag), {"slurm_tag": tag, "slurm_state": "SUBMITTING"}

    def owns(self, record: dict) -> bool:
        return bool(record.get("job_id") or record.get("slurm_tag"))

    def recover(self, record: dict) -> bool:
        return True  # a Slurm job outlives its sidecar: it is followed again

    def resume(self, key: object, record: dict, job: EvalJob, emit: Emit) -> None:
        """Follow the job an earlier sidecar submitted: its saved job id, else (it died around
        sbatch) the job whose comment is the attempt's tag, if there is one."""
        job_id = job.attach or str(record.get("job_id") or "")
        job = replace(job, attach=job_id, tag=job.tag or str(record.get("slurm_tag") or ""))
        state = str(record.get("slurm_state") or "PENDING")
        self._helper(f"slurm-resume-{job.name}", self._resume, key, job, state if state in ACTIVE else "PENDING", emit)

    def start(self, key: object, job: EvalJob, emit: Emit) -> None:
        """Submit a prepared attempt (in a thread of its own: sbatch may take long)."""
        self._helper(f"slurm-submit-{job.name}", self._submit_and_follow, key, job, emit)

    def where(self, job: EvalJob) -> str:
        return "as a Slurm job"

    def missing_commands(self) -> list[str]:
        path = (self.environ if self.environ is not None else os.environ).get("PATH")
        return [c for c in COMMANDS if shutil.which(c, path=path) is None]

    def cancel_all(self) -> None:
        """From any thread, never blocks (it only sets events): the watcher leaves the jobs running (re-attached on
        the next start) or, with --slurm-cancel-on-exit, cancels them; nothing more is submitted."""
        self._stopping.set()
        self._wake.set()

    def leave_running(self) -> None:
        """Another sidecar holds this configuration now: its jobs are its own, none is cancelled."""
        self.cancel_on_exit = False

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the submission threads and the watcher to end (after cancel_all, or once every
        job finished); True if none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [t for t in (*self._helpers, self._watcher) if t is not None and t.is_alive()]
            if not threads:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            threads[0].join(left)

    # ----- submission and re-attaching (one short-lived thread each) ------------------------------
    def _helper(self, name: str, target, key, job: EvalJob, *args) -> None:
        def run() -> None:
            try:
                target(key, job, *args)
            except BaseException as exc:  # noqa: BLE001 - every job ends with one Finished
                log.exception("slurm: %s failed", name)
                args[-1](Finished(key, EvalResult(Outcome.NOT_STARTED, error=f"{type(exc).__name__}: {exc}",
                                                  consume_attempt=False)))
            finally:
                with self._lock:
                    self._helpers.discard(thread)

        thread = labels.thread(run, name)
        with self._lock:
            self._helpers.add(thread)
        thread.start()

    def _header(self, job: EvalJob, what: str) -> str:
        """Append the sidecar's line to the job's log file; "" or why it could not."""
        try:
            job.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log_path, "ab") as out:
                out.write(log_header(what, job.cwd))
        except OSError as exc:
            return f"cannot open log file {job.log_path}: {exc.strerror or exc}"
        return ""

    def _submit_and_follow(self, key: object, job: EvalJob, emit: Emit) -> None:
        started = time.monotonic()
        # A failure before sbatch is the sidecar's own (its disk), never the eval's: it uses no attempt.
        error = self._header(job, f"submits to Slurm: {job.argv!r}")
        if error:
            emit(Finished(key, EvalResult(Outcome.NOT_STARTED, error=error, consume_attempt=False)))
            return
        if self._stopping.is_set():  # nothing submitted yet: the checkpoint stays pending
            emit(Finished(key, EvalResult(Outcome.CANCELLED, duration=time.monotonic() - started)))
            return
        job_id, error, transient = self._submit(job)
        if error:
            emit(Finished(key, EvalResult(Outcome.NOT_STARTED, duration=time.monotonic() - started, error=error,
                                          consume_attempt=not transient)))
            return
        log.info("submitted slurm job %s (%s)", job_id, job.name)
        crash_point("slurm-submitted")  # before the job id is saved: a restart finds the job by its tag
        self._announce_and_follow(key, job, job_id, "PENDING", emit, started)

    def _resume(self, key: object, job: EvalJob, state: str, emit: Emit) -> None:
        started = time.monotonic()
        if job.attach:
            error = self._header(job, f"re-attaches to slurm job {job.attach}")
            if error:  # the job runs whatever happens to our log line
                log.warning("%s; following slurm job %s anyway", error, job.attach)
            log.info("re-attaching to slurm job %s (%s)", job.attach, job.name)
            self._announce_and_follow(key, job, job.attach, state, emit, started)
            return
        error = self._header(job, f"looks for the slurm job of attempt {job.tag}")
        if error:
            log.warning("%s; looking for the slurm job of %s anyway", error, job.name)
        try:
            found = self._find_by_tag(job)
        except ControllerUnreachable as exc:
            emit(Finished(key, EvalResult(Outcome.DETACHED, duration=time.monotonic() - started,
                                          error=f"the Slurm job of {job.name} could not be looked up ({exc})")))
            return
        if found is None:
            emit(Finished(key, EvalResult(Outcome.NOT_SUBMITTED, duration=time.monotonic() - started)))
            return
        job_id, state = found
        log.warning("the previous sidecar stopped right after submitting slurm job %s (%s, %s); tracking it "
                    "instead of submitting again", job_id, job.name, state)
        self._announce_and_follow(key, job, job_id, state, emit, started)

    def _announce_and_follow(self, key: object, job: EvalJob, job_id: str, state: str, emit: Emit,
                             started: float) -> None:
        """Started (and wait until the main thread saved the job id), then the watcher follows it."""
        event = Started(key, {"job_id": job_id, "slurm_state": state})
        emit(event)
        if not event.recorded.wait(RECORD_WAIT):
            log.warning("slurm job %s (%s) was not recorded in state within %g s; following it anyway", job_id,
                        job.name, RECORD_WAIT)
        with self._lock:
            self._tracked[next(self._ids)] = _Tracked(key, job, job_id, emit, started, state)
            if not self._watching:
                self._watcher = threading.Thread(target=self._watch, name="slurm-watcher", daemon=True)
                self._watcher.start()  # if it cannot start, the next job tries again
                self._watching = True
        self._wake.set()  # a new job is asked about at once

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
        rc, out, err = _slurm(argv, job.env)
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
            rc, out, err = _slurm(["squeue", "-h", "-t", "all", "-n", job.name, "-o", "%i|%T|%k"], self.environ)
            if rc == 0:
                for line in out.splitlines():
                    parts = line.strip().split("|", 2)
                    if len(parts) == 3 and parts[2] == job.tag:
                        return parts[0], parts[1]
                return None
            log.warning("cannot ask Slurm for the job of %s (%s); will ask again", job.name, _one_line(err))
            if self._stopping.wait(self.poll):
                raise ControllerUnreachable(_one_line(err))

    # ----- the watcher: one thread, one squeue per poll for all jobs ------------------------------
    def _watch(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                tracked = list(self._tracked.items())
                if not tracked:
                    self._watching = False  # under the lock: a job added from now on starts a new watcher
                    return
            try:
                self._poll(tracked)
            except Exception:  # a bug here must not leave every job unfollowed
                log.exception("following slurm jobs %s failed; will try again", ", ".join(t.job_id for _, t in tracked))
            with self._lock:
                left = list(self._tracked.values())
            if any(t.cancel_deadline is not None for t in left):
                pause = 0.5
            elif any(t.timed_out for t in left):
                pause = min(self.poll, 1.0)
            else:
                pause = self.poll
            self._wake.wait(pause)

    def _poll(self, tracked: list[tuple[int, _Tracked]]) -> None:
        if self._stopping.is_set() and not self.cancel_on_exit:
            for ident, t in tracked:  # left running, as last seen: the next start re-attaches
                self._finish(ident, t, EvalResult(Outcome.DETACHED, duration=t.elapsed(),
                                                  error=f"slurm job {t.job_id} left {t.state}"))
            return
        rows = self.query_queue([t.job_id for _, t in tracked])
        for ident, t in tracked:
            if rows is not None:
                self._follow(ident, t, rows.get(t.job_id))
        if self._stopping.is_set():
            self._cancel_at_exit([(i, t) for i, t in tracked if i in self._tracked])

    def _follow(self, ident: int, t: _Tracked, row: JobInfo | None) -> None:
        """One job's line from squeue (None: not in the queue any more)."""
        if row is not None and self._foreign(ident, t, row):
            return
        if row is None or row.state not in ACTIVE:
            self._settle(ident, t)
            return
        self._note(t, row)
        job = t.job
        if job.timeout > 0 and t.state == "RUNNING" and not t.timed_out and row.runtime > job.timeout:
            # Slurm's own running time: a requeued job starts again from 0, and a restart of the
            # sidecar does not reset it.
            log.warning("slurm job %s ran longer than %g s; cancelling it", t.job_id, job.timeout)
            self._cancel([t.job_id])
            t.timed_out = True

    def _settle(self, ident: int, t: _Tracked) -> None:
        """A job that ended or left the queue: its exit code from scontrol, else from accounting,
        else its metrics.json decides. Asked again at the next poll if the controller is silent."""
        try:
            info = self.query(t.job_id)
        except ControllerUnreachable as exc:
            self._reachable(False, [t.job_id], str(exc))
            return
        self._reachable(True, [t.job_id])
        if info is not None and self._foreign(ident, t, info):
            return
        if info is None:
            self._finish(ident, t, self._gone(t))
            return
        self._note(t, info)
        if info.state in ACTIVE:
            return  # requeued since squeue saw it: followed on
        self._finish(ident, t, final_result(t.job_id, info, t.elapsed(), timed_out=t.timed_out,
                                            cancelling=t.cancel_deadline is not None))

    def _foreign(self, ident: int, t: _Tracked, info: JobInfo) -> bool:
        """A job id now naming another job (ids are reused when the controller's state is wiped):
        it is neither followed nor cancelled; the eval's metrics.json decides."""
        if not t.job.tag or info.comment is None or info.comment == t.job.tag:
            return False
        log.warning("slurm job %s is not the job of %s (its comment is %r); it is left alone", t.job_id, t.job.name,
                    info.comment)
        self._finish(ident, t, self._gone(t, accounting=False))
        return True

    def _note(self, t: _Tracked, info: JobInfo) -> None:
        """Updated when the job's state changed."""
        if info.state == t.state:
            return
        log.info("slurm job %s (%s) is %s%s", t.job_id, t.job.name, info.state,
                 f" on {info.node}" if info.node and info.state == "RUNNING" else "")
        t.state = info.state
        t.emit(Updated(t.key, {"slurm_state": info.state, **({"node": info.node} if info.node else {})}))

    def _cancel_at_exit(self, tracked: list[tuple[int, _Tracked]]) -> None:
        """--slurm-cancel-on-exit: scancel each job once, then wait for it to end (grace + CANCEL_WAIT)."""
        now = time.monotonic()
        fresh = [t for _, t in tracked if t.cancel_deadline is None]
        for t in fresh:
            log.info("cancelling slurm job %s (--slurm-cancel-on-exit)", t.job_id)
            t.cancel_deadline = now + self.grace + CANCEL_WAIT
        if fresh:
            self._cancel([t.job_id for t in fresh])  # one scancel for all of them
        for ident, t in tracked:
            if now > t.cancel_deadline:
                log.warning("slurm job %s is still %s after scancel; leaving it", t.job_id, t.state)
                self._finish(ident, t, EvalResult(Outcome.CANCELLED, duration=t.elapsed()))

    def _finish(self, ident: int, t: _Tracked, result: EvalResult) -> None:
        """The job's one Finished: it is followed no more."""
        with self._lock:
            if self._tracked.pop(ident, None) is None:
                return
        t.emit(Finished(t.key, result))

    def _reachable(self, answered: bool, job_ids: list[str], why: str = "") -> None:
        """One warning per outage of the controller, and one line when it answers again."""
        if not answered:
            if not self._unreachable:
                log.warning("cannot ask Slurm about job %s (%s); will keep asking", ", ".join(job_ids), why)
            self._unreachable = why
        elif self._unreachable:
            log.info("Slurm answers again about job %s", ", ".join(job_ids))
            self._unreachable = ""

    # ----- Slurm queries ------------------------------------------------------------------------
    def query_queue(self, job_ids: list[str]) -> dict[str, JobInfo] | None:
        """The jobs among `job_ids` that the controller still knows, from one squeue call; None
        (after one warning per outage) if the controller does not answer."""
        rc, out, err = _slurm(["squeue", "-h", "-t", "all", f"--jobs={','.join(job_ids)}", "-o", SQUEUE_FORMAT],
                              self.environ)
        if rc != 0 and "invalid job id" not in err.lower():  # squeue says so when the only job asked about is gone
            self._reachable(False, job_ids, _one_line(err))
            return None
        self._reachable(True, job_ids)
        return parse_squeue(out) if rc == 0 else {}

    def query(self, job_id: str) -> JobInfo | None:
        """The job's state from the controller; None if the controller no longer knows it."""
        rc, out, err = _slurm(["scontrol", "show", "job", "-o", job_id], self.environ)
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
            rc, out, _ = _slurm(["sacct", *extra, "-n", "-P", "-j", job_id, "-o", "State,ExitCode"], self.environ)
            info = parse_sacct(out) if rc == 0 else None
            if info is not None:
                return info
        return None

    def _cancel(self, job_ids: list[str]) -> None:
        rc, _, err = _slurm(["scancel", *job_ids], self.environ)
        if rc != 0:
            log.warning("scancel %s failed: %s", " ".join(job_ids), _one_line(err))

    def _gone(self, t: _Tracked, accounting: bool = True) -> EvalResult:
        """The controller does not know the job (any more): accounting, else its metrics.json decide."""
        job_id, elapsed, cancelling = t.job_id, t.elapsed(), t.cancel_deadline is not None
        info = self.lookup_finished(job_id) if accounting else None
        if info is not None:
            return final_result(job_id, info, elapsed, timed_out=t.timed_out, cancelling=cancelling)
        if cancelling:
            return EvalResult(Outcome.CANCELLED, duration=elapsed)
        log.warning("slurm job %s is no longer known to Slurm (no accounting record); its metrics.json decides",
                    job_id)
        return EvalResult(Outcome.UNKNOWN, duration=elapsed,
                          error=f"slurm job {job_id} is no longer known to Slurm and has no accounting record")
