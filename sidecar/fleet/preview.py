"""`plan` (and `--dry-run`): which checkpoints would run next, in order, and why each other one
waits. Read only: no lock is taken, nothing is written, no eval runs.

It asks what the sidecar asks (`plan.still_wanted`, the readiness check, the retry times, the
fleet's order) of the files as they are now. A checkpoint the sidecar would find ready only after
its start-up confirmation is shown as ready.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints import Checkpoint
from ..config import Config
from ..errors import SidecarError
from ..watch.attribution import producer
from ..watch.discover import Discoverer, RootMissing
from ..watch.pipeline import policy_for
from ..watch.plan import still_wanted
from ..watch.readiness import ReadinessTracker, walk
from ..watch.state import read_state
from .order import interleave
from .overview import watched_by


@dataclass
class ModelPreview:
    name: str
    config: Config | None
    problem: str = ""  # the model is not evaluated at all: why
    note: str = ""  # e.g. "watched now by pid P"
    ready: list[Checkpoint] = field(default_factory=list)
    reused: set[int] = field(default_factory=set)  # ready steps recorded from their metrics.json, no eval
    waiting: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint name, why)
    running: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint name, what runs it) of a watched model
    processed: int = 0


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def preview_model(name: str, config: Config, now_wall: float, now_mono: float) -> ModelPreview:
    """What one model's pipeline would do with its checkpoints as they are now."""
    out = ModelPreview(name, config)
    holder = watched_by(config.lock_file)
    if holder:
        out.note = f"watched now by {holder}"
    try:
        state = read_state(config.state_file)
    except SidecarError as exc:
        out.problem = f"error: {exc}"
        return out
    try:
        found = Discoverer(config.sft_root).scan()
    except RootMissing as exc:
        out.problem = f"--sft-root is missing or unreadable ({exc})"
        return out
    policy = policy_for(config)
    processed = state.processed if state else set()
    failed = state.failed if state else {}
    in_flight = state.in_flight if state else {}
    readiness = ReadinessTracker(config.checkpoint_ready_seconds, config.ready_marker)
    candidates = []
    for ckpt in found:
        step = ckpt.step
        if state is not None and not still_wanted(step, state, policy):
            if step in processed:
                out.processed += 1
            else:
                failure = failed[step]
                out.waiting.append((ckpt.name, f"given up after {failure.get('attempts')} attempt(s): "
                                               f"{failure.get('error', '')}"))
            continue
        if step in in_flight:
            entry = in_flight[step]
            who = f"Slurm job {entry['job_id']}" if entry.get("job_id") else f"pid {entry.get('pid', '?')}"
            if holder:
                out.running.append((ckpt.name, f"{who}, started {entry.get('started', '?')}"))
                continue
            out.waiting.append((ckpt.name, f"in flight ({who}, started {entry.get('started', '?')}); "
                                           f"a sidecar that starts settles it first"))
            continue
        failure = failed.get(step)
        if failure is not None and float(failure.get("retry_after", 0.0)) > now_wall:
            out.waiting.append((ckpt.name, f"retry at {_clock(float(failure['retry_after']))} (attempt "
                                           f"{int(failure.get('attempts', 0)) + 1} of {policy.max_attempts})"))
            continue
        ok, reason, _ = readiness.check(step, ckpt.path, now_mono, now_wall, at_startup=True)
        if ok or reason == "confirming":
            candidates.append(ckpt)
        else:
            out.waiting.append((ckpt.name, f"not ready: {_readiness_text(reason, ckpt.path, config, now_wall)}"))
    candidates.sort(key=lambda c: c.step, reverse=policy.order == "newest-first")
    out.ready = candidates
    for ckpt in candidates:
        metrics = config.results_root / ckpt.parent_name / ckpt.name / "metrics.json"
        rerun = config.force_eval or ckpt.step in policy.force_steps
        if not rerun and metrics.is_file() and producer(metrics) in (None, config.identity.key):
            out.reused.add(ckpt.step)
    return out


