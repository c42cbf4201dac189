"""The local executor: runs one evaluation as a child process group on this machine (SPEC §2.4).

Values reach the child as environment strings and argv items, never through a shell command line.
"""

from __future__ import annotations

import errno
import logging
import subprocess
import threading
import time

from ..crash import crash_point
from .base import EvalJob, EvalResult
from .processes import ATTEMPT_ENV, _signal_group, _stop_all, group_alive, process_start_time, tagged_processes

log = logging.getLogger(__name__)

_RESOURCE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOMEM, errno.EAGAIN, errno.EMFILE, errno.ENFILE)



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

