"""W&B reporting stays bounded: a row is never copied again because W&B stores a number in
another form, a huge metrics.json cannot block reporting, and the table is not re-logged on every
pass. Read back from what wandb wrote offline (`wandb leet inspect`), never by intercepting calls."""

import json
import signal
from pathlib import Path

from conftest import wait_for
from test_wandb import backfilled, metrics_for, run_offline, start_offline
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
    warnings = [line for line in result.stderr.splitlines() if "left out of W&B" in line or "W&B table" in line]
    assert len(warnings) == 1 and "[WARNING]" in warnings[0], result.stderr[-2000:]  # one, for row and table
    assert "checkpoint-100" in warnings[0] and "99,002 metric(s)" in warnings[0] and "state file" in warnings[0]
    state = ws.state()
    assert len([k for k in state["table_rows"][0] if k.startswith("probe/")]) == 100_000  # the state keeps all
    [seg] = segments(isolated_env / "wandb_dir")
    rows = {r["checkpoint_step"]: r for r in eval_rows(seg)}
    assert sorted(rows) == [100, 200]
    logged = [k for k in rows[100] if k.startswith("eval/") and k not in ("eval/checkpoint_name", "eval/metrics_path")]
    assert len(logged) == 1000 and rows[100]["eval/HR@10"] == 0.2 and rows[100]["eval/NDCG@10"] == 0.1
    assert "eval/probe/head000000" in rows[100] and "eval/probe/head099999" not in rows[100]
    assert {k[5:]: v for k, v in rows[200].items() if k[5:] in metrics_for(200)} == metrics_for(200)
    [table] = tables(seg)
    assert [r[0] for r in table["data"]] == [100, 200] and len(table["columns"]) == 1000 + 3
    assert table["data"][0][table["columns"].index("HR@10")] == 0.2
    assert state["unreported_steps"] == []


def _watch_rows_one_at_a_time(ws, proc, steps):
    for step in steps:
        backfilled(ws, step)
        wait_for(lambda: any(step in s["steps"] for s in ws.state()["wandb_segments"]), timeout=60)


def test_watching_logs_the_table_at_most_once_per_interval_and_at_exit_with_every_row(ws, isolated_env):
    proc = start_offline(ws, "--poll-interval-seconds", "0.3", "--ready-marker", "trainer_state.json")
    try:
        _watch_rows_one_at_a_time(ws, proc, (100, 200, 300, 400))  # four passes, each adding a row
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    [seg] = segments(isolated_env / "wandb_dir")
    assert [r["checkpoint_step"] for r in eval_rows(seg)] == [100, 200, 300, 400]
    logged = tables(seg)
    # the first pass's table, then (default --wandb-table-minutes 5) none until the one at exit
    assert len(logged) == 2, [[r[0] for r in t["data"]] for t in logged]
    assert len(list((seg / "files" / "media" / "table").rglob("*.table.json"))) == 2
    assert [r[0] for r in logged[-1]["data"]] == [100, 200, 300, 400]


def test_a_due_table_is_logged_when_its_interval_ends_without_waiting_for_exit(ws, isolated_env, tmp_path):
    config = tmp_path / "sidecar.yaml"
    config.write_text("wandb-table-minutes: 0.02\n")  # 1.2 s, from the config file
    proc = start_offline(ws, "--poll-interval-seconds", "0.3", "--config", str(config))
    try:
        _watch_rows_one_at_a_time(ws, proc, (100,))
        [seg] = wait_for(lambda: segments(isolated_env / "wandb_dir"))
        wait_for(lambda: len(tables(seg)) == 1, timeout=60, interval=0.3)
        _watch_rows_one_at_a_time(ws, proc, (200,))
        wait_for(lambda: [[r[0] for r in t["data"]] for t in tables(seg)] == [[100], [100, 200]], timeout=60,
                 interval=0.3)
        assert proc.poll() is None  # logged while watching, not at exit
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert len(tables(seg)) == 2  # nothing new since: no table at exit


def test_a_bad_table_interval_is_one_line_and_exit_2(ws):
    for value, message in (("-1", "--wandb-table-minutes: must be at least 0, got '-1'"),
                           ("soon", "--wandb-table-minutes: expected a finite number, got 'soon'")):
        result = ws.run("--once", "--wandb-table-minutes", value)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [f"eval_wandb_sidecar.py: error: {message}"], result.stderr
        assert not ws.state_dir.exists()


def test_values_read_back_compare_as_wandb_stores_them():
    from sidecar.reporters.wandb import same_value

    assert same_value(28305167402459750000, 2.830516740245975e19)  # what `wandb leet inspect` gives back
    assert same_value(1, 1.0) and same_value(0, -0.0) and same_value(0.1 + 0.2, 0.30000000000000004)
    assert same_value(12345678901234568, 1.2345678901234568e16) and same_value(5e-324, 5e-324)
    assert same_value("checkpoint-100 ü", "checkpoint-100 ü") and same_value(float("nan"), float("nan"))
    assert not same_value(0.1, 0.1001) and not same_value(1, True) and not same_value("1", 1)
    assert not same_value(None, 0.0) and not same_value(10**400, 1e308)


def test_the_metrics_w_and_b_gets_of_a_huge_row_keep_hr_ndcg_and_summary_metrics_first():
    from sidecar.reporters.rows import wandb_metrics

    row = {"checkpoint_step": 1, "checkpoint_name": "checkpoint-1", "metrics_path": "m", "eval_params": {},
           **{f"a{i:04d}": 0.5 for i in range(2000)}, "zz/HR@10": 0.3, "HR@10": 0.2, "NDCG@1": 0.1}
    names, left = wandb_metrics(row, first=("zz/HR@10",), limit=1000)
    assert names[:3] == ["HR@10", "NDCG@1", "zz/HR@10"] and names[3:] == [f"a{i:04d}" for i in range(997)]
    assert left == 2003 - 1000
    small = {"checkpoint_step": 1, "B": 1.0, "A": 2.0, "flag": True}
    assert wandb_metrics(small) == (["B", "A"], 0)  # order as in metrics.json, numbers only


def test_with_an_interval_tables_are_spaced_by_a_tenth_of_their_rows_so_bytes_stay_linear():
    """However slowly checkpoints come (every one after the interval), a table is logged again only
    once the rows grew by a tenth: for 2,000 rows one at a time, the tables logged hold about 11
    times the rows of the last one, not the ~2,000,000 of a table per row."""
    from sidecar.reporters.base import ReportBatch
    from sidecar.reporters.wandb import _Worker

    worker, logged = _Worker(), []
    for n in range(1, 2001):
        rows = {s: {"checkpoint_step": s} for s in range(1, n + 1)}
        worker.take(ReportBatch({n: rows[n]}, rows))
        if worker.table_grown(300.0):
            logged.append(n)
            worker.table_rows = n
    assert logged[:10] == list(range(1, 11))  # small tables: every row
    assert sum(logged) < 12 * 2000 and len(logged) < 90
    assert 2000 - logged[-1] <= 200  # the table lags by at most a tenth of its rows (exit logs the rest)
    assert _Worker().table_grown(0.0)  # --wandb-table-minutes 0: every pass, as before
