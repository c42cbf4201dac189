"""Acceptance 7 (one sidecar per configuration) and 8 (kill -9 loses nothing, state always parses)."""

import json
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import wait_for, process_gone


def _lock_file(ws) -> Path:
    return wait_for(lambda: next(iter(ws.state_dir.glob("*.lock")), None))


@pytest.mark.parametrize("lock_mode", ["auto", "soft"])
def test_second_sidecar_exits_3_naming_the_holder_and_the_first_goes_on(ws, lock_mode):
    ws.checkpoint(100)
    first = ws.start("--lock-mode", lock_mode, "--poll-interval-seconds", "0.2")
    try:
        wait_for(lambda: ws.calls() == ["checkpoint-100"])
        lock = _lock_file(ws)
        second = ws.run("--once", "--lock-mode", lock_mode)
        assert second.returncode == 3
        assert second.stderr.strip() == (f"eval_wandb_sidecar.py: error: another sidecar (pid {first.pid} on host "
                                         f"{socket.gethostname()}) holds {lock}")
        ws.checkpoint(200)  # the first one is unaffected: it still evaluates new checkpoints
        wait_for(lambda: ws.calls() == ["checkpoint-100", "checkpoint-200"])
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    assert not list(ws.state_dir.glob("*.lock")) or lock_mode != "soft"


def test_soft_lock_breaks_a_stale_marker_of_a_dead_local_pid(ws):
    ws.checkpoint(100)
    assert ws.run("--once", "--lock-mode", "soft").returncode == 0  # learn the lock path
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = ws.state_dir / (ws.state_files()[0].stem + ".lock")
    lock.write_text(f"{dead.pid}\n{socket.gethostname()}\n")
    ws.checkpoint(200)
    result = ws.run("--once", "--lock-mode", "soft")
    assert result.returncode == 0, result.stderr
    assert ws.calls() == ["checkpoint-100", "checkpoint-200"]


def test_lock_path_that_is_a_symlink_is_never_followed(ws, tmp_path):
    ws.checkpoint(100)
    assert ws.run("--once").returncode == 0
    lock = ws.state_dir / (ws.state_files()[0].stem + ".lock")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if lock.exists():
        lock.unlink()
    lock.symlink_to(victim)
    result = ws.run("--once")
    assert result.returncode == 2 and "refusing to use the lock file" in result.stderr
    assert victim.read_text() == "precious"


def test_kill_9_during_an_eval_then_restart_evaluates_that_step_again_and_no_other(ws):
    for step in (100, 200, 300):
        ws.checkpoint(step)
    ws.mode(200, "sleep")
    proc = ws.start("--poll-interval-seconds", "3600")
    wait_for(lambda: (ws.ctl / "started-checkpoint-200").exists())
    grandchild = int(wait_for(lambda: (ws.ctl / "grandchild-checkpoint-200").read_text().strip()
                              if (ws.ctl / "grandchild-checkpoint-200").exists() else ""))
    in_flight = wait_for(lambda: ws.state()["in_flight"])
    assert list(in_flight) == ["200"] and in_flight["200"]["checkpoint"] == "checkpoint-200"
    proc.kill()
    proc.wait()
    status = ws.status()
    assert "in flight     checkpoint-200 on GPUs 0 for" in status.stdout
    ws.mode(200, "ok")
    result = ws.run("--once")
    assert result.returncode == 0, result.stderr
    assert ws.calls() == ["checkpoint-100", "checkpoint-200", "checkpoint-200", "checkpoint-300"]
    state = ws.state()
    assert state["processed_steps"] == [100, 200, 300] and state["in_flight"] == {}
    # The orphaned eval of the killed sidecar was stopped at restart.
    wait_for(lambda: process_gone(grandchild))


def test_state_file_parses_at_every_moment_under_repeated_kill_9(ws):
    for step in range(1, 41):
        ws.checkpoint(step * 10)
    state_path = None
    rng = random.Random(7)
    for _ in range(12):
        proc = ws.start("--once")
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
        files = ws.state_files()
        if not files:
            continue
        state_path = files[0]
        text = state_path.read_text()
        json.loads(text)  # never half-written
        bak = Path(f"{state_path}.bak")
        if bak.exists():
            json.loads(bak.read_text())
    result = ws.run("--once")
    assert result.returncode == 0, result.stderr
    state = ws.state()
    assert state["processed_steps"] == [s * 10 for s in range(1, 41)]
    calls = ws.calls()
    assert set(calls) == {f"checkpoint-{s * 10}" for s in range(1, 41)}
    # a step runs again only when a kill interrupted it: at most one extra run per kill
    assert len(calls) - 40 <= 12
