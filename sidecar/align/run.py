"""Align mode (SPEC §6): fetch each framework's run, rename its metrics to the aligned set,
check which aligned metrics it lacks, and upload the new steps into one SwanLab project.

Frames are pandas DataFrames with an integer `step` column; all reshaping is vectorised.
Cloud reads go through the `apis` passed in (wandb.Api / swanlab.Api in production).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from .config import AlignConfig, Framework
from .record import UploadRecord, add_points, runs_of
from ..errors import ConfigError

log = logging.getLogger(__name__)

THROUGHPUT_INPUTS = ("perf/actor_train_tok_per_s", "perf/actor_train_time", "perf/step_time")
THROUGHPUT = "perf/throughput"


def step_key_for(metric: str, groups: dict) -> str:
    """The step key of a W&B metric: the first group whose prefix it has (else `_step`)."""
    for step_key, prefixes in groups.items():
        if any(metric.startswith(p) for p in prefixes):
            return step_key
    return "_step"


def wanted_keys(fw: Framework, aligned: tuple[str, ...]) -> list[str]:
    """Source metric names to fetch: the mapping's sources (or the aligned names), plus the
    throughput inputs when `n_gpus` is set."""
    keys = list(fw.mapping) if fw.mapping else []
    keys += [m for m in aligned if m not in keys]
    if fw.n_gpus:
        keys += [k for k in THROUGHPUT_INPUTS if k not in keys]
    return keys


def _last_per_step(frame, step_col: str = "step"):
    """One row per step: the last non-null value of every column (later rows win)."""
    import pandas as pd

    frame = frame.dropna(subset=[step_col])
    steps = pd.to_numeric(frame[step_col], errors="coerce")
    frame = frame.assign(**{step_col: steps})[steps.abs() < 2**62]  # drops NaN and infinite steps too
    frame[step_col] = frame[step_col].astype("int64")
    return frame.groupby(step_col, sort=True).last().reset_index()


def fetch_wandb(fw: Framework, keys: list[str], api, workers: int = 8, progress=None):
    """One `scan_history(keys=[key, step_key])` per metric (several keys together return only the
    rows holding all of them: wandb issue #5391), grouped by step key and outer-merged on `step`.
    `progress` (a Progress over the keys) advances as each metric arrives."""
    import pandas as pd

    run = api.run(fw.source)

    def one(key: str):
        step_key = step_key_for(key, fw.step_groups)
        rows = [(r.get(step_key), r.get(key)) for r in run.scan_history(keys=[key, step_key])]
        log.debug("%s: fetched %s (%d rows)", fw.name, key, len(rows))
        return step_key, key, pd.DataFrame(rows, columns=["step", key])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, key) for key in keys]
        for _ in as_completed(futures):  # progress moves here, on one thread
            if progress is not None:
                progress.advance()
        parts = [f.result() for f in futures]
    groups: dict[str, list] = {}
    for step_key, _key, part in parts:
        # one row per step first: a metric logged twice at a step would break the column join
        groups.setdefault(step_key, []).append(_last_per_step(part).set_index("step"))
    merged = None
    order = sorted(groups, key=lambda k: (k != "train/step", k))  # the train group is the base
    for step_key in order:
        group = pd.concat(groups[step_key], axis=1).reset_index()
        group = _last_per_step(group)
        group[step_key] = group["step"]  # the group's own step key, back-filled
        merged = group if merged is None else merged.merge(group, on="step", how="outer", suffixes=("", "_dup"))
    if merged is None:
        return pd.DataFrame({"step": pd.Series(dtype="int64")})
    merged = merged[[c for c in merged.columns if not c.endswith("_dup")]]
    return merged.sort_values("step").reset_index(drop=True)


def fetch_swanlab(fw: Framework, keys: list[str], api):
    """`swanlab.Api().run(exp_id).metrics(keys, all=True)`: full resolution, not the 1,500-point sample."""
    import pandas as pd

    exp = api.run(fw.source)
    result = exp.metrics(keys=keys, all=True)
    # swanlab 0.10 returns {"list": [{"key", "metrics": [{"step", "value", ...}]}, ...], ...}
    items = result.get("list", []) if isinstance(result, dict) else list(result)
    parts = []
    for item in items:
        key = item.get("key") if isinstance(item, dict) else getattr(item, "key", None)
        points = (item.get("metrics") if isinstance(item, dict) else getattr(item, "metrics", None)) or []
        if not key:
            continue
        steps = [p.get("step", p.get("index")) for p in points]
        values = [p.get("value", p.get("data")) for p in points]
        parts.append(_last_per_step(pd.DataFrame({"step": steps, key: values})).set_index("step"))
    if not parts:
        return pd.DataFrame({"step": pd.Series(dtype="int64")})
    return pd.concat(parts, axis=1).reset_index().sort_values("step").reset_index(drop=True)


def fetch_sidecar(fw: Framework):
    """Rows of a sidecar state file: step = checkpoint_step, metrics named as in metrics.json, and
    the training context of rows that have one (`train/epoch`, `train/loss`, ...)."""
    import pandas as pd

    from ..reporters.rows import ROW_FIELDS
    from ..watch.state import read_state

    state = read_state(Path(fw.source))
    if state is None:
        raise ConfigError(f"frameworks.{fw.name}.state_file: no state file at {fw.source}")
    rows = [{"step": s, **{k: v for k, v in r.items() if k not in ROW_FIELDS}} for s, r in sorted(state.rows.items())]
    return pd.DataFrame(rows) if rows else pd.DataFrame({"step": pd.Series(dtype="int64")})


def read_csv(path: Path, key_path: str):
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key_path}: cannot read CSV {path} ({str(exc).splitlines()[0][:200]})") from exc
    if "step" not in frame.columns:
        raise ConfigError(f"{key_path}: {path} has no 'step' column (columns: {', '.join(map(str, frame.columns[:8]))})")
    return frame


def add_throughput(frame, n_gpus: int | None):
    """SLIME: perf/throughput = tok_per_s * train_time / (step_time * n_gpus), where the inputs exist."""
    if not n_gpus or not all(c in frame.columns for c in THROUGHPUT_INPUTS):
        return frame
    tok, train, step = (frame[c] for c in THROUGHPUT_INPUTS)
    return frame.assign(**{THROUGHPUT: tok * train / (step * n_gpus)})


def to_aligned(frame, fw: Framework, aligned: tuple[str, ...]):
    """Rename to aligned names (mapping, or identity on aligned names), keep step + aligned
    columns, one row per integer step. Returns (frame, missing aligned metrics)."""
    frame = add_throughput(frame, fw.n_gpus)
    rename = {s: d for s, d in (fw.mapping or {}).items() if s in frame.columns}
    keep = {c: c for c in frame.columns if c in aligned and c not in rename.values()}
    columns = {**keep, **rename}
    out = frame[["step", *columns]].rename(columns=columns)
    out = out.loc[:, ~out.columns.duplicated(keep="last")]
    import pandas as pd

    for col in out.columns[1:]:  # a non-number cell is a missing value, never a crash in the upload
        out[col] = pd.to_numeric(out[col], errors="coerce")
    numbers = out.columns[1:]
    out[numbers] = out[numbers].where(out[numbers].abs() != float("inf"))
    out = _last_per_step(out)
    present = [m for m in aligned if m in out.columns and out[m].notna().any()]
    missing = [m for m in aligned if m not in present]
    out = out[["step", *present]]
    if present:  # a step with no aligned value is not a point (and must stay sendable later)
        out = out.dropna(how="all", subset=present)
    return out.reset_index(drop=True), missing


@dataclass
class FrameworkResult:
    name: str
    rows: int
    steps: tuple[int, int] | None
    present: list[str]
    missing: list[str]
    uploaded: int = 0


def load_frame(fw: Framework, cfg: AlignConfig, apis: dict, refresh: bool, every: float = 30.0,
               bar: bool | None = None):
    """The fetched frame of one framework; remote sources are cached in `output_file`. A remote
    fetch shows its progress (metrics fetched of those wanted; `every`, `bar`: see Progress) and
    logs a summary line."""
    from ..progress import Progress

    remote = fw.platform in ("wandb", "swanlab")
    if remote and fw.output_file.exists() and not refresh:
        log.info("%s: using the cache %s (--refresh to fetch again)", fw.name, fw.output_file)
        return read_csv(fw.output_file, f"frameworks.{fw.name}.output_file")
    keys = wanted_keys(fw, cfg.aligned_metrics)
    if remote:
        progress = Progress(f"{fw.name} fetch", len(keys), log, every=every, bar=bar, unit="metric")
        try:
            if fw.platform == "wandb":
                frame = fetch_wandb(fw, keys, apis["wandb"](), progress=progress)
            else:  # one call for every metric: SwanLab's read API takes them together
                frame = fetch_swanlab(fw, keys, apis["swanlab"]())
                progress.advance(len(keys))
        finally:
            summary = progress.close()
        log.info("%s, %d rows", summary, len(frame))
    elif fw.platform == "sidecar":
        frame = fetch_sidecar(fw)
    else:
        return read_csv(Path(fw.source), f"frameworks.{fw.name}.path")  # already a local CSV: no copy
    fw.output_file.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(fw.output_file, index=False)
    return frame


def uploaded_state_file(fw: Framework) -> Path:
    return Path(f"{fw.output_file}.uploaded.json")


def new_points(frame, sent: dict):
    """The frame reduced to values not sent yet: (step, metric) pairs already sent become NaN,
    and rows left with nothing are dropped."""
    import numpy as np

    if not sent or not len(frame):
        return frame
    out = frame.copy()
    steps = out["step"].to_numpy()
    for col in out.columns[1:]:
        done = sent.get(col)
        if done is not None and len(done):
            out.loc[np.isin(steps, done), col] = float("nan")
    return out.dropna(how="all", subset=list(out.columns[1:])).reset_index(drop=True)


def split_appendable(frame, sent: dict):
    """(points an append can add, {metric: steps it cannot}). After a resume SwanLab adds a metric's
    points only after the last step it holds of that metric: an earlier step is skipped, by the SDK
    and by the server alike (SwanHubX/SwanLab#1318, #1576). A metric the experiment lacks takes
    every step."""
    import numpy as np

    blocked = {}
    if not sent or not len(frame):
        return frame, blocked
    out = frame.copy()
    steps = out["step"].to_numpy()
    for col in out.columns[1:]:
        done = sent.get(col)
        if done is None or not len(done):
            continue
        late = out[col].notna().to_numpy() & (steps <= done[-1])
        if late.any():
            blocked[col] = np.unique(steps[late])
            out.loc[late, col] = float("nan")
    if blocked:
        out = out.dropna(how="all", subset=list(out.columns[1:])).reset_index(drop=True)
    return out, blocked


def describe_steps(by_metric: dict, metrics: int = 8, runs: int = 6) -> str:
    """`a/m2 steps 500..599, 700; a/m0 step 3` (the first few runs of the first few metrics)."""
    parts = []
    for metric, steps in list(by_metric.items())[:metrics]:
        spans = [f"{a}" if a == b else f"{a}..{b}" for a, b in runs_of(steps)]
        more = f" (+{len(spans) - runs} more runs)" if len(spans) > runs else ""
        word = "step" if len(steps) == 1 else "steps"
        parts.append(f"{metric} {word} {', '.join(spans[:runs])}{more}")
    if len(by_metric) > metrics:
        parts.append(f"and {len(by_metric) - metrics} more metrics")
    return "; ".join(parts)


@dataclass
class _Plan:
    """What one framework's upload will do: into which experiment, which points, which cannot."""
    fw: Framework  # with the experiment version it uploads to
    cfg: AlignConfig
    mode: str
    record: UploadRecord | None
    base: str  # the first experiment's target: the record's key for its version
    key: str  # this experiment's target
    exp_id: str
    old_id: str | None  # set by --rebuild: the experiment re-runs added to until now
    sent: dict
    send: object  # the frame of points to upload
    blocked: dict
    # unfinished uploads read back: (run folder, steps it holds, or None if it is gone)
    read_back: list = field(default_factory=list)


def _read_back(notes: list[dict]) -> tuple[list, dict]:
    """What the run folders of unfinished uploads hold: ([(folder, steps or None if it is gone)],
    {metric: steps})."""
    from .swanlab_io import logged_points

    found, points = [], {}
    for note in notes:
        path = Path(note["dir"])
        _wait_for_writer(note)
        held = logged_points(path)
        if held is not None:
            points = add_points(points, held)
        steps = None if held is None else len(set().union(*(set(v.tolist()) for v in held.values())))
        found.append((note["dir"], steps))
    return found, points


def _wait_for_writer(note: dict, quiet: float = 3.0, timeout: float = 60.0) -> None:
    """An upload process whose align was killed stops at its next step and finishes its SwanLab run:
    while it lives (and writes), its folder is not complete yet. Waits until it is gone, or its run
    file has not changed for `quiet` seconds, at most `timeout`."""
    import socket
    import time

    if note["host"] == socket.gethostname() and not _alive(note["pid"]):
        return
    deadline = time.monotonic() + timeout
    files = sorted(Path(note["dir"]).glob("run-*.swanlab"))
    while files and time.monotonic() < deadline:
        if note["host"] == socket.gethostname() and not _alive(note["pid"]):
            return
        try:
            if time.time() - files[0].stat().st_mtime >= quiet:
                return
        except OSError:
            return
        time.sleep(0.2)
    if files:
        log.warning("%s is still being written after %.0f s; reading what it holds now", note["dir"], timeout)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this very process: its earlier upload is over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _plan(fw: Framework, aligned, cfg: AlignConfig, mode: str, rebuild: bool) -> _Plan:
    from dataclasses import replace

    from .swanlab_io import experiment_id

    record = UploadRecord(uploaded_state_file(fw))
    base = f"{cfg.project}/{experiment_id(cfg.project, fw.name, fw.platform, fw.source)}/{mode}"
    version = record.version(base)
    old_id = None
    if rebuild:
        old_id = experiment_id(cfg.project, fw.name, fw.platform, fw.source, version)
        version += 1
    exp_id = experiment_id(cfg.project, fw.name, fw.platform, fw.source, version)
    key = f"{cfg.project}/{exp_id}/{mode}"
    sent = record.sent(key)
    read_back = []
    if record.open_notes(key):
        # an upload that did not finish (align stopped or killed): its run folder holds what SwanLab
        # wrote, which the record could not know; those points are sent, the rest is not
        read_back, held = _read_back(record.open_notes(key))
        sent = add_points(sent, held)
    send, blocked = split_appendable(new_points(aligned, sent), sent)
    return _Plan(replace(fw, experiment_version=version), cfg, mode, record, base, key, exp_id, old_id, sent, send,
                 blocked, read_back)


def blocked_line(plan: _Plan, sent_now: bool) -> str:
    count = sum(len(v) for v in plan.blocked.values())
    what = "not sent: they cannot be appended" if sent_now else "cannot be appended"
    return (f"{plan.fw.name}: {count} point(s) {what} to SwanLab experiment {plan.exp_id} (after a resume SwanLab "
            f"adds a metric's points only after its last step): {describe_steps(plan.blocked)}; run align with "
            f"--rebuild to upload every point into a fresh experiment")


def _read_back_lines(plan: _Plan, dry_run: bool) -> list[str]:
    lines = []
    for folder, steps in plan.read_back:
        if steps is None:
            lines.append(f"{plan.fw.name}: an earlier upload into SwanLab experiment {plan.exp_id} did not finish and "
                         f"its run folder {folder} is gone: its points are sent again")
        else:
            what = "would be recorded" if dry_run else "are recorded"
            lines.append(f"{plan.fw.name}: an earlier upload into SwanLab experiment {plan.exp_id} did not finish; "
                         f"the {steps} step(s) its run folder {folder} holds {what} as sent, the rest is sent")
    return lines


def run_align(cfg: AlignConfig, apis: dict, uploader, only: set[str] | None = None, dry_run: bool = False,
              refresh: bool = False, mode: str | None = None, rebuild: bool = False,
              out=print, jobs: int | None = 1, progress_every: float = 30.0, bar: bool | None = None,
              segment_rows: int | None = None) -> list[FrameworkResult]:
    """Fetch, map and check every enabled framework, then (unless dry-run) upload the points not
    sent yet that an append can add, and name those it cannot. `rebuild`: every point, into a fresh
    experiment per framework (the next experiment version; the old experiment is left as it is).
    Nothing is uploaded unless every framework loaded and every upload record was read: a bad
    source or record fails first. `uploader(fw, cfg, frame, mode)` uploads one framework (see
    events.py for what it reports); `jobs` of them run at a time, each in a process of its own when
    more than one (upload.py; None: default_jobs); `segment_rows`: rows per SwanLab run (default: one run offline and
    local, upload.CLOUD_SEGMENT_ROWS in cloud mode). Raises upload.AlignFailed when a framework's
    upload failed (the others completed), upload.AlignStopped after Ctrl-C / SIGTERM."""
    from .upload import FrameworkUpload, upload_all

    frameworks = [fw for fw in cfg.frameworks if not only or fw.name in only]
    if only and not frameworks:
        raise ConfigError(f"--only: no enabled framework named {', '.join(sorted(only))}")
    prepared = []
    for fw in frameworks:
        frame = load_frame(fw, cfg, apis, refresh, every=progress_every, bar=bar)
        aligned, missing = to_aligned(frame, fw, cfg.aligned_metrics)
        prepared.append((fw, aligned, missing))
    mode = mode or cfg.mode
    plans = [_plan(fw, aligned, cfg, mode, rebuild) if mode != "disabled" else None for fw, aligned, _ in prepared]
    results, uploads = [], []
    for (fw, aligned, missing), plan in zip(prepared, plans):
        steps = (int(aligned["step"].min()), int(aligned["step"].max())) if len(aligned) else None
        result = FrameworkResult(fw.name, len(aligned), steps, [c for c in aligned.columns if c != "step"], missing)
        check = (f"all {len(cfg.aligned_metrics)} aligned metrics present" if not missing
                 else f"missing {len(missing)} of {len(cfg.aligned_metrics)}: {', '.join(missing)}")
        span = f"steps {steps[0]}..{steps[1]}" if steps else "no steps"
        out(f"{fw.name} ({fw.platform}): {len(aligned)} rows, {span}; {check}")
        results.append(result)
        if plan is None:
            continue
        for line in _read_back_lines(plan, dry_run):
            out(line)
        if dry_run:
            if rebuild:
                out(f"{fw.name}: --rebuild would upload {len(plan.send)} step(s) into a fresh SwanLab experiment "
                    f"{plan.exp_id}; experiment {plan.old_id} would be left as it is")
            elif plan.blocked:
                out(blocked_line(plan, sent_now=False))
            continue
        if plan.read_back:
            _save(plan, plan.sent, open_notes=[])
        if len(plan.send):
            uploads.append((result, FrameworkUpload(plan, out, progress_every, bar)))
            continue
        if rebuild:  # recorded: re-runs add to the fresh experiment
            _save(plan, None)
        where = f"{cfg.project}/{fw.target_exp_name}"
        if rebuild:
            out(f"{fw.name}: uploaded 0 step(s) into a fresh SwanLab experiment {plan.exp_id} ({where}); re-runs add "
                f"to it; experiment {plan.old_id} is left as it was (delete it in SwanLab if you no longer want it)")
        else:
            out(f"{fw.name}: uploaded 0 step(s) with new values to {where}")
        if plan.blocked:
            out(blocked_line(plan, sent_now=True))
    if uploads:
        try:
            upload_all([u for _, u in uploads], uploader, jobs or default_jobs(len(uploads)), rebuild, segment_rows)
        finally:
            for result, u in uploads:
                result.uploaded = u.rows
    return results


def default_jobs(frameworks: int) -> int:
    """Every framework at once, at most 2 per CPU. One upload process is one core at most (the SDK's
    log and its writer thread share one interpreter lock), so 3 frameworks on 2 cores finish
    together in about 3/2 of one's time; 2 at a time would take 2 (one waits for a free slot)."""
    return max(1, min(frameworks, 2 * (os.cpu_count() or 1)))


def _save(plan: _Plan, sent, open_notes=None) -> None:
    from ..errors import SidecarError

    try:
        plan.record.save(plan.base, plan.fw.experiment_version, plan.key, sent, open_notes)
    except OSError as exc:
        raise SidecarError(f"{plan.fw.name}: the upload record {plan.record.path} cannot be written ({exc}); "
                           f"nothing was uploaded for it") from exc
