"""What is reported, computed from state rows (SPEC §4.2), and the reporter protocol.

Rows and summary are derived from state so they are right after restarts, re-evaluations and
out-of-order completion. The W&B reporter lives in its own module; `NullReporter` serves
`--disable-wandb` and tests of everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

BASE_METRICS = ["HR@1", "HR@3", "HR@5", "HR@10", "NDCG@1", "NDCG@3", "NDCG@5", "NDCG@10"]
ROW_FIELDS = ("checkpoint_step", "checkpoint_name", "metrics_path", "eval_params")


def metric_names(row: dict) -> list[str]:
    """The metric keys of a state row (everything but the bookkeeping fields)."""
    return [k for k in row if k not in ROW_FIELDS]


def table_columns(rows: Iterable[dict]) -> list[str]:
    """`checkpoint_step, checkpoint_name, HR@1/3/5/10, NDCG@1/3/5/10`, other metrics seen (sorted), `metrics_path`."""
    others: set[str] = set()
    for row in rows:
        others.update(k for k in metric_names(row) if k not in BASE_METRICS)
    return ["checkpoint_step", "checkpoint_name", *BASE_METRICS, *sorted(others), "metrics_path"]


def summary_from_rows(rows: dict[int, dict], metrics: Iterable[str] = ("HR@10", "NDCG@10")) -> dict:
    """best_<m>, best_step_for_<m>, last_<m> (m lower-cased) and last_step over all rows.

    The best value wins by strictly greater, so the earliest step keeps a tie (as the original).
    """
    summary: dict = {}
    if not rows:
        return summary
    steps = sorted(rows)
    summary["last_step"] = steps[-1]
    last = rows[steps[-1]]
    for metric in metrics:
        name = metric.lower()
        if last.get(metric) is not None:
            summary[f"last_{name}"] = float(last[metric])
        best = best_step = None
        for step in steps:
            value = rows[step].get(metric)
            if value is not None and (best is None or float(value) > best):
                best, best_step = float(value), step
        if best is not None:
            summary[f"best_{name}"] = best
            summary[f"best_step_for_{name}"] = best_step
    return summary


@dataclass(frozen=True)
class Snapshot:
    """What to report: the unreported rows and all rows (row dicts are never mutated, only replaced)."""

    pending: dict[int, dict]
    rows: dict[int, dict]


@dataclass
class Delivery:
    """What a reporter wrote: these rows into `segment`; `closed` once the segment is finished."""

    segment: dict
    rows: dict[int, dict] = field(default_factory=dict)
    closed: bool = False


class Reporter(Protocol):
    """Receives snapshots of rows already saved in state and says what it wrote.

    `report` never blocks; `collect` returns deliveries (what was written, where); `reconcile`
    reads back run segments a crashed process left open; `bind` names the run before the first
    report; `close` finishes the run.
    """

    enabled: bool

    def bind(self, run_id: str, run_name: str, on_delivery=None) -> None: ...

    def report(self, snapshot) -> None: ...

    def collect(self) -> list: ...

    def reconcile(self, segments: list[dict], rows: dict[int, dict], unreported: set[int]) -> tuple[set[int], set[int]]: ...

    def close(self) -> None: ...


class NullReporter:
    """Reports nothing (W&B disabled)."""

    enabled = False

    def bind(self, run_id: str, run_name: str, on_delivery=None) -> None:
        return None

    def report(self, snapshot) -> None:
        return None

    def collect(self) -> list:
        return []

    def reconcile(self, segments, rows, unreported):
        return set(), set()

    def close(self) -> None:
        return None
