"""Defects found in a code review, each reproduced as a user meets it: a state file of a newer
release, "given up" judged twice, rows told apart by object identity, a W&B segment writer's
reused pid, and the manager's `stop` leaving evals running in sessions of their own."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, process_gone, wait_for
from test_manager import manage

from sidecar.config import build_config, build_parser
from sidecar.errors import StateCorrupt
from sidecar.executors.processes import process_start_time
from sidecar.reporters.base import Delivery, ReportBatch
from sidecar.reporters.wandb import WandbOptions, WandbReporter, _Worker
from sidecar.watch.reporting import apply_delivery
from sidecar.watch.state import State, dump_state, read_state, utc_iso
from sidecar.watch.status import format_status, summarize

PROG = "eval_wandb_sidecar.py"


def _state_path(ws, *extra: str) -> Path:
    """The state file the sidecar derives from these flags (nothing is run)."""
    args = vars(build_parser(PROG).parse_args(ws.args(*extra)))
    return build_config(args, ws.env(), Path.cwd(), check_paths=False).state_file


def _write_state(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_state(data))


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _live(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kwargs)


def _end(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ----- 1: a state file of a newer release is refused, untouched ------------------------------------------------
def test_a_state_file_written_by_a_newer_release_is_exit_2_and_left_byte_for_byte(ws):
    path = _state_path(ws)
    _write_state(path, {"version": 3, "model_config_key": "k", "run_id": "eval-k", "run_name": "k",
                        "processed_steps": [100], "table_rows": [{"checkpoint_step": 100, "HR@10": 0.5}],
                        "a_field_of_version_3": {"what": "this release cannot know"}})
    before = path.read_bytes()
    expected = (f"{PROG}: error: state file {path} was written by a newer eval sidecar (version 3; this one reads "
                f"1 and 2); nothing was changed")
    for result in (ws.run("--once"), ws.status(), ws.status("--json"), ws.status("--state-file", str(path))):
        assert result.returncode == 2, (result.args[2:4], result.stdout, result.stderr)
        assert _one_line(result) == expected
        assert path.read_bytes() == before
    assert not Path(f"{path}.bak").exists()


# ----- 2: "given up" is what the sidecar's --max-attempts says --------------------------------------------------
def _failed_state() -> State:
    state = State("k", "eval-k", "k")
    state.failed[300] = {"checkpoint": "checkpoint-300", "error": "eval exited 3", "time": "2026-01-01T00:00:00+00:00",
                         "attempts": 3, "given_up": True}
    return state


def test_status_judges_given_up_by_the_max_attempts_the_sidecar_recorded():
    state = _failed_state()
    assert summarize(state, time.time())["failed_given_up"] == 1  # nothing recorded: the record's flag
    state.max_attempts = 5  # a sidecar started with --max-attempts 5: it retries checkpoint-300
    again = State.from_dict(json.loads(dump_state(state.to_dict())))
    assert again.max_attempts == 5
    info = summarize(again, time.time())
    assert (info["failed_given_up"], info["failed_retrying"]) == (0, 1)
    assert "failed 1 (0 given up)" in format_status(info, "s.json")
    assert summarize(again, time.time(), max_attempts=3)["failed_given_up"] == 1  # status's own --max-attempts
    state.max_attempts = 2
    state.failed[300].pop("given_up")  # a record of 3 attempts against a limit of 2 is given up, flag or not
    assert summarize(state, time.time())["failed_given_up"] == 1


def test_a_state_without_max_attempts_reads_as_not_known_and_a_bad_one_is_refused(tmp_path):
    path = tmp_path / "s.json"
    _write_state(path, _failed_state().to_dict())
    assert "max_attempts" not in json.loads(path.read_text())  # not written while not known, as before
    assert read_state(path).max_attempts is None
    _write_state(path, {**_failed_state().to_dict(), "max_attempts": 0})
    with pytest.raises(StateCorrupt, match="has a bad max_attempts value 0"):
        read_state(path)


def test_status_after_a_sidecar_started_with_more_attempts_does_not_say_given_up(ws):
    """Needs the service to record `state.max_attempts = config.max_attempts` at start."""
    ws.checkpoint(300)
    path = _state_path(ws)
    state = _failed_state()
    state.failed[300]["retry_after"] = time.time() + 3600  # not retried during this test
    _write_state(path, state.to_dict())
    result = ws.run("--once", "--max-attempts", "5")
    assert result.returncode == 0, result.stderr
    assert json.loads(path.read_text())["max_attempts"] == 5
    status = ws.status()
    assert status.returncode == 0, status.stderr
    assert "failed 1 (0 given up)" in status.stdout, status.stdout


# ----- 3: rows are the same row by value, not by object -------------------------------------------------------------
def _row(step: int, hr: float) -> dict:
    return {"checkpoint_step": step, "checkpoint_name": f"checkpoint-{step}", "HR@10": hr, "metrics_path": "/m.json"}


def test_a_delivered_row_equal_in_value_counts_as_the_state_row_and_a_changed_one_does_not():
    state = State("k", "eval-k", "k")
    state.rows = {100: _row(100, 0.5), 200: _row(200, 0.25)}
    state.unreported = {100, 200}
    segment = {"dir": "/w/offline-run-1", "mode": "offline", "steps": []}
    apply_delivery(state, Delivery(segment, rows={100: _row(100, 0.5), 200: _row(200, 0.3)}))
    assert state.unreported == {200}  # 100 arrived (a copy of the row); 200's values are not the state's


def test_the_reporter_writes_a_row_once_whatever_object_holds_it_and_a_changed_row_again():
    worker = _Worker()
    rows = {100: _row(100, 0.5)}
    worker.take(ReportBatch(dict(rows), dict(rows)))
    assert worker.todo() == rows
    worker.written[100] = (rows[100], 0)  # written; its delivery (number 0) not applied when the next snapshot was built
    copy = {100: _row(100, 0.5)}  # the same row as another object (e.g. the state read again)
    worker.take(ReportBatch(copy, copy))
    assert worker.todo() == {}
    changed = {100: _row(100, 0.75)}  # a re-evaluation
    worker.take(ReportBatch(changed, changed))
    assert worker.todo() == changed
    # the state had applied the write and queued the row again (re-evaluated, same values): written again
    worker.take(ReportBatch(copy, copy), 1)
    assert worker.todo() == copy


# ----- 4: a W&B segment's writer is its pid and start time ---------------------------------------------------------
def _options() -> WandbOptions:
    return WandbOptions(project="p", entity=None, run_id="eval-k", run_name="k", resume="allow", job_type="eval",
                        mode="online", config={})


def _online_segment(writer: int, core: int, **extra) -> dict:
    """An online segment a killed sidecar (pid `writer`) left open an hour ago, its wandb-core `core`."""
    return {"dir": "/w/run-1", "mode": "online", "run_id": "eval-k", "run": "e/p/eval-k", "host": socket.gethostname(),
            "started": utc_iso(time.time() - 3600), "pid": writer, "core_pid": core,
            "core_start": process_start_time(core), "steps": [], **extra}


def test_a_crashed_sidecars_wandb_core_is_stopped_even_when_its_pid_now_names_another_process():
    unrelated = _live("sleep", "600")  # the kernel gave the dead sidecar's pid to this
    cores = [_live("sleep", "600") for _ in range(3)]  # stand-ins for the wandb-core each crash left
    try:
        wait_for(lambda: all(process_start_time(p.pid) for p in [unrelated, *cores]))
        ticks = process_start_time(unrelated.pid)
        segments = [
            _online_segment(unrelated.pid, cores[0].pid, pid_start=str(int(ticks) - 1)),  # another start time
            _online_segment(unrelated.pid, cores[1].pid),  # an earlier version's: no start time, opened before
            _online_segment(unrelated.pid, cores[2].pid, pid_start=ticks),  # the writer really runs
        ]
        WandbReporter(_options()).reconcile(segments, {}, set())
        wait_for(lambda: cores[0].poll() is not None and cores[1].poll() is not None, timeout=15)
        assert cores[2].poll() is None and unrelated.poll() is None
        assert all(seg["closed"] for seg in segments)
    finally:
        _end(unrelated, *cores)


def test_a_start_stops_the_wandb_core_of_a_crashed_sidecar_whose_pid_was_reused(ws):
    unrelated, core = _live("sleep", "600"), _live("sleep", "600")
    try:
        wait_for(lambda: process_start_time(unrelated.pid) and process_start_time(core.pid))
        args = [a for a in ws.args("--wandb-mode", "online", "--wandb-init-timeout", "5") if a != "--disable-wandb"]
        path = _state_path(ws, "--wandb-mode", "online")
        state = State("k", "eval-k", "k")
        state.segments = [_online_segment(unrelated.pid, core.pid,
                                          pid_start=str(int(process_start_time(unrelated.pid)) - 1))]
        _write_state(path, state.to_dict())
        result = subprocess.run([sys.executable, str(ROOT / PROG), *args, "--once"], env=ws.env(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: core.poll() is not None, timeout=15)
        assert unrelated.poll() is None
        assert json.loads(path.read_text())["wandb_segments"][0]["closed"] is True
    finally:
        _end(unrelated, core)


# ----- 5: the manager's stop ends the evals of the sidecar it stopped ---------------------------------------------
def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _track(tmp_path, name: str, proc: subprocess.Popen) -> str:
    """Write the pid file the manager's `start` writes for `proc`; returns its start time."""
    ticks = wait_for(lambda: process_start_time(proc.pid))
    folder = tmp_path / "manager dir"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.pid").write_text(f"{proc.pid}\nstart={ticks} boot={_boot_id()}\n")
    return ticks


STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
EVAL = 'trap "" TERM; sleep 600 & echo $! > "$1"; wait'  # ignores SIGTERM, and so does its child


def _ignores_sigterm(pid: int) -> bool:
    ignored = re.search(r"^SigIgn:\s*([0-9a-f]+)$", Path(f"/proc/{pid}/status").read_text(), re.M)
    return bool(int(ignored.group(1), 16) & (1 << (15 - 1)))


def test_stop_kills_the_evals_of_a_sidecar_it_had_to_kill_and_leaves_other_sidecars_evals(ws, tmp_path):
    sidecar = _live(sys.executable, "-c", STUBBORN, start_new_session=True)
    wait_for(lambda: _ignores_sigterm(sidecar.pid))
    ticks = _track(tmp_path, "x", sidecar)
    child_file = tmp_path / "child"

    def tagged(*argv: str, **tags: str) -> subprocess.Popen:
        # the evals run in sessions of their own, out of reach of the sidecar's process group
        return _live(*argv, env={**os.environ, **tags}, start_new_session=True)

    evaluation = tagged("bash", "-c", EVAL, "eval", str(child_file),
                        EVAL_SIDECAR_ATTEMPT=f"200-fedcba9876543210-{sidecar.pid}-{ticks}")
    attempt = tagged("sleep", "600", EVAL_SIDECAR_ATTEMPT=f"100-0123456789abcdef-{sidecar.pid}-{ticks}")
    other = tagged("sleep", "600", EVAL_SIDECAR_ATTEMPT=f"100-0123456789abcdef-{sidecar.pid}-{ticks}0")
    # a reused pid's earlier sidecar
    earlier = tagged("sleep", "600", EVAL_SIDECAR_ATTEMPT=f"100-0123456789abcdef-{sidecar.pid}-1")
    try:
        child = int(wait_for(lambda: child_file.read_text().strip()))
        stop = manage(ws, tmp_path, "stop", "--instance", "x", STOP_TIMEOUT="1")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert "sending SIGKILL to process group" in stop.stdout, stop.stdout
        assert "stopping the eval processes the sidecar left running" in stop.stdout, stop.stdout
        assert "stopped instance 'x'" in stop.stdout
        for pid in (sidecar.pid, evaluation.pid, child, attempt.pid):
            wait_for(lambda: process_gone(pid), timeout=10)
        assert other.poll() is None and earlier.poll() is None
    finally:
        _end(sidecar, evaluation, attempt, other, earlier)


