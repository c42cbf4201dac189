#!/usr/bin/env python3
"""Core pipeline figures (issue 2): backfill of N checkpoints with existing metrics.json, and the
cost of an idle tick over N processed checkpoints. Not run by the test suite.

    .venv/bin/python benchmarks/core.py [--sizes 1000,10000] [--ticks 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_tree(base: Path, n: int) -> dict:
    repo = base / "repo"
    sft = repo / "saves" / "bench-cb64"
    (repo / "data" / "B" / "sft").mkdir(parents=True)
    (repo / "data" / "B" / "sft" / "test.json").write_text("[]")
    (repo / "data" / "B" / "id2sid.json").write_text("{}")
    (repo / "eval.sh").write_text("exit 1\n")
    old = time.time() - 3600
    for step in range(1, n + 1):
        ckpt = sft / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"x")
        os.utime(ckpt / "model.safetensors", (old, old))
        res = repo / "results" / sft.name / f"checkpoint-{step}"
        res.mkdir(parents=True)
        (res / "metrics.json").write_text(json.dumps({"HR@1": 0.01, "HR@10": step / n, "NDCG@10": step / n / 2}))
    return {"--repo-root": str(repo), "--sft-root": str(sft), "--eval-script": "eval.sh",
            "--test-data-path": "data/B/sft/test.json", "--index-path": "data/B/id2sid.json"}


def flags(d: dict) -> list[str]:
    return [x for kv in d.items() for x in kv]


def backfill(base: Path, n: int) -> dict:
    paths = make_tree(base, n)
    cmd = [sys.executable, str(ROOT / "eval_wandb_sidecar.py"), *flags(paths), "--once", "--disable-wandb",
           "--log-level", "WARNING"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - started
    state = next((Path(paths["--repo-root"]) / "state" / "wandb_eval_sidecar").glob("*.json"))
    assert len(json.loads(state.read_text())["processed_steps"]) == n
    return {"n": n, "wall_s": round(wall, 2), "per_checkpoint_ms": round(wall / n * 1000, 3),
            "state_bytes": state.stat().st_size, "paths": paths}


def idle_tick(paths: dict, ticks: int) -> dict:
    from sidecar.clock import SystemClock
    from sidecar.config import build_config
    from sidecar.service import Sidecar

    args = {k[2:].replace("-", "_"): v for k, v in paths.items()}
    args["disable_wandb"] = True
    config = build_config(args, {}, Path.cwd())
    sidecar = Sidecar(config, SystemClock(), {})
    sidecar.start()
    try:
        times = []
        for _ in range(ticks):
            t0 = time.perf_counter()
            assert sidecar.tick() == 0
            times.append(time.perf_counter() - t0)
    finally:
        sidecar.close()
    return {"median_ms": round(statistics.median(times) * 1000, 2), "max_ms": round(max(times) * 1000, 2)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--ticks", type=int, default=30)
    args = parser.parse_args()
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            b = backfill(Path(tmp), n)
            t = idle_tick(b.pop("paths"), args.ticks)
            results.append({**b, "idle_tick_median_ms": t["median_ms"], "idle_tick_max_ms": t["max_ms"]})
            print(json.dumps(results[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
