"""`status --all`: one line per model, from the state files alone (and, in fleet mode, the tree:
model folders without a profile are listed with the reason)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from ..errors import SidecarError
from ..watch.sparkline import metric_points, sparkline, to_ascii
from ..watch.state import legacy_synced, read_state
from ..watch.status import DEFAULT_METRICS, mode_of, number_text, summarize, summary_metrics_of

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


def model_row(model: str, state_file: Path, now: float, given: tuple | None = None,
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
    info = summarize(state, now, mode=mode, waiting=explain(state) if explain is not None else None,
                     synced_elsewhere=frozenset(legacy_synced(state_file)))  # a live sync's record
    best = best_of(state.rows, metric, "min" if metric in lower else "max")
    line = sparkline(metric_points(state.rows, metric), CURVE_CELLS)
    return {**row, "status": status or "ok", "processed": info["processed"], "pending": info["pending"],
            "failed": info["failed"], "failed_given_up": info["failed_given_up"], "in_flight": len(info["in_flight"]),
            "last_step": max(state.rows) if state.rows else None,
            "best": None if best is None else {"metric": metric, "value": best[0], "step": best[1],
                                               "goal": "min" if metric in lower else "max"},
            "metric": metric, "curve": line or None,
            "run_id": state.run_id, "wandb_mode": mode or None, "unreported": info["unreported"],
            "_identity": state.settings.get("identity") if isinstance(state.settings.get("identity"), dict) else None}


def natural_key(name: str) -> list:
    """Sorts `m2` before `m10` (numbers by value, the rest without case)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def by_model(rows: list[dict]) -> list[dict]:
    """The rows by model name (natural order), and one model's several configurations told apart:
    each gets a `configuration` (the identity values that differ between them, e.g. `num_beams 20`,
    else its state file's key) and a `label` (`m4 [num_beams 20]`) for the table."""
    rows = sorted(rows, key=lambda r: (natural_key(r["model"]), r.get("state_file") or ""))
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("state_file"):
            groups.setdefault(row["model"], []).append(row)
    for model, group in groups.items():
        if len(group) < 2:
            continue
        identities = [r.get("_identity") for r in group]
        keys = sorted({k for i in identities if i for k in i}) if all(identities) else []
        differ = [k for k in keys if len({json_text(i.get(k)) for i in identities}) > 1]
        seen: set[str] = set()
        for row, identity in zip(group, identities):
            text = ", ".join(f"{k} {identity.get(k)}" for k in differ) if differ else ""
            if not text or text in seen:
                match = STATE_NAME.match(Path(row["state_file"]).name)
                text = f"key {match.group('key')[:8]}" if match else Path(row["state_file"]).name
            seen.add(text)
            row["configuration"] = text
            row["label"] = f"{model} [{text}]"
    for row in rows:
        row.pop("_identity", None)
    return sorted(rows, key=lambda r: (natural_key(r["model"]), natural_key(r.get("configuration") or ""),
                                       r.get("state_file") or ""))


def json_text(value) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def format_table(rows: list[dict], metric: str = "HR@10", ascii: bool = False) -> str:
    """The human table: counts, last step, best of each model's first summary metric (`metric`
    in the header when every model has that one) and its curve, W&B run, who watches it; a
    model without a configuration gets its reason instead. `ascii`: curves without block characters."""
    if not rows:
        return "(no models)"
    metrics = {r["metric"] for r in rows if r.get("metric")}
    shared = metrics.pop() if len(metrics) == 1 else None if metrics else metric
    width = max(12, *(len(r.get("label") or r["model"]) for r in rows))
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
            lines.append(f"{r.get('label') or r['model']:<{width}}  {r['status']}: {r['reason']}")
            continue
        last = "-" if r["last_step"] is None else str(r["last_step"])
        line = r.get("curve") or "-"
        if ascii:
            line = to_ascii(line)
        lines.append(f"{r.get('label') or r['model']:<{width}}  {r['processed']:>5} {r['pending']:>5} {r['failed']:>5} "
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
    return f"{name}{number_text(best['value'])} @ {best['step']}"


def _run_text(row: dict) -> str:
    if not row.get("run_id"):
        return "-"
    return row["run_id"] + (f" ({row['wandb_mode']})" if row.get("wandb_mode") else "")
