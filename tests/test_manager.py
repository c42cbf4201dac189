"""The manager script eval_wandb_sidecar.sh: start/stop/status/tail with pid files, real processes."""

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, wait_for, process_gone

MANAGER = ROOT / "eval_wandb_sidecar.sh"


def manage(ws, tmp_path, *args, timeout=120, **env):
    environ = ws.env(PYTHON_BIN=sys.executable, MANAGER_DIR=str(tmp_path / "manager dir"), **env)
    return subprocess.run(["bash", str(MANAGER), *args], cwd=tmp_path, env=environ, capture_output=True,
                          text=True, timeout=timeout)


def test_start_twice_status_stop_status(ws, tmp_path):
    ws.checkpoint(100)
    name = "cb64 $(touch pwned) 'q'"
    started = manage(ws, tmp_path, "start", "--instance", name, *ws.args("--poll-interval-seconds", "0.3"))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "started instance" in started.stdout
        again = manage(ws, tmp_path, "start", "--instance", name, *ws.args())
        assert again.returncode == 0 and "already running" in again.stdout
        wait_for(lambda: ws.calls() == ["checkpoint-100"])
        status = manage(ws, tmp_path, "status", "--instance", name)
        assert status.returncode == 0 and "is running" in status.stdout
        assert "processed 1" in status.stdout  # the Python status of the same configuration
    finally:
        stopped = manage(ws, tmp_path, "stop", "--instance", name)
    assert stopped.returncode == 0 and "stopped instance" in stopped.stdout
    status = manage(ws, tmp_path, "status", "--instance", name)
    assert status.returncode == 1 and "not running" in status.stdout
    assert not list(tmp_path.rglob("pwned"))
    logs = list((tmp_path / "manager dir").glob("*.log"))
    assert len(logs) == 1 and "evaluated checkpoint-100" in logs[0].read_text()


def test_stale_pid_file_is_detected_and_its_process_left_alone(ws, tmp_path):
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        folder = tmp_path / "manager dir"
        folder.mkdir()
        (folder / "x.pid").write_text(f"{unrelated.pid}\n")
        status = manage(ws, tmp_path, "status", "--instance", "x")
        assert status.returncode == 3 and "stale pid file" in status.stdout
        stop = manage(ws, tmp_path, "stop", "--instance", "x")
        assert stop.returncode == 0 and "nothing signalled" in stop.stdout
        assert unrelated.poll() is None  # not killed
        assert not (folder / "x.pid").exists()
    finally:
        unrelated.kill()
        unrelated.wait()


def test_stop_kills_a_sidecar_whose_eval_ignores_sigterm_within_stop_timeout(ws, tmp_path):
    ws.checkpoint(100)
    ws.mode(100, "ignore-term")
    started = manage(ws, tmp_path, "start", "--instance", "stubborn",
                     *ws.args("--poll-interval-seconds", "3600", "--eval-kill-grace-seconds", "600"))
    assert started.returncode == 0, started.stderr
    wait_for(lambda: (ws.ctl / "grandchild-checkpoint-100").exists())
    pid = int((tmp_path / "manager dir" / "stubborn.pid").read_text())
    t0 = time.monotonic()
    stopped = manage(ws, tmp_path, "stop", "--instance", "stubborn", STOP_TIMEOUT="2")
    elapsed = time.monotonic() - t0
    assert stopped.returncode == 0 and "SIGKILL" in stopped.stdout
    assert elapsed < 2 + 5  # STOP_TIMEOUT plus slack for a slow machine, not a speed figure
    wait_for(lambda: process_gone(pid), timeout=10)
    # The eval the killed sidecar left behind is stopped by the next start.
    grandchild = int((ws.ctl / "grandchild-checkpoint-100").read_text())
    ws.mode(100, "ok")
    assert ws.run("--once", "--eval-kill-grace-seconds", "1").returncode == 0
    wait_for(lambda: process_gone(grandchild), timeout=15)


def test_start_with_a_bad_flag_prints_the_error_and_exits_1(ws, tmp_path):
    result = manage(ws, tmp_path, "start", "--instance", "bad", *ws.args("--num-beams", "lots"),
                    START_CHECK_SECONDS="1")
    assert result.returncode == 1
    assert "exited at once" in result.stderr
    assert "--num-beams: expected an integer, got 'lots'" in result.stderr
    assert not (tmp_path / "manager dir" / "bad.pid").exists()


def test_tail_follows_the_log(ws, tmp_path):
    folder = tmp_path / "manager dir"
    folder.mkdir()
    (folder / "t.log").write_text("line one\n")
    environ = ws.env(PYTHON_BIN=sys.executable, MANAGER_DIR=str(folder))
    proc = subprocess.Popen(["bash", str(MANAGER), "tail", "--instance", "t"], env=environ, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert "following" in proc.stdout.readline()
        assert proc.stdout.readline() == "line one\n"
        with open(folder / "t.log", "a") as fh:
            fh.write("line two\n")
        assert proc.stdout.readline() == "line two\n"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def test_concurrent_starts_leave_one_tracked_sidecar_and_status_works_from_elsewhere(ws, tmp_path):
    ws.checkpoint(100)
    start_dir = tmp_path / "start here"
    start_dir.mkdir()
    environ = ws.env(PYTHON_BIN=sys.executable, MANAGER_DIR=str(tmp_path / "manager dir"))
    # relative paths: status must resolve them where the instance was started
    args = [a.replace(str(ws.repo), "../" + ws.repo.name) if isinstance(a, str) else a
            for a in ws.args("--poll-interval-seconds", "0.3")]
    starts = [subprocess.Popen(["bash", str(MANAGER), "start", "--instance", "q", *args], cwd=start_dir, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in starts]
    try:
        assert sum("started instance" in o for o, _ in outs) == 1, outs
        status = subprocess.run(["bash", str(MANAGER), "status", "--instance", "q"], cwd="/", env=environ,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "is running" in status.stdout
        wait_for(lambda: ws.calls() == ["checkpoint-100"])
        status = subprocess.run(["bash", str(MANAGER), "status", "--instance", "q"], cwd="/", env=environ,
                                capture_output=True, text=True, timeout=60)
        assert "processed 1" in status.stdout, status.stdout + status.stderr
    finally:
        subprocess.run(["bash", str(MANAGER), "stop", "--instance", "q"], env=environ, capture_output=True, timeout=120)
