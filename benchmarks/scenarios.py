"""The benchmark scenarios (issue 9). Each sets up its own temp folders, runs the real sidecar and
returns rows: {"scenario", "n", "figure", "value", "unit"}. `run.py` adds growth factors and prints.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, FleetTree, Tree, folder_bytes, tree_rss, tree_usage, wait_file

sys.path.insert(0, str(ROOT))


def row(scenario: str, n: int, figure: str, value: float, unit: str) -> dict:
    return {"scenario": scenario, "n": n, "figure": figure, "value": round(float(value), 4), "unit": unit}


# ----- 1. idle tick ---------------------------------------------------------------------------------
def idle_tick(sizes: list[int], ticks: int) -> list[dict]:
    """Median and max of `ticks` ticks with nothing to do, over N processed checkpoints (in process,
    after a real `--once` backfill made them processed), and the first tick after the start."""
    from sidecar.clock import SystemClock
    from sidecar.config import build_config
    from sidecar.watch.service import Sidecar

    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Tree(Path(tmp))
            tree.checkpoints(n, metrics=True)
            tree.run("--once", "--disable-wandb")
            config = build_config({**tree.config_args(), "disable_wandb": True}, {}, Path.cwd())
            sidecar = Sidecar(config, SystemClock(), {})
            sidecar.start()
            try:
                started = time.perf_counter()
                sidecar.tick()  # the first tick after a start lists and parses every folder once
                first = time.perf_counter() - started
                times = []
                for _ in range(ticks):
                    started = time.perf_counter()
                    if sidecar.tick() != 0:
                        raise RuntimeError("an idle tick recorded something")
                    times.append(time.perf_counter() - started)
            finally:
                sidecar.close()
        rows.append(row("idle tick", n, "median", statistics.median(times) * 1000, "ms"))
        rows.append(row("idle tick", n, "max", max(times) * 1000, "ms"))
        rows.append(row("idle tick", n, "first tick after a start", first * 1000, "ms"))
    return rows


# ----- 2. backfill -----------------------------------------------------------------------------------
def backfill(sizes: list[int], wandb_sizes: list[int]) -> list[dict]:
    """A `--once` pass over N checkpoints whose metrics.json exist: W&B disabled, and W&B offline."""
    rows = []
    for wandb in (False, True):
        for n in (wandb_sizes if wandb else sizes):
            with tempfile.TemporaryDirectory() as tmp:
                base = Path(tmp)
                tree = Tree(base)
                tree.checkpoints(n, metrics=True)
                mode = ["--wandb-mode", "offline"] if wandb else ["--disable-wandb"]
                wall = tree.run("--once", *mode)
                state_file, state = tree.state()
                if len(state["processed_steps"]) != n or (wandb and state["unreported_steps"]):
                    raise RuntimeError(f"backfill of {n} did not record and report everything")
                name = "backfill, W&B offline" if wandb else "backfill, W&B disabled"
                rows += [row(name, n, "wall time", wall, "s"),
                         row(name, n, "per checkpoint", wall / n * 1000, "ms"),
                         row(name, n, "state file", state_file.stat().st_size / 2**20, "MB")]
                if wandb:
                    rows += [row(name, n, "W&B run folder", folder_bytes(base / "wandb_dir") / 2**20, "MB"),
                             row(name, n, "W&B staging + cache",
                                 folder_bytes(base / "wandb_data_dir", base / "wandb_cache_dir") / 2**20, "MB")]
    return rows


ORIGINAL_APPROACH = r'''
import sys, wandb
n = int(sys.argv[1])
run = wandb.init(project="bench", id="eval-original", mode="offline",
                 settings=wandb.Settings(console="off", x_disable_stats=True))
run.define_metric("checkpoint_step")
run.define_metric("eval/*", step_metric="checkpoint_step")
cols = ["checkpoint_step", "checkpoint_name", "HR@1", "HR@10", "NDCG@10", "metrics_path"]
rows = []
for step in range(1, n + 1):
    m = {"HR@1": 0.01, "HR@10": step / n, "NDCG@10": step / n / 2}
    run.log({"checkpoint_step": step, **{f"eval/{k}": v for k, v in m.items()}})
    rows.append([step, f"checkpoint-{step}", m["HR@1"], m["HR@10"], m["NDCG@10"], "x"])
    run.log({"eval/checkpoint_table": wandb.Table(columns=cols, data=list(rows))})
    run.summary["best_hr@10"] = step / n
run.finish()
'''


def original_approach(n: int) -> list[dict]:
    """The baseline: a backfill of N with W&B offline, this sidecar against the original tool's W&B
    pattern (log the row, then re-log the whole table, after every checkpoint)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        tree = Tree(base)
        script = base / "original.py"
        script.write_text(ORIGINAL_APPROACH)
        started = time.perf_counter()
        subprocess.run([sys.executable, str(script), str(n)], env=tree.env(), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        theirs = time.perf_counter() - started
        their_bytes = folder_bytes(base / "wandb_dir", base / "wandb_data_dir", base / "wandb_cache_dir")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        tree = Tree(base)
        tree.checkpoints(n, metrics=True)
        ours = tree.run("--once", "--wandb-mode", "offline")
        our_bytes = folder_bytes(base / "wandb_dir", base / "wandb_data_dir", base / "wandb_cache_dir")
    name = "backfill with W&B offline vs the original tool's W&B pattern"
    return [row(name, n, "wall time, original pattern", theirs, "s"), row(name, n, "wall time, this sidecar", ours, "s"),
            row(name, n, "W&B bytes, original pattern", their_bytes / 2**20, "MB"),
            row(name, n, "W&B bytes, this sidecar", our_bytes / 2**20, "MB"),
            row(name, n, "time ratio (original / this)", theirs / ours, "×"),
            row(name, n, "bytes ratio (original / this)", their_bytes / our_bytes, "×")]


# ----- 3. ready -> eval start ------------------------------------------------------------------------
def latency(k: int) -> list[dict]:
    """Events mode: from a checkpoint becoming ready (marker written; end of a 1 s quiet period) to
    its eval script starting."""
    rows = []
    for marker in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            tree = Tree(Path(tmp), "lat-cb8")
            mode = (["--ready-marker", ".sidecar_ready", "--checkpoint-ready-seconds", "120"] if marker
                    else ["--checkpoint-ready-seconds", "1"])
            proc = tree.start(*mode, "--watch-mode", "events", "--poll-interval-seconds", "3600", "--disable-wandb",
                              "--max-attempts", "1")
            lat = []
            try:
                time.sleep(2)  # the watcher is up
                for step in range(1, k + 1):
                    ckpt = tree.sft / f"checkpoint-{step}"
                    ckpt.mkdir()
                    (ckpt / "model.safetensors").write_bytes(os.urandom(4096))
                    if marker:
                        ready = time.time()
                        (ckpt / ".sidecar_ready").write_text("{}")
                    else:
                        ready = os.stat(ckpt / "model.safetensors").st_mtime + 1.0
                    lat.append(wait_file(tree.starts / ckpt.name) - ready)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
        name = "ready → eval start, " + ("marker" if marker else "1 s quiet period")
        rows += [row(name, k, "median", statistics.median(lat) * 1000, "ms"),
                 row(name, k, "max", max(lat) * 1000, "ms")]
    return rows


# ----- 4. parallel throughput -----------------------------------------------------------------------
def parallel(backlog: int, eval_seconds: float, slot_counts: list[int]) -> list[dict]:
    """A backlog of evals of fixed duration with K GPU slots: wall time and speed-up over 1 slot, of
    the whole `--once` process and from the first eval's start to the process's end (leaving out
    the fixed start-up: Python, the state, the readiness confirmation of checkpoints there at
    start-up)."""
    rows, one, one_evals = [], None, None
    for k in slot_counts:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Tree(Path(tmp))
            tree.checkpoints(backlog, metrics=False)
            wall = tree.run("--once", "--disable-wandb", "--gpu-slots", ";".join(str(i) for i in range(k)),
                            env=tree.env(EVAL_SECONDS=str(eval_seconds)))
            ended = time.time()
            first = min(float(f.read_text()) for f in tree.starts.iterdir())
        evals = ended - first
        one, one_evals = one or wall, one_evals or evals
        name = f"backlog of {backlog} × {eval_seconds:g} s evals"
        rows += [row(name, k, "wall time (N = slots)", wall, "s"), row(name, k, "speed-up over 1 slot", one / wall, "×"),
                 row(name, k, "from the first eval's start", evals, "s"),
                 row(name, k, "speed-up from the first eval's start", one_evals / evals, "×")]
    return rows


# ----- 5. idle watching ------------------------------------------------------------------------------
def idle_watch(seconds: float, settle: float = 5.0) -> list[dict]:
    """Watching an idle root (events + safety scan) after one eval: CPU seconds and peak RSS of the
    sidecar with its children (wandb-core)."""
    rows = []
    for wandb in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            tree = Tree(Path(tmp))
            tree.checkpoints(1, metrics=False)
            proc = tree.start("--watch-mode", "auto", *(["--wandb-mode", "offline"] if wandb else ["--disable-wandb"]))
            try:
                wait_file(tree.starts / "checkpoint-1")
                time.sleep(settle)  # the first eval is recorded and the W&B run is open
                cpu0, _ = tree_usage(proc.pid)
                peak, started = 0, time.monotonic()
                while time.monotonic() - started < seconds:
                    time.sleep(min(1.0, seconds / 3))
                    peak = max(peak, tree_usage(proc.pid)[1])
                cpu1, _ = tree_usage(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
        name = f"idle watching {seconds:g} s, W&B {'offline' if wandb else 'disabled'}"
        rows += [row(name, 1, "CPU used", cpu1 - cpu0, "s"), row(name, 1, "peak RSS", peak / 2**20, "MB")]
    return rows


# ----- 6. align ------------------------------------------------------------------------------------------
def align(sources: int, steps: int, metrics: int) -> list[dict]:
    """S sources × N steps × M metrics from CSV into an offline SwanLab run (in a child process, for
    its own peak RSS)."""
    out = subprocess.run([sys.executable, __file__, "align-child", str(sources), str(steps), str(metrics)],
                         capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)))
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    name = f"align {sources} CSV sources × {metrics} metrics → SwanLab offline"
    return [row(name, steps, "total", figures["total_s"], "s"), row(name, steps, "alignment (pandas)", figures["align_s"], "s"),
            row(name, steps, "SwanLab upload", figures["upload_s"], "s"),
            row(name, steps, "peak RSS", figures["peak_rss_mb"], "MB")]


