"""`plan` (and `--dry-run`): which checkpoints would run next, in order, and why each other one
waits. Read only: no lock is taken, nothing is written, no eval runs.

It asks what the sidecar asks (`plan.still_wanted`, the readiness check, the retry times, the
fleet's order) of the files as they are now. The quiet period is counted as the sidecar counts it:
from its own first look at the files, on its own clock (`readiness`). So with no sidecar running,
a checkpoint whose files are older than the quiet period is ready (a sidecar starting now takes it
after its short start-up confirmation), a younger one waits the full quiet period from a start's
first look. With a sidecar watching (the lock is held), a checkpoint is shown ready only when its
files had been still for the quiet period when that sidecar started (the lock file's time) and have
not changed since: that sidecar took it at its start-up confirmation. Any other one is in a quiet
period that sidecar counts from when it first saw the files as they are, which status cannot see:
not before they last changed (their newest modification or status change) and not before the
sidecar started, plus the quiet period.

With `--gpu-free-memory-mb` (recorded in the state for `status`; the flags for `plan`), a ready
checkpoint whose free slots lack that much GPU memory now waits for it ("gpu_memory"): status and
plan read nvidia-smi themselves, on this host, once per run (`gpu_memory.read_free_cached`). When
the watching sidecar runs on another host, its GPUs are not read from here.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..checkpoints import Checkpoint
from ..config import Config
from ..errors import SidecarError
from ..gpu_memory import GpuReadError, read_free_cached, short_gpus
from ..watch.discover import Discoverer, RootMissing
from ..watch.plan import Policy, still_wanted
from ..watch.readiness import ReadinessTracker, walk
from ..watch.state import State, read_state, utc_iso
from ..watch.status import clock_text, local_time
from .order import interleave
from .overview import watched_by


@dataclass(frozen=True)
class Wait:
    """Why one checkpoint has no result yet (or will get none): the one place that says so, for
    `plan` and `status`. `reason` is one word (JSON); `text` the words a user reads."""

    checkpoint: str
    step: int
    reason: str  # ready, gpu_memory, marker, quiet, shards, empty, retry, given_up, vanished, in_flight, unknown
    text: str
    until: float | None = None  # wall time the quiet period ends, or the retry is due
    attempt: int | None = None  # retry: the attempt that comes next; given up: the attempts made
    of: int | None = None  # --max-attempts
    marker: str | None = None
    missing: tuple[str, ...] = ()  # shards named by an index that are not there
    error: str | None = None  # the last attempt's error (retry, given up)
    by: str | None = None  # in flight: what runs it and since when
    started: str | None = None  # in flight: when its eval started (ISO, as the state has it)
    changed: float | None = None  # quiet: wall time its files last changed
    recorded: str | None = None  # vanished: when it was recorded (ISO, as the state has it)
    gpu_free: dict[int, int | None] | None = None  # gpu_memory: MiB free on the GPUs that lack it (None: not listed)
    needs_mb: int | None = None  # gpu_memory: --gpu-free-memory-mb

    @property
    def readiness(self) -> bool:
        """The checkpoint's files are not complete yet (as opposed to a retry, an eval, a record)."""
        return self.reason in ("marker", "quiet", "shards", "empty")

    def to_json(self) -> dict:
        out: dict = {"checkpoint": self.checkpoint, "step": self.step, "reason": self.reason, "text": self.text}
        if self.until is not None:
            out["until"] = utc_iso(self.until)
        if self.changed is not None:
            out["files_changed"] = utc_iso(self.changed)
        for name in ("attempt", "of", "marker", "error", "by", "started"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.recorded is not None:
            out["time"] = self.recorded
        if self.missing:
            out["missing"] = list(self.missing)
        if self.needs_mb is not None:
            out["needs_mb"] = self.needs_mb
            if self.gpu_free is not None:
                out["gpu_free_mb"] = {str(gpu): mb for gpu, mb in self.gpu_free.items()}
        return out


@dataclass(frozen=True)
class Rules:
    """What decides readiness and retries, as the sidecar has them."""

    marker: str | None
    quiet_seconds: float
    policy: Policy

    @classmethod
    def of(cls, config: Config) -> "Rules":
        from ..watch.pipeline import policy_for  # the watch's own, imported only where a Config has it

        return cls(config.ready_marker, config.checkpoint_ready_seconds, policy_for(config))


@dataclass
class Explained:
    processed: int = 0  # checkpoints on disk with a result
    ready: list[Checkpoint] = field(default_factory=list)  # ready now (or after the start-up confirmation)
    waits: list[Wait] = field(default_factory=list)  # the others, by step
    notes: dict[int, str] = field(default_factory=dict)  # why a ready one is ready, when it is worth saying


@dataclass(frozen=True)
class Watching:
    """The sidecar that holds a configuration's lock, as far as a reader can tell: `since` is the
    wall time it took the lock (the lock file's modification time; None when it cannot be read);
    `host` the host the lock file names (None when it names none)."""

    since: float | None = None
    host: str | None = None

    @classmethod
    def of(cls, lock_file: Path) -> "Watching":
        try:
            since: float | None = os.stat(lock_file).st_mtime
            lines = lock_file.read_text(encoding="utf-8", errors="replace").split("\n")
        except OSError:
            since, lines = None, []
        host = lines[1].strip() if len(lines) > 1 and lines[0].strip().isdigit() and lines[1].strip() else None
        return cls(since, host)


@dataclass(frozen=True)
class GpuWait:
    """Why ready checkpoints wait for GPU memory now (`gpu_wait`): `reason` "gpu_memory" (or
    "ready": the GPUs are another host's, not read), the words after "ready", and for JSON the
    free MiB of the GPUs that lack it (None: not read)."""

    reason: str
    text: str
    needs_mb: int
    free: dict[int, int | None] | None = None


def mib(value: int) -> str:
    return f"{value:,}"


def gpu_wait(need_mb: int, slots: list[str], busy: set[str], host: str | None = None) -> GpuWait | None:
    """A ready checkpoint waits for GPU memory when `need_mb` > 0 and none of the `slots` not in
    `busy` (their GPU lists) has `need_mb` MiB free on each of its GPUs, as nvidia-smi here says
    now; None when it does not (the option is off, a slot has room, or every slot is busy: it
    waits for a slot). `host`: the watching sidecar's host; another one's GPUs are not read."""
    idle = [slot for slot in slots if slot not in busy]
    if need_mb <= 0 or not idle:
        return None
    if host is not None and host != socket.gethostname():
        return GpuWait("ready", f"starts when a slot frees and its GPUs have {mib(need_mb)} MiB free "
                       f"(--gpu-free-memory-mb; the sidecar runs on host {host}: its GPUs are not read from here)",
                       need_mb)
    reading = read_free_cached()
    if isinstance(reading, GpuReadError):
        return GpuWait("gpu_memory", f"waiting for free GPU memory: it cannot be read ({reading}); needs "
                       f"{mib(need_mb)} MiB", need_mb)
    lacking: dict[int, int | None] = {}
    for slot in idle:
        short = short_gpus(slot, reading, need_mb)
        if not short:
            return None
        lacking.update(short)
    return GpuWait("gpu_memory", f"waiting for free GPU memory ({lacking_text(lacking, need_mb)})", need_mb, lacking)


def lacking_text(lacking: dict[int, int | None], need_mb: int) -> str:
    """`GPU 0: 1,200 MiB free, needs 20,000`."""
    gpus = ", ".join(f"GPU {gpu}: not listed by nvidia-smi" if mb is None else f"GPU {gpu}: {mib(mb)} MiB free"
                     for gpu, mb in sorted(lacking.items()))
    return f"{gpus}, needs {mib(need_mb)}"


def recorded_gpu_wait(state: State, watching: Watching | None) -> GpuWait | None:
    """`gpu_wait` by the settings the sidecar recorded in the state (`status`): its slots minus
    those its evals in flight hold (all of them when no sidecar runs: a start stops those)."""
    settings = state.settings
    need, slots = settings.get("gpu_free_memory_mb"), settings.get("gpu_slots")
    if not isinstance(need, int) or isinstance(need, bool) or need <= 0 or not isinstance(slots, list):
        return None
    slots = [s for s in slots if isinstance(s, str)]
    busy = {str(e.get("gpus")) for e in state.in_flight.values() if e.get("gpus")} if watching is not None else set()
    return gpu_wait(need, slots, busy, watching.host if watching is not None else None)


def last_change(folder: Path) -> float | None:
    """The newest modification or status change (ctime: set when a file is written, copied in or
    moved, whatever mtime it is given) of the folder and everything in it; None if it vanished."""
    newest = None
    stack = [folder]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            if path == folder:
                return None
            continue
        newest = max(newest or 0.0, st.st_mtime, st.st_ctime)
        if stat.S_ISDIR(st.st_mode):  # lstat: a symlink is not followed
            try:
                stack.extend(Path(e.path) for e in os.scandir(path))
            except OSError:
                continue
    return newest


def seconds_text(seconds: float) -> str:
    return f"{seconds:g} s"


def found_checkpoints(sft_root: Path, pins_dir: str | None) -> tuple[list[Checkpoint], set[int]]:
    """The checkpoints the sidecar would see: the folders under the root, plus pinned ones rotation
    deleted there (`--pin-checkpoints`); and the pinned steps (complete by construction). Raises
    RootMissing."""
    found = Discoverer(sft_root).scan()
    if not pins_dir:
        return found, set()
    from ..watch.pins import Pins

    pins = Pins(Path(pins_dir).parent.parent, Path(pins_dir).name).existing()
    steps = {c.step for c in found}
    return sorted(found + [p for p in pins if p.step not in steps]), {p.step for p in pins}


def explain(found: list[Checkpoint], state: State | None, rules: Rules, now_wall: float, now_mono: float,
            pinned: set[int] = frozenset(), look: bool = True, watching: Watching | None = None) -> Explained:
    """Sort the checkpoints as the sidecar would now (`plan.still_wanted`, the retry times, the
    readiness check): processed, ready, or waiting and why. `look`: the folders can be read (else
    readiness is not known: reason "unknown"). `watching`: a sidecar holds the lock (the quiet
    period is then that sidecar's, counted from its first look; else that of a sidecar starting now)."""
    out = Explained()
    policy = rules.policy
    failed = state.failed if state else {}
    in_flight = state.in_flight if state else {}
    readiness = ReadinessTracker(rules.quiet_seconds, rules.marker)
    for ckpt in found:
        step = ckpt.step
        if state is not None and not still_wanted(step, state, policy):
            if step in state.processed:
                out.processed += 1
            else:
                failure = failed[step]
                attempts = int(failure.get("attempts", 0))
                out.waits.append(Wait(ckpt.name, step, "given_up", f"given up after {attempts} attempt(s)",
                                      attempt=attempts, of=policy.max_attempts, error=failure.get("error", "")))
            continue
        if step in in_flight:
            entry = in_flight[step]
            who = f"Slurm job {entry['job_id']}" if entry.get("job_id") else f"pid {entry.get('pid', '?')}"
            started = entry.get("started_at")
            when = (clock_text(float(started), now_wall) if isinstance(started, (int, float))
                    else local_time(entry.get("started"), now_wall))
            by = f"{who}, started {when}"
            out.waits.append(Wait(ckpt.name, step, "in_flight", f"in flight ({by})", by=by,
                                  started=entry.get("started")))
            continue
        failure = failed.get(step)
        if failure is not None and float(failure.get("retry_after", 0.0)) > now_wall:
            until = float(failure["retry_after"])
            attempt = int(failure.get("attempts", 0)) + 1
            out.waits.append(Wait(ckpt.name, step, "retry", f"retry at {clock_text(until, now_wall)} (attempt "
                                  f"{attempt} of {policy.max_attempts})", until=until, attempt=attempt,
                                  of=policy.max_attempts, error=failure.get("error", "")))
            continue
        if step in pinned:
            out.ready.append(ckpt)
            continue
        if not look:
            out.waits.append(Wait(ckpt.name, step, "unknown", "pending (its folder cannot be read here)"))
            continue
        ok, reason, _ = readiness.check(step, ckpt.path, now_mono, now_wall, at_startup=True)
        if ok:  # the marker
            out.ready.append(ckpt)
        elif reason in ("confirming", "settling"):  # complete; only the quiet period decides
            wait, note = _quiet(ckpt, rules, now_wall, watching)
            if wait is None:
                out.ready.append(ckpt)
                if note:
                    out.notes[step] = note
            else:
                out.waits.append(wait)
        else:
            out.waits.append(_not_ready(ckpt, reason, rules, now_wall))
    return out


def _quiet(ckpt: Checkpoint, rules: Rules, now_wall: float, watching: Watching | None) -> tuple[Wait | None, str]:
    """A complete checkpoint without the marker: (None, why it is ready) when the sidecar takes it
    as soon as it looks (and has a slot), else (why it waits, "")."""
    snap = walk(ckpt.path)
    if snap is None:
        return Wait(ckpt.name, ckpt.step, "vanished", "vanished: deleted while being looked at"), ""
    quiet, name, step = rules.quiet_seconds, ckpt.name, ckpt.step
    if watching is None:
        # a sidecar starting now: files older than the quiet period are taken after the short
        # start-up confirmation, younger ones wait the quiet period from its first look
        dated = snap.newest_mtime
        if now_wall - dated >= quiet:
            return None, ""
        until = dated + quiet
        return Wait(name, step, "quiet", f"in its quiet period: its files changed {max(0.0, now_wall - dated):.0f} s "
                                         f"ago (at {clock_text(dated, now_wall)}); a sidecar that starts now waits "
                                         f"{seconds_text(quiet)} from its first look, one that starts from "
                                         f"{clock_text(until, now_wall)} on takes it after a short check",
                    until=until, changed=dated), ""
    changed = last_change(ckpt.path)
    if changed is None:
        return Wait(name, step, "vanished", "vanished: deleted while being looked at"), ""
    since = watching.since
    if since is not None and snap.newest_mtime + quiet <= since and changed <= since:
        # settled and unchanged since before the watching sidecar started: its start-up
        # confirmation took it
        return None, (f"its files had been still for {seconds_text(quiet)} when the watch started at "
                      f"{clock_text(since, now_wall)}")
    start = max(changed, since) if since is not None else changed
    until = start + quiet
    shown = since is not None and since > changed and clock_text(since, now_wall) != clock_text(changed, now_wall)
    started = f" and the watch started at {clock_text(since, now_wall)}" if shown else ""
    when = f"they last changed at {clock_text(changed, now_wall)}{started}"
    if now_wall < until:
        text = (f"in its quiet period: the watch starts it once its files have been still for {seconds_text(quiet)} "
                f"as it sees them ({when}, so not before {clock_text(until, now_wall)})")
    else:
        text = (f"in its quiet period or waiting for a slot: the watch starts it once it has seen its files still "
                f"for {seconds_text(quiet)} ({when}, so from {clock_text(until, now_wall)} on) and a slot is free")
    return Wait(name, step, "quiet", text, until=until, changed=changed), ""


def orphaned(wait: Wait) -> Wait:
    """An eval in flight whose sidecar is not running (a Slurm job may still be: it is followed again)."""
    return replace(wait, text=f"{wait.text}; a sidecar that starts settles it first")


def explain_state(state: State, rules: Rules, sft_root: Path | None, now_wall: float, now_mono: float,
                  watching: Watching | None) -> tuple[list[Wait], str]:
    """Every checkpoint of a state without a result, and why (`status`): as `explain` sees them on
    disk, the ready ones (`watching`: a sidecar runs for them), and the vanished ones of the state.
    When the root cannot be read here, the state's own record (and the second value says why)."""
    problem = ""
    try:
        if sft_root is None:
            raise RootMissing("")
        found, pinned = found_checkpoints(sft_root, state.pins_dir)
        look = True
    except RootMissing as exc:
        if sft_root is None:
            problem = ("the state file does not name its --sft-root (an older sidecar wrote it): the identity flags "
                       "show each folder; the reasons here are the state file's")
        else:
            problem = f"--sft-root {sft_root} cannot be read here ({exc}); the reasons here are the state file's"
        steps = (set(state.pending) | set(state.failed) | set(state.in_flight)) - state.processed - set(state.vanished)
        names = {s: str(state.failed.get(s, {}).get("checkpoint") or state.in_flight.get(s, {}).get("checkpoint")
                        or f"checkpoint-{s}") for s in steps}
        found, pinned, look = [Checkpoint(s, names[s], sft_root or Path(".")) for s in sorted(steps)], set(), False
    seen = explain(found, state, rules, now_wall, now_mono, pinned, look, watching)
    waits = [w if watching is not None or w.reason != "in_flight" else orphaned(w) for w in seen.waits]
    memory = recorded_gpu_wait(state, watching) if seen.ready else None
    for ckpt in seen.ready:
        if memory is not None:
            after = "" if watching is not None else ("; no sidecar is running for this configuration (`once` "
                                                     "evaluates it once a slot's GPUs have room)")
            joint = ", " if memory.reason == "gpu_memory" else "; "
            waits.append(Wait(ckpt.name, ckpt.step, memory.reason, f"ready{joint}{memory.text}{after}",
                              gpu_free=memory.free, needs_mb=memory.needs_mb))
            continue
        if watching is None:
            text = "ready; no sidecar is running for this configuration (`once` evaluates it)"
        elif ckpt.step in seen.notes:
            text = f"ready ({seen.notes[ckpt.step]}); starts when a slot frees"
        else:
            text = "ready; starts when a slot frees"
        waits.append(Wait(ckpt.name, ckpt.step, "ready", text))
    present = {c.step for c in found}
    for step, entry in state.vanished.items():
        if step not in present and step not in state.processed:
            when = local_time(entry.get("time"), now_wall)
            waits.append(Wait(str(entry.get("checkpoint") or f"checkpoint-{step}"), step, "vanished",
                              f"vanished: {entry.get('reason', 'deleted')} ({when})", recorded=entry.get("time")))
    return sorted(waits, key=lambda w: w.step), problem


def _not_ready(ckpt: Checkpoint, reason: str, rules: Rules, now_wall: float) -> Wait:
    name, step = ckpt.name, ckpt.step
    if reason.startswith("waiting for shards"):
        missing = tuple(reason.partition(": ")[2].split(", "))
        return Wait(name, step, "shards", f"shards named by the index are missing: {', '.join(missing)}",
                    missing=missing)
    if reason.startswith("waiting for marker"):
        return Wait(name, step, "marker", reason, marker=rules.marker)
    if reason == "empty":
        return Wait(name, step, "empty", "empty (no files)")
    if reason == "vanished":
        return Wait(name, step, "vanished", "vanished: deleted while being looked at")
    return Wait(name, step, "unknown", reason)


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


def preview_model(name: str, config: Config, now_wall: float, now_mono: float) -> ModelPreview:
    """What one model's pipeline would do with its checkpoints as they are now."""
    from ..watch.attribution import producer
    from ..watch.pipeline import policy_for

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
        found, pinned = found_checkpoints(config.sft_root, state.pins_dir if state else None)
    except RootMissing as exc:
        out.problem = f"--sft-root is missing or unreadable ({exc})"
        return out
    policy = policy_for(config)
    seen = explain(found, state, Rules.of(config), now_wall, now_mono, pinned,
                   watching=Watching.of(config.lock_file) if holder else None)
    out.processed = seen.processed
    for wait in seen.waits:
        if wait.reason == "in_flight" and holder:
            out.running.append((wait.checkpoint, wait.by or ""))
        elif wait.reason == "in_flight":
            out.waiting.append((wait.checkpoint, orphaned(wait).text))
        elif wait.reason == "given_up":
            out.waiting.append((wait.checkpoint, f"{wait.text}: {wait.error}"))
        else:
            prefix = wait.readiness and wait.reason != "quiet"  # "in its quiet period: ..." says it
            out.waiting.append((wait.checkpoint, f"not ready: {wait.text}" if prefix else wait.text))
    out.ready = sorted(seen.ready, key=lambda c: c.step, reverse=policy.order == "newest-first")
    for ckpt in out.ready:
        metrics = config.results_root / ckpt.parent_name / ckpt.name / "metrics.json"
        rerun = config.force_eval or ckpt.step in policy.force_steps
        if not rerun and metrics.is_file() and producer(metrics) in (None, config.identity.key):
            out.reused.add(ckpt.step)
    return out


def short_slots(models: list[ModelPreview]) -> tuple[set[int], str]:
    """With `--gpu-free-memory-mb` (local evals; as the first configured model has it): the slots
    whose GPUs lack that much free memory now, and why in words ("" when none does)."""
    config = next((m.config for m in models if m.config is not None), None)
    if config is None or config.executor != "local" or config.gpu_free_memory_mb <= 0:
        return set(), ""
    need, slots = config.gpu_free_memory_mb, list(config.gpu_slots)
    reading = read_free_cached()
    if isinstance(reading, GpuReadError):
        return set(range(len(slots))), f"free GPU memory cannot be read ({reading}); needs {mib(need)} MiB"
    lacking: dict[int, int | None] = {}
    refused = set()
    for i, slot in enumerate(slots):
        short = short_gpus(slot, reading, need)
        if short:
            refused.add(i)
            lacking.update(short)
    return refused, lacking_text(lacking, need) if lacking else ""


def preview(models: list[ModelPreview], slots: list[str], order: str, cap: int = 0) -> dict:
    """The fleet's order over the models' ready checkpoints: which run at once, which queue (with
    `--gpu-free-memory-mb`, slots whose GPUs lack the memory take none)."""
    planned = {m.name: m.ready for m in models if m.ready}
    by_name = {m.name: m for m in models}
    upcoming = []
    busy = sum(len(m.running) for m in models)  # a watching sidecar's evals hold slots now
    refused, short = short_slots(models)
    roomy = [i for i in range(len(slots)) if i not in refused]
    free = max(0, min(len(roomy), len(slots) - busy))
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
            slot = roomy[len(roomy) - free - 1] if not busy else 0  # slots in order while none is busy
            when = "starts at once on a free slot" if busy else f"starts at once on slot {slot + 1} ({slots[slot]})"
        elif refused and not roomy:
            when = f"when a slot's GPUs have room ({short})"
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
