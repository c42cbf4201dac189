"""Executor: runs one evaluation as a child process group (SPEC §2.4).

The only module that imports subprocess or sends signals. Values reach the child as
environment strings and argv items, never through a shell command line.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_RESOURCE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOMEM, errno.EAGAIN, errno.EMFILE, errno.ENFILE)

# Every local eval gets this variable, naming its attempt (saved in state before the eval starts):
# whatever it leaves behind, even outside its process group, is found by it after a kill -9.
ATTEMPT_ENV = "EVAL_SIDECAR_ATTEMPT"


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


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)


class LocalExecutor:
    """Runs evaluations on this machine, one process group each, stoppable from a signal handler."""

    def __init__(self, grace_seconds: float = 10.0) -> None:
        self.grace = grace_seconds
        self._running: dict[int, subprocess.Popen] = {}
        self._cancelled = threading.Event()
        self._lock = threading.RLock()  # re-entrant: cancel_all runs in a signal handler

    def run(self, job: EvalJob, on_start=None, on_update=None) -> EvalResult:
        """Run the job to completion (or timeout, or cancel); stdout and stderr go to its log file.

        `on_start(info)` is called once the child exists, with what names it for good (pid and
        start time) to record it as in flight. (`on_update` is for executors whose jobs change
        state while they wait; a local child has none.)
        """
        argv, cwd, env, log_path, timeout = job.argv, job.cwd, job.env, job.log_path, job.timeout
        started = time.monotonic()
        # A failure here is the sidecar's own (its disk, its processes), never the eval's: it uses no attempt.
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(log_path, "ab")
        except OSError as exc:
            return EvalResult(None, 0.0, start_error=f"cannot open log file {log_path}: {exc.strerror or exc}",
                              consume_attempt=False)
        with out:
            header = f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} sidecar runs: {argv!r} (cwd {cwd})\n"
            try:
                out.write(header.encode("utf-8", "replace"))
                out.flush()
            except OSError as exc:
                return EvalResult(None, 0.0, start_error=f"cannot write log file {log_path}: {exc.strerror or exc}",
                                  consume_attempt=False)
            try:
                proc = subprocess.Popen(
                    argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as exc:  # no memory or processes left is the machine's doing; a missing
                # bash or --repo-root is the set-up's and uses attempts like any failure
                return EvalResult(None, time.monotonic() - started, start_error=exc.strerror or str(exc),
                                  consume_attempt=exc.errno not in _RESOURCE_ERRORS)
            crash_point("eval-spawned")  # the child exists; only the attempt's tag names it yet
        with self._lock:
            self._running[proc.pid] = proc
        timed_out = False
        try:
            if self._cancelled.is_set():
                self._stop_group(proc)
            if on_start is not None:
                on_start({"pid": proc.pid, "pid_start": process_start_time(proc.pid)})
            crash_point("eval-running")
            try:
                proc.wait(timeout=timeout if timeout > 0 else None)
            except subprocess.TimeoutExpired:
                timed_out = True
                log.warning("eval pid %d timed out after %s s; stopping its process group", proc.pid, timeout)
                self._stop_group(proc)
            self._reap_stragglers(proc.pid, job.tag)
        except BaseException:
            self._stop_group(proc)  # nothing outlives its eval, whatever went wrong here
            raise
        finally:
            with self._lock:
                self._running.pop(proc.pid, None)
        return EvalResult(proc.returncode, time.monotonic() - started, timed_out=timed_out,
                          cancelled=self._cancelled.is_set() and not timed_out)

    def _stop_group(self, proc: subprocess.Popen) -> None:
        """SIGTERM to the group, wait the grace period for the leader, then SIGKILL the group."""
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()

    def _reap_stragglers(self, pgid: int, tag: str) -> None:
        """Processes the eval left behind (in its group, or outside it with its attempt tag) are
        stopped too: nothing outlives its eval."""
        tagged = tagged_processes(tag)
        if not group_alive(pgid) and not tagged:
            return
        log.warning("eval process group %d left processes behind; stopping them", pgid)
        _stop_all(pgid, tagged, self.grace)

    def cancel_all(self) -> None:
        """Called from a signal handler: SIGTERM every running eval group; SIGKILL follows after the grace period.

        Does not block: the thread waiting in `run` sees the child exit and returns `cancelled`.
        """
        self._cancelled.set()
        with self._lock:
            pgids = list(self._running)
        for pgid in pgids:
            _signal_group(pgid, signal.SIGTERM)
        if pgids:
            timer = threading.Timer(self.grace, self._kill_all, args=(pgids,))
            timer.daemon = True
            timer.start()

    def _kill_all(self, pgids: list[int]) -> None:
        with self._lock:
            still = [p for p in pgids if p in self._running]
        for pgid in still:
            _signal_group(pgid, signal.SIGKILL)


def process_start_time(pid: int) -> str:
    """The start time of a local pid in clock ticks since boot ('' if unknown): with the pid it
    names one process for good, so a reused pid is never mistaken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def _other_pids() -> list[str]:
    """The pids in /proc (as its folder names), this process left out; empty without /proc."""
    me = str(os.getpid())
    try:
        return [e for e in os.listdir("/proc") if e.isdigit() and e != me]
    except OSError:
        return []


