"""What is reported, computed from state rows (SPEC §4.2): metric names, table columns, summary."""

from __future__ import annotations

import math
from typing import Iterable

BASE_METRICS = ["HR@1", "HR@3", "HR@5", "HR@10", "NDCG@1", "NDCG@3", "NDCG@5", "NDCG@10"]
ROW_FIELDS = ("checkpoint_step", "checkpoint_name", "metrics_path", "eval_params")
# The training context of a row, from the checkpoint's trainer_state.json (watch/training.py):
# logged under these names (not eval/...), table columns after the name, never summary metrics.
TRAIN_FIELDS = ("train/epoch", "train/global_step", "train/loss", "train/learning_rate")
RESERVED = (*ROW_FIELDS, *TRAIN_FIELDS)  # a metrics.json key of one of these names is left out of the row
# The most metrics of one row that go to W&B (history line, summary), and the most metric columns
# of the table; the state file keeps every metric. Real eval outputs hold tens of metrics; a
# metrics.json of 100,000 keys made wandb spend minutes on every table (building a wandb.Table
# costs ~0.2 ms per cell), so nothing else reached W&B. At 1,000 a row's history line is ~40 KB
# and a table with 1,000 columns and one row builds in ~0.2 s.
MAX_WANDB_METRICS = 1000


def same_row(a: dict | None, b: dict | None) -> bool:
    """Whether two state rows are the same row: one object, or equal values (a row read back or
    copied is not a new row; a re-evaluated one differs at least in its metrics or eval_params).
    The identity test first keeps the common case cheap with 50,000 rows."""
    return a is b or (a is not None and a == b)


def metric_names(row: dict) -> list[str]:
    """The metric keys of a state row (everything but the bookkeeping fields and training context)."""
    return [k for k in row if k not in RESERVED]


def _capped(names: Iterable[str], first: Iterable[str], limit: int) -> list[str]:
    """`names` in the order W&B gets them: those in `first` (in its order), then the others
    sorted by name; at most `limit`."""
    names = set(names)
    head = list(dict.fromkeys(n for n in first if n in names))
    rest = sorted(names.difference(head))
    return (head + rest)[:limit]


def wandb_metrics(row: dict, first: Iterable[str] = (), limit: int = MAX_WANDB_METRICS) -> tuple[list[str], int]:
    """The metric keys of `row` that go to W&B, and how many are left out: HR@K / NDCG@K and the
    `first` ones (the summary metrics) before the others, which follow by name, up to `limit`.
    Numbers only (a value that is not one is not counted either way)."""
    numeric = [k for k in metric_names(row)
               if isinstance(row[k], (int, float)) and not isinstance(row[k], bool)]
    if len(numeric) <= limit:
        return numeric, 0
    return _capped(numeric, [*BASE_METRICS, *first], limit), len(numeric) - limit


def table_columns(rows: Iterable[dict], first: Iterable[str] = (), limit: int = MAX_WANDB_METRICS) -> list[str]:
    """`checkpoint_step, checkpoint_name`, the training context some row has (`train/epoch`, ...),
    `HR@1/3/5/10, NDCG@1/3/5/10`, other metrics seen (sorted), `metrics_path`; at most `limit`
    metric columns (the `first` ones, the summary metrics, kept before the others)."""
    others: set[str] = set()
    context: set[str] = set()
    for row in rows:
        others.update(k for k in metric_names(row) if k not in BASE_METRICS)
        context.update(k for k in TRAIN_FIELDS if k in row)
    if len(others) + len(BASE_METRICS) > limit:
        others = set(_capped(others, first, max(0, limit - len(BASE_METRICS))))
    return ["checkpoint_step", "checkpoint_name", *(k for k in TRAIN_FIELDS if k in context), *BASE_METRICS,
            *sorted(others), "metrics_path"]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_value(row: dict | None, metric: str) -> float | None:
    """The row's value of `metric` as a finite number, else None (a string, a bool, NaN, absent)."""
    value = (row or {}).get(metric)
    return float(value) if _number(value) and math.isfinite(value) else None


def summary_from_rows(rows: dict[int, dict], metrics: Iterable[str] = ("HR@10", "NDCG@10"),
                      lower_better: frozenset[str] = frozenset()) -> dict:
    """best_<m>, best_step_for_<m>, last_<m> (m lower-cased) and last_step over all rows.

    The best value wins by strictly greater (strictly less for the metrics in `lower_better`), so
    the earliest step keeps a tie (as the original). Values that are not numbers are skipped.
    """
    summary: dict = {}
    if not rows:
        return summary
    steps = sorted(rows)
    summary["last_step"] = steps[-1]
    last = rows[steps[-1]]
    for metric in metrics:
        name = metric.lower()
        if _number(last.get(metric)):
            summary[f"last_{name}"] = float(last[metric])
        best = best_step = None
        sign = -1.0 if metric in lower_better else 1.0
        for step in steps:
            value = rows[step].get(metric)
            if _number(value) and (best is None or sign * float(value) > sign * best):
                best, best_step = float(value), step
        if best is not None:
            summary[f"best_{name}"] = best
            summary[f"best_step_for_{name}"] = best_step
    return summary

