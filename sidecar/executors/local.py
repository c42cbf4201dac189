"""The local executor: runs each evaluation as a child process group on this machine (SPEC §2.4).

Values reach the child as environment strings and argv items, never through a shell command line.
Each eval is waited for in a thread of its own (`start` returns at once); the thread sends the
executor events (`Started`, `Finished`) to the sidecar's main thread.
"""

from __future__ import annotations

import errno
import logging
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import replace

from .. import labels
from ..crash import crash_point
from .base import RECORD_WAIT, EvalJob, EvalResult, Finished, Outcome, Started, log_header
from .processes import (ATTEMPT_ENV, group_alive, owner_tag, process_start_time,
                        reap_orphan, tagged_processes, terminate)

log = logging.getLogger(__name__)

_RESOURCE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOMEM, errno.EAGAIN, errno.EMFILE, errno.ENFILE)


class LocalExecutor:
    """Runs evaluations on this machine, one process group each, one GPU slot each."""

    name = "local"

    def __init__(self, gpu_slots: tuple[str, ...] = ("",), grace_seconds: float = 10.0) -> None:
        self.gpu_slots = tuple(gpu_slots) or ("",)
        self.grace = grace_seconds
        self.host = socket.gethostname()
        self._running: dict[int, subprocess.Popen] = {}
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._owner = owner_tag()

    # ----- the executor protocol ----------------------------------------------------------------
    def slots(self) -> list[str]:
        return list(self.gpu_slots)

    def prepare(self, job: EvalJob) -> tuple[EvalJob, dict]:
        """The attempt's random tag goes into the eval's environment and, before it starts, into
        state: whatever it leaves behind (even outside its process group) is found by it after a
        kill -9 of the sidecar."""
        tag = f"{job.step}-{secrets.token_hex(8)}-{self._owner}"
        env = {**job.env, ATTEMPT_ENV: tag}
        record = {"attempt": tag, "gpus": job.gpus}
        return replace(job, tag=tag, env=env), record

    def owns(self, record: dict) -> bool:
        return not (record.get("job_id") or record.get("slurm_tag"))

    def recover(self, record: dict) -> bool:
        """A local eval dies with its sidecar's supervision: stop what it left running (only if it
        is still the very process that was started, or carries the attempt's tag) and run it again."""
        if record.get("host") == self.host:
            pid = record.get("pid")
            reap_orphan(pid if isinstance(pid, int) and pid > 1 else None, str(record.get("pid_start", "")),
                        str(record.get("attempt", "")), grace=self.grace)
        return False

    def resume(self, key, record: dict, job: EvalJob, emit) -> None:
        raise NotImplementedError("a local eval is never resumed (recover() says so)")

    def start(self, key, job: EvalJob, emit) -> None:
        def run() -> None:
            try:
                result = self._run(key, job, emit)
            except BaseException as exc:  # noqa: BLE001 - every eval ends with one Finished
                result = EvalResult(Outcome.NOT_STARTED, error=f"{type(exc).__name__}: {exc}")
            emit(Finished(key, result))

        labels.thread(run, f"eval-{job.name or job.tag}").start()

    def where(self, job: EvalJob) -> str:
        return f"on GPUs {job.gpus or '-'}"

    def missing_commands(self) -> list[str]:
        return []

    def cancel_all(self) -> None:
        """Stop every running eval (from any thread, never blocks): each group gets SIGTERM, then
        SIGKILL after the grace period; the thread waiting in `_run` sees its child end and
        reports `cancelled`."""
        self._cancelled.set()
        with self._lock:
            pgids = list(self._running)
        for pgid in pgids:
            threading.Thread(target=terminate, args=(pgid, (), self.grace), daemon=True,
                             name=f"stop-{pgid}").start()

    def leave_running(self) -> None:
        return None  # a local eval never outlives its sidecar

    # ----- one eval -----------------------------------------------------------------------------
    def _run(self, key, job: EvalJob, emit) -> EvalResult:
        """Run the job to completion (or timeout, or cancel); stdout and stderr go to its log file."""
        argv, cwd, log_path, timeout = job.argv, job.cwd, job.log_path, job.timeout
        started = time.monotonic()
        # A failure here is the sidecar's own (its disk, its processes), never the eval's: it uses no attempt.
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(log_path, "ab")
        except OSError as exc:
            return EvalResult(Outcome.NOT_STARTED, error=f"cannot open log file {log_path}: {exc.strerror or exc}",
                              consume_attempt=False)
        with out:
            try:
                out.write(log_header(f"runs: {argv!r}", cwd))
                out.flush()
            except OSError as exc:
                return EvalResult(Outcome.NOT_STARTED, error=f"cannot write log file {log_path}: "
                                  f"{exc.strerror or exc}", consume_attempt=False)
            try:
                proc = subprocess.Popen(argv, cwd=str(cwd), env=job.env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:  # no memory or processes left is the machine's doing; a missing
                # bash or --repo-root is the set-up's and uses attempts like any failure
                return EvalResult(Outcome.NOT_STARTED, duration=time.monotonic() - started,
                                  error=exc.strerror or str(exc), consume_attempt=exc.errno not in _RESOURCE_ERRORS)
            crash_point("eval-spawned")  # the child exists; only the attempt's tag names it yet
        with self._lock:
            self._running[proc.pid] = proc
        timed_out = False
        try:
            if self._cancelled.is_set():
                self._stop(proc)
            started_event = Started(key, {"pid": proc.pid, "pid_start": process_start_time(proc.pid)})
            emit(started_event)
            started_event.recorded.wait(RECORD_WAIT)
            crash_point("eval-running")
            try:
                proc.wait(timeout=timeout if timeout > 0 else None)
            except subprocess.TimeoutExpired:
                timed_out = True
                log.warning("eval pid %d timed out after %s s; stopping its process group", proc.pid, timeout)
                self._stop(proc)
            self._reap_stragglers(proc.pid, job.tag)
        except BaseException:
            self._stop(proc)  # nothing outlives its eval, whatever went wrong here
            raise
        finally:
            with self._lock:
                self._running.pop(proc.pid, None)
        duration = time.monotonic() - started
        if timed_out:
            return EvalResult(Outcome.TIMED_OUT, proc.returncode, duration)
        if self._cancelled.is_set():
            return EvalResult(Outcome.CANCELLED, proc.returncode, duration)
        return EvalResult(Outcome.EXITED, proc.returncode, duration)

    def _stop(self, proc: subprocess.Popen) -> None:
        terminate(proc.pid, (), self.grace, reap=proc.poll)
        proc.wait()

    def _reap_stragglers(self, pgid: int, tag: str) -> None:
        """Processes the eval left behind (in its group, or outside it with its attempt tag) are
        stopped too: nothing outlives its eval."""
        tagged = tagged_processes(tag)
        if not group_alive(pgid) and not tagged:
            return
        log.warning("eval process group %d left processes behind; stopping them", pgid)
        terminate(pgid, tagged, self.grace)