def _align_child(sources: int, steps: int, metrics: int) -> dict:
    import resource

    import numpy as np
    import pandas as pd

    from sidecar.align import run as align_mode
    from sidecar.align.config import parse_align_config
    from sidecar.align.swanlab_io import upload

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.environ.update(HOME=str(base / "home"), SWANLAB_LOG_DIR=str(base / "swanlog"))
        rng = np.random.default_rng(0)
        frameworks = {}
        for s in range(sources):
            cols = {f"src{s}/m{i}": rng.random(steps) for i in range(metrics)}
            pd.DataFrame({"step": np.arange(steps), **cols}).to_csv(base / f"s{s}.csv", index=False)
            frameworks[f"fw{s}"] = {"platform": "csv", "path": str(base / f"s{s}.csv"),
                                    "output_file": str(base / f"cache{s}.csv"),
                                    "mapping": {f"src{s}/m{i}": f"aligned/m{i}" for i in range(metrics)}}
        cfg = parse_align_config({"aligned_metrics": [f"aligned/m{i}" for i in range(metrics)], "frameworks": frameworks,
                                  "target": {"project": "bench", "mode": "offline", "logdir": str(base / "swanlog")}},
                                 base, {})
        spent = {"upload": 0.0}

        def timed_upload(fw, cfg, frame, mode):
            started = time.perf_counter()
            upload(fw, cfg, frame, mode)
            spent["upload"] += time.perf_counter() - started

        started = time.perf_counter()
        align_mode.run_align(cfg, {}, timed_upload, out=lambda _: None)
        total = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"total_s": total, "align_s": total - spent["upload"], "upload_s": spent["upload"], "peak_rss_mb": peak}


