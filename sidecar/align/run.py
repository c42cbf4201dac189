"""Align mode (SPEC §6): fetch each framework's run, rename its metrics to the aligned set,
check which aligned metrics it lacks, and upload the new steps into one SwanLab project.

Frames are pandas DataFrames with an integer `step` column; all reshaping is vectorised.
Cloud reads go through the `apis` passed in (wandb.Api / swanlab.Api in production).
"""

from __future__ import annotations

import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .config import AlignConfig, Framework
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


def fetch_wandb(fw: Framework, keys: list[str], api, workers: int = 8, progress: bool = False):
    """One `scan_history(keys=[key, step_key])` per metric (several keys together return only the
    rows holding all of them: wandb issue #5391), grouped by step key and outer-merged on `step`."""
    import pandas as pd

    run = api.run(fw.source)

    def one(key: str):
        step_key = step_key_for(key, fw.step_groups)
        rows = [(r.get(step_key), r.get(key)) for r in run.scan_history(keys=[key, step_key])]
        if progress:
            log.info("%s: fetched %s (%d rows)", fw.name, key, len(rows))
        return step_key, key, pd.DataFrame(rows, columns=["step", key])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(one, keys))
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
    """Rows of a sidecar state file: step = checkpoint_step, metrics named as in metrics.json."""
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


def load_frame(fw: Framework, cfg: AlignConfig, apis: dict, refresh: bool):
    """The fetched frame of one framework; remote sources are cached in `output_file`."""
    remote = fw.platform in ("wandb", "swanlab")
    if remote and fw.output_file.exists() and not refresh:
        log.info("%s: using the cache %s (--refresh to fetch again)", fw.name, fw.output_file)
        return read_csv(fw.output_file, f"frameworks.{fw.name}.output_file")
    keys = wanted_keys(fw, cfg.aligned_metrics)
    if fw.platform == "wandb":
        frame = fetch_wandb(fw, keys, apis["wandb"](), progress=sys.stderr.isatty())
    elif fw.platform == "swanlab":
        frame = fetch_swanlab(fw, keys, apis["swanlab"]())
    elif fw.platform == "sidecar":
        frame = fetch_sidecar(fw)
    else:
        return read_csv(Path(fw.source), f"frameworks.{fw.name}.path")  # already a local CSV: no copy
    fw.output_file.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(fw.output_file, index=False)
    return frame


def uploaded_state_file(fw: Framework) -> Path:
    return Path(f"{fw.output_file}.uploaded.json")


def _bad_record(path: Path, why) -> ConfigError:
    return ConfigError(f"upload record {path} is not in the expected form ({why}); remove it to upload every "
                       f"point again")


