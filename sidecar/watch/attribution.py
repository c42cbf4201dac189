"""Which configuration produced a metrics.json (SPEC §2.4 backfill, made safe across configurations).

Two configurations of one model (say `--num-beams 50` and `--num-beams 10`) share the eval
script's results path `results/<model>/<checkpoint>/metrics.json`: the script overwrites it. The
original tool reused any metrics.json it found, so the second configuration would record the
first one's numbers as its own. Beside each metrics.json an eval run by the sidecar produced, it
writes a small record naming the configuration key and the metrics file's size and mtime. A
metrics.json whose record names another key, and which has not changed since, provably belongs to
that configuration and is evaluated again; one without a record (the original tool's, or written
by hand) is reused as the original did.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..files import write_atomic

log = logging.getLogger(__name__)

RECORD_NAME = ".metrics.producer.json"

# Identity flags whose value decides what the eval computes: reusing an unattributed metrics.json
# under a non-default value of one of them deserves a warning.
EVAL_FLAGS = ("category", "test-data-path", "index-path", "num-beams", "sid-levels", "seed", "dataset",
              "cb-setting", "eval-split")


def record_path(metrics_path: Path) -> Path:
    return metrics_path.with_name(RECORD_NAME)


def fingerprint(metrics_path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of the file, None if it cannot be seen."""
    try:
        info = os.stat(metrics_path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def record_producer(metrics_path: Path, key: str, read: tuple[int, int]) -> None:
    """Note that configuration `key` produced this metrics.json as it was when read (`read`: its
    size and mtime then; best effort: a failure is logged)."""
    record = {"model_config_key": key, "size": read[0], "mtime_ns": read[1]}
    try:
        write_atomic(record_path(metrics_path), json.dumps(record) + "\n")
    except OSError as exc:
        log.warning("could not note which configuration produced %s (%s); another configuration of this model "
                    "could take it for its own", metrics_path, exc.strerror or exc)


def producer(metrics_path: Path) -> str | None:
    """The configuration key that produced this metrics.json, if its record says so and the file is
    unchanged since; None when unknown (no record, a damaged one, or the file was rewritten)."""
    try:
        record = json.loads(record_path(metrics_path).read_text(encoding="utf-8"))
        key, size, mtime = record["model_config_key"], record["size"], record["mtime_ns"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(key, str) or fingerprint(metrics_path) != (size, mtime):
        return None
    return key


def non_default_eval_flags(config, flags) -> list[str]:
    """`--num-beams 10`-style names of the eval-deciding flags that differ from their defaults."""
    changed = []
    for flag in flags:
        if flag.name not in EVAL_FLAGS:
            continue
        value = getattr(config, flag.dest)
        default = flag.default
        if flag.kind == "path" and default is not None:
            default = (config.repo_root / default).resolve()
            value = Path(value).resolve()
        if value != default and not (flag.kind == "str" and value in ("", None) and default in ("", None)):
            changed.append(f"--{flag.name} {getattr(config, flag.dest)}")
    return changed