# ----- pinning (issue 7's figure) -----------------------------------------------------------------------
def pinning(megabytes: int) -> list[dict]:
    """Hard-linking a checkpoint of 20 files into the pins folder (same filesystem as the repo)."""
    from sidecar.checkpoints import Checkpoint
    from sidecar.watch.pins import Pins

    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        base = Path(tmp)
        ckpt = base / "saves" / "m" / "checkpoint-1"
        (ckpt / "global_step1").mkdir(parents=True)
        chunk = os.urandom(1 << 20)
        per_file = max(1, megabytes // 20)
        for i in range(20):
            with open(ckpt / ("global_step1" if i >= 15 else ".") / f"part-{i:02d}.bin", "wb") as fh:
                for _ in range(per_file):
                    fh.write(chunk)
        started = time.perf_counter()
        Pins(base / "state", "m").pin(Checkpoint(1, "checkpoint-1", ckpt.parent))
        took = time.perf_counter() - started
    return [row(f"pin a checkpoint of 20 files, {per_file * 20} MB", 20, "time", took * 1000, "ms")]


# ----- W&B delivery, judged by the server (issue 13) -------------------------------------------------
BASELINE_REF = "83d56ca"  # the last version before delivery was judged by the server


def _server():
    sys.path.insert(0, str(ROOT / "tests"))
    from wandb_server import WandbServer

    return WandbServer().start()


def _online_env(tree: Tree, server, **extra: str) -> dict[str, str]:
    env = tree.env(WANDB_BASE_URL=server.url, WANDB_API_KEY="bench0dummy0key0" * 3, WANDB_ERROR_REPORTING="false",
                   **extra)
    env.pop("WANDB_MODE")
    return env


def _recorded_at(tree: Tree, step: int, timeout: float = 120.0) -> float:
    """When `step` first shows as processed in the state file (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if step in tree.state()[1]["processed_steps"]:
                return time.time()
        except (OSError, ValueError, StopIteration):
            pass
        time.sleep(0.005)
    raise RuntimeError(f"checkpoint-{step} was never recorded")


def _arrived_at(server, step: int, timeout: float = 120.0) -> float:
    """When the server received the history line of `step` (its own clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server._lock:
            for run in server.runs.values():
                for line, when in zip(run.history, run.arrived):
                    if json.loads(line).get("checkpoint_step") == step and "eval/checkpoint_name" in line:
                        return when
        time.sleep(0.005)
    raise RuntimeError(f"checkpoint-{step} never reached the server")


def _baseline_checkout(base: Path) -> Path | None:
    """The sidecar as it was before this change (`git archive`), or None outside a git checkout."""
    target = base / "baseline"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE_REF], capture_output=True)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "eval_wandb_sidecar.py"


