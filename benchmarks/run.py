#!/usr/bin/env python3
"""The benchmark suite: every figure users compare tools by, with how it grows with N.

    .venv/bin/python benchmarks/run.py            # the full run (about an hour on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # small sizes, under a minute
    .venv/bin/python benchmarks/run.py --only "idle tick,backfill" --out /tmp/results.json

Each scenario sets up its own temp folders and runs the real sidecar against generated checkpoint
trees and a stand-in eval script. Prints one table and writes benchmarks/results.json (the
machine it ran on, and one entry per figure: scenario, N, figure, value, unit, growth from the
previous N). Times are measured, never asserted: the test suite runs `--quick` only to check that
the suite still works.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios  # noqa: E402

FULL = {
    "idle tick": lambda: scenarios.idle_tick([1_000, 10_000, 50_000], ticks=30),
    "backfill": lambda: scenarios.backfill([100, 1_000, 10_000], wandb_sizes=[100, 1_000, 10_000])
    + scenarios.original_approach(400),
    "latency": lambda: scenarios.latency(20),
    "parallel": lambda: scenarios.parallel(8, 2.0, [1, 2, 4]),
    "idle watching": lambda: scenarios.idle_watch(60),
    "align": lambda: scenarios.align(3, 100_000, 30),
    "pinning": lambda: scenarios.pinning(1000),
    "delivery": lambda: scenarios.delivery_latency(25, 2.0) + scenarios.kill_loop(30),
    "one at a time": lambda: scenarios.one_at_a_time([500, 1_000, 2_000]),
    "fleet idle tick": lambda: scenarios.fleet_idle_tick([10, 100], 1_000, ticks=30),
    "fleet memory": lambda: scenarios.fleet_memory([20, 100]),
    "fleet new model latency": lambda: scenarios.fleet_new_model_latency(10, 5),
    "fleet parallel": lambda: scenarios.fleet_parallel(10, 4, 2.0, 4),
}
QUICK = {
    "idle tick": lambda: scenarios.idle_tick([100, 1_000], ticks=5),
    "backfill": lambda: scenarios.backfill([100, 300], wandb_sizes=[100]) + scenarios.original_approach(20),
    "latency": lambda: scenarios.latency(2),
    "parallel": lambda: scenarios.parallel(4, 0.5, [1, 2]),
    "idle watching": lambda: scenarios.idle_watch(2, settle=1.0),
    "align": lambda: scenarios.align(2, 1_000, 5),
    "pinning": lambda: scenarios.pinning(20),
    "delivery": lambda: scenarios.delivery_latency(2, 0.5, baseline=False) + scenarios.kill_loop(1),
    "one at a time": lambda: scenarios.one_at_a_time([10, 20], baseline=False),
    "fleet idle tick": lambda: scenarios.fleet_idle_tick([2, 4], 10, ticks=3),
    "fleet memory": lambda: scenarios.fleet_memory([2], seconds=1.0),
    "fleet new model latency": lambda: scenarios.fleet_new_model_latency(2, 1),
    "fleet parallel": lambda: scenarios.fleet_parallel(2, 1, 0.1, 2),
}


def with_growth(rows: list[dict]) -> list[dict]:
    """Each figure's factor over the same figure at the previous (smaller) N of its scenario."""
    previous: dict[tuple[str, str], dict] = {}
    for entry in rows:
        key = (entry["scenario"], entry["figure"])
        before = previous.get(key)
        entry["growth"] = None
        if before is not None and before["value"] and before["n"] != entry["n"]:
            entry["growth"] = round(entry["value"] / before["value"], 2)
            entry["growth_of_n"] = round(entry["n"] / before["n"], 2)
        previous[key] = entry
    return rows


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu or platform.processor(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


def table(rows: list[dict]) -> str:
    lines = ["| scenario | N | figure | value | growth over previous N |", "|---|---|---|---|---|"]
    for entry in rows:
        value = entry["value"]
        shown = f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        growth = "" if entry["growth"] is None else f"×{entry['growth']:g} (N ×{entry['growth_of_n']:g})"
        lines.append(f"| {entry['scenario']} | {entry['n']:,} | {entry['figure']} | {shown} {entry['unit']} | {growth} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios, from: {', '.join(FULL)}")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results.json"),
                        help="where the results go (default benchmarks/results.json)")
    args = parser.parse_args(argv)
    chosen = QUICK if args.quick else FULL
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(chosen)
    unknown = [n for n in names if n not in chosen]
    if unknown:
        print(f"run.py: --only: unknown scenario {unknown[0]!r} (choose from {', '.join(chosen)})", file=sys.stderr)
        return 2
    rows: list[dict] = []
    seconds: dict[str, float] = {}
    for name in names:
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += chosen[name]()
        seconds[name] = round(time.perf_counter() - started, 1)
    rows = with_growth(rows)
    result = {"quick": args.quick, "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "scenario_seconds": seconds, "figures": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(out)
    print(table(rows))
    print(f"\n{sum(seconds.values()):.0f} s on {result['machine']['cpus']} CPUs ({result['machine']['cpu']}); "
          f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