def _readiness_text(reason: str, folder: Path, config: Config, now_wall: float) -> str:
    if reason in ("settling", "still being written"):
        snap = walk(folder)
        if snap is not None:
            until = snap.newest_mtime + config.checkpoint_ready_seconds
            return f"quiet until {_clock(until)} (its files changed {max(0.0, now_wall - snap.newest_mtime):.0f} s ago)"
    if reason.startswith("waiting for shards"):
        return reason.replace("waiting for shards", "shards named by the index are missing")
    if reason == "empty":
        return "the folder is empty"
    return reason


def preview(models: list[ModelPreview], slots: list[str], order: str, cap: int = 0) -> dict:
    """The fleet's order over the models' ready checkpoints: which run at once, which queue."""
    planned = {m.name: m.ready for m in models if m.ready}
    by_name = {m.name: m for m in models}
    upcoming = []
    busy = sum(len(m.running) for m in models)  # a watching sidecar's evals hold slots now
    free = max(0, len(slots) - busy)
    per_model: dict[str, int] = {m.name: len(m.running) for m in models}
    for name, ckpt in interleave(planned, {n: n for n in planned}, {}, strict=order == "model-then-step"):
        model = by_name[name]
        if ckpt.step in model.reused:
            upcoming.append({"model": name, "checkpoint": ckpt.name, "step": ckpt.step,
                             "when": "recorded at once from its metrics.json (no eval)"})
            continue
        per_model[name] = per_model.get(name, 0) + 1
        if cap and per_model[name] > cap:
            when = f"after this model's earlier evals (--max-parallel-per-model {cap})"
        elif free > 0:
            free -= 1
            slot = len(slots) - free - 1 - busy  # slots in order while none is busy
            when = "starts at once on a free slot" if busy else f"starts at once on slot {slot + 1} ({slots[slot]})"
        else:
            when = "when a slot frees"
        upcoming.append({"model": name, "checkpoint": ckpt.name, "step": ckpt.step, "when": when})
    waiting = [{"model": m.name, "checkpoint": None, "why": m.problem} for m in models if m.problem]
    waiting += [{"model": m.name, "checkpoint": c, "why": why} for m in models for c, why in m.waiting]
    running = [{"model": m.name, "checkpoint": c, "by": who} for m in models for c, who in m.running]
    return {"models": len(models), "slots": len(slots), "order": order, "running": running, "next": upcoming,
            "waiting": waiting,
            "processed": sum(m.processed for m in models),
            "notes": [{"model": m.name, "note": m.note} for m in models if m.note]}


ORDER_TEXT = {"oldest-first": "models in turn, oldest step first inside a model",
              "newest-first": "models in turn, newest step first inside a model",
              "model-then-step": "one model's checkpoints (oldest first) before the next model's"}


def format_preview(plan: dict, single: bool = False) -> str:
    width = max([12] + [len(x["model"]) for x in plan["next"] + plan["waiting"] + plan["running"]])
    if single:
        order = "newest step first" if plan["order"] == "newest-first" else "oldest step first"
    else:
        order = ORDER_TEXT.get(plan["order"], plan["order"])
    lines = [f"plan: {plan['models']} model(s), {plan['slots']} slot(s); order: {order}"]
    for note in plan["notes"]:
        lines.append(f"note: {note['model']} is {note['note']} (this is what it would do next)")
    if plan["running"]:
        lines.append("running now:")
        for item in plan["running"]:
            lines.append(f"        {item['model']:<{width}}  {item['checkpoint']:<18}  {item['by']}")
    if plan["next"]:
        lines.append("next, in order:")
        for i, item in enumerate(plan["next"], 1):
            lines.append(f"  {i:>4}. {item['model']:<{width}}  {item['checkpoint']:<18}  {item['when']}")
    else:
        lines.append("next: nothing is ready to run")
    if plan["waiting"]:
        lines.append("waiting:")
        for item in plan["waiting"]:
            lines.append(f"        {item['model']:<{width}}  {item['checkpoint'] or '':<18}  {item['why']}")
    lines.append(f"done: {plan['processed']} checkpoint(s) already processed (not listed)")
    return "\n".join(lines)