def tagged_processes(tag: str) -> list[tuple[int, str]]:
    """(pid, start time) of every process whose environment carries this attempt's tag: an eval's
    children, also those that left its process group (setsid) or outlived its leader."""
    if not tag:
        return []
    needle = f"{ATTEMPT_ENV}={tag}\0".encode()
    found = []
    for entry in _other_pids():
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = b"\0" + fh.read()
        except OSError:
            continue
        if b"\0" + needle in environ or environ.endswith(b"\0" + needle[:-1]):
            start = process_start_time(int(entry))
            if start:
                found.append((int(entry), start))
    return found


def _stop_all(pgid: int | None, tagged: list[tuple[int, str]], grace: float) -> None:
    """SIGTERM the group `pgid` (if given) and each tagged process that is still the same process,
    wait up to `grace` for them, then SIGKILL what is left."""
    def signal_all(sig: int) -> bool:
        alive = False
        if pgid:
            alive = _signal_group(pgid, sig) or alive
        for pid, start in tagged:
            if process_start_time(pid) == start:
                try:
                    os.kill(pid, sig)
                    alive = alive or not _is_zombie(pid)
                except OSError:
                    pass
        return alive

    if not signal_all(signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while signal_all(0) and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_all(signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def reap_orphan(pgid: int | None, start_time: str, tag: str = "", grace: float = 10.0) -> bool:
    """Stop what an eval left running when its sidecar was killed (-9): its process group while
    its leader is still the very process that was started (same pid and start time, so a reused
    pid of an unrelated program is never signalled), and every process carrying its attempt tag
    (children that left the group or outlived the leader). True if anything was stopped."""
    leader = pgid if pgid and start_time and process_start_time(pgid) == start_time else None
    tagged = tagged_processes(tag)
    if leader is None and not tagged:
        return False
    log.warning("stopping eval processes left running by a previous sidecar (%s)",
                ", ".join([f"group {leader}"] * (leader is not None) + [f"pid {p}" for p, _ in tagged]))
    _stop_all(leader, tagged, grace)
    return True


def child_processes(name: str) -> list[tuple[int, str]]:
    """(pid, start time) of this process's children whose command name is `name` (Linux /proc)."""
    me = str(os.getpid())
    found = []
    for entry in _other_pids():
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        fields = stat.rsplit(")", 1)[-1].split()
        if comm == name and fields[1] == me:
            found.append((int(entry), fields[19]))
    return found


def kill_orphan(pid: int, start_time: str) -> bool:
    """SIGKILL one process a killed sidecar left behind (its wandb-core, which could still send
    old history lines after a restarted sidecar counted the server's), only if `pid` is still that
    very process (same start time). True if it was killed."""
    if not start_time or process_start_time(pid) != start_time:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            break
        if fields[0] == "Z" or fields[19] != start_time:
            break
        time.sleep(0.02)
    return True


def run_command(argv: list[str], timeout: float, env: dict[str, str] | None = None,
                capture: bool = True) -> tuple[int, str, str]:
    """Run a short helper command (wandb's own tools) without a shell; (returncode, stdout, stderr).

    A command that cannot start returns 127; one that exceeds `timeout` is killed and returns 124.
    """
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=timeout, text=True,
                              capture_output=capture, start_new_session=True)
    except FileNotFoundError as exc:
        return 127, "", str(exc)
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout:g} s"
    return proc.returncode, proc.stdout or "", proc.stderr or ""


# A documented debug option (README "Debugging crashes"): EVAL_SIDECAR_CRASH_AT=PHASE[:N] makes the
# sidecar SIGKILL itself the N-th time (default 1st) it reaches PHASE, to prove that a kill -9 at
# that moment loses nothing. Read once at import; unset, every crash_point is a no-op.
_CRASH_AT = os.environ.get("EVAL_SIDECAR_CRASH_AT", "")
_crash_counts: dict[str, int] = {}
CRASH_PHASES = ("after-discovery", "eval-spawned", "eval-running", "eval-finished", "metrics-read", "state-write",
                "state-written", "wandb-row", "table-log", "shutdown", "slurm-submitted")


def crash_point(phase: str) -> None:
    """SIGKILL this process here if EVAL_SIDECAR_CRASH_AT names this phase (and this occurrence)."""
    if not _CRASH_AT:
        return
    name, _, nth = _CRASH_AT.partition(":")
    if name != phase:
        return
    _crash_counts[phase] = _crash_counts.get(phase, 0) + 1
    if _crash_counts[phase] == (int(nth) if nth.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
