"""Reliability round 2: what an adversarial pass broke, each tried as a user would (real files,
real processes, the real CLI), each test failing before its fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ENTRY, process_gone, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent / "reliability"))
from test_crash_matrix import stand_in_processes  # noqa: E402


def _old(path: Path, age: float = 600.0) -> None:
    then = time.time() - age
    os.utime(path, (then, then))


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


# ----- readiness under clock skew ------------------------------------------------------------------
def test_a_checkpoint_written_with_old_mtimes_waits_for_its_last_shard(ws):
    """A file server whose clock is behind (or cp -a / rsync -a / tar x): every shard arrives with
    an mtime 600 s in the past. The eval must see all three shards, not the first."""
    ws.checkpoint(50)  # processed once the sidecar's first pass is over: the next folder is new to it
    proc = ws.start("--checkpoint-ready-seconds", "4", "--poll-interval-seconds", "0.5")
    try:
        wait_for(lambda: ws.state()["processed_steps"] == [50], timeout=60)
        folder = ws.sft / "checkpoint-100"
        folder.mkdir()
        for i in range(1, 4):
            shard = folder / f"model-0000{i}-of-00003.safetensors"
            shard.write_bytes(b"w" * 64)
            _old(shard)
            _old(folder)
            if i < 3:
                time.sleep(2)
        wait_for(lambda: ws.state()["processed_steps"] == [50, 100], timeout=60)
        seen = (ws.ctl / "seen-checkpoint-100").read_text().split()
        assert len(seen) == 3, f"the eval saw {seen}"
    finally:
        _stop(proc)


# ----- bad text ------------------------------------------------------------------------------------
def test_a_metric_name_that_is_not_valid_text_is_recorded_and_reported_not_a_crash_loop(ws, isolated_env):
    """`{"\\ud800": 0.1}`: a lone surrogate escape in a key used to crash every start writing the state."""
    from wandb_reader import eval_rows, segments

    ws.checkpoint(100)
    ws.results(100).parent.mkdir(parents=True)
    ws.results(100).write_text('{"HR@10": 0.5, "\\ud800": 0.1}')
    args = [a for a in ws.args("--once", "--wandb-mode", "offline") if a != "--disable-wandb"]
    outputs = []
    for _ in range(2):  # and a restart is calm too
        result = subprocess.run([sys.executable, str(ENTRY), *args], env=ws.env(), capture_output=True, text=True,
                                timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        outputs.append(result.stderr)
    row = ws.state()["table_rows"][0]
    assert row["HR@10"] == 0.5 and row["\\ud800"] == 0.1
    assert "metric name(s) \\ud800 hold a lone surrogate escape" in outputs[0]
    rows = [r for seg in segments(isolated_env / "wandb_dir") for r in eval_rows(seg)]
    assert [r["checkpoint_step"] for r in rows] == [100]


def test_an_sft_root_named_with_a_non_utf8_byte_reaches_wandb(ws, isolated_env):
    from wandb_reader import eval_rows, segments

    target = ws.sft.parent / os.fsdecode(b"model-\xff-cb16")
    ws.sft.rename(target)
    ws.sft = target
    ws.checkpoint(100)
    args = [a for a in ws.args("--once", "--wandb-mode", "offline") if a != "--disable-wandb"]
    result = subprocess.run([sys.executable, str(ENTRY), *args], env=ws.env(), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ws.state()["unreported_steps"] == [] and "could not be written" not in result.stderr, result.stderr[-3000:]
    rows = [r for seg in segments(isolated_env / "wandb_dir") for r in eval_rows(seg)]
    assert [r["checkpoint_step"] for r in rows] == [100]


# ----- hostile files -------------------------------------------------------------------------------
def test_a_shard_index_nested_100000_levels_deep_is_a_pending_reason_not_a_crash(ws):
    bad = ws.checkpoint(100)
    (bad / "model.safetensors.index.json").write_text("[" * 100_000 + "]" * 100_000)
    ws.checkpoint(200)
    result = ws.run("--once")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    state = ws.state()
    assert state["processed_steps"] == [200] and state["pending_steps"] == [100]


def test_a_metrics_json_that_is_a_fifo_fails_that_checkpoint_and_sigterm_still_stops(ws):
    ws.checkpoint(100)
    ws.checkpoint(200)
    ws.results(100).parent.mkdir(parents=True)
    os.mkfifo(ws.results(100))
    proc = ws.start("--poll-interval-seconds", "3600")
    try:
        wait_for(lambda: ws.state()["processed_steps"] == [200], timeout=60)
        error = ws.state()["failed_steps"]["100"]["error"]
        assert f"{ws.results(100)} is a FIFO, not a regular file" in error
        assert ws.calls() == ["checkpoint-200"]  # no eval was started to write into the FIFO
    finally:
        _stop(proc)


def test_a_metrics_json_linked_to_dev_zero_is_refused_without_reading_it(ws):
    ws.checkpoint(100)
    ws.results(100).parent.mkdir(parents=True)
    ws.results(100).symlink_to("/dev/zero")
    result = ws.run("--once", timeout=60)
    assert result.returncode == 4, result.stderr[-2000:]  # a failure of this run
    assert "is a character device, not a regular file" in ws.state()["failed_steps"]["100"]["error"]


# ----- in flight after a kill -9 -------------------------------------------------------------------
def _kill_9(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def test_a_checkpoint_deleted_during_its_eval_and_a_kill_9_ends_vanished_not_in_flight_forever(ws):
    ws.checkpoint(100)
    ws.mode(100, "sleep")
    proc = ws.start("--poll-interval-seconds", "0.2")
    wait_for(lambda: ws.state()["in_flight"].get("100", {}).get("pid"))
    ws.checkpoint(200)  # so that a later pass shows the deletion was seen
    import shutil
    shutil.rmtree(ws.sft / "checkpoint-100")
    wait_for(lambda: ws.state()["pending_steps"] == [] or 100 not in ws.state()["pending_steps"], timeout=30)
    _kill_9(proc)
    for _ in range(2):
        result = ws.run("--once")
        assert result.returncode == 0, result.stderr[-2000:]
    state = ws.state()
    assert state["in_flight"] == {}
    assert "100" in state["vanished_steps"] and 200 in state["processed_steps"]
    wait_for(lambda: not stand_in_processes(ws), timeout=20)
    status = ws.status()
    in_flight = [line for line in status.stdout.splitlines() if line.startswith("in flight")]
    assert in_flight and in_flight[0].split()[-1] == "none", status.stdout


def test_a_forced_re_evaluation_cut_by_kill_9_is_finished_by_the_next_start(ws):
    ws.checkpoint(100)
    assert ws.run("--once").returncode == 0
    ws.mode(100, "sleep")
    proc = ws.start("--poll-interval-seconds", "3600", "--force-eval-steps", "100")
    wait_for(lambda: ws.state()["in_flight"].get("100", {}).get("pid"))
    _kill_9(proc)
    ws.mode(100, "ok")
    result = ws.run("--once")  # without the flag
    assert result.returncode == 0, result.stderr[-2000:]
    state = ws.state()
    assert state["in_flight"] == {} and state["processed_steps"] == [100]
    assert ws.calls() == ["checkpoint-100"] * 3
    assert state["table_rows"][0]["calls"] == 3  # the row of the finished re-evaluation
    wait_for(lambda: not stand_in_processes(ws), timeout=20)


def test_kill_9_just_after_the_eval_process_exists_leaves_no_orphan(ws):
    """The moment between the child existing and its pid being saved (EVAL_SIDECAR_CRASH_AT=eval-spawned)."""
    ws.checkpoint(100)
    ws.mode(100, "slow")
    first = ws.run("--once", env=ws.env(EVAL_SIDECAR_CRASH_AT="eval-spawned", STANDIN_SLOW="120"))
    assert first.returncode == -9, first.stderr[-2000:]
    wait_for(lambda: stand_in_processes(ws), timeout=20)  # the orphan runs
    second = ws.run("--once", env=ws.env(STANDIN_SLOW="0"))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "stopping eval processes left running by a previous sidecar" in second.stderr
    wait_for(lambda: not stand_in_processes(ws), timeout=20)
    state = ws.state()
    assert state["processed_steps"] == [100] and state["in_flight"] == {}


def test_processes_an_eval_left_behind_are_stopped_after_a_kill_9(ws):
    """The eval runs `sleep 300 &` and finishes while its sidecar is dead: the restart stops the sleep."""
    ws.checkpoint(100)
    ws.mode(100, "slow-bg")
    first = ws.run("--once", env=ws.env(EVAL_SIDECAR_CRASH_AT="eval-running", STANDIN_SLOW="1"))
    assert first.returncode == -9
    left = int(wait_for(lambda: (ws.ctl / "grandchild-checkpoint-100").read_text().strip()))
    leader = ws.state()["in_flight"]["100"]["pid"]
    wait_for(lambda: ws.results(100).exists() and process_gone(leader), timeout=20)  # the eval itself ended
    assert not process_gone(left)
    ws.mode(100, "ok")
    assert ws.run("--once").returncode == 0
    wait_for(lambda: process_gone(left), timeout=20)
    assert ws.state()["processed_steps"] == [100]


def test_a_setsid_child_that_keeps_the_environment_is_stopped_too(ws):
    ws.checkpoint(100)
    ws.mode(100, "setsid-bg")
    assert ws.run("--once", env=ws.env(STANDIN_SLOW="0")).returncode == 0
    wait_for(lambda: not stand_in_processes(ws), timeout=20)


# ----- disk full -----------------------------------------------------------------------------------
def _mount_tmpfs(folder: Path, size: str) -> None:
    import pytest

    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"a small tmpfs is needed to fill a disk and could not be mounted: {done.stderr.strip()}")


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def _processed(state_dir: Path) -> list[int] | None:
    files = list(state_dir.glob("*.json"))
    return json.loads(files[0].read_text())["processed_steps"] if files else None


def test_a_full_disk_under_state_and_logs_uses_no_attempt(ws, tmp_path):
    """State and logs on a full filesystem (a 1 MB tmpfs): every eval start fails with ENOSPC. That
    is the sidecar's failure, not the eval's: when space returns, the checkpoint is evaluated."""
    full = tmp_path / "full"
    _mount_tmpfs(full, "1m")
    proc = None
    try:
        ws.checkpoint(50)
        proc = ws.start("--state-dir", str(full / "state"), "--log-dir", str(full / "log"), "--max-attempts", "2",
                        "--retry-backoff-seconds", "0.5", "--poll-interval-seconds", "0.5")
        state = full / "state"
        wait_for(lambda: _processed(state) == [50], timeout=60)
        filler = _fill(full)
        ws.checkpoint(100, age=0)
        out = Path(wait_for(lambda: [p for p in ws.ctl.glob("sidecar-*.out")])[0])
        wait_for(lambda: out.read_text().count("not counted as an attempt") >= 3, timeout=60)
        assert ws.calls() == ["checkpoint-50"]
        filler.unlink()
        wait_for(lambda: _processed(state) == [50, 100],
                 timeout=60)
        assert "giving up" not in out.read_text()
        _stop(proc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", str(full)], capture_output=True)


# ----- another configuration's numbers ------------------------------------------------------------
def test_a_metrics_json_of_another_configuration_is_evaluated_again_not_taken(ws):
    ws.checkpoint(100)
    assert ws.run("--once").returncode == 0  # --num-beams 50 (the default) writes results/.../metrics.json
    other = ws.run("--once", "--num-beams", "10")
    assert other.returncode == 0, other.stderr[-2000:]
    assert ws.calls() == ["checkpoint-100", "checkpoint-100"]
    assert "was produced by another configuration of this model" in other.stderr
    rows = {json.loads(f.read_text())["table_rows"][0]["calls"] for f in ws.state_files()}
    assert rows == {1, 2}  # each configuration records its own eval's numbers
    assert "reusing metrics.json files" not in other.stderr


def test_an_unattributed_metrics_json_is_reused_as_before_with_one_warning_under_other_flags(ws):
    for step in (100, 200):
        ws.checkpoint(step)
        ws.results(step).parent.mkdir(parents=True)
        ws.results(step).write_text(json.dumps({"HR@10": 0.25}))  # the original tool's, or by hand
    result = ws.run("--once", "--num-beams", "10")
    assert result.returncode == 0, result.stderr[-2000:]
    assert ws.calls() == []
    assert result.stderr.count("reusing metrics.json files this sidecar did not produce") == 1
    warning = next(line for line in result.stderr.splitlines() if "reusing metrics.json" in line)
    assert "--num-beams 10" in warning and "--force-eval" in warning
    assert [json.loads(f.read_text())["processed_steps"] for f in ws.state_files()] == [[100, 200]]


def test_starting_on_a_full_disk_is_one_line_not_an_internal_error(ws, tmp_path):
    full = tmp_path / "full"
    _mount_tmpfs(full, "1m")
    try:
        _fill(full)
        ws.checkpoint(100)
        result = ws.run("--once", "--state-dir", str(full / "state"))
        assert result.returncode == 1, result.stderr[-2000:]
        assert "cannot take the lock file" in result.stderr and "No space left on device" in result.stderr
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr
        assert ws.calls() == []
    finally:
        subprocess.run(["umount", "-l", str(full)], capture_output=True)


def test_an_eval_that_leaves_another_configurations_metrics_json_in_place_fails(ws):
    ws.checkpoint(100)
    assert ws.run("--once").returncode == 0
    ws.mode(100, "keep")  # exits 0 without writing: the file there is --num-beams 50's
    other = ws.run("--once", "--num-beams", "10", "--max-attempts", "1")
    assert other.returncode == 4, other.stderr[-2000:]  # that eval failed in this run
    state = next(json.loads(f.read_text()) for f in ws.state_files()
                 if json.loads(f.read_text())["processed_steps"] == [])
    assert "did not write" in state["failed_steps"]["100"]["error"]
    assert "another configuration's" in state["failed_steps"]["100"]["error"]
