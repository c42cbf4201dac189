"""Acceptance 2–6 through the real program: the sidecar as a subprocess, the stand-in eval in bash."""

import json
import os
import signal
import time

from conftest import wait_for, process_gone


def test_once_evaluates_every_ready_checkpoint_exactly_once(ws):
    for step in (300, 100, 200):
        ws.checkpoint(step)
    (ws.sft / "checkpoint-final").mkdir()
    (ws.sft / "tmp-checkpoint-400").mkdir()
    (ws.sft / "checkpoint-12a").mkdir()
    (ws.sft / "checkpoint-999").write_text("a file, not a folder")
    result = ws.run("--once")
    assert result.returncode == 0, result.stderr
    assert ws.calls() == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    state = ws.state()
    assert state["processed_steps"] == [100, 200, 300]
    row = state["table_rows"][0]
    assert row["checkpoint_step"] == 100 and row["checkpoint_name"] == "checkpoint-100"
    assert row["HR@10"] == 0.002 and row["Instruments/HR@10"] == 0.002
    assert row["metrics_path"] == str(ws.results(100))
    assert ws.run("--once").returncode == 0
    assert len(ws.calls()) == 3  # nothing evaluated twice


def test_existing_metrics_are_backfilled_without_running_the_script(ws):
    ws.checkpoint(100)
    ws.results(100).parent.mkdir(parents=True)
    ws.results(100).write_text(json.dumps({"HR@10": 0.5, "NDCG@10": 0.25}))
    assert ws.run("--once").returncode == 0
    assert ws.calls() == []
    assert ws.state()["table_rows"][0]["HR@10"] == 0.5


def test_version_1_state_is_adopted_without_losing_anything(ws):
    for step in (100, 200, 300):
        ws.checkpoint(step)
    # Learn the file name the original would have used, then write the original's format there.
    assert ws.status().returncode == 1
    first = ws.run("--once", "--max-pending-per-cycle", "1", "--ready-marker", "no-such-marker")
    assert first.returncode == 0
    state_file = ws.state_files()[0]
    v1 = {
        "version": 1, "model_config_key": state_file.stem.rsplit("_", 1)[1], "run_id": "eval-custom-id",
        "run_name": "custom-name", "processed_steps": [100],
        "failed_steps": {"200": {"checkpoint": "checkpoint-200", "error": "CUDA OOM", "time": "2026-01-01T00:00:00+00:00"}},
        "last_seen_step": 300, "last_update_time": "2026-01-01T00:00:00+00:00",
        "table_rows": [{"checkpoint_step": 100, "checkpoint_name": "checkpoint-100", "HR@1": 0.1, "HR@3": None,
                        "HR@10": 0.3, "NDCG@10": 0.2, "metrics_path": "/old/metrics.json"}],
        "user_note": "kept",
    }
    state_file.write_text(json.dumps(v1))
    ws.mode(200, "fail")
    result = ws.run("--once", "--retry-backoff-seconds", "0", "--max-attempts", "3")
    assert result.returncode == 4, result.stderr  # checkpoint-200 given up in this run
    state = ws.state()
    assert "checkpoint-100" not in ws.calls()  # processed steps are not re-evaluated
    assert ws.calls().count("checkpoint-200") == 2  # the old failure counted as attempt 1 of 3
    assert state["version"] == 2 and state["user_note"] == "kept"
    assert (state["run_id"], state["run_name"]) == ("eval-custom-id", "custom-name")
    assert state["table_rows"][0] == v1["table_rows"][0]
    failure = state["failed_steps"]["200"]
    assert failure["attempts"] == 3 and failure["given_up"] is True
    assert "CUDA OOM" in failure["previous_errors"][0]
    assert state["processed_steps"] == [100, 300]


def test_checkpoint_being_written_waits_for_its_quiet_period(ws):
    folder = ws.checkpoint(100, age=0, marker=False)  # just written
    result = ws.run("--once", "--checkpoint-ready-seconds", "120")
    assert result.returncode == 0 and ws.calls() == []
    assert ws.state()["pending_steps"] == [100]
    assert ws.run("--once", "--checkpoint-ready-seconds", "120", "--ready-marker", "trainer_state.json").returncode == 0
    assert ws.calls() == []  # the marker is required when named
    (folder / "trainer_state.json").write_text("{}")
    assert ws.run("--once", "--checkpoint-ready-seconds", "120", "--ready-marker", "trainer_state.json").returncode == 0
    assert ws.calls() == ["checkpoint-100"]