def test_stop_after_a_clean_exit_still_ends_what_its_evals_left_running(ws, tmp_path):
    sidecar = _live("sleep", "600", start_new_session=True)  # ends at the first SIGTERM
    ticks = _track(tmp_path, "y", sidecar)
    tag = f"100-0123456789abcdef-{sidecar.pid}-{ticks}"
    leftover = _live("sleep", "600", env={**os.environ, "EVAL_SIDECAR_ATTEMPT": tag}, start_new_session=True)
    try:
        stop = manage(ws, tmp_path, "stop", "--instance", "y", STOP_TIMEOUT="5")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert "SIGKILL" not in stop.stdout, stop.stdout
        assert f"(pids {leftover.pid})" in stop.stdout, stop.stdout
        wait_for(lambda: process_gone(leftover.pid), timeout=10)
    finally:
        _end(sidecar, leftover)


def _tagged(ctl: Path) -> list[int]:
    """Pids of the processes whose environment names this test's stand-in control folder."""
    needle = f"STANDIN_CONTROL={ctl}".encode()
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ and not process_gone(int(entry)):
            found.append(int(entry))
    return found


def test_stop_of_a_real_sidecar_it_had_to_kill_leaves_no_eval_running(ws, tmp_path):
    """Needs the local executor to name its sidecar (pid and start ticks) in each eval's environment."""
    ws.checkpoint(100)
    ws.mode(100, "ignore-term")
    started = manage(ws, tmp_path, "start", "--instance", "stubborn",
                     *ws.args("--poll-interval-seconds", "3600", "--eval-kill-grace-seconds", "600"))
    assert started.returncode == 0, started.stdout + started.stderr
    grandchild = int(wait_for(lambda: (ws.ctl / "grandchild-checkpoint-100").read_text().strip()))
    stopped = manage(ws, tmp_path, "stop", "--instance", "stubborn", STOP_TIMEOUT="2")
    assert stopped.returncode == 0 and "SIGKILL" in stopped.stdout, stopped.stdout
    wait_for(lambda: process_gone(grandchild), timeout=10)  # not only at the next start
    wait_for(lambda: not _tagged(ws.ctl), timeout=10)


