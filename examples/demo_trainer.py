#!/usr/bin/env python3
"""A stand-in trainer that writes checkpoints the way the HF Trainer does.

Each save writes `checkpoint-<step>/`: the weight shards and their index first, then the
optimizer state (slowly, in chunks), then `trainer_state.json`, then (with `--ready-marker .sidecar_ready`) the marker the HF
callback writes. With
`--save-total-limit N` the oldest checkpoints are deleted, like `save_total_limit`.

    python examples/demo_trainer.py --data data/Toy_grec --output-dir saves/toy-cb16 \
        --max-steps 500 --save-steps 100 [--seconds-per-step 0.02] [--save-total-limit 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import toy  # noqa: E402
from sidecar.hf_callback import write_ready_marker  # noqa: E402  (what SidecarReadyCallback does)

BATCH = 1  # training pairs per step: few, so later checkpoints are visibly better


def save_checkpoint(out: Path, step: int, pairs_seen: list[dict], shards: int, optimizer_kib: int,
                    chunk_pause: float) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    counts = toy.train_counts(pairs_seen)
    keys = sorted(counts)
    weight_map = {}
    # The toy weights are JSON, stored under HF's shard names so the readiness checks see the real layout.
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: counts[k] for k in keys[i::shards]}
        (folder / name).write_text(json.dumps(part))
        weight_map.update({f"transitions.{k}": name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with open(folder / "optimizer.pt", "wb") as fh:
        for _ in range(optimizer_kib // 16):
            fh.write(os.urandom(16 * 1024))
            fh.flush()
            if chunk_pause:
                time.sleep(chunk_pause)
    state = {"global_step": step, "log_history": [{"step": step, "loss": round(1.0 / (1 + step / 100), 4)}]}
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2))
    return folder


def rotate(out: Path, limit: int) -> None:
    ckpts = sorted((p for p in out.iterdir() if p.name.startswith("checkpoint-") and p.name[11:].isdigit()),
                   key=lambda p: int(p.name[11:]))
    for old in ckpts[:-limit] if limit > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
        print(f"[trainer] rotated away {old.name}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder holding sft/train.json")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--save-steps", type=int, default=100)
    parser.add_argument("--seconds-per-step", type=float, default=0.0)
    parser.add_argument("--save-total-limit", type=int, default=0)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--optimizer-kib", type=int, default=64)
    parser.add_argument("--chunk-pause", type=float, default=0.0, help="pause between optimizer chunks")
    parser.add_argument("--ready-marker", default="", help="write this marker last, as SidecarReadyCallback does")
    args = parser.parse_args()
    pairs = json.loads((Path(args.data) / "sft" / "train.json").read_text())
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for step in range(1, args.max_steps + 1):
        if args.seconds_per_step:
            time.sleep(args.seconds_per_step)
        if step % args.save_steps == 0:
            seen = pairs[: min(len(pairs), step * BATCH)]
            folder = save_checkpoint(out, step, seen, args.shards, args.optimizer_kib, args.chunk_pause)
            if args.ready_marker:
                write_ready_marker(folder, step, args.ready_marker)
            print(f"[trainer] saved {folder}", flush=True)
            rotate(out, args.save_total_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
