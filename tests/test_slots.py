"""Parallel evaluation on GPU slots and newest-first order (real subprocesses; the stand-in eval
records its start/end times and CUDA_LIST)."""

import json

import pytest

from conftest import wait_for


def intervals(ws, step):
    starts = (ws.ctl / f"starts-checkpoint-{step}").read_text().split("\n")
    ends = (ws.ctl / f"ends-checkpoint-{step}").read_text().split()
    runs = []
    for line, end in zip([s for s in starts if s], ends):
        t, _, cuda = line.partition(" ")
        runs.append((float(t), float(end), cuda))
    return runs


def test_two_slots_overlap_never_more_than_two_on_disjoint_gpus(ws):
    for step in (100, 200, 300, 400):
        ws.checkpoint(step)
        ws.mode(step, "slow")
    result = ws.run("--once", "--gpu-slots", "0,1;2,3", env=ws.env(STANDIN_SLOW="1.5"))
    assert result.returncode == 0, result.stderr
    assert ws.state()["processed_steps"] == [100, 200, 300, 400]
    runs = [r for step in (100, 200, 300, 400) for r in intervals(ws, step)]
    assert len(runs) == 4 and {r[2] for r in runs} <= {"0 1", "2 3"}
    for t, _, _ in [(r[0], None, None) for r in runs] + [(r[1] - 1e-6, None, None) for r in runs]:
        live = [r for r in runs if r[0] <= t < r[1]]
        assert len(live) <= 2
        assert len({r[2] for r in live}) == len(live)  # never two evals on one slot's GPUs
    overlapping = [(a, b) for a in runs for b in runs if a < b and a[0] < b[1] and b[0] < a[1]]
    assert overlapping, "no two evals ran at the same time"


def test_a_failing_slot_does_not_stop_the_other_and_retries_use_a_free_slot(ws):
    ws.checkpoint(100)
    ws.mode(100, "fail-once")
    for step in (200, 300):
        ws.checkpoint(step)
        ws.mode(step, "slow")
    result = ws.run("--once", "--gpu-slots", "0;1", "--retry-backoff-seconds", "0", env=ws.env(STANDIN_SLOW="1"))
    assert result.returncode == 0, result.stderr
    state = ws.state()
    assert state["processed_steps"] == [100, 200, 300] and state["failed_steps"] == {}
    assert ws.calls().count("checkpoint-100") == 2


def test_status_shows_every_eval_in_flight_with_its_gpus(ws):
    for step in (100, 200):
        ws.checkpoint(step)
        ws.mode(step, "sleep")
    proc = ws.start("--gpu-slots", "4;5", "--poll-interval-seconds", "3600")
    try:
        wait_for(lambda: len(ws.state()["in_flight"]) == 2)
        info = json.loads(ws.status("--json").stdout)
        assert sorted(e["gpus"] for e in info["in_flight"]) == ["4", "5"]
        text = ws.status().stdout
        assert "checkpoint-100 on GPUs" in text and "checkpoint-200 on GPUs" in text
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    state = ws.state()
    assert state["in_flight"] == {} and sorted(state["pending_steps"]) == [100, 200]


def test_newest_first_evaluates_the_highest_ready_step_first(ws):
    for step in (100, 200, 300):
        ws.checkpoint(step)
    assert ws.run("--once", "--order", "newest-first").returncode == 0
    assert ws.calls() == ["checkpoint-300", "checkpoint-200", "checkpoint-100"]


@pytest.mark.parametrize("spec, message", [
    ("0,1;", "slot 2 is empty"), ("0;0", "GPU 0 is in two slots"), ("a;1", "'a' is not a GPU id")])
def test_invalid_gpu_slots_are_rejected_at_start_up(ws, spec, message):
    ws.checkpoint(100)
    result = ws.run("--once", "--gpu-slots", spec)
    assert result.returncode == 2 and message in result.stderr and ws.calls() == []


def _rotating_trainer(ws, steps, interval):
    """Writes each checkpoint (marker last) and deletes the previous one: save_total_limit = 1."""
    import shutil
    import time as _time

    previous = None
    for step in steps:
        folder = ws.sft / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w" * 1000)
        (folder / "trainer_state.json").write_text("{}")
        (folder / ".sidecar_ready").write_text("{}")
        if previous is not None:
            shutil.rmtree(previous)
        previous = folder
        _time.sleep(interval)


@pytest.mark.parametrize("pin", [False, True])
def test_rotation_loses_checkpoints_without_pins_and_none_with_them(ws, pin):
    steps = [100, 200, 300, 400, 500]
    for step in steps:
        ws.mode(step, "slow")
    extra = ["--pin-checkpoints"] if pin else []
    proc = ws.start("--watch-mode", "events", "--ready-marker", ".sidecar_ready", "--poll-interval-seconds", "3600",
                    *extra, env=ws.env(STANDIN_SLOW="1"))
    try:
        wait_for(lambda: "watching" in "".join(p.read_text() for p in ws.ctl.glob("sidecar-*.out")))
        _rotating_trainer(ws, steps, interval=0.3)
        if pin:
            wait_for(lambda: ws.state()["processed_steps"] == steps, timeout=60)
        else:
            wait_for(lambda: not ws.state()["in_flight"] and len(ws.state()["processed_steps"])
                     + len(ws.state()["vanished_steps"]) == len(steps), timeout=60)
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    state = ws.state()
    if pin:
        assert state["vanished_steps"] == {}
        pins = ws.state_dir / "pins" / ws.sft.name
        assert not pins.exists() or not [p for p in pins.iterdir()]
        rows = {r["checkpoint_step"]: r for r in state["table_rows"]}
        assert rows[100]["metrics_path"] == str(ws.results(100))  # results under the original names
        env = json.loads((ws.ctl / "env-checkpoint-100.json").read_text())
        assert env["CKPT_LIST"] == str(pins / "checkpoint-100")
    else:
        assert state["vanished_steps"], "rotation should have won against a serial evaluator here"


def test_kill_9_with_two_evals_in_flight_reevaluates_both_and_leaves_no_pin(ws):
    import os as _os
    import signal as _signal

    for step in (100, 200):
        ws.checkpoint(step)
        ws.mode(step, "sleep")
    proc = ws.start("--gpu-slots", "0;1", "--pin-checkpoints", "--poll-interval-seconds", "3600")
    wait_for(lambda: len(ws.state()["in_flight"]) == 2)
    pins = ws.state_dir / "pins" / ws.sft.name
    assert sorted(p.name for p in pins.iterdir()) == ["checkpoint-100", "checkpoint-200"]
    info = json.loads(ws.status("--json").stdout)
    assert info["pins"]["count"] == 2 and info["pins"]["bytes_held_only_by_pins"] == 0  # hard links
    assert "pins          2 in" in ws.status().stdout
    _os.kill(proc.pid, _signal.SIGKILL)
    proc.wait()
    for step in (100, 200):
        ws.mode(step, "ok")
    result = ws.run("--once", "--gpu-slots", "0;1", "--pin-checkpoints", "--eval-kill-grace-seconds", "1")
    assert result.returncode == 0, result.stderr
    state = ws.state()
    assert state["processed_steps"] == [100, 200] and state["in_flight"] == {}
    assert ws.calls().count("checkpoint-100") == 2 and ws.calls().count("checkpoint-200") == 2
    assert not [p for p in pins.iterdir()]
