"""State-side delivery bookkeeping: what the reporter wrote and the server confirmed, recorded in state."""

from __future__ import annotations

from ..reporters.base import Delivery, same_run
from ..reporters.rows import same_row


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
        if same_row(state.rows.get(step), row):
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

