"""`sync`: make the W&B server hold every row of a state file, judged by the server (SPEC §4.3, §4.4).

1. Segments a killed sidecar left open are settled as at start-up.
2. The run is opened online: the server's history line count says which rows sent online before
   arrived; the rest, and rows no segment holds, are written again from the state file, with
   the table and summary. Online folders are never handed to `wandb sync` (it would resend rows
   the server already has, at the same `_step`).
3. Offline folders are uploaded with `wandb sync`, one at a time in start order: first the
   original tool's offline folders of the same run id (a state adopted from it), then the
   sidecar's own. A folder counts as synced only when the server's history grew by as many lines
   as the folder holds (`wandb sync` exits 0 even when it skipped a folder).
4. If anything was uploaded, the table and summary are written once more from all rows, so the
   server's final summary does not depend on the order the segments were written in.

The sidecar of this configuration must not be running (its lock is taken): two writers of one
run would make the server's line count useless as a judge.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from .errors import LockHeld
from .executor import run_command
from .report import Snapshot, apply_delivery, reconcile_state
from .state import State, StateStore, legacy_synced
from .wandb_reporter import (Outage, QueryUnsupported, WandbOptions, WandbReporter, _redact, _utc_now,
                             history_line_count, read_history)

ORIGINAL = "original tool"


@dataclass
class Upload:
    folder: Path
    segment: dict | None  # the sidecar's own segment record; None for an original tool's folder


def _folder_time(folder: Path) -> float:
    """Start time (epoch) from a run folder's name `offline-run-YYYYMMDD_HHMMSS-<id>` (local time)."""
    try:
        stamp = folder.name.split("-")[2]
        return datetime.strptime(stamp, "%Y%m%d_%H%M%S").timestamp()
    except (IndexError, ValueError):
        return folder.stat().st_mtime


def _iso_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        return None


def original_folders(state: State, search_dirs: list[Path]) -> list[Path]:
    """The original tool's offline folders of this run: `offline-run-*-<run id>` under the search
    folders, not a segment of ours, older than our first segment, not marked synced by wandb."""
    if not any(s.get("mode") == ORIGINAL and not s.get("synced") for s in state.segments):
        return []
    ours = {str(Path(s["dir"]).resolve()) for s in state.segments if s.get("dir")}
    starts = [t for t in (_iso_time(s.get("started", "")) for s in state.segments if s.get("dir")) if t]
    first_ours = min(starts) if starts else float("inf")
    found: dict[str, Path] = {}
    for base in search_dirs:
        for folder in sorted(base.glob(f"offline-run-*-{state.run_id}")) if base.is_dir() else ():
            real = str(folder.resolve())
            if real in ours or real in found or not folder.is_dir() or any(folder.glob("*.wandb.synced")):
                continue
            if _folder_time(folder) < first_ours:
                found[real] = folder
    return sorted(found.values(), key=_folder_time)


def plan_uploads(state: State, state_file: Path, search_dirs: list[Path]) -> list[Upload]:
    """The offline folders to upload, in the order they must reach the server."""
    done = legacy_synced(state_file)
    uploads = [Upload(folder, None) for folder in original_folders(state, search_dirs)]
    for seg in sorted(state.segments, key=lambda s: s.get("started", "")):
        if seg.get("mode") == "offline" and seg.get("dir") and not seg.get("synced") and seg["dir"] not in done:
            uploads.append(Upload(Path(seg["dir"]), seg))
    return uploads


def _sync_command(folder: Path, options: WandbOptions, entity: str | None) -> list[str]:
    argv = ["wandb", "sync", "-p", options.project]
    if entity:
        argv += ["-e", entity]
    return [*argv, str(folder)]


def _deliver(options: WandbOptions, state: State, snapshot: Snapshot) -> WandbReporter:
    """Run one online reporter over `snapshot` to the end and record what it did in state."""
    reporter = WandbReporter(options)
    reporter.bind(state.run_id, state.run_name)
    reporter.report(snapshot)
    reporter.close()
    for delivery in reporter.collect():
        apply_delivery(state, delivery)
    return reporter


class SyncFailed(Exception):
    """One line for the user; nothing more is recorded as synced."""


