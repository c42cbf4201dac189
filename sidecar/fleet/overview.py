"""`status --all`: one line per model, from the state files alone (and, in fleet mode, the tree:
model folders without a profile are listed with the reason)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from ..errors import SidecarError
from ..watch.state import read_state
from ..watch.status import summarize

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
    values = [(row[metric], step) for step, row in rows.items()
              if isinstance(row.get(metric), (int, float)) and not isinstance(row.get(metric), bool)]
    if not values:
        return None
    pick = max if direction == "max" else min
    return pick(values, key=lambda vs: (vs[0], -vs[1]) if direction == "max" else (vs[0], vs[1]))


def model_row(model: str, state_file: Path, now: float, metric: str = "HR@10", mode: str = "", path: str = "",
              status: str = "", reason: str = "") -> dict:
    """One model's line as a dict (what `--json` prints)."""
    row: dict = {"model": model, "path": path or None, "state_file": str(state_file), "status": status,
                 "reason": reason or None}
    try:
        state = read_state(state_file)
    except SidecarError as exc:
        return {**row, "status": "error", "reason": str(exc)}
    row["watched_by"] = watched_by(state_file.with_suffix(".lock"))
    if state is None:
        return {**row, "status": status or "not started", "processed": 0, "pending": 0, "failed": 0,
                "in_flight": 0, "last_step": None, "best": None, "run_id": None, "wandb_mode": mode or None}
    info = summarize(state, now, mode=mode)
    best = best_of(state.rows, metric)
    return {**row, "status": status or "ok", "processed": info["processed"], "pending": info["pending"],
            "failed": info["failed"], "failed_given_up": info["failed_given_up"], "in_flight": len(info["in_flight"]),
            "last_step": max(state.rows) if state.rows else None,
            "best": None if best is None else {"metric": metric, "value": best[0], "step": best[1]},
            "run_id": state.run_id, "wandb_mode": mode or None, "unreported": info["unreported"]}


def format_table(rows: list[dict], metric: str = "HR@10") -> str:
    """The human table: counts, last step, best, W&B run, who watches it; a model without a
    configuration gets its reason instead."""
    if not rows:
        return "(no models)"
    width = max(12, *(len(r["model"]) for r in rows))
    runs = {id(r): _run_text(r) for r in rows}
    run_width = max(8, *(len(t) for t in runs.values()))
    head = (f"{'MODEL':<{width}}  {'DONE':>5} {'PEND':>5} {'FAIL':>5} {'RUN':>4} {'LAST':>7}  "
            f"{'BEST ' + metric:<18}  {'W&B RUN':<{run_width}}  WATCHED BY")
    lines = [head]
    for r in rows:
        if "processed" not in r:
            lines.append(f"{r['model']:<{width}}  {r['status']}: {r['reason']}")
            continue
        best = r["best"]
        best_text = "-" if best is None else f"{best['value']:.4f} @ {best['step']}"
        last = "-" if r["last_step"] is None else str(r["last_step"])
        lines.append(f"{r['model']:<{width}}  {r['processed']:>5} {r['pending']:>5} {r['failed']:>5} "
                     f"{r['in_flight']:>4} {last:>7}  {best_text:<18}  {runs[id(r)]:<{run_width}}  "
                     f"{r.get('watched_by') or '-'}")
        if r["status"] not in ("ok", "not started"):
            lines.append(f"{'':<{width}}  {r['status']}: {r['reason']}")
    return "\n".join(lines)


def _run_text(row: dict) -> str:
    if not row.get("run_id"):
        return "-"
    return row["run_id"] + (f" ({row['wandb_mode']})" if row.get("wandb_mode") else "")
