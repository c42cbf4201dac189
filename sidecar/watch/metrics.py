"""metrics.json parsing (SPEC §2.5): a flat or nested JSON object of numbers."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable

from ..errors import MetricsError
from ..files import FileProblem, clean_name, read_capped

log = logging.getLogger(__name__)

METRICS_MAX_BYTES = 32 * 1024 * 1024  # a metrics.json larger than this is refused, never read


def flatten(obj: dict, prefix: str = "") -> dict[str, object]:
    """`{"A": {"HR@10": 0.1}}` -> `{"A/HR@10": 0.1}`; non-object leaves are kept as they are."""
    flat: dict[str, object] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def parse_metrics(text: str, renamed: list[str] | None = None) -> tuple[dict[str, float], list[str]]:
    """Parse metrics.json text into {name: finite float} and the names of dropped non-finite values;
    names that are not valid text (see `clean_name`) are appended, as recorded, to `renamed`.

    Raises ValueError with the reason for invalid JSON, a non-object root or no numeric value.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"the root must be a JSON object, got {type(data).__name__}")
    metrics: dict[str, float] = {}
    dropped: list[str] = []
    for key, value in flatten(data).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        clean = clean_name(key)
        if clean != key:
            key = clean
            if renamed is not None:
                renamed.append(key)
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            dropped.append(key)
            continue
        metrics[key] = number
    if not metrics:
        detail = f" (non-finite values dropped: {', '.join(dropped)})" if dropped else ""
        raise ValueError(f"no numeric metric found{detail}")
    return metrics, dropped


def read_metrics(path: Path, reread_after: float = 0.0, sleep: Callable[[float], None] | None = None) -> dict[str, float]:
    """Read and parse metrics.json; raises MetricsError naming the file and the reason.

    With `reread_after` > 0, a file that does not parse is read once more after that delay: the
    eval script writes it non-atomically, so it may be caught half-written.
    """
    def attempt() -> dict[str, float]:
        renamed: list[str] = []
        try:
            text = read_capped(path, METRICS_MAX_BYTES)
        except FileNotFoundError as exc:
            raise MetricsError(path, "not found") from exc
        except FileProblem as exc:
            raise MetricsError(path, str(exc)) from exc
        except OSError as exc:
            raise MetricsError(path, f"unreadable ({exc.strerror or exc})") from exc
        try:
            metrics, dropped = parse_metrics(text, renamed)
        except ValueError as exc:
            raise MetricsError(path, str(exc)) from exc
        for key in dropped:
            log.warning("metrics.json at %s: dropped non-finite value of %r", path, key)
        if renamed:
            log.warning("metrics.json at %s: metric name(s) %s hold a lone surrogate escape, not valid text; "
                        "recorded under the escaped name", path, ", ".join(renamed[:5]))
        return metrics

    try:
        return attempt()
    except MetricsError as first:
        if reread_after <= 0 or first.reason == "not found" or sleep is None:
            raise
        log.info("metrics.json at %s did not parse (%s); reading it again in %.1f s", path, first.reason, reread_after)
        sleep(reread_after)
        return attempt()