def test_quiet_period_in_watch_mode_waits_for_stillness_not_the_poll(ws):
    folder = ws.checkpoint(100, age=0, marker=False)
    proc = ws.start("--checkpoint-ready-seconds", "2", "--poll-interval-seconds", "3600")
    try:
        for _ in range(3):  # keep writing: the quiet period restarts each time
            time.sleep(0.8)
            (folder / "optimizer.pt").write_bytes(os.urandom(100))
        assert ws.calls() == []
        wait_for(lambda: ws.calls() == ["checkpoint-100"], timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_eval_script_gets_exactly_the_injected_environment_verbatim(ws, tmp_path):
    hostile = "a b 'c' \"d\" $(touch pwned) `touch pwned2`; touch pwned3 \\n"
    ckpt = ws.checkpoint(100)
    result = ws.run("--once", "--category", hostile, "--cuda-list", "0 1", "--python-bin", "py $(touch pwned4)",
                    "--batch-size", "4", "--max-new-tokens", "64", "--num-beams", "20", "--temperature", "0.7",
                    "--do-sample", "True", "--length-penalty", "1.5", "--sid-levels", "3")
    assert result.returncode == 0, result.stderr
    env = json.loads((ws.ctl / "env-checkpoint-100.json").read_text())
    expected = {
        "CATEGORY": hostile, "CUDA_LIST": "0 1", "PYTHON_BIN": "py $(touch pwned4)",
        "TEST_DATA_PATH": str(ws.data / "sft" / "test.json"), "INDEX_PATH": str(ws.data / "id2sid.json"),
        "BATCH_SIZE": "4", "MAX_NEW_TOKENS": "64", "NUM_BEAMS": "20", "TEMPERATURE": "0.7", "DO_SAMPLE": "True",
        "LENGTH_PENALTY": "1.5", "SID_LEVELS": "3", "CKPT_LIST": str(ckpt),
    }
    assert {k: env.get(k) for k in expected} == expected
    parent = ws.env()
    extra = set(env) - set(parent) - set(expected)
    assert env["EVAL_SIDECAR_ATTEMPT"].startswith("100-")  # names this attempt's processes (README)
    assert extra - {"EVAL_SIDECAR_ATTEMPT"} <= {"PWD", "SHLVL", "_", "OLDPWD"}  # set by bash itself
    assert env["STANDIN_CONTROL"] == parent["STANDIN_CONTROL"]  # the sidecar's own environment is passed on
    assert env["PWD"] == str(ws.repo)  # cwd is the repo root
    assert not [p for p in tmp_path.rglob("pwned*")]


def test_each_kind_of_failure_is_recorded_retried_and_never_blocks_others(ws):
    modes = {100: "fail", 200: "no-metrics", 300: "invalid-json", 400: "no-numbers"}
    for step, mode in modes.items():
        ws.checkpoint(step)
        ws.mode(step, mode)
    ws.checkpoint(500)
    result = ws.run("--once", "--retry-backoff-seconds", "0", "--max-attempts", "2")
    assert result.returncode == 4, result.stderr  # evals failed in this run
    state = ws.state()
    assert state["processed_steps"] == [500]
    failed = state["failed_steps"]
    log_dir = ws.log_dir / "toy-grec-sft-cb16-run-1"
    reasons = {100: "exited 3", 200: "not found", 300: "invalid JSON", 400: "no numeric metric"}
    for step, reason in reasons.items():
        entry = failed[str(step)]
        assert entry["attempts"] == 2 and entry["given_up"] is True
        assert reason in entry["error"] and str(log_dir / f"checkpoint-{step}.log") in entry["error"]
        assert entry["time"].endswith("+00:00") and entry["checkpoint"] == f"checkpoint-{step}"
        assert ws.calls().count(f"checkpoint-{step}") == 2
    assert "failing on purpose" in (log_dir / "checkpoint-100.log").read_text()


def test_backoff_delays_the_retry(ws):
    ws.checkpoint(100)
    ws.mode(100, "fail-once")
    assert ws.run("--once", "--retry-backoff-seconds", "300").returncode == 4
    entry = ws.state()["failed_steps"]["100"]
    assert entry["attempts"] == 1 and entry["retry_after"] > time.time() + 250
    assert ws.run("--once", "--retry-backoff-seconds", "300").returncode == 0
    assert ws.calls() == ["checkpoint-100"]  # still backing off
    assert ws.run("--once", "--retry-failed").returncode == 0
    assert ws.calls() == ["checkpoint-100"] * 2
    assert ws.state()["processed_steps"] == [100] and ws.state()["failed_steps"] == {}


def test_timeout_kills_the_whole_process_group(ws):
    ws.checkpoint(100)
    ws.mode(100, "sleep")
    result = ws.run("--once", "--eval-timeout-seconds", "1", "--max-attempts", "1")
    assert result.returncode == 4, result.stderr  # the eval failed (timed out) in this run
    entry = ws.state()["failed_steps"]["100"]
    assert "timed out after 1 s" in entry["error"]
    grandchild = int((ws.ctl / "grandchild-checkpoint-100").read_text())
    wait_for(lambda: process_gone(grandchild), timeout=15)


def test_checkpoint_deleted_before_or_during_its_eval_is_vanished(ws):
    ws.checkpoint(100)
    ws.mode(100, "delete-self")
    gone_before = ws.checkpoint(200)
    ws.mode(200, "fail")
    assert ws.run("--once", "--retry-backoff-seconds", "300").returncode == 4  # checkpoint-200 failed
    import shutil
    shutil.rmtree(gone_before)  # rotated away while waiting for its retry
    assert ws.run("--once").returncode == 0
    state = ws.state()
    assert state["vanished_steps"]["100"]["reason"] == "deleted during its eval"
    assert state["vanished_steps"]["200"]["reason"] == "deleted before its eval"
    assert state["failed_steps"] == {}
    assert ws.calls() == ["checkpoint-100", "checkpoint-200"]
    status = ws.status()
    assert "vanished 2" in status.stdout


def test_force_eval_reruns_and_force_eval_steps_replaces_rows(ws):
    ws.checkpoint(100)
    ws.results(100).parent.mkdir(parents=True)
    ws.results(100).write_text(json.dumps({"HR@10": 0.9}))
    assert ws.run("--once", "--force-eval").returncode == 0
    assert ws.calls() == ["checkpoint-100"]
    first = ws.state()["table_rows"][0]
    assert first["calls"] == 1.0
    ws.checkpoint(200)
    assert ws.run("--once", "--force-eval-steps", "100").returncode == 0
    assert ws.calls() == ["checkpoint-100", "checkpoint-200", "checkpoint-100"] or \
        ws.calls() == ["checkpoint-100", "checkpoint-100", "checkpoint-200"]
    rows = {r["checkpoint_step"]: r for r in ws.state()["table_rows"]}
    assert rows[100]["calls"] == 2.0 and rows[100]["HR@10"] == round(100 / 100000 + 2 / 1000, 4)
    assert len(ws.state()["table_rows"]) == 2


def test_symlinks_count_only_inside_the_root_with_one_warning(ws, tmp_path):
    inside = ws.sft / "real-folder"
    inside.mkdir()
    (inside / "w.bin").write_bytes(b"x")
    import os as _os
    old = time.time() - 3600
    _os.utime(inside / "w.bin", (old, old))
    (ws.sft / "checkpoint-100").symlink_to(inside)
    outside = ws.checkpoint(1, age=3600).rename(tmp_path / "elsewhere")
    (ws.sft / "checkpoint-200").symlink_to(outside)
    result = ws.run("--once")
    assert result.returncode == 0, result.stderr
    assert ws.calls() == ["checkpoint-100"]
    assert result.stderr.count("checkpoint-200: it is a symlink to") == 1
    env = json.loads((ws.ctl / "env-checkpoint-100.json").read_text())
    assert env["CKPT_LIST"] == str(ws.sft / "checkpoint-100")  # the path under the root, not the target


def test_sft_root_that_disappears_later_is_waited_for(ws, tmp_path):
    ws.checkpoint(100)
    proc = ws.start("--poll-interval-seconds", "0.2")
    try:
        wait_for(lambda: ws.calls() == ["checkpoint-100"])
        moved = ws.sft.rename(tmp_path / "moved away")
        time.sleep(1.0)
        moved.rename(ws.sft)
        ws.checkpoint(200)
        wait_for(lambda: ws.calls() == ["checkpoint-100", "checkpoint-200"])
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    out = next(ws.ctl.glob("sidecar-*.out")).read_text()
    assert out.count("--sft-root is missing or unreadable") == 1 and "is back" in out
    assert ws.state()["vanished_steps"] == {}


def test_changed_decoding_parameters_are_warned_about_and_recorded_per_row(ws):
    ws.checkpoint(100)
    assert ws.run("--once", "--temperature", "1.0").returncode == 0
    ws.checkpoint(200)
    result = ws.run("--once", "--temperature", "0.5")
    assert result.returncode == 0
    assert "decoding parameters changed since the last start (temperature 1.0 -> 0.5)" in result.stderr
    rows = ws.state()["table_rows"]
    assert [r["eval_params"]["temperature"] for r in rows] == [1.0, 0.5]
    assert len(ws.state_files()) == 1  # same identity, same state file
