#!/usr/bin/env python3
"""Align figure (issue 5): S sources x N steps x M metrics from CSV into an offline SwanLab run.
Reports wall time of the alignment (pandas) and of the upload (SwanLab SDK), and peak RSS.

    .venv/bin/python benchmarks/align_bench.py [--sources 3] [--steps 100000] [--metrics 30]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sources", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=30)
    args = parser.parse_args()
    from sidecar import align
    from sidecar.align_config import parse_align_config
    from sidecar.swanlab_io import upload

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        aligned = [f"aligned/m{i}" for i in range(args.metrics)]
        frameworks = {}
        rng = np.random.default_rng(0)
        for s in range(args.sources):
            cols = {f"src{s}/m{i}": rng.random(args.steps) for i in range(args.metrics)}
            pd.DataFrame({"step": np.arange(args.steps), **cols}).to_csv(base / f"s{s}.csv", index=False)
            frameworks[f"fw{s}"] = {"platform": "csv", "path": str(base / f"s{s}.csv"),
                                    "output_file": str(base / f"cache{s}.csv"),
                                    "mapping": {f"src{s}/m{i}": f"aligned/m{i}" for i in range(args.metrics)}}
        cfg = parse_align_config({"aligned_metrics": aligned, "frameworks": frameworks,
                                  "target": {"project": "bench", "mode": "offline", "logdir": str(base / "swanlog")}},
                                 base, {})
        timing = {"align_s": 0.0, "upload_s": 0.0}

        def timed_upload(fw, cfg, frame, mode):
            t = time.perf_counter()
            upload(fw, cfg, frame, mode)
            timing["upload_s"] += time.perf_counter() - t

        t0 = time.perf_counter()
        align.run_align(cfg, {}, timed_upload, out=lambda _: None)
        total = time.perf_counter() - t0
        timing["align_s"] = total - timing["upload_s"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"sources": args.sources, "steps": args.steps, "metrics": args.metrics,
                      "total_s": round(total, 1), "align_s": round(timing["align_s"], 1),
                      "upload_s": round(timing["upload_s"], 1), "peak_rss_mb": round(peak, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
