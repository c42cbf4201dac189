"""Acceptance 9 (bad input: exit 2, one line, nothing written) and 10 (status)."""

import json
import signal
import subprocess
import sys

import pytest

from conftest import ENTRY, wait_for, process_gone

BAD_FLAGS = [
    (["--num-beams", "many"], "--num-beams: expected an integer, got 'many'"),
    (["--poll-interval-seconds", "-1"], "--poll-interval-seconds: must be at least"),
    (["--checkpoint-ready-seconds", "nan"], "--checkpoint-ready-seconds: expected a finite number"),
    (["--max-pending-per-cycle", "-2"], "--max-pending-per-cycle: must be at least 0"),
    (["--wandb-mode", "sometimes"], "--wandb-mode: 'sometimes' is not one of online, offline, disabled"),
    (["--order", "sideways"], "--order: 'sideways' is not one of"),
    (["--lock-mode", "nfs"], "--lock-mode: 'nfs' is not one of"),
    (["--force-eval-steps", "5,x"], "--force-eval-steps: expected comma-separated checkpoint steps"),
    (["--max-attempts", "0"], "--max-attempts: must be at least 1"),
    (["--eval-timeout-seconds", "soon"], "--eval-timeout-seconds: expected a finite number"),
    (["--ready-marker", "a/b"], "--ready-marker: expected a file name"),
    (["--do-sample", "maybe"], "--do-sample: 'maybe' is not one of"),
    (["--log-level", "LOUD"], "--log-level: 'LOUD' is not one of"),
    (["--eval-script", "missing.sh"], "--eval-script: not a file:"),
    (["--test-data-path", "nope.json"], "--test-data-path: not a file:"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--num-beams"], "argument --num-beams: expected one argument"),
]


@pytest.mark.parametrize("extra, message", BAD_FLAGS, ids=[b[0][0] for b in BAD_FLAGS])
def test_bad_flag_values_exit_2_with_one_line_and_write_nothing(ws, extra, message):
    ws.checkpoint(100)
    result = ws.run("--once", *extra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not ws.state_dir.exists() and not (ws.repo / "log").exists() and ws.calls() == []


def test_missing_sft_root_names_the_path(ws):
    missing = ws.repo / "saves" / "not-there"
    result = subprocess.run([sys.executable, str(ENTRY), *ws.args("--once"), "--sft-root", str(missing)],
                            env=ws.env(), capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == \
        f"eval_wandb_sidecar.py: error: --sft-root: not a folder: {missing}"


def test_bad_environment_fallback_and_config_file(ws, tmp_path):
    result = ws.run("--once", env=ws.env(NUM_BEAMS="abc"))
    assert result.returncode == 2 and "NUM_BEAMS (environment): expected an integer, got 'abc'" in result.stderr
    config = tmp_path / "sidecar.yaml"
    config.write_text("max_attempts: 2\nmystery-flag: 1\n")
    result = ws.run("--once", "--config", str(config))
    assert result.returncode == 2 and "unknown key 'mystery-flag'" in result.stderr
    config.write_text("max-attempts: [1, 2]\n")
    result = ws.run("--once", "--config", str(config))
    assert result.returncode == 2 and "max-attempts: expected an integer" in result.stderr


def test_precedence_command_line_over_environment_over_config_file(ws, tmp_path):
    ws.checkpoint(100)
    config = tmp_path / "sidecar.yaml"
    config.write_text("num_beams: 7\ncategory: FromFile\ncuda-list: '5'\n")
    result = ws.run("--once", "--config", str(config), "--cuda-list", "3", env=ws.env(CATEGORY="FromEnv"))
    assert result.returncode == 0, result.stderr
    env = json.loads((ws.ctl / "env-checkpoint-100.json").read_text())
    assert (env["NUM_BEAMS"], env["CATEGORY"], env["CUDA_LIST"]) == ("7", "FromEnv", "3")


def test_corrupt_state_file_is_left_untouched_and_names_the_backup(ws):
    ws.checkpoint(100)
    assert ws.run("--once").returncode == 0
    ws.checkpoint(200)
    assert ws.run("--once").returncode == 0  # now a .bak exists
    state_file = ws.state_files()[0]
    state_file.write_text('{"version": 2, "processed_steps": [1')
    result = ws.run("--once")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and str(state_file) in line and f"{state_file}.bak" in line
    assert state_file.read_text() == '{"version": 2, "processed_steps": [1'
    status = ws.status()
    assert status.returncode == 2 and str(state_file) in status.stderr


def test_status_shows_counts_in_flight_last_best_and_last_error(ws):
    for step in (100, 200, 300):
        ws.checkpoint(step)
    ws.mode(300, "fail")
    assert ws.run("--once", "--max-attempts", "1").returncode == 4  # an eval failed in this run
    ws.checkpoint(400)
    ws.mode(400, "sleep")
    proc = ws.start("--poll-interval-seconds", "3600", "--max-attempts", "1")
    try:
        wait_for(lambda: (ws.ctl / "started-checkpoint-400").exists())
        wait_for(lambda: "400" in ws.state()["in_flight"])
        text = ws.status().stdout
        assert "processed 2" in text and "failed 1 (1 given up)" in text
        assert "in flight     checkpoint-400 on GPUs 0 for" in text
        assert "last step     200  HR@10 0.0030" in text
        assert "best HR@10    0.0030 at step 200" in text and "best NDCG@10  0.0015 at step 200" in text
        assert "last error    checkpoint-300" in text and "exited 3" in text
        info = json.loads(ws.status("--json").stdout)
        assert info["processed"] == 2 and info["failed"] == 1 and info["pending"] == 1
        assert info["in_flight"][0]["step"] == 400 and info["in_flight"][0]["elapsed_seconds"] >= 0
        assert info["best_step_for_ndcg@10"] == 200 and info["last_error"]["step"] == 300
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # SIGTERM stopped the eval and left the step pending, not failed
    state = ws.state()
    assert state["in_flight"] == {} and "400" not in state["failed_steps"] and 400 in state["pending_steps"]
    grandchild = int((ws.ctl / "grandchild-checkpoint-400").read_text())
    wait_for(lambda: process_gone(grandchild))


def test_status_of_a_state_file_by_path_and_of_nothing(ws):
    result = ws.status()
    assert result.returncode == 1 and "no state file" in result.stderr
    ws.checkpoint(100)
    assert ws.run("--once").returncode == 0
    path = ws.state_files()[0]
    result = subprocess.run([sys.executable, str(ENTRY), "status", "--state-file", str(path), "--json", "--rows"],
                            capture_output=True, text=True)
    info = json.loads(result.stdout)
    assert info["processed"] == 1 and info["rows"][0]["checkpoint_step"] == 100
