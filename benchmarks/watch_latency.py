#!/usr/bin/env python3
"""Watch-service figures (issue 4). Not run by the test suite.

1. Ready -> eval-start latency in events mode, over K checkpoints: (a) marker mode: from the
   moment `.sidecar_ready` is written to the moment the eval script starts; (b) quiet-period
   mode: from the end of the quiet period (last write + quiet seconds) to the eval start.
2. Idle watching for S seconds (events + safety poll, W&B offline and disabled): CPU seconds
   used and peak RSS of the sidecar process (with its children: wandb-core).

    .venv/bin/python benchmarks/watch_latency.py [--k 20] [--idle 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL = ('date +%s.%N > "$STARTS/$(basename "$CKPT_LIST")"\n'
        'out="results/$(basename "$(dirname "$CKPT_LIST")")/$(basename "$CKPT_LIST")"\n'
        'mkdir -p "$out" && printf \'{"HR@10": 0.1, "NDCG@10": 0.05}\' > "$out/metrics.json"\n')


def setup(base: Path) -> tuple[list[str], Path, Path]:
    repo = base / "repo"
    sft = repo / "saves" / "lat-cb8"
    sft.mkdir(parents=True)
    (repo / "d" / "sft").mkdir(parents=True)
    (repo / "d" / "sft" / "test.json").write_text("[]")
    (repo / "d" / "i.json").write_text("{}")
    (repo / "eval.sh").write_text(EVAL)
    starts = base / "starts"
    starts.mkdir()
    args = ["--repo-root", str(repo), "--sft-root", str(sft), "--eval-script", "eval.sh",
            "--test-data-path", "d/sft/test.json", "--index-path", "d/i.json", "--max-attempts", "1",
            "--log-level", "WARNING"]
    return args, sft, starts


def env_for(base: Path, starts: Path) -> dict:
    env = dict(os.environ, STARTS=str(starts), HOME=str(base / "home"), WANDB_MODE="offline")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (base / var.lower()).mkdir(parents=True, exist_ok=True)
        env[var] = str(base / var.lower())
    return env


def wait_file(path: Path, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return float(path.read_text())
        time.sleep(0.005)
    raise RuntimeError(f"{path} never appeared")


def latency(k: int, quiet: float | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        args, sft, starts = setup(base)
        mode = ["--ready-marker", ".sidecar_ready", "--checkpoint-ready-seconds", "120"] if quiet is None \
            else ["--checkpoint-ready-seconds", str(quiet)]
        proc = subprocess.Popen([sys.executable, str(ROOT / "eval_wandb_sidecar.py"), *args, *mode,
                                 "--watch-mode", "events", "--poll-interval-seconds", "3600", "--disable-wandb"],
                                env=env_for(base, starts), stderr=subprocess.DEVNULL)
        time.sleep(2)
        lat = []
        try:
            for step in range(1, k + 1):
                ckpt = sft / f"checkpoint-{step}"
                ckpt.mkdir()
                (ckpt / "model.safetensors").write_bytes(os.urandom(4096))
                if quiet is None:
                    ready = time.time()
                    (ckpt / ".sidecar_ready").write_text("{}")
                else:
                    ready = os.stat(ckpt / "model.safetensors").st_mtime + quiet
                lat.append(wait_file(starts / ckpt.name) - ready)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        return {"k": k, "median_ms": round(statistics.median(lat) * 1000, 1), "max_ms": round(max(lat) * 1000, 1)}


def tree_usage(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS (bytes) of pid and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                procs[int(d.name)] = (int(fields[1]), fields)
            except OSError:
                continue
    family, grew = {pid}, True
    while grew:
        grew = False
        for p, (ppid, _) in procs.items():
            if ppid in family and p not in family:
                family.add(p)
                grew = True
    cpu = sum((int(procs[p][1][11]) + int(procs[p][1][12])) / tick for p in family if p in procs)
    rss = sum(int(procs[p][1][21]) * page for p in family if p in procs)
    return cpu, rss


def idle(seconds: float, wandb: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        args, sft, starts = setup(base)
        ckpt = sft / "checkpoint-1"
        ckpt.mkdir()
        (ckpt / "w").write_bytes(b"x")
        os.utime(ckpt / "w", (time.time() - 999, time.time() - 999))
        extra = ["--wandb-mode", "offline"] if wandb else ["--disable-wandb"]
        proc = subprocess.Popen([sys.executable, str(ROOT / "eval_wandb_sidecar.py"), *args, *extra,
                                 "--watch-mode", "auto"], env=env_for(base, starts), stderr=subprocess.DEVNULL)
        try:
            wait_file(starts / "checkpoint-1")
            time.sleep(5)  # let the first eval and the W&B run settle
            cpu0, _ = tree_usage(proc.pid)
            peak = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                time.sleep(1)
                peak = max(peak, tree_usage(proc.pid)[1])
            cpu1, _ = tree_usage(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        return {"seconds": seconds, "wandb": "offline" if wandb else "disabled",
                "cpu_percent_of_a_core": round((cpu1 - cpu0) / seconds * 100, 2), "peak_rss_mb": round(peak / 2**20, 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60)
    args = parser.parse_args()
    print(json.dumps({"ready_to_start_marker": latency(args.k, None)}), flush=True)
    print(json.dumps({"ready_to_start_quiet_period": latency(args.k, 1.0)}), flush=True)
    for wandb in (False, True):
        print(json.dumps({"idle": idle(args.idle, wandb)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
