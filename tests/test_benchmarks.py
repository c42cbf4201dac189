"""The benchmark suite still runs: `benchmarks/run.py --quick` completes and writes well-formed
results. Only the shape is checked, never a time (machines are noisy; figures go in the README)."""

import json
import math
import subprocess
import sys

from conftest import ROOT

SCENARIOS = ("idle tick", "backfill, W&B disabled", "backfill, W&B offline", "backfill with W&B offline vs the original",
             "ready → eval start, marker",
             "ready → eval start, 1 s quiet period", "backlog of", "idle watching", "align", "pin a checkpoint",
             "row recorded in state → on the W&B server", "kill -9 loop", "20 checkpoints arriving one at a time",
             "fleet idle tick", "memory: one single-model sidecar", "fleet memory", "fleet: new model folder",
             "fleet parallel")


def test_quick_benchmark_run_completes_and_writes_well_formed_results(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["machine"]["cpus"] >= 1
    figures = result["figures"]
    for prefix in SCENARIOS:
        assert any(f["scenario"].startswith(prefix) for f in figures), prefix
    for f in figures:
        assert set(f) >= {"scenario", "n", "figure", "value", "unit", "growth"}, f
        assert isinstance(f["n"], int) and f["n"] >= 1
        assert isinstance(f["value"], (int, float)) and math.isfinite(f["value"]) and f["value"] >= 0, f
        assert f["growth"] is None or (math.isfinite(f["growth"]) and f["growth"] >= 0)
    grown = [f for f in figures if f["scenario"] == "idle tick" and f["growth"] is not None]
    assert grown and all(f["growth_of_n"] == 10 for f in grown)  # 100 -> 1,000 checkpoints
    grown = [f for f in figures if f["scenario"].startswith("fleet idle tick") and f["growth"] is not None]
    assert grown and all(f["growth_of_n"] == 2 for f in grown)  # 2 -> 4 models
    assert "| idle tick | 1,000 | median |" in done.stdout  # the table a user reads


def test_unknown_scenario_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "nope",
                           "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("run.py: --only: unknown scenario 'nope' (choose from idle tick, backfill, "
                                   "latency, parallel, idle watching, align, pinning, delivery, one at a time, "
                                   "fleet idle tick, fleet memory, fleet new model latency, fleet parallel)")
    assert not (tmp_path / "r.json").exists()
