#!/usr/bin/env python3
"""W&B cost figures (issue 3). Not run by the test suite.

1. Backfill of N checkpoints with existing metrics.json, W&B offline: this sidecar (`--once`)
   against the original tool's approach (log the row, then re-log the whole table, per row):
   wall time and bytes written (run folder + wandb's staging folder).
2. Per-checkpoint sidecar overhead with W&B offline: a pass over M checkpoints whose eval script
   only writes metrics.json, minus the time that script takes on its own.

    .venv/bin/python benchmarks/wandb_backfill.py [--n 400] [--m 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import flags, make_tree  # noqa: E402

ORIGINAL = r'''
import json, sys, time, wandb
n = int(sys.argv[1])
run = wandb.init(project="bench", id="eval-original", mode="offline",
                 settings=wandb.Settings(console="off", x_disable_stats=True))
run.define_metric("checkpoint_step")
run.define_metric("eval/*", step_metric="checkpoint_step")
cols = ["checkpoint_step", "checkpoint_name", "HR@1", "HR@10", "NDCG@10", "metrics_path"]
rows = []
for step in range(1, n + 1):
    m = {"HR@1": 0.01, "HR@10": step / n, "NDCG@10": step / n / 2}
    run.log({"checkpoint_step": step, "eval/checkpoint_name": f"checkpoint-{step}", "eval/metrics_path": "x",
             **{f"eval/{k}": v for k, v in m.items()}})
    rows.append([step, f"checkpoint-{step}", m["HR@1"], m["HR@10"], m["NDCG@10"], "x"])
    run.log({"eval/checkpoint_table": wandb.Table(columns=cols, data=list(rows))})
    run.summary["best_hr@10"] = step / n
run.finish()
'''


def wandb_env(base: Path) -> dict:
    env = dict(os.environ)
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (base / var.lower()).mkdir(parents=True, exist_ok=True)
        env[var] = str(base / var.lower())
    env["WANDB_MODE"] = "offline"
    env["HOME"] = str(base / "home")
    return env


def du(*folders: Path) -> int:
    return sum(p.stat().st_size for f in folders for p in f.rglob("*") if p.is_file())


def ours(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        paths = make_tree(base, n)
        env = wandb_env(base)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "eval_wandb_sidecar.py"), *flags(paths), "--once",
                        "--wandb-mode", "offline", "--log-level", "WARNING"], env=env, check=True,
                       stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        return {"wall_s": round(wall, 2), "bytes": du(base / "wandb_dir", base / "wandb_data_dir")}


def original(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = wandb_env(base)
        script = base / "original.py"
        script.write_text(ORIGINAL)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(script), str(n)], env=env, check=True, stderr=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        return {"wall_s": round(wall, 2), "bytes": du(base / "wandb_dir", base / "wandb_data_dir")}


def overhead(m: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        paths = make_tree(base, m)
        repo = Path(paths["--repo-root"])
        for res in (repo / "results").rglob("metrics.json"):
            res.unlink()
        script = repo / "eval.sh"
        script.write_text('mkdir -p "results/$(basename "$(dirname "$CKPT_LIST")")/$(basename "$CKPT_LIST")"\n'
                          'printf \'{"HR@10": 0.1, "NDCG@10": 0.05}\' > '
                          '"results/$(basename "$(dirname "$CKPT_LIST")")/$(basename "$CKPT_LIST")/metrics.json"\n')
        env = wandb_env(base)
        t0 = time.perf_counter()
        for step in range(1, m + 1):
            subprocess.run(["bash", str(script), "x"], cwd=repo, check=True,
                           env={**env, "CKPT_LIST": f"{paths['--sft-root']}/checkpoint-{step}"})
        script_alone = time.perf_counter() - t0
        for res in (repo / "results").rglob("metrics.json"):
            res.unlink()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "eval_wandb_sidecar.py"), *flags(paths), "--once",
                        "--wandb-mode", "offline", "--log-level", "WARNING"], env=env, check=True,
                       stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        state = json.loads(next((repo / "state" / "wandb_eval_sidecar").glob("*.json")).read_text())
        assert len(state["processed_steps"]) == m and not state["unreported_steps"]
        return {"m": m, "wall_s": round(wall, 2), "script_alone_s": round(script_alone, 2),
                "overhead_per_checkpoint_s": round((wall - script_alone) / m, 3)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--m", type=int, default=40)
    args = parser.parse_args()
    print(json.dumps({"backfill_n": args.n, "sidecar": ours(args.n), "original_approach": original(args.n)}),
          flush=True)
    print(json.dumps({"per_checkpoint_overhead_offline": overhead(args.m)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
