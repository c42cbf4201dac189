"""The LocalExecutor through the executor protocol, with real processes (small bash scripts in
tmp_path): the events it sends, how an eval ends (exit code, timeout, cancel, not started), the
attempt tag, and what `recover` stops of a previous sidecar's eval."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import process_gone, wait_for
from sidecar.executors.base import EvalJob, Finished, Outcome, Started
from sidecar.executors.local import LocalExecutor
from sidecar.executors.processes import ATTEMPT_ENV, process_start_time

KEY = ("model", 500)


class Events:
    """Collects what the executor emits (from its threads); `next()` waits for the next one."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.seen: list = []

    def __call__(self, event) -> None:
        self.queue.put(event)

    def next(self, timeout: float = 30.0):
        event = self.queue.get(timeout=timeout)
        self.seen.append(event)
        return event

    def rest(self) -> list:
        while True:
            try:
                self.seen.append(self.queue.get_nowait())
            except queue.Empty:
                return self.seen


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / f"eval script ü {len(list(tmp_path.glob('eval script*')))}.sh"
    path.write_text("set -u\n" + body + "\n")
    return path


def job(tmp_path: Path, body: str, step: int = 500, timeout: float = 0.0, cwd: Path | None = None,
        env: dict | None = None, gpus: str = "") -> EvalJob:
    return EvalJob(["bash", str(script(tmp_path, body))], cwd or tmp_path, {**os.environ, **(env or {})},
                   tmp_path / "logs 'q'" / f"checkpoint-{step}.log", timeout, step=step, gpus=gpus)


def run(executor: LocalExecutor, eval_job: EvalJob) -> tuple[Events, Started | None]:
    """Start the job; return its events and its Started (recorded at once), if any."""
    events = Events()
    executor.start(KEY, eval_job, events)
    first = events.next()
    if isinstance(first, Started):
        first.recorded.set()
        return events, first
    return events, None


def eval_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("eval-")]


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_started_names_the_process_and_the_executor_waits_until_it_is_recorded(tmp_path):
    executor = LocalExecutor(grace_seconds=1.0)
    out = tmp_path / "pgrp"
    eval_job, _ = executor.prepare(job(tmp_path, f"cut -d' ' -f5 /proc/$$/stat > '{out}'; exit 0"))
    events = Events()
    executor.start(KEY, eval_job, events)
    started = events.next()
    assert isinstance(started, Started) and started.key == KEY
    pid, pid_start = started.info["pid"], started.info["pid_start"]
    assert set(started.info) == {"pid", "pid_start"}
    wait_for(out.exists)
    assert int(wait_for(lambda: out.read_text().strip())) == pid  # the eval leads its own process group
    # the child has exited but is not reaped: the executor is waiting for `recorded`, so the pid
    # still names that very process (a zombie) and nothing else has been sent
    assert process_start_time(pid) == pid_start and pid_start.isdigit()
    time.sleep(0.5)
    assert events.queue.empty()
    started.recorded.set()
    finished = events.next()
    assert finished == Finished(KEY, finished.result)
    assert finished.result.outcome is Outcome.EXITED and finished.result.returncode == 0


def test_an_eval_that_exits_sends_finished_once_with_its_exit_code(tmp_path):
    executor = LocalExecutor(grace_seconds=1.0)
    eval_job, _ = executor.prepare(job(tmp_path, "echo 'writing to the log'; exit 7"))
    events, started = run(executor, eval_job)
    finished = events.next()
    assert isinstance(finished, Finished) and finished.key == KEY
    assert (finished.result.outcome, finished.result.returncode, finished.result.error) == (Outcome.EXITED, 7, "")
    assert finished.result.consume_attempt is True and finished.result.duration > 0
    wait_for(lambda: not eval_threads())  # the eval's thread has ended: nothing more can come
    assert [type(e) for e in events.rest()] == [Started, Finished]
    log = eval_job.log_path.read_text()
    assert "sidecar runs: ['bash'," in log and "writing to the log" in log


