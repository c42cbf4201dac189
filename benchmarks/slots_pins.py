#!/usr/bin/env python3
"""Issue 7 figures: throughput with K GPU slots on a backlog of 8 fixed-time evals (ratio of wall
times 1 slot / K slots, target >= 0.9 K), and the cost of pinning a 1 GB checkpoint of 20 files.

    .venv/bin/python benchmarks/slots_pins.py [--eval-seconds 2]
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import flags, make_tree  # noqa: E402


def backlog(slots: int, eval_seconds: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_tree(Path(tmp), 8)
        repo = Path(paths["--repo-root"])
        for res in (repo / "results").rglob("metrics.json"):
            res.unlink()
        (repo / "eval.sh").write_text(
            f'sleep {eval_seconds}\nout="results/$(basename "$(dirname "$CKPT_LIST")")/$(basename "$CKPT_LIST")"\n'
            'mkdir -p "$out" && printf \'{"HR@10": 0.1}\' > "$out/metrics.json"\n')
        spec = ";".join(str(i) for i in range(slots))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "eval_wandb_sidecar.py"), *flags(paths), "--once",
                        "--disable-wandb", "--gpu-slots", spec, "--log-level", "WARNING"], check=True)
        return time.perf_counter() - t0


def pinning() -> dict:
    from sidecar.discover import Checkpoint
    from sidecar.pins import Pins

    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:  # same filesystem as a state dir would be
        base = Path(tmp)
        ckpt = base / "saves" / "m" / "checkpoint-1"
        (ckpt / "global_step1").mkdir(parents=True)
        chunk = os.urandom(1 << 20)
        for i in range(20):
            target = ckpt / ("global_step1" if i >= 15 else ".") / f"part-{i:02d}.bin"
            with open(target, "wb") as fh:
                for _ in range(51):  # ~51 MB each, ~1 GB in all
                    fh.write(chunk)
        pins = Pins(base / "state", "m")
        t0 = time.perf_counter()
        pins.pin(Checkpoint(1, "checkpoint-1", ckpt.parent))
        took = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
        return {"bytes": size, "files": 20, "pin_ms": round(took * 1000, 2)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-seconds", type=float, default=2.0)
    args = parser.parse_args()
    one = backlog(1, args.eval_seconds)
    out = {"eval_seconds": args.eval_seconds, "backlog": 8, "wall_1_slot_s": round(one, 2)}
    for k in (2, 4):
        wall = backlog(k, args.eval_seconds)
        out[f"wall_{k}_slots_s"] = round(wall, 2)
        out[f"speedup_{k}"] = round(one / wall, 2)
    print(json.dumps(out), flush=True)
    print(json.dumps({"pinning": pinning()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
