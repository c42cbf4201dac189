"""`status --all`: one line per model, from the state files alone (and, in fleet mode, the tree:
model folders without a profile are listed with the reason)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from ..errors import SidecarError
from ..watch.sparkline import metric_points, sparkline, to_ascii
from ..watch.state import read_state
from ..watch.status import DEFAULT_METRICS, mode_of, summarize, summary_metrics_of

STATE_NAME = re.compile(r"^(?P<model>.+)_(?P<key>[0-9a-f]{20})\.json$")


def state_files(state_dir: Path) -> list[tuple[str, Path]]:
    """(model part of the name, path) of every state file in the folder, by name."""
    try:
        names = sorted(os.listdir(state_dir))
    except OSError:
        return []
    out = []
    for name in names:
        match = STATE_NAME.match(name)
        if match and not name.startswith("."):
            out.append((match.group("model"), state_dir / name))
    return out


def watched_by(lock_file: Path) -> str | None:
    """`pid P` when the lock file names a sidecar running on this host now, else None. Read only:
    taking the lock to find out could make a sidecar starting at that moment fail."""
    try:
        lines = lock_file.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError:
        return None
    if len(lines) < 2 or not lines[0].strip().isdigit():
        return None
    pid, host = lines[0].strip(), lines[1].strip()
    if host != socket.gethostname():
        return f"pid {pid} on host {host}"  # cannot be checked from here
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return f"pid {pid}" if b"sidecar" in command else None


def best_of(rows: dict[int, dict], metric: str, direction: str = "max") -> tuple[float, int] | None:
    """(best value, its step) of `metric` over the rows: the highest (`direction` "min": the
    lowest), the earliest step on a tie; None without values."""
    values = [(row[metric], step) for step, row in rows.items()
              if isinstance(row.get(metric), (int, float)) and not isinstance(row.get(metric), bool)]
    if not values:
        return None
    if direction == "max":
        return max(values, key=lambda vs: (vs[0], -vs[1]))
    return min(values, key=lambda vs: (vs[0], vs[1]))


CURVE_CELLS = 20  # the sparkline column of `status --all`


def model_row(model: str, state_file: Path, now: float, given: tuple[tuple[str, ...], frozenset[str]] | None = None,
              mode: str = "", path: str = "", status: str = "", reason: str = "",
              fallback: tuple[tuple[str, ...], frozenset[str]] = DEFAULT_METRICS, explain=None) -> dict:
    """One model's line as a dict (what `--json` prints). Its metric is the first summary metric:
    of `given` (--summary-metrics given to status), else of the state's settings, else of
    `fallback`; its W&B mode the one the state was written with, else `mode`. `explain(state)`,
    when given, lists the checkpoints without a result and why (`preview.Wait.to_json`): the
    pending count is then of those on disk now, as in the one-model status."""
    row: dict = {"model": model, "path": path or None, "state_file": str(state_file), "status": status,
                 "reason": reason or None}
    try:
        state = read_state(state_file)
    except SidecarError as exc:
        return {**row, "status": "error", "reason": str(exc)}
    row["watched_by"] = watched_by(state_file.with_suffix(".lock"))
    if state is None:
        return {**row, "status": status or "not started", "processed": 0, "pending": 0, "failed": 0,
                "in_flight": 0, "last_step": None, "best": None, "curve": None, "run_id": None,
                "wandb_mode": mode or None}
    metrics, lower = summary_metrics_of(state, given, fallback)
    metric = metrics[0]
    mode = mode_of(state, mode)
    info = summarize(state, now, mode=mode, waiting=explain(state) if explain is not None else None)
    best = best_of(state.rows, metric, "min" if metric in lower else "max")
    line = sparkline(metric_points(state.rows, metric), CURVE_CELLS)
    return {**row, "status": status or "ok", "processed": info["processed"], "pending": info["pending"],
            "failed": info["failed"], "failed_given_up": info["failed_given_up"], "in_flight": len(info["in_flight"]),
            "last_step": max(state.rows) if state.rows else None,
            "best": None if best is None else {"metric": metric, "value": best[0], "step": best[1],
                                               "goal": "min" if metric in lower else "max"},
            "metric": metric, "curve": line or None,
            "run_id": state.run_id, "wandb_mode": mode or None, "unreported": info["unreported"]}


def format_table(rows: list[dict], metric: str = "HR@10", ascii: bool = False) -> str:
    """The human table: counts, last step, best of each model's first summary metric (`metric`
    in the header when every model has that one) and its curve, W&B run, who watches it; a
    model without a configuration gets its reason instead. `ascii`: curves without block characters."""
    if not rows:
        return "(no models)"
    metrics = {r["metric"] for r in rows if r.get("metric")}
    shared = metrics.pop() if len(metrics) == 1 else None if metrics else metric
    width = max(12, *(len(r["model"]) for r in rows))
    runs = {id(r): _run_text(r) for r in rows}
    run_width = max(8, *(len(t) for t in runs.values()))
    bests = {id(r): _best_text(r, shared) for r in rows}
    best_width = max(18, *(len(t) for t in bests.values()))
    head = (f"{'MODEL':<{width}}  {'DONE':>5} {'PEND':>5} {'FAIL':>5} {'RUN':>4} {'LAST':>7}  "
            f"{'BEST ' + shared if shared else 'BEST':<{best_width}}  {'CURVE':<{CURVE_CELLS}}  "
            f"{'W&B RUN':<{run_width}}  WATCHED BY")
    lines = [head]
    for r in rows:
        if "processed" not in r:
            lines.append(f"{r['model']:<{width}}  {r['status']}: {r['reason']}")
            continue
        last = "-" if r["last_step"] is None else str(r["last_step"])
        line = r.get("curve") or "-"
        if ascii:
            line = to_ascii(line)
        lines.append(f"{r['model']:<{width}}  {r['processed']:>5} {r['pending']:>5} {r['failed']:>5} "
                     f"{r['in_flight']:>4} {last:>7}  {bests[id(r)]:<{best_width}}  {line:<{CURVE_CELLS}}  "
                     f"{runs[id(r)]:<{run_width}}  {r.get('watched_by') or '-'}")
        if r["status"] not in ("ok", "not started"):
            lines.append(f"{'':<{width}}  {r['status']}: {r['reason']}")
    return "\n".join(lines)


def _best_text(row: dict, shared: str | None) -> str:
    best = row.get("best")
    if best is None:
        return "-"
    name = "" if shared else f"{best['metric']} "
    return f"{name}{best['value']:.4f} @ {best['step']}"


def _run_text(row: dict) -> str:
    if not row.get("run_id"):
        return "-"
    return row["run_id"] + (f" ({row['wandb_mode']})" if row.get("wandb_mode") else "")
