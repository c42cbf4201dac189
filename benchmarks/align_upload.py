"""Align's upload: F frameworks x S steps x M metrics into SwanLab offline mode, one framework after
another (`--jobs 1`, in align's own process) against all at once (`--jobs F`, a process each).

    .venv/bin/python benchmarks/align_upload.py                        # 3 x 100,000 x 30, 3 repeats
    .venv/bin/python benchmarks/align_upload.py --steps 5000 --repeat 1

Each run is the real command line (`eval_wandb_sidecar.py align`) over CSV sources (local: no
fetch), in a fresh folder with its own upload records and SWANLAB_LOG_DIR, HOME in a temp folder:
no network. The two kinds of run alternate (their order swaps every repeat, so a machine that
slows down or speeds up meanwhile weighs on both alike). Prints every wall time, the medians and
their ratio; `--json FILE` writes them too. Exits 1 if a run failed or uploaded the wrong points.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "eval_wandb_sidecar.py"


def write_sources(folder: Path, frameworks: int, steps: int, metrics: int) -> list[str]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    names = [f"fw{k}" for k in range(frameworks)]
    for name in names:
        frame = pd.DataFrame({"step": np.arange(steps), **{f"m{i}": rng.random(steps) for i in range(metrics)}})
        frame.to_csv(folder / f"{name}.csv", index=False)
    return names


def write_config(work: Path, sources: Path, names: list[str], metrics: int) -> Path:
    import yaml

    work.mkdir(parents=True)
    doc = {"aligned_metrics": [f"aligned/m{i}" for i in range(metrics)],
           "frameworks": {n: {"platform": "csv", "path": str(sources / f"{n}.csv"), "output_file": f"data/{n}.csv",
                              "mapping": {f"m{i}": f"aligned/m{i}" for i in range(metrics)}} for n in names},
           "target": {"project": "bench", "mode": "offline", "logdir": "swanlog"}}
    path = work / "align.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def one_run(base: Path, sources: Path, names: list[str], metrics: int, steps: int, jobs: int, tag: str) -> dict:
    """One align run; its wall time, the per-framework times it printed, and whether the upload
    records hold every step."""
    work = base / tag
    config = write_config(work, sources, names, metrics)
    env = dict(os.environ, HOME=str(base / "home"), SWANLAB_LOG_DIR=str(work / "swanlog"))
    env.pop("SWANLAB_API_KEY", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ENTRY), "align", "--config", str(config), "--jobs", str(jobs),
                           "--progress-every", "1000000"], cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    ok = done.returncode == 0
    for name in names:
        try:
            record = json.loads((work / "data" / f"{name}.csv.uploaded.json").read_text())
            [target] = record["targets"].values()
            ok = ok and all(runs == [[0, steps - 1]] for runs in target.values()) and len(target) == metrics
        except (OSError, ValueError, KeyError):
            ok = False
    if not ok:
        print(f"  run {tag} failed (exit {done.returncode}):\n{done.stderr[-2000:]}", file=sys.stderr)
    per_framework = dict(re.findall(r"^(\w+): uploaded \d+ step\(s\) with new values to \S+ in (\S+)$", done.stdout,
                                    re.M))
    return {"jobs": jobs, "wall_s": round(wall, 2), "ok": ok, "framework_times": per_framework}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frameworks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=30, help="metrics per step (default 30, as benchmarks/run.py)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--jobs", type=int, default=None, help="the parallel run's --jobs (default: --frameworks)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)
    if min(args.frameworks, args.steps, args.metrics, args.repeat) < 1:
        parser.error("--frameworks, --steps, --metrics and --repeat must be at least 1")
    jobs = args.jobs or args.frameworks
    print(f"align upload: {args.frameworks} frameworks x {args.steps:,} steps x {args.metrics} metrics, SwanLab "
          f"offline; --jobs 1 against --jobs {jobs}, {args.repeat} repeat(s); {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}", flush=True)
    runs = {"sequential": [], "parallel": []}
    with tempfile.TemporaryDirectory(prefix="align-upload-bench-") as tmp:
        base = Path(tmp)
        (base / "home").mkdir()
        sources = base / "sources"
        sources.mkdir()
        names = write_sources(sources, args.frameworks, args.steps, args.metrics)
        for r in range(args.repeat):
            order = [("sequential", 1), ("parallel", jobs)]
            if r % 2:
                order.reverse()
            for kind, n in order:
                result = one_run(base, sources, names, args.metrics, args.steps, n, f"{kind}-{r}")
                runs[kind].append(result)
                times = ", ".join(f"{k} {v}" for k, v in sorted(result["framework_times"].items()))
                print(f"  {kind:<10} (--jobs {n}) repeat {r + 1}: {result['wall_s']:.1f} s"
                      f"{'' if result['ok'] else ' FAILED'} ({times})", flush=True)
    failed = any(not run["ok"] for kind in runs.values() for run in kind)
    seq = statistics.median(run["wall_s"] for run in runs["sequential"])
    par = statistics.median(run["wall_s"] for run in runs["parallel"])
    ratio = seq / par if par else float("nan")
    per_step = seq / (args.frameworks * args.steps) * 1000
    print(f"median wall time: one after another {seq:.1f} s, in parallel {par:.1f} s: x{ratio:.2f} "
          f"(target >= 1.7 at 3 x 100,000 on 2 cores); {per_step:.3f} ms per step one after another")
    if args.json:
        args.json.write_text(json.dumps({
            "frameworks": args.frameworks, "steps": args.steps, "metrics": args.metrics, "jobs": jobs,
            "cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
            "median_sequential_s": seq, "median_parallel_s": par, "ratio": ratio, "runs": runs}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
