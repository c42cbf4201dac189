"""Regressions found by review: hostile metric names, unwritable logs, mixed lock modes, orphans
that exec, a retry that cannot run, state files with wrong value types, torn state writes."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import ROOT, wait_for, process_gone


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



def test_a_metric_named_like_a_row_field_cannot_change_the_row(ws):
    ws.checkpoint(100)
    ws.results(100).parent.mkdir(parents=True)
    ws.results(100).write_text(json.dumps({"HR@10": 0.1, "checkpoint_step": 7, "metrics_path": 1}))
    result = ws.run("--once", timeout=60)
    assert result.returncode == 0, result.stderr
    state = ws.state()
    assert state["processed_steps"] == [100]
    assert state["table_rows"][0]["checkpoint_step"] == 100
    assert state["table_rows"][0]["metrics_path"] == str(ws.results(100))
    assert "ignoring checkpoint_step, metrics_path" in result.stderr


def test_an_unwritable_eval_log_is_a_recorded_failure_not_a_crash(ws):
    ws.checkpoint(100)
    (ws.log_dir).mkdir(parents=True)
    (ws.log_dir / "toy-grec-sft-cb16-run-1").write_text("a file where the log folder should be")
    result = ws.run("--once", "--max-attempts", "1")
    assert result.returncode == 4, result.stderr  # an eval failed in this run
    error = ws.state()["failed_steps"]["100"]["error"]
    assert "could not start: cannot open log file" in error


def test_soft_and_flock_modes_exclude_each_other_on_one_host(ws):
    ws.checkpoint(100)
    first = ws.start("--lock-mode", "soft", "--poll-interval-seconds", "0.2")
    try:
        wait_for(lambda: ws.calls() == ["checkpoint-100"])
        for mode in ("auto", "flock"):
            second = ws.run("--once", "--lock-mode", mode)
            assert second.returncode == 3, second.stderr
            assert f"(pid {first.pid} on host {socket.gethostname()})" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    first = ws.start("--lock-mode", "auto", "--poll-interval-seconds", "0.2")
    try:
        wait_for(lambda: any(ws.state_dir.glob("*.lock")) and ws.state_files())
        time.sleep(0.3)
        second = ws.run("--once", "--lock-mode", "soft")
        assert second.returncode == 3 and f"pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0


def test_an_eval_that_execs_is_still_stopped_after_kill_9(ws):
    ws.checkpoint(100)
    ws.mode(100, "exec-sleep")
    proc = ws.start("--poll-interval-seconds", "3600")
    wait_for(lambda: (ws.ctl / "started-checkpoint-100").exists())
    orphan = int((ws.ctl / "grandchild-checkpoint-100").read_text())
    wait_for(lambda: "100" in ws.state()["in_flight"])
    proc.kill()
    proc.wait()
    assert not process_gone(orphan)
    ws.mode(100, "ok")
    assert ws.run("--once").returncode == 0
    wait_for(lambda: process_gone(orphan), timeout=15)
    assert ws.state()["processed_steps"] == [100]


def test_a_due_retry_that_cannot_run_does_not_spin(ws, tmp_path):
    ws.checkpoint(100)
    ws.mode(100, "fail")
    proc = ws.start("--poll-interval-seconds", "3600", "--retry-backoff-seconds", "1")
    try:
        wait_for(lambda: "100" in ws.state()["failed_steps"])
        moved = ws.sft.rename(tmp_path / "moved")
        time.sleep(1.5)  # the retry is due now, but the root is gone
        before = _cpu_seconds(proc.pid)
        time.sleep(3)
        used = _cpu_seconds(proc.pid) - before
        assert used < 1.0, f"{used:.2f} CPU seconds in 3 s of waiting"
        moved.rename(ws.sft)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_state_with_wrong_value_types_is_reported_as_corrupt(ws):
    ws.checkpoint(100)
    ws.mode(100, "fail")
    assert ws.run("--once", "--max-attempts", "5", "--retry-backoff-seconds", "300").returncode == 4
    path = ws.state_files()[0]
    data = json.loads(path.read_text())
    data["failed_steps"]["100"]["attempts"] = "two"
    path.write_text(json.dumps(data))
    result = ws.run("--once")
    assert result.returncode == 2 and "bad attempts" in result.stderr and "Traceback" not in result.stderr


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from sidecar.watch.state import State, StateStore
    store = StateStore(Path(sys.argv[2]))
    state = State("k", "r", "n")
    step = 0
    while True:
        step += 1
        state.rows[step] = {"checkpoint_step": step, "checkpoint_name": f"checkpoint-{step}", "HR@10": 0.5,
                            "padding": "x" * 2000}
        state.processed.add(step)
        store.save(state, time.time())
""")


def test_state_file_parses_at_every_moment_of_repeated_writes_and_kill_9(tmp_path):
    path = tmp_path / "m_key.json"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    reads = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, str(script), str(ROOT), str(path)])
        deadline = time.monotonic() + 0.7
        while time.monotonic() < deadline:
            for candidate in (path, Path(f"{path}.bak")):
                try:
                    text = candidate.read_text()
                except FileNotFoundError:
                    continue
                json.loads(text)  # never torn
                reads += 1
        proc.kill()
        proc.wait()
        json.loads(path.read_text())
    assert reads > 100
