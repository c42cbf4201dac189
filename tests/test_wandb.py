"""W&B reporting, read back from what wandb wrote offline (never by intercepting calls).

Online outages use a closed local port: a real wandb SDK that cannot reach a server. No test
reaches the network.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_for
from wandb_reader import eval_rows, records, segments, summary, tables

METRICS = ["HR@1", "NDCG@1", "HR@3", "NDCG@3", "HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20",
           "HR@50", "NDCG@50"]
COLUMNS = ["checkpoint_step", "checkpoint_name", "HR@1", "HR@3", "HR@5", "HR@10", "NDCG@1", "NDCG@3", "NDCG@5",
           "NDCG@10", "HR@20", "HR@50", "NDCG@20", "NDCG@50", "metrics_path"]


def metrics_for(step: int) -> dict:
    """Step 200 has the best HR@K, step 300 the best NDCG@K."""
    return {m: round((i + 1) * step / 100000 + (0.01 if step == 200 and m.startswith("HR") else 0.0), 4)
            for i, m in enumerate(METRICS)}


def backfilled(ws, *steps):
    for step in steps:
        ws.checkpoint(step)
        ws.results(step).parent.mkdir(parents=True, exist_ok=True)
        ws.results(step).write_text(json.dumps(metrics_for(step)))


def offline_args(*extra):
    return ["--wandb-mode", "offline", *extra]


def run_offline(ws, *extra, env=None):
    args = [a for a in ws.args(*offline_args(*extra)) if a != "--disable-wandb"]
    return subprocess.run([sys.executable, str(Path(__file__).parent.parent / "eval_wandb_sidecar.py"), *args],
                          env=env or ws.env(), capture_output=True, text=True, timeout=180)


def start_offline(ws, *extra):
    args = [a for a in ws.args(*offline_args(*extra)) if a != "--disable-wandb"]
    out = open(ws.ctl / f"sidecar-{time.monotonic_ns()}.out", "w")
    return subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "eval_wandb_sidecar.py"), *args],
                            env=ws.env(), stdout=out, stderr=subprocess.STDOUT)


def test_once_writes_one_run_with_config_history_summary_and_table(ws, isolated_env):
    backfilled(ws, 100, 200, 300)
    result = run_offline(ws, "--once")
    assert result.returncode == 0, result.stderr
    state = ws.state()
    [seg] = segments(isolated_env / "wandb_dir")
    run = next(r["run"] for r in records(seg) if r["type"] == "run")
    assert run["run_id"] == state["run_id"] == "eval-" + state["model_config_key"]
    assert run["display_name"] == "toy-grec-sft-cb16-run-1-eval" and run["job_type"] == "eval"
    config = {k: v["value"] if isinstance(v, dict) and "value" in v else v
              for k, v in run["config"]["update"].items() if k != "_wandb"}
    assert config == {"model_name": ws.sft.name, "dataset": "Toy_grec", "cb_setting": "cb16", "seed": 42,
                      "num_beams": 50, "sid_levels": -1, "eval_split": "test"}
    rows = eval_rows(seg)
    assert [r["checkpoint_step"] for r in rows] == [100, 200, 300]
    for row in rows:
        step = row["checkpoint_step"]
        assert {m: row[f"eval/{m}"] for m in METRICS} == metrics_for(step)
        assert row["eval/checkpoint_name"] == f"checkpoint-{step}"
        assert row["eval/metrics_path"] == str(ws.results(step))
    summ = summary(seg)["summary"]
    assert {k: summ[k] for k in ("best_hr@10", "best_ndcg@10", "best_step_for_hr@10", "best_step_for_ndcg@10",
                                 "last_hr@10", "last_ndcg@10", "last_step")} == {
        "best_hr@10": metrics_for(200)["HR@10"], "best_step_for_hr@10": 200,
        "best_ndcg@10": metrics_for(300)["NDCG@10"], "best_step_for_ndcg@10": 300,
        "last_hr@10": metrics_for(300)["HR@10"], "last_ndcg@10": metrics_for(300)["NDCG@10"], "last_step": 300}
    [table] = tables(seg)
    assert table["columns"] == COLUMNS
    assert [r[0] for r in table["data"]] == [100, 200, 300]
    assert table["data"][0][COLUMNS.index("HR@50")] == metrics_for(100)["HR@50"]
    metric_records = [r["metric"] for r in records(seg) if r["type"] == "metric"]
    assert {"glob_name": "eval/*", "step_metric": "checkpoint_step"} in \
        [{k: v for k, v in m.items() if k in ("glob_name", "step_metric")} for m in metric_records]
    assert ws.state()["unreported_steps"] == []


def test_a_lower_step_after_a_higher_one_is_kept(ws, isolated_env):
    backfilled(ws, 100, 200, 300)
    assert run_offline(ws, "--once").returncode == 0
    result = run_offline(ws, "--once", "--force-eval-steps", "100")
    assert result.returncode == 0, result.stderr
    first, second = segments(isolated_env / "wandb_dir")
    rows = eval_rows(second)
    assert [r["checkpoint_step"] for r in rows] == [100]  # logged after step 300, not dropped
    assert rows[0]["eval/HR@10"] == round(100 / 100000 + 1 / 1000, 4)  # the stand-in's value, not the backfill's
    [table] = tables(second)
    assert [r[0] for r in table["data"]] == [100, 200, 300]
    assert table["data"][0][COLUMNS.index("HR@10")] == rows[0]["eval/HR@10"]


def test_a_lower_step_after_a_higher_one_in_one_run_is_kept(ws, isolated_env):
    """Within one process (one segment), a checkpoint that arrives late is not dropped: no `step=`."""
    backfilled(ws, 300)
    proc = start_offline(ws, "--poll-interval-seconds", "0.3")
    try:
        wait_for(lambda: any(300 in s["steps"] for s in ws.state()["wandb_segments"]), timeout=60)
        backfilled(ws, 100)
        wait_for(lambda: any(100 in s["steps"] for s in ws.state()["wandb_segments"]), timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    [seg] = segments(isolated_env / "wandb_dir")
    assert [r["checkpoint_step"] for r in eval_rows(seg)] == [300, 100]
    summ = summary(seg)["summary"]
    assert summ["last_step"] == 300 and summ["checkpoint_step"] == 300  # not the row logged last
    assert summ["eval/HR@10"] == metrics_for(300)["HR@10"]


def test_restarts_write_segments_whose_union_holds_every_row_once(ws, isolated_env):
    for round_steps in ((100,), (200, 300), (400,)):
        backfilled(ws, *round_steps)
        result = run_offline(ws, "--once")
        assert result.returncode == 0, result.stderr
        time.sleep(1.1)  # offline folders are named by the second they start
    segs = segments(isolated_env / "wandb_dir")
    assert len(segs) == 3
    union = [r["checkpoint_step"] for s in segs for r in eval_rows(s)]
    assert sorted(union) == [100, 200, 300, 400]
    [table] = tables(segs[-1])
    assert [r[0] for r in table["data"]] == [100, 200, 300, 400]
    assert summary(segs[-1])["summary"]["last_step"] == 400
    assert assert_no_unreported(ws)
    args = [a for a in ws.args() if a != "--disable-wandb"]
    dry = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "eval_wandb_sidecar.py"), "sync",
                          *args, "--wandb-mode", "offline", "--dry-run"], env=ws.env(), capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.strip().splitlines()
    assert lines[:-1] == [f"wandb sync -p MIMIGenRec-Eval {s}" for s in segs]  # one folder at a time, in order
    assert lines[-1] == "then write the table and summary of all 4 row(s) online"


def assert_no_unreported(ws) -> bool:
    return ws.state()["unreported_steps"] == []


def test_a_pass_with_nothing_new_writes_no_segment(ws, isolated_env):
    backfilled(ws, 100)
    assert run_offline(ws, "--once").returncode == 0
    assert run_offline(ws, "--once").returncode == 0
    assert len(segments(isolated_env / "wandb_dir")) == 1


@pytest.mark.parametrize("when", ["before it was reported", "right after it was reported"])
def test_kill_9_after_an_evaluation_loses_no_row(ws, isolated_env, when):
    ws.checkpoint(100)
    proc = start_offline(ws, "--poll-interval-seconds", "0.2")

    def recorded():
        try:
            state = ws.state()
        except (AssertionError, ValueError):
            return False
        if 100 not in state["processed_steps"]:
            return False
        if when == "before it was reported":
            return 100 in state["unreported_steps"]
        return any(100 in s["steps"] for s in state["wandb_segments"])

    wait_for(recorded, timeout=60, interval=0.005)
    proc.kill()
    proc.wait()
    time.sleep(1.1)
    ws.checkpoint(200)
    result = run_offline(ws, "--once")
    assert result.returncode == 0, result.stderr
    union = [r["checkpoint_step"] for s in segments(isolated_env / "wandb_dir") for r in eval_rows(s)]
    assert union.count(100) in (1, 2) and union.count(200) == 1
    assert ws.state()["unreported_steps"] == []
    assert ws.calls() == ["checkpoint-100", "checkpoint-200"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def online_env(ws, **extra):
    env = ws.env(WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}",
                 WANDB_API_KEY="local0dummy0key0that0must0never0be0printed0", **extra)
    env.pop("WANDB_MODE", None)
    return env


def test_online_outage_keeps_rows_unreported_with_one_warning(ws, isolated_env):
    backfilled(ws, 100, 200)
    ws.checkpoint(300)
    env = online_env(ws)
    result = run_offline(ws, "--once", "--wandb-mode", "online", "--wandb-init-timeout", "5", env=env)
    assert result.returncode == 0, result.stderr
    assert ws.state()["processed_steps"] == [100, 200, 300]
    assert ws.state()["unreported_steps"] == [100, 200, 300]
    warnings = [line for line in result.stderr.splitlines() if "[WARNING]" in line
                and "reusing metrics.json files" not in line]  # the backfill's own, once (README)
    assert len(warnings) == 1 and "could not be written" in warnings[0] and "cannot connect" in warnings[0]
    assert "Traceback" not in result.stderr
    status = ws.status("--wandb-mode", "online")
    assert "unreported 3" in status.stdout


def test_online_outage_with_offline_fallback_writes_an_offline_segment(ws, isolated_env):
    backfilled(ws, 100, 200)
    result = run_offline(ws, "--once", "--wandb-mode", "online", "--wandb-fallback", "offline",
                         "--wandb-init-timeout", "5", env=online_env(ws))
    assert result.returncode == 0, result.stderr
    [seg] = segments(isolated_env / "wandb_dir")
    assert [r["checkpoint_step"] for r in eval_rows(seg)] == [100, 200]
    assert ws.state()["unreported_steps"] == []
    assert "--wandb-fallback offline" in result.stderr


def test_missing_api_key_without_a_terminal_is_reported_once_clearly(ws, isolated_env):
    backfilled(ws, 100)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        env = ws.env(WANDB_BASE_URL=f"http://127.0.0.1:{listener.getsockname()[1]}")
        env.pop("WANDB_MODE", None)
        env.pop("WANDB_API_KEY", None)
        result = run_offline(ws, "--once", "--wandb-mode", "online", "--wandb-init-timeout", "5", env=env)
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "[WARNING]" in line
                and "reusing metrics.json files" not in line]  # the backfill's own, once (README)
    assert len(warnings) == 1 and "no W&B API key" in warnings[0]
    assert ws.state()["unreported_steps"] == [100]


def test_api_key_never_appears_in_logs_state_or_output(ws, isolated_env):
    backfilled(ws, 100)
    listener = socket.socket()  # accepts connections and never answers: wandb.init really runs
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        env = online_env(ws)
        env["WANDB_BASE_URL"] = f"http://127.0.0.1:{listener.getsockname()[1]}"
        key = env["WANDB_API_KEY"]
        result = run_offline(ws, "--once", "--wandb-mode", "online", "--wandb-init-timeout", "3", env=env)
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    assert "could not be written" in result.stderr  # the attempt reached wandb and failed
    status = ws.status("--json")
    assert key not in result.stdout + result.stderr + status.stdout + status.stderr
    for folder in (ws.repo, isolated_env):
        for path in folder.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path


def test_a_backfill_of_1000_logs_one_table(ws, isolated_env):
    old = time.time() - 3600
    for step in range(1, 1001):
        folder = ws.sft / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "w").write_bytes(b"x")
        os.utime(folder / "w", (old, old))
        res = ws.results(step)
        res.parent.mkdir(parents=True)
        res.write_text(json.dumps({"HR@10": step / 1000, "NDCG@10": step / 2000}))
    result = run_offline(ws, "--once")
    assert result.returncode == 0, result.stderr
    [seg] = segments(isolated_env / "wandb_dir")
    assert len(eval_rows(seg)) == 1000
    logged_tables = tables(seg)
    assert len(logged_tables) == 1 and len(logged_tables[0]["data"]) == 1000
    assert len(list((seg / "files" / "media" / "table").rglob("*.table.json"))) == 1


def test_disabled_never_imports_wandb(ws, tmp_path):
    fake = tmp_path / "no-wandb"
    (fake / "wandb").mkdir(parents=True)
    (fake / "wandb" / "__init__.py").write_text("raise ImportError('wandb must not be imported')\n")
    ws.checkpoint(100)
    env = ws.env(PYTHONPATH=str(fake))
    for flags in (["--disable-wandb"], ["--wandb-mode", "disabled"]):
        args = [a for a in ws.args("--once", *flags) if a != "--disable-wandb" or flags == ["--disable-wandb"]]
        result = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "eval_wandb_sidecar.py"), *args],
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    assert ws.calls() == ["checkpoint-100"]
