"""--training-context: each row carries what the checkpoint's trainer_state.json says of the
training at that step, in the state, in W&B (read back with wandb's own reader from the offline
run) and in `status --rows`; the align `sidecar` source has it too. Real sidecar processes, the
stand-in eval, a real wandb offline run."""

import json
import os
import subprocess
import sys
from pathlib import Path

from test_wandb import backfilled, run_offline
from wandb_reader import eval_rows, records, segments, tables

TRAIN = ("train/epoch", "train/global_step", "train/loss", "train/learning_rate")


def trainer_state(folder: Path, step: int, epoch: float) -> None:
    """A Hugging Face trainer_state.json: training logs every 50 steps, an eval entry between."""
    history = []
    for s in range(50, step + 101, 50):  # entries after the checkpoint's step too (a later file)
        history.append({"step": s, "epoch": s / 200, "loss": round(2.0 - s / 1000, 4),
                        "learning_rate": 1e-4 * (1 - s / 1000)})
        history.append({"step": s, "eval_loss": 9.0})  # no "loss" here: the training loss stays
    write_old(folder / "trainer_state.json", json.dumps({"epoch": epoch, "global_step": step, "log_history": history}))


def write_old(path: Path, text: str) -> None:
    """Written an hour ago (the checkpoint is past its quiet period)."""
    path.write_text(text)
    os.utime(path, (path.stat().st_mtime - 3600,) * 2)


def test_rows_carry_the_training_context_in_state_wandb_and_status(ws, isolated_env, caplog):
    backfilled(ws, 100, 200, 300)
    trainer_state(ws.sft / "checkpoint-100", 100, 0.5)
    trainer_state(ws.sft / "checkpoint-200", 200, 1.0)
    write_old(ws.sft / "checkpoint-300" / "trainer_state.json", "{not json")  # a file cut short

    result = run_offline(ws, "--once", "--training-context")

    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "training context" in line]
    assert len(warnings) == 1 and "checkpoint-300/trainer_state.json" in warnings[0], result.stderr
    rows = {str(r["checkpoint_step"]): r for r in ws.state()["table_rows"]}
    assert {k: rows["100"][k] for k in TRAIN} == {"train/epoch": 0.5, "train/global_step": 100,
                                                  "train/loss": 1.9, "train/learning_rate": 1e-4 * 0.9}
    assert rows["200"]["train/loss"] == 1.8 and rows["200"]["train/epoch"] == 1.0
    assert not any(k in rows["300"] for k in TRAIN)  # absent, not zero
    assert rows["300"]["HR@10"] > 0  # the row itself is there

    [seg] = segments(isolated_env / "wandb_dir")
    history = {r["checkpoint_step"]: r for r in eval_rows(seg)}
    assert history[100]["train/epoch"] == 0.5 and history[100]["train/loss"] == 1.9
    assert "eval/train/epoch" not in history[100]  # not a metric of the eval
    assert "train/epoch" not in history[300]
    [table] = tables(seg)
    columns = table["columns"]
    assert columns[:6] == ["checkpoint_step", "checkpoint_name", *TRAIN]
    data = {r[0]: dict(zip(columns, r)) for r in table["data"]}
    assert data[200]["train/epoch"] == 1.0 and data[300]["train/epoch"] is None
    defined = {m["metric"].get("glob_name"): m["metric"].get("step_metric") for m in records(seg)
               if m["type"] == "metric"}
    assert defined.get("train/*") == "checkpoint_step" and defined.get("eval/*") == "checkpoint_step"

    shown = ws.status("--rows").stdout
    header = next(line for line in shown.splitlines() if line.strip().startswith("step"))
    assert "epoch" in header and "loss" in header, shown
    line_100 = next(line for line in shown.splitlines() if line.split()[:1] == ["100"])
    assert "0.5" in line_100 and "1.9" in line_100, shown


def test_without_the_flag_rows_are_the_original_tools(ws):
    backfilled(ws, 100)
    trainer_state(ws.sft / "checkpoint-100", 100, 0.5)
    assert ws.run("--once").returncode == 0
    [row] = ws.state()["table_rows"]
    assert not any(k in row for k in TRAIN)


def test_align_reads_the_training_context_from_a_state_file(ws):
    backfilled(ws, 100)
    trainer_state(ws.sft / "checkpoint-100", 100, 0.5)
    assert ws.run("--once", "--training-context").returncode == 0
    code = ("import sys; from types import SimpleNamespace; from sidecar.align.run import fetch_sidecar; "
            "f = fetch_sidecar(SimpleNamespace(name='sft', source=sys.argv[1])); "
            "print(f.loc[0, 'step'], f.loc[0, 'train/epoch'], f.loc[0, 'HR@10'] > 0)")
    out = subprocess.run([sys.executable, "-c", code, str(ws.state_files()[0])], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent, timeout=60)
    assert out.stdout.split() == ["100", "0.5", "True"], out.stderr
