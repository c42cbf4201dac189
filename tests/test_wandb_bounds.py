"""W&B reporting stays bounded: a row is never copied again because W&B stores a number in
another form, a huge metrics.json cannot block reporting, and the table is not re-logged on every
pass. Read back from what wandb wrote offline (`wandb leet inspect`), never by intercepting calls."""

import json
import signal
from pathlib import Path

from conftest import wait_for
from test_wandb import backfilled, run_offline, start_offline
from wandb_reader import eval_rows, segments, tables

FLOPS = 28305167402459750400  # >= 2**53: wandb's reader gives it back as an int, the state holds a float


def copies(isolated_env, step: int) -> int:
    return sum(1 for seg in segments(isolated_env / "wandb_dir") for r in eval_rows(seg)
               if r["checkpoint_step"] == step)


def test_a_metric_of_2_to_the_53_or_more_is_not_copied_again_by_every_kill_9(ws, isolated_env):
    ws.checkpoint(100)
    ws.results(100).parent.mkdir(parents=True)
    ws.results(100).write_text(json.dumps({"HR@10": 0.1, "NDCG@10": 0.05, "total_flops": FLOPS}))

    def settled(out: Path) -> bool:
        """This process has started (read back what the earlier ones left open), the row is in a
        W&B folder, and every folder still open holds it in its files."""
        if "watching " not in out.read_text():
            return False
        state = ws.state()
        open_ = [Path(s["dir"]) for s in state["wandb_segments"] if not s.get("closed")]
        return 100 in state["processed_steps"] and not state["unreported_steps"] and \
            any(100 in s["steps"] for s in state["wandb_segments"]) and \
            all(any(r["checkpoint_step"] == 100 for r in eval_rows(folder)) for folder in open_)

    for _ in range(3):
        proc = start_offline(ws, "--poll-interval-seconds", "0.3")
        out = max(ws.ctl.glob("sidecar-*.out"), key=lambda p: int(p.stem.split("-")[1]))
        try:
            wait_for(lambda: settled(out), timeout=90, interval=0.3)
        finally:
            proc.kill()
            proc.wait()
    result = run_offline(ws, "--once")
    assert result.returncode == 0, result.stderr
    assert 1 <= copies(isolated_env, 100) <= 2
    [first] = [r for seg in segments(isolated_env / "wandb_dir") for r in eval_rows(seg)][:1]
    assert float(first["eval/total_flops"]) == float(FLOPS)
    assert ws.state()["unreported_steps"] == []


def test_a_100k_key_metrics_json_reaches_wandb_capped_and_the_next_row_follows(ws, isolated_env):
    huge = {"HR@10": 0.2, "NDCG@10": 0.1, "probe": {f"head{i:06d}": i / 7 for i in range(100_000)}}
    ws.checkpoint(100)
    ws.results(100).parent.mkdir(parents=True)
    ws.results(100).write_text(json.dumps(huge))
    backfilled(ws, 200)
    result = run_offline(ws, "--once")  # within run_offline's deadline (180 s)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "left out of W&B" in line]
    assert len(warnings) == 1, result.stderr[-2000:]
    assert "checkpoint-100" in warnings[0] and "99,002 metric(s)" in warnings[0] and "state file" in warnings[0]
    state = ws.state()
    assert len([k for k in state["table_rows"][0] if k.startswith("probe/")]) == 100_000  # the state keeps all
    [seg] = segments(isolated_env / "wandb_dir")
    rows = {r["checkpoint_step"]: r for r in eval_rows(seg)}
    assert sorted(rows) == [100, 200]
    logged = [k for k in rows[100] if k.startswith("eval/") and k not in ("eval/checkpoint_name", "eval/metrics_path")]
    assert len(logged) == 1000 and rows[100]["eval/HR@10"] == 0.2 and rows[100]["eval/NDCG@10"] == 0.1
    assert "eval/probe/head000000" in rows[100] and "eval/probe/head099999" not in rows[100]
    assert rows[200]["eval/HR@10"] == backfilled_hr(200)
    [table] = tables(seg)
    assert [r[0] for r in table["data"]] == [100, 200] and len(table["columns"]) <= 1000 + 3
    assert state["unreported_steps"] == []


def backfilled_hr(step: int) -> float:
    from test_wandb import metrics_for

    return metrics_for(step)["HR@10"]
