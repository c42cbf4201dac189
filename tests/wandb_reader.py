"""Read what wandb wrote offline, with wandb's own reader (`wandb leet inspect --json`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def records(segment: Path) -> list[dict]:
    """Every record of the segment's .wandb file; none when wandb never made one (a sidecar killed
    -9 while its first wandb.init was under way leaves a run folder without it: it holds no row)."""
    if not any(segment.glob("*.wandb")):
        return []
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(segment)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def summary(segment: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(segment)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


def history(segment: Path) -> list[dict]:
    """History items without wandb's own underscore keys, in the order they were logged."""
    items = [r["history"]["item"] for r in records(segment) if r["type"] == "history"]
    return [{k: v for k, v in item.items() if not k.startswith("_")} for item in items]


def eval_rows(segment: Path) -> list[dict]:
    return [h for h in history(segment) if "eval/checkpoint_name" in h]  # the table rows carry checkpoint_step too


def tables(segment: Path) -> list[dict]:
    """Every logged eval/checkpoint_table, read from the table file it points to."""
    out = []
    for item in history(segment):
        path = item.get("eval/checkpoint_table.path")  # the reader flattens nested keys with '.'
        if path:
            out.append(json.loads((segment / "files" / path).read_text()))
    return out


def segments(wandb_dir: Path) -> list[Path]:
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))