def test_a_timeout_stops_the_whole_group_even_a_child_that_ignores_sigterm(tmp_path):
    executor = LocalExecutor(grace_seconds=0.5)
    pids = tmp_path / "pids"
    # the script and its child ignore SIGTERM: only the SIGKILL after the grace period ends them
    eval_job, _ = executor.prepare(job(tmp_path, f"trap '' TERM\nsleep 300 &\necho $$ $! > '{pids}'\nwait",
                                       timeout=1.0))
    events, started = run(executor, eval_job)
    finished = events.next()
    assert finished.result.outcome is Outcome.TIMED_OUT
    assert finished.result.returncode == -signal.SIGKILL
    leader, child = (int(p) for p in pids.read_text().split())
    assert leader == started.info["pid"]
    assert process_gone(leader) and wait_for(lambda: process_gone(child))
    assert wait_for(lambda: group_gone(leader))  # (killed members may wait a moment for init to reap them)


def test_cancel_all_stops_a_running_eval_and_its_process_group(tmp_path):
    executor = LocalExecutor(grace_seconds=2.0)
    pids = tmp_path / "pids"
    eval_job, _ = executor.prepare(job(tmp_path, f"sleep 300 &\necho $! > '{pids}'\nwait"))
    events, started = run(executor, eval_job)
    child = int(wait_for(lambda: pids.read_text().strip()))
    executor.cancel_all()
    finished = events.next()
    assert finished.result.outcome is Outcome.CANCELLED
    assert finished.result.returncode == -signal.SIGTERM
    assert wait_for(lambda: group_gone(started.info["pid"]))
    assert process_gone(child)


def test_an_eval_started_after_cancel_all_is_stopped_at_once_and_cancelled(tmp_path):
    executor = LocalExecutor(grace_seconds=5.0)
    executor.cancel_all()
    eval_job, _ = executor.prepare(job(tmp_path, "sleep 300"))
    events, started = run(executor, eval_job)
    assert started is not None
    assert events.next().result.outcome is Outcome.CANCELLED
    assert group_gone(started.info["pid"])


def test_a_missing_repo_root_is_not_started_and_uses_an_attempt(tmp_path):
    executor = LocalExecutor()
    missing = tmp_path / "no such repo root"
    eval_job, _ = executor.prepare(job(tmp_path, "exit 0", cwd=missing))
    events = Events()
    executor.start(KEY, eval_job, events)
    finished = events.next()
    assert isinstance(finished, Finished)  # no Started: nothing exists to record
    assert finished.result.outcome is Outcome.NOT_STARTED
    assert finished.result.error == "No such file or directory"
    assert finished.result.returncode is None and finished.result.consume_attempt is True
    wait_for(lambda: not eval_threads())
    assert [type(e) for e in events.rest()] == [Finished]


def test_an_unwritable_log_folder_is_not_started_and_uses_no_attempt(tmp_path):
    executor = LocalExecutor()
    blocker = tmp_path / "a file"
    blocker.write_text("")
    eval_job = EvalJob(["bash", "-c", "exit 0"], tmp_path, dict(os.environ), blocker / "checkpoint-1.log")
    events = Events()
    executor.start(KEY, eval_job, events)
    result = events.next().result
    assert result.outcome is Outcome.NOT_STARTED and result.consume_attempt is False
    assert result.error.startswith(f"cannot open log file {blocker / 'checkpoint-1.log'}: ")