class UploadRecord:
    """`<output_file>.uploaded.json`: what was sent where. `targets` maps "project/experiment id/mode"
    to {metric: [[first, last], ...]} runs of the steps sent (100,000 steps x 30 metrics is a few
    hundred bytes, not millions of pairs; the first format, a list of [step, metric] pairs, is still
    read). `versions` maps the first experiment's target to the experiment version re-runs add to
    (absent: 1, the first; `--rebuild` moves to the next)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            data = {"targets": {}}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"upload record {path} cannot be read ({exc}); remove it to upload every point "
                              f"again") from exc
        if not isinstance(data, dict):
            raise _bad_record(path, "the file must hold a JSON object")
        if not isinstance(data.get("targets", {}), dict):
            raise _bad_record(path, "'targets' must be an object")
        versions = data.get("versions", {})
        if not isinstance(versions, dict) or not all(type(v) is int and v >= 1 for v in versions.values()):
            raise _bad_record(path, "'versions' must map targets to whole numbers from 1")
        self.data = data

    def version(self, base: str) -> int:
        return self.data.get("versions", {}).get(base, 1)

    def sent(self, key: str) -> dict:
        """metric -> sorted steps (a numpy array) already sent to this target."""
        import numpy as np

        entry = self.data.get("targets", {}).get(key)
        try:
            if isinstance(entry, list):
                by_metric: dict[str, list[int]] = {}
                for step, metric in entry:
                    by_metric.setdefault(str(metric), []).append(int(step))
                return {m: np.unique(np.array(v, dtype=np.int64)) for m, v in by_metric.items()}
            if entry is None:
                return {}
            return {str(m): np.concatenate([np.arange(int(a), int(b) + 1, dtype=np.int64) for a, b in runs])
                    for m, runs in entry.items() if runs}
        except (TypeError, ValueError, AttributeError) as exc:
            raise _bad_record(self.path, exc) from exc

    def save(self, base: str, version: int, key: str, sent: dict | None) -> None:
        """Write this target's version and (if given) its sent steps; other targets are kept as
        the file holds them now."""
        from ..files import write_atomic

        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        if not isinstance(data.get("targets"), dict):
            data["targets"] = {}
        if not isinstance(data.get("versions"), dict):
            data["versions"] = {}
        if version > 1 or base in data["versions"]:
            data["versions"][base] = version
        if not data["versions"]:
            del data["versions"]
        if sent is not None:
            data["targets"][key] = {m: _runs(v) for m, v in sorted(sent.items())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data))
        self.data = data


def _runs(steps) -> list[list[int]]:
    """Sorted unique steps -> [[first, last], ...] runs of consecutive steps."""
    import numpy as np

    if not len(steps):
        return []
    breaks = np.flatnonzero(np.diff(steps) != 1)
    firsts = np.concatenate(([steps[0]], steps[breaks + 1]))
    lasts = np.concatenate((steps[breaks], [steps[-1]]))
    return [[int(a), int(b)] for a, b in zip(firsts, lasts)]


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
        spans = [f"{a}" if a == b else f"{a}..{b}" for a, b in _runs(steps)]
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
    record: UploadRecord | None
    base: str  # the first experiment's target: the record's key for its version
    key: str  # this experiment's target
    exp_id: str
    old_id: str | None  # set by --rebuild: the experiment re-runs added to until now
    sent: dict
    send: object  # the frame of points to upload
    blocked: dict


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
    send, blocked = split_appendable(new_points(aligned, sent), sent)
    return _Plan(replace(fw, experiment_version=version), record, base, key, exp_id, old_id, sent, send, blocked)


def _blocked_line(plan: _Plan, sent_now: bool) -> str:
    count = sum(len(v) for v in plan.blocked.values())
    what = "not sent: they cannot be appended" if sent_now else "cannot be appended"
    return (f"{plan.fw.name}: {count} point(s) {what} to SwanLab experiment {plan.exp_id} (after a resume SwanLab "
            f"adds a metric's points only after its last step): {describe_steps(plan.blocked)}; run align with "
            f"--rebuild to upload every point into a fresh experiment")


def run_align(cfg: AlignConfig, apis: dict, uploader, only: set[str] | None = None, dry_run: bool = False,
              refresh: bool = False, mode: str | None = None, rebuild: bool = False,
              out=print) -> list[FrameworkResult]:
    """Fetch, map and check every enabled framework, then (unless dry-run) upload the points not
    sent yet that an append can add, and name those it cannot. `rebuild`: every point, into a fresh
    experiment per framework (the next experiment version; the old experiment is left as it is).
    Nothing is uploaded unless every framework loaded and every upload record was read: a bad
    source or record fails first."""
    import numpy as np

    frameworks = [fw for fw in cfg.frameworks if not only or fw.name in only]
    if only and not frameworks:
        raise ConfigError(f"--only: no enabled framework named {', '.join(sorted(only))}")
    prepared = []
    for fw in frameworks:
        aligned, missing = to_aligned(load_frame(fw, cfg, apis, refresh), fw, cfg.aligned_metrics)
        prepared.append((fw, aligned, missing))
    mode = mode or cfg.mode
    plans = [_plan(fw, aligned, cfg, mode, rebuild) if mode != "disabled" else None for fw, aligned, _ in prepared]
    results = []
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
        if dry_run:
            if rebuild:
                out(f"{fw.name}: --rebuild would upload {len(plan.send)} step(s) into a fresh SwanLab experiment "
                    f"{plan.exp_id}; experiment {plan.old_id} would be left as it is")
            elif plan.blocked:
                out(_blocked_line(plan, sent_now=False))
            continue
        if rebuild:  # recorded first: a re-run after an interrupted rebuild completes the new experiment
            plan.record.save(plan.base, plan.fw.experiment_version, plan.key, None)
        new = plan.send
        if len(new):
            uploader(plan.fw, cfg, new, mode)
            sent = plan.sent
            for col in new.columns[1:]:
                added = new.loc[new[col].notna(), "step"].to_numpy(dtype="int64")
                sent[col] = np.union1d(sent[col], added) if col in sent else np.unique(added)
            plan.record.save(plan.base, plan.fw.experiment_version, plan.key, sent)
        result.uploaded = len(new)
        where = f"{cfg.project}/{fw.target_exp_name}"
        if rebuild:
            out(f"{fw.name}: uploaded {len(new)} step(s) into a fresh SwanLab experiment {plan.exp_id} ({where}); "
                f"re-runs add to it; experiment {plan.old_id} is left as it was (delete it in SwanLab if you "
                f"no longer want it)")
        else:
            out(f"{fw.name}: uploaded {len(new)} step(s) with new values to {where}")
        if plan.blocked:
            out(_blocked_line(plan, sent_now=True))
    return results