class _RecordingReporter:
    """Stands in for W&B (a cloud server): keeps a copy of each batch's pending rows, never the
    row objects themselves (as the W&B worker drops a snapshot once written)."""

    enabled = True
    mode = "offline"

    def __init__(self) -> None:
        self.batches: list[dict[int, dict]] = []

    def bind(self, run_id, run_name, on_delivery=None) -> None:
        return None

    def report(self, batch) -> None:
        self.batches.append({step: dict(row) for step, row in batch.pending.items()})

    def collect(self) -> list:
        return []

    def reconcile(self, segments, rows, unreported):
        from sidecar.reporters.base import Reconciled

        return Reconciled()

    def close(self) -> None:
        return None

    def abandon(self) -> None:
        return None


def test_a_row_replaced_twice_between_reports_is_reported_even_when_it_reuses_the_old_rows_id(ws):
    """The service told a re-evaluated row from the reported one by `id()` of the row dict: a row
    replaced twice before the next report (saving failed meanwhile, say) can get the first row's
    id back (CPython reuses a freed dict's memory at once), and was then never handed on."""
    import eval_wandb_sidecar
    from sidecar.checkpoints import Checkpoint
    from sidecar.clock import SystemClock
    from sidecar.watch.plan import record_success
    from sidecar.watch.service import Sidecar

    args = vars(build_parser(eval_wandb_sidecar.PROG).parse_args(ws.args("--once")))
    reporter = _RecordingReporter()
    sidecar = Sidecar(build_config(args, ws.env(), ws.repo), SystemClock(), ws.env(), reporter=reporter)
    sidecar.start()
    try:
        pipeline, state = sidecar.pipeline, sidecar.state
        ckpt = Checkpoint(100, "checkpoint-100", ws.sft)

        def row(value: float) -> dict:
            return {"checkpoint_step": 100, "checkpoint_name": ckpt.name, "HR@10": value, "metrics_path": "m"}

        record_success(state, row(0.1))
        pipeline.report()
        assert [b[100]["HR@10"] for b in reporter.batches] == [0.1]
        first = id(state.rows[100])
        record_success(state, row(0.2))  # the reported row is freed here ...
        third = row(0.3)  # ... and its memory holds the next row
        assert id(third) == first, "precondition: CPython reused the freed row's memory"
        record_success(state, third)
        pipeline.report()
        assert [b[100]["HR@10"] for b in reporter.batches] == [0.1, 0.3]
    finally:
        sidecar.close()