def test_prepare_tags_the_attempt_in_the_childs_environment_and_the_record(tmp_path):
    executor = LocalExecutor(gpu_slots=("0 1", "2"))
    out = tmp_path / "seen"
    raw = job(tmp_path, f"printf '%s|%s' \"${ATTEMPT_ENV}\" \"$KEEP\" > '{out}'", step=1500, env={"KEEP": "kept ü"},
              gpus="0 1")
    eval_job, record = executor.prepare(raw)
    me = f"{os.getpid()}-{process_start_time(os.getpid())}"
    assert re.fullmatch(rf"1500-[0-9a-f]{{16}}-{re.escape(me)}", eval_job.tag)
    assert record == {"attempt": eval_job.tag, "gpus": "0 1"}
    assert eval_job.env[ATTEMPT_ENV] == eval_job.tag and ATTEMPT_ENV not in raw.env
    assert (eval_job.argv, eval_job.cwd, eval_job.log_path) == (raw.argv, raw.cwd, raw.log_path)
    again, _ = executor.prepare(raw)
    assert again.tag != eval_job.tag  # every attempt gets a name of its own
    assert executor.prepare(job(tmp_path, "exit 0"))[1]["gpus"] == ""  # a slot without GPUs is recorded as such
    events, _ = run(executor, eval_job)
    assert events.next().result.returncode == 0
    assert out.read_text() == f"{eval_job.tag}|kept ü"
    assert executor.slots() == ["0 1", "2"]
    assert executor.where(eval_job) == "on GPUs 0 1"


def test_owns_only_records_without_a_slurm_job():
    executor = LocalExecutor()
    assert executor.owns({"attempt": "1-x", "pid": 123, "pid_start": "9", "host": "h"})
    assert executor.owns({})
    assert not executor.owns({"attempt": "1-x", "job_id": "12"})
    assert not executor.owns({"slurm_tag": "eval-sidecar:m:1"})
    assert not executor.owns({"job_id": "12", "slurm_tag": "t"})


@pytest.fixture
def tagged_sleep():
    """Start `sleep 300` in its own session with an attempt tag (as a previous sidecar's eval) and
    reap it as soon as it ends, as init does for the orphan of a killed sidecar (unreaped, its
    zombie would keep the group alive until the grace period ends); killed by its pid at teardown
    if a test left it."""
    started: list[subprocess.Popen] = []

    def start(tag: str) -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "300"], env={**os.environ, ATTEMPT_ENV: tag}, start_new_session=True)
        started.append(proc)
        threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()
        wait_for(lambda: f"{ATTEMPT_ENV}={tag}".encode() in Path(f"/proc/{proc.pid}/environ").read_bytes())
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_recover_stops_a_live_eval_of_ours_named_by_the_record(tmp_path, tagged_sleep):
    executor = LocalExecutor(grace_seconds=5.0)
    tag = f"500-{os.urandom(8).hex()}-1-2"
    proc = tagged_sleep(tag)
    record = {"host": socket.gethostname(), "pid": proc.pid, "pid_start": process_start_time(proc.pid),
              "attempt": tag}
    assert executor.recover(record) is False  # a local eval is evaluated again, never followed
    assert proc.wait(timeout=30) == -signal.SIGTERM


def test_recover_finds_an_eval_by_its_tag_alone(tmp_path, tagged_sleep):
    executor = LocalExecutor(grace_seconds=5.0)
    tag = f"500-{os.urandom(8).hex()}-1-2"
    proc = tagged_sleep(tag)
    # the saved pid is gone (or was never saved: a kill -9 right after the spawn)
    assert executor.recover({"host": socket.gethostname(), "attempt": tag}) is False
    assert proc.wait(timeout=30) == -signal.SIGTERM


def test_recover_leaves_alone_a_reused_pid_another_host_and_another_tag(tmp_path, tagged_sleep):
    executor = LocalExecutor(grace_seconds=5.0)
    proc = tagged_sleep(f"500-{os.urandom(8).hex()}-1-2")
    mine = process_start_time(proc.pid)
    other = f"500-{os.urandom(8).hex()}-1-2"
    # the pid now names another process (another start time), the tag is another attempt's
    assert executor.recover({"host": socket.gethostname(), "pid": proc.pid, "pid_start": str(int(mine) - 1),
                             "attempt": other}) is False
    # the right pid and start time, but the record is another machine's
    assert executor.recover({"host": "another-host", "pid": proc.pid, "pid_start": mine, "attempt": other}) is False
    assert proc.poll() is None and not process_gone(proc.pid)