def delivery_latency(n: int, gap: float, baseline: bool = True) -> list[dict]:
    """Online, one checkpoint every `gap` s (ready marker, events): from its row being recorded in
    state to the server receiving it; this version and (`baseline`) the version before."""
    rows = []
    for which in ("this sidecar", f"before ({BASELINE_REF})")[:2 if baseline else 1]:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            tree = Tree(base, "deliver-cb8")
            entry = ROOT / "eval_wandb_sidecar.py" if which == "this sidecar" else _baseline_checkout(base)
            if entry is None:
                continue
            count = n if which == "this sidecar" else min(n, 10)  # each baseline row waits ~15 s
            server = _server()
            proc = subprocess.Popen([sys.executable, str(entry), *tree.args(
                "--wandb-mode", "online", "--ready-marker", ".ready", "--watch-mode", "events",
                "--poll-interval-seconds", "3600")], env=_online_env(tree, server), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            lat = []
            try:
                time.sleep(2)
                for step in range(1, count + 1):
                    ckpt = tree.sft / f"checkpoint-{step}"
                    ckpt.mkdir()
                    (ckpt / "model.safetensors").write_bytes(b"x")
                    (ckpt / ".ready").write_text("{}")
                    recorded = _recorded_at(tree, step)
                    lat.append(_arrived_at(server, step) - recorded)
                    time.sleep(max(0.0, gap - (time.time() - recorded)))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
                server.stop()
        name = f"row recorded in state → on the W&B server, online, {which}"
        rows += [row(name, count, "median", statistics.median(lat), "s"), row(name, count, "max", max(lat), "s")]
    if len(rows) == 4:
        rows.append(row("row recorded in state → on the W&B server, online", n, "median ratio (before / this)",
                        rows[2]["value"] / max(rows[0]["value"], 1e-9), "×"))
    return rows


def kill_loop(kills: int, seed: int = 13) -> list[dict]:
    """kill -9 at random moments of an online sidecar (server up) while checkpoints keep coming,
    restarting it each time; then one clean pass. Rows of state the server lacks, and extra copies."""
    import random
    import threading

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Tree(Path(tmp), "kill-cb8")
        server = _server()
        env = _online_env(tree, server, EVAL_SECONDS="0.3")
        stop = threading.Event()

        def trainer():
            step = 0
            while not stop.wait(0.7):
                step += 1
                ckpt = tree.sft / f"checkpoint-{step}"
                ckpt.mkdir()
                (ckpt / "model.safetensors").write_bytes(b"x")
                (ckpt / ".ready").write_text("{}")

        writer = threading.Thread(target=trainer, daemon=True)
        writer.start()
        flags = ("--wandb-mode", "online", "--ready-marker", ".ready", "--poll-interval-seconds", "0.5")
        try:
            for _ in range(kills):
                proc = tree.start(*flags, env=env)
                time.sleep(rng.uniform(1.0, 5.0))
                proc.kill()
                proc.wait()
        finally:
            stop.set()
            writer.join()
        tree.run("--once", *flags, env=env)
        _, state = tree.state()
        with server._lock:
            [run] = server.runs.values()
            copies: dict[int, int] = {}
            for line in run.history:
                item = json.loads(line)
                if "eval/checkpoint_name" in item:
                    copies[item["checkpoint_step"]] = copies.get(item["checkpoint_step"], 0) + 1
        server.stop()
    steps = state["processed_steps"]
    lost = [s for s in steps if s not in copies]
    extra = sum(max(0, copies.get(s, 0) - 1) for s in steps)
    name = "kill -9 loop, online, server up"
    return [row(name, kills, "rows recorded", len(steps), "rows"), row(name, kills, "rows lost", len(lost), "rows"),
            row(name, kills, "rows on the server twice (in flight at a kill)", extra, "rows")]


# ----- W&B bytes while watching (Reliability round 2, item 11) -----------------------------------------
def _reported(tree: Tree, step: int, timeout: float = 600.0) -> None:
    """Wait until `step` is processed and written to W&B (not unreported) in the state file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = tree.state()[1]
            if step in state["processed_steps"] and step not in state["unreported_steps"]:
                return
        except (OSError, ValueError, StopIteration, KeyError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"checkpoint-{step} was never reported to W&B")


def one_at_a_time(sizes: list[int], baseline: bool = True) -> list[dict]:
    """A watching sidecar (events, ready marker, W&B offline) gets checkpoints one at a time, each
    once the row before it was written to W&B (so every row is its own pass, as when a trainer
    saves more slowly than a row is reported). W&B bytes (the offline run folder, plus wandb's
    staging and cache folders) and table files when the run holds N rows, and after the sidecar
    stopped; this version (default --wandb-table-minutes), this version with a table interval so
    short that a table is due on every pass (checkpoints slower than the interval: only the
    growth rule spaces the tables), and the version before (`baseline`), which logged the whole
    table on every pass."""
    rows: list[dict] = []
    top = max(sizes)
    variants = [("this sidecar", ()), ("this sidecar, a table due on every pass", ("--wandb-table-minutes", "0.0001"))]
    if baseline:
        variants.append((f"before ({BASELINE_REF})", ()))
    for which, extra in variants:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            tree = Tree(base, "arrive-cb8")
            entry = ROOT / "eval_wandb_sidecar.py" if which.startswith("this sidecar") else _baseline_checkout(base)
            if entry is None:
                continue
            env = tree.env()
            folders = (base / "wandb_dir", base / "wandb_data_dir", base / "wandb_cache_dir")
            proc = subprocess.Popen([sys.executable, str(entry), *tree.args(
                "--wandb-mode", "offline", "--ready-marker", ".ready", "--watch-mode", "events",
                "--poll-interval-seconds", "3600", *extra)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            name = f"{top:,} checkpoints arriving one at a time, W&B offline, {which}"
            started = time.perf_counter()
            try:
                for step in range(1, top + 1):
                    res = tree.repo / "results" / tree.sft.name / f"checkpoint-{step}"
                    res.mkdir(parents=True)
                    (res / "metrics.json").write_text(json.dumps({"HR@1": 0.01, "HR@10": step / top,
                                                                  "NDCG@10": step / top / 2}))
                    ckpt = tree.sft / f"checkpoint-{step}"
                    ckpt.mkdir()
                    (ckpt / "model.safetensors").write_bytes(b"x")
                    (ckpt / ".ready").write_text("{}")
                    _reported(tree, step)
                    if step in sizes:
                        tables = sum(1 for _ in (base / "wandb_dir").rglob("*.table.json"))
                        rows += [row(name, step, "W&B bytes while watching", folder_bytes(*folders) / 2**20, "MB"),
                                 row(name, step, "table files", tables, "files"),
                                 row(name, step, "wall time since the start", time.perf_counter() - started, "s")]
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            tables = sum(1 for _ in (base / "wandb_dir").rglob("*.table.json"))
            rows += [row(name, top, "W&B bytes after exit", folder_bytes(*folders) / 2**20, "MB"),
                     row(name, top, "table files after exit", tables, "files")]
    ours = {r["figure"]: r["value"] for r in rows if r["n"] == top and r["scenario"].endswith("this sidecar")}
    theirs = {r["figure"]: r["value"] for r in rows if r["n"] == top and "before" in r["scenario"]}
    if ours and theirs:
        rows.append(row(f"{top:,} checkpoints arriving one at a time, W&B offline", top,
                        "W&B bytes after exit, ratio (before / this)",
                        theirs["W&B bytes after exit"] / max(ours["W&B bytes after exit"], 1e-9), "×"))
    return rows


# ----- fleet mode: many models under one --models-root ------------------------------------------------
def _wait_states(tree: FleetTree, models: int, steps: int, reported: bool, timeout: float = 900.0) -> None:
    """Until every model's state file holds `steps` processed checkpoints (and, with `reported`,
    none of them is waiting to be written to W&B)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = tree.states()
        if len(states) == models and all(len(s.get("processed_steps", ())) == steps
                                         and not (reported and s.get("unreported_steps")) for s in states.values()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"not every one of {models} models recorded {steps} checkpoints in time")


