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
# The most metrics of one row that go to W&B (history line, summary), and the most metric columns
# of the table; the state file keeps every metric. Real eval outputs hold tens of metrics; a
# metrics.json of 100,000 keys made wandb spend minutes on every table (building a wandb.Table
# costs ~0.2 ms per cell), so nothing else reached W&B. At 1,000 a row's history line is ~40 KB
# and a table with 1,000 columns and one row builds in ~0.2 s.
MAX_WANDB_METRICS = 1000


def metric_names(row: dict) -> list[str]:
    """The metric keys of a state row (everything but the bookkeeping fields)."""
    return [k for k in row if k not in ROW_FIELDS]


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
    """`checkpoint_step, checkpoint_name, HR@1/3/5/10, NDCG@1/3/5/10`, other metrics seen (sorted), `metrics_path`;
    at most `limit` metric columns (the `first` ones, the summary metrics, kept before the others)."""
    others: set[str] = set()
    for row in rows:
        others.update(k for k in metric_names(row) if k not in BASE_METRICS)
    if len(others) + len(BASE_METRICS) > limit:
        others = set(_capped(others, first, max(0, limit - len(BASE_METRICS))))
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
    """What to report: the unreported rows and all rows (row dicts are never mutated, only replaced).

    `sent` are rows logged to the online run `sent_run` that the server has not confirmed yet
    (step -> history line); `seal` asks for the table and summary to be written even when no row
    is pending (after a crash, and by `sync`)."""

    pending: dict[int, dict]
    rows: dict[int, dict]
    sent: dict[int, int] = field(default_factory=dict)
    sent_run: str = ""
    seal: bool = False


@dataclass
class Delivery:
    """What a reporter learnt or wrote, in order: rows written into `segment` (online: at history
    `lines` of run `run`); the server holds `confirmed` history lines of `run`; rows it was
    believed to hold but does not (`lost`, written again next); `closed` once finished cleanly."""

    segment: dict
    rows: dict[int, dict] = field(default_factory=dict)
    lines: dict[int, int] = field(default_factory=dict)
    run: str = ""
    confirmed: int | None = None
    lost: frozenset = frozenset()
    closed: bool = False


def run_key(entity: str | None, project: str, run_id: str) -> str:
    """`entity/project/run_id`; the entity is empty when not known (the server's default entity)."""
    return f"{entity or ''}/{project}/{run_id}"


def same_run(a: str, b: str) -> bool:
    """Whether two run keys name one run (an unknown entity matches any)."""
    ea, _, rest_a = a.partition("/")
    eb, _, rest_b = b.partition("/")
    return rest_a == rest_b and (not ea or not eb or ea == eb)


@dataclass
class Reconciled:
    """What the segments a killed sidecar left open turned out to hold: `lost` rows (believed
    written, not there), `found` unreported rows (there after all), and rows an online segment of
    an earlier version logged (`sent`: step -> history line, of run `sent_run`), for the server to
    judge."""

    lost: set = field(default_factory=set)
    found: set = field(default_factory=set)
    sent: dict = field(default_factory=dict)
    sent_run: str = ""


def apply_delivery(state, delivery: Delivery) -> None:
    """Record a delivery in state: a row leaves `unreported` once written (if not replaced by a
    re-evaluation meanwhile) and, online, waits in `sent` until the server confirms its line."""
    seg = next((s for s in state.segments if s["dir"] == delivery.segment["dir"]), None)
    if seg is None:
        seg = dict(delivery.segment)
        seg["steps"] = []
        state.segments.append(seg)
    if delivery.run:
        seg["run"] = delivery.run
    held = set(seg["steps"])
    for step in delivery.lost:
        if state.sent.pop(step, None) is not None and step in state.rows:
            state.unreported.add(step)
    for step, row in delivery.rows.items():
        if step not in held:
            seg["steps"].append(step)
            held.add(step)
        if state.rows.get(step) is row:
            state.unreported.discard(step)
            if step in delivery.lines:
                if not same_run(state.sent_run, delivery.run):
                    state.sent.clear()  # lines of another run never confirm lines of this one
                state.sent[step] = delivery.lines[step]
                state.sent_run = delivery.run
    if delivery.confirmed is not None and same_run(delivery.run, state.sent_run):
        for step in [s for s, line in state.sent.items() if line < delivery.confirmed]:
            del state.sent[step]
    if delivery.closed:
        seg["closed"] = True


def retarget(state, target: str) -> bool:
    """Point the state at the W&B run `target` (a run key). When rows were reported to another run
    (`--wandb-project`, `--wandb-entity` or `--wandb-run-id` changed), every row is queued for the
    new one, and offline folders of the old run not uploaded yet are left to it. Returns whether
    the run changed."""
    previous = state.wandb_run or next((s["run"] for s in reversed(state.segments) if s.get("run")), "")
    if previous and not same_run(previous, target):
        state.unreported = set(state.rows)
        state.sent.clear()
        for seg in state.segments:
            if seg.get("mode") == "offline" and not seg.get("synced"):
                seg["synced"] = f"superseded: its rows are written to {target}"
        state.wandb_run = target
        return True
    if not previous or len(target.split("/", 1)[0]) >= len(previous.split("/", 1)[0]):
        state.wandb_run = target  # keep a known entity when the flags leave it to the server
    else:
        state.wandb_run = previous
    return False


def reconcile_state(state, reporter) -> int:
    """Every row in state must be on its way to the server: let the reporter settle segments a
    crash left open, and queue every row no segment holds (rows recorded while W&B was disabled
    included). Returns how many rows were queued because no segment held them."""
    settled = reporter.reconcile(state.segments, state.rows, state.unreported)
    state.unreported -= settled.found
    state.unreported |= settled.lost & set(state.rows)
    if settled.sent:
        if not same_run(state.sent_run, settled.sent_run):
            state.sent.clear()
        state.sent.update(settled.sent)
        state.sent_run = state.sent_run or settled.sent_run
    held: set[int] = set()
    for seg in state.segments:
        held.update(seg.get("steps", []))
    missing = {s for s in state.rows if s not in held}
    queued = len(missing - state.unreported)
    state.unreported |= missing
    return queued


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

    def reconcile(self, segments: list[dict], rows: dict[int, dict], unreported: set[int]) -> Reconciled: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...


class NullReporter:
    """Reports nothing (W&B disabled)."""

    enabled = False

    def bind(self, run_id: str, run_name: str, on_delivery=None) -> None:
        return None

    def report(self, snapshot) -> None:
        return None

    def collect(self) -> list:
        return []

    def reconcile(self, segments, rows, unreported) -> Reconciled:
        return Reconciled()

    def close(self) -> None:
        return None

    def abandon(self) -> None:
        return None