def run_sync(store: StateStore, state: State, options: WandbOptions, lock, search_dirs: list[Path],
             dry_run: bool = False, out=print) -> int:
    """Upload and seal (see the module docstring); returns an exit code (0 ok, 1 not delivered)."""
    options = replace(options, mode="online", fallback="none")
    for seg in state.segments:
        if seg.get("dir") in legacy_synced(store.path) and not seg.get("synced"):
            seg["synced"] = "recorded by an earlier version"
    uploads = plan_uploads(state, store.path, search_dirs)
    unsettled = [s for s in state.segments if not s.get("closed") and s.get("dir")]
    resend = len(state.unreported) + len(state.sent)
    if dry_run:
        for up in uploads:
            out(shlex.join(_sync_command(up.folder, options, options.entity)))
        if uploads or resend or unsettled:
            out(f"then write the table and summary of all {len(state.rows)} row(s) online"
                + (f", with the {resend} row(s) the server may lack" if resend else ""))
        else:
            out("nothing to sync: every row is confirmed by the server or in a synced folder")
        return 0
    if not uploads and not resend and not unsettled:
        out("nothing to sync: every row is confirmed by the server or in a synced folder")
        return 0
    try:
        lock.acquire()
    except LockHeld as exc:
        raise LockHeld(exc.path, exc.holder, "sync needs the sidecar of this configuration stopped (two writers of "
                                             "one run would confuse the server's count); stop it first") from exc
    try:
        try:
            _sync(store, state, options, uploads, search_dirs, out)
        except SyncFailed as exc:
            print(f"sync: {exc}", file=sys.stderr)
            return 1
        finally:
            store.save(state, datetime.now(timezone.utc).timestamp())
    finally:
        lock.release()
    return 0


def _sync(store: StateStore, state: State, options: WandbOptions, uploads: list[Upload], search_dirs: list[Path],
          out) -> None:
    reconcile_state(state, WandbReporter(options))
    ref = None
    if state.rows:
        first = _deliver(options, state, Snapshot({s: state.rows[s] for s in state.unreported if s in state.rows},
                                                  dict(state.rows), dict(state.sent), state.sent_run, seal=True))
        if not first.finished_cleanly:
            raise SyncFailed("the W&B server could not be written (see the warning above); nothing more was sent")
        ref = first.server
    uploaded = 0
    for up in uploads:
        items = read_history(up.folder)
        if items is None or not up.folder.is_dir():
            raise SyncFailed(f"cannot read the W&B folder {up.folder}; it is not uploaded")
        if any(up.folder.glob("*.wandb.synced")):
            out(f"{up.folder}: already uploaded by an earlier `wandb sync` (its .synced marker)")
        else:
            before = _count(ref)
            argv = _sync_command(up.folder, options, ref.entity if ref else options.entity)
            out(shlex.join(argv))
            code, _, err = run_command([sys.executable, "-m", *argv], timeout=24 * 3600, capture=False)
            if code != 0:
                raise SyncFailed(f"wandb sync exited {code} for {up.folder}; it is not recorded as synced")
            after = _count(ref)
            if before is not None and after is not None and after - before < len(items):
                raise SyncFailed(f"wandb sync did not upload {up.folder}: the server holds {after - before} of its "
                                 f"{len(items)} history line(s); it is not recorded as synced")
            if (before is None or after is None) and not any(up.folder.glob("*.wandb.synced")):
                raise SyncFailed(f"wandb sync left {up.folder} without its .synced marker; it is not recorded "
                                 f"as synced")
            uploaded += 1
        _record(state, up, items)
        store.save(state, datetime.now(timezone.utc).timestamp())
    for seg in state.segments:
        if seg.get("mode") == ORIGINAL and not seg.get("synced"):
            if not any(up.segment is None for up in uploads):
                out(f"no offline folder of the original tool's run {state.run_id} was found (looked in "
                    f"{', '.join(str(d) for d in search_dirs)}): if it ran online its rows are on the server; "
                    f"otherwise name its wandb folder with --original-wandb-dir DIR")
            seg["synced"] = _utc_now()
    if uploaded:
        last = _deliver(options, state, Snapshot({}, dict(state.rows), seal=True))
        if not last.finished_cleanly:
            raise SyncFailed("the folders are uploaded, but the final table and summary could not be written; "
                             "run sync again")
    out(f"synced: {uploaded} folder(s) uploaded; the server holds every row of {state.run_id} "
        f"({len(state.rows)} checkpoint(s)), with the table and summary of all of them")


def _count(ref) -> int | None:
    """The server's history line count, or None when it cannot be asked (the marker judges then)."""
    if ref is None:
        return None
    try:
        return history_line_count(ref)
    except QueryUnsupported:
        return None
    except Outage as exc:
        raise SyncFailed(f"the W&B server cannot be reached ({_redact(str(exc))})") from exc


def _record(state: State, up: Upload, items: list[dict]) -> None:
    now = _utc_now()
    if up.segment is not None:
        up.segment["synced"] = now
        return
    steps = sorted({int(i["checkpoint_step"]) for i in items if "eval/checkpoint_name" in i and "checkpoint_step" in i})
    started = datetime.fromtimestamp(_folder_time(up.folder), timezone.utc).replace(microsecond=0).isoformat()
    state.segments.append({"dir": str(up.folder), "mode": "offline", "origin": ORIGINAL, "started": started,
                           "closed": True, "steps": steps, "synced": now})