def _timed_ticks(fleet, ticks: int) -> tuple[float, float, list[float]]:
    """The fleet's start, its first tick, then `ticks` idle ticks (seconds each)."""
    started = time.perf_counter()
    fleet.start()
    start = time.perf_counter() - started
    started = time.perf_counter()
    fleet.tick()  # the first tick lists every model folder once
    first = time.perf_counter() - started
    times = []
    for _ in range(ticks):
        started = time.perf_counter()
        if fleet.tick() != 0:
            raise RuntimeError("an idle fleet tick recorded something")
        times.append(time.perf_counter() - started)
    return start, first, times


def fleet_idle_tick(sizes: list[int], checkpoints: int, ticks: int) -> list[dict]:
    """A fleet over M models × `checkpoints` processed checkpoints each (made processed by a real
    `--once` fleet backfill, W&B disabled, whose wall time is reported too): in process, the
    start (every model's lock and state file), the first tick, and the median and max of `ticks`
    idle ticks; then the same with every folder listed again on every tick (RELIST_SECONDS = 0,
    the safety pass that normally runs every 5 minutes, as its worst case)."""
    from sidecar.clock import SystemClock
    from sidecar.config import build_config
    from sidecar.fleet.service import Fleet
    from sidecar.reporters.base import NullReporter
    from sidecar.watch import discover

    rows = []
    name = f"fleet idle tick, {checkpoints:,} processed checkpoints per model"
    for m in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tree = FleetTree(Path(tmp))
            tree.models(m, lambda i: range(1, checkpoints + 1), metrics=True)
            backfill = tree.run("--once", "--disable-wandb")
            states = tree.states()
            if len(states) != m or any(len(s["processed_steps"]) != checkpoints for s in states.values()):
                raise RuntimeError(f"the fleet backfill of {m} × {checkpoints} did not record everything")
            args = tree.config_args("--disable-wandb")
            config = build_config(args, {}, Path.cwd(), check_paths=False)
            measured = {}
            for relist in (False, True):
                saved = discover.RELIST_SECONDS
                discover.RELIST_SECONDS = 0.0 if relist else saved
                fleet = Fleet(config, args, SystemClock(), {}, lambda c: NullReporter(), Path.cwd())
                try:
                    measured[relist] = _timed_ticks(fleet, ticks)
                finally:
                    fleet.close()
                    discover.RELIST_SECONDS = saved
        start, first, times = measured[False]
        relisting = measured[True][2]
        rows += [row(name, m, "backfill (--once, W&B disabled)", backfill, "s"),
                 row(name, m, "backfill per checkpoint", backfill / (m * checkpoints) * 1000, "ms"),
                 row(name, m, "start (every model's lock and state)", start * 1000, "ms"),
                 row(name, m, "first tick after a start", first * 1000, "ms"),
                 row(name, m, "median", statistics.median(times) * 1000, "ms"),
                 row(name, m, "max", max(times) * 1000, "ms"),
                 row(name, m, "median per model", statistics.median(times) / m * 1000, "ms"),
                 row(name, m, "median, full relisting every tick", statistics.median(relisting) * 1000, "ms"),
                 row(name, m, "max, full relisting every tick", max(relisting) * 1000, "ms")]
    return rows


