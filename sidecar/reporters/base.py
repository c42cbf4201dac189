"""The reporter protocol, what a reporter is handed and what it says back, and the null reporter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ReportBatch:
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


class Reporter(Protocol):
    """Receives snapshots of rows already saved in state and says what it wrote.

    `report` never blocks; `collect` returns deliveries (what was written, where); `reconcile`
    reads back run segments a crashed process left open; `bind` names the run before the first
    report; `close` finishes the run; `alert` sends a W&B alert (online runs); `outage_since` says
    since when W&B is unreachable; `run_url` is the run's page once known.
    """

    enabled: bool

    def bind(self, run_id: str, run_name: str, on_delivery=None) -> None: ...

    def report(self, snapshot) -> None: ...

    def collect(self) -> list: ...

    def reconcile(self, segments: list[dict], rows: dict[int, dict], unreported: set[int]) -> Reconciled: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...

    def alert(self, title: str, text: str, level: str = "INFO") -> None: ...

    def outage_since(self) -> float | None: ...

    def run_url(self) -> str | None: ...


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

    def alert(self, title: str, text: str, level: str = "INFO") -> None:
        return None

    def outage_since(self) -> float | None:
        return None

    def run_url(self) -> str | None:
        return None