def _peak_rss(pid: int, seconds: float) -> tuple[int, int, int]:
    """Peak RSS of the process itself, of its descendants, and of both together, sampled every
    0.2 s for `seconds`."""
    own = children = total = 0
    deadline = time.monotonic() + seconds
    while True:
        a, b = tree_rss(pid)
        own, children, total = max(own, a), max(children, b), max(total, a + b)
        if time.monotonic() >= deadline:
            return own, children, total
        time.sleep(0.2)


def fleet_memory(sizes: list[int], evaluated: int = 3, seconds: float = 5.0) -> list[dict]:
    """One watching fleet process (W&B offline) over M models, each with `evaluated` checkpoints
    evaluated, so every model's run is open: once every row is written to W&B, the peak RSS over
    `seconds` of the Python process, of its children (wandb-core) and of both; the same for one
    single-model sidecar, and the per-model cost against it."""
    flags = ("--wandb-mode", "offline", "--watch-mode", "events", "--poll-interval-seconds", "3600",
             "--gpu-slots", "0;1")
    rows = []
    single = f"memory: one single-model sidecar, {evaluated} checkpoints evaluated, W&B offline, watching"
    with tempfile.TemporaryDirectory() as tmp:
        tree = Tree(Path(tmp))
        tree.checkpoints(evaluated, metrics=False)
        proc = tree.start(*flags)
        try:
            for step in range(1, evaluated + 1):
                _reported(tree, step)
            own, children, total = _peak_rss(proc.pid, seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    one = total
    rows += [row(single, 1, "peak RSS, Python", own / 2**20, "MB"),
             row(single, 1, "peak RSS, children (wandb-core)", children / 2**20, "MB"),
             row(single, 1, "peak RSS, total", total / 2**20, "MB")]
    name = f"fleet memory, {evaluated} checkpoints evaluated per model, W&B offline, watching"
    totals = {}
    for m in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tree = FleetTree(Path(tmp))
            tree.models(m, lambda i: range(1, evaluated + 1), metrics=False)
            proc = tree.start(*flags)
            try:
                _wait_states(tree, m, evaluated, reported=True)
                own, children, total = _peak_rss(proc.pid, seconds)
                runs = sum(1 for _ in (tree.base / "wandb_dir" / "wandb").glob("offline-run-*"))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
        if runs != m:
            raise RuntimeError(f"a fleet of {m} models opened {runs} offline runs")
        totals[m] = total
        rows += [row(name, m, "peak RSS, Python", own / 2**20, "MB"),
                 row(name, m, "peak RSS, children (wandb-core)", children / 2**20, "MB"),
                 row(name, m, "peak RSS, total", total / 2**20, "MB"),
                 row(name, m, "total per model", total / m / 2**20, "MB"),
                 row(name, m, "per model against one single-model sidecar", total / m / one, "×"),
                 row(name, m, "M single-model sidecars against this fleet", m * one / total, "×")]
    small, big = min(sizes), max(sizes)
    if big > small:
        rows.append(row(name, big, f"each model beyond {small}", (totals[big] - totals[small]) / (big - small) / 2**20,
                        "MB"))
    return rows


def fleet_new_model_latency(idle_models: int, k: int) -> list[dict]:
    """A watching fleet (events, ready marker) over `idle_models` models whose checkpoints are all
    processed; k times a new model folder appears with one checkpoint, whose marker is written last:
    from the marker's creation to the eval script's start."""
    marker = "trainer_state.json"
    with tempfile.TemporaryDirectory() as tmp:
        tree = FleetTree(Path(tmp))
        tree.models(idle_models, lambda i: range(1, 4), metrics=True, marker=marker)
        proc = tree.start("--watch-mode", "events", "--ready-marker", marker, "--checkpoint-ready-seconds", "120",
                          "--poll-interval-seconds", "3600", "--disable-wandb", "--max-attempts", "1")
        lat = []
        try:
            _wait_states(tree, idle_models, 3, reported=False)
            time.sleep(1)
            for j in range(k):
                ckpt = tree.model(idle_models + j) / f"checkpoint-{1000 + j}"  # a step no other model has
                ckpt.mkdir(parents=True)
                (ckpt / "model.safetensors").write_bytes(os.urandom(4096))
                ready = time.time()
                (ckpt / marker).write_text("{}")
                lat.append(wait_file(tree.starts / ckpt.name) - ready)
                time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    name = f"fleet: new model folder, marker → eval start, {idle_models} idle models watched"
    return [row(name, k, "median", statistics.median(lat) * 1000, "ms"), row(name, k, "max", max(lat) * 1000, "ms")]


def fleet_parallel(models: int, per_model: int, eval_seconds: float, slots: int) -> list[dict]:
    """A `--once` fleet over `models` × `per_model` checkpoints to evaluate, each eval taking
    `eval_seconds`, on `slots` GPU slots: the process's wall time, and the span from the first
    eval's start to the last eval's end (its metrics.json written), each against the ideal
    (evals × eval_seconds / slots)."""
    total = models * per_model
    with tempfile.TemporaryDirectory() as tmp:
        tree = FleetTree(Path(tmp))
        tree.models(models, lambda i: range(i * per_model + 1, (i + 1) * per_model + 1), metrics=False)
        wall = tree.run("--once", "--disable-wandb", "--gpu-slots", ";".join(str(i) for i in range(slots)),
                        env=tree.env(EVAL_SECONDS=str(eval_seconds)))
        starts = [float(f.read_text()) for f in tree.starts.iterdir()]
        ends = [p.stat().st_mtime for p in (tree.repo / "results").rglob("metrics.json")]
        processed = sum(len(s["processed_steps"]) for s in tree.states().values())
    if len(starts) != total or len(ends) != total or processed != total:
        raise RuntimeError(f"the fleet ran {len(starts)} evals and recorded {processed}, expected {total}")
    ideal = total * eval_seconds / slots
    span = max(ends) - min(starts)
    name = f"fleet parallel: {models} models × {per_model} checkpoints, {eval_seconds:g} s evals, {slots} GPU slots"
    return [row(name, total, "wall time of the --once process", wall, "s"),
            row(name, total, "first eval's start → last eval's end", span, "s"),
            row(name, total, "ideal (evals × eval time / slots)", ideal, "s"),
            row(name, total, "ratio, first start → last end / ideal", span / ideal, "×"),
            row(name, total, "ratio, wall time / ideal", wall / ideal, "×")]


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "align-child":
    print(json.dumps(_align_child(*(int(a) for a in sys.argv[2:]))))
