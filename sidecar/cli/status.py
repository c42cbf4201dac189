"""`status`: what the sidecar has done and why each waiting checkpoint waits (reads only)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import STATUS_GROUPS, build_config, build_parser
from ..errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME, ConfigError
from ..watch.sparkline import can_show_blocks
from . import common
from .common import STATE_FILE_FLAG, load_state_for

if TYPE_CHECKING:
    from ..fleet.preview import Rules

STATUS_TEXT = ("What the sidecar has done for one configuration (the same identity flags as the watch, or\n"
               "--state-file), or for every model (--all), and why each checkpoint without a result waits. Every\n"
               "flag of the watch is accepted, so its command line can be reused as it is; only those below change\n"
               "what is read. Status judges by the settings the sidecar recorded in the state (its ready marker,\n"
               "quiet period, retry backoff, W&B mode, summary metrics); --summary-metrics given here shows\n"
               "others. The defaults below apply only to a state of an older release, which records none.")


def cmd_status(argv: list[str]) -> int:
    extra = (STATE_FILE_FLAG,
             ("--json", {"action": "store_true", "help": "print JSON"}),
             ("--rows", {"action": "store_true", "help": "also print one line per checkpoint: the metrics of each "
                                                        "evaluated one, why each other one waits"}),
             ("--all", {"action": "store_true", "help": "one line per model: of the fleet (--models-root), "
                                                        "else of every state file in --state-dir"}),
             ("--model", {"metavar": "NAME", "help": "the full status of this model of the fleet or --state-dir"}))
    args = vars(build_parser(f"{common.PROG} status", extra, groups=STATUS_GROUPS,
                                     description=STATUS_TEXT).parse_args(argv))
    as_json = bool(args.pop("json", False))
    with_rows = bool(args.pop("rows", False))
    every, model = bool(args.pop("all", False)), args.pop("model", None)
    ascii = not can_show_blocks(getattr(sys.stdout, "encoding", None))
    if hasattr(sys.stdout, "reconfigure"):
        # a path holding a byte that is not UTF-8 (Python's surrogate escape) prints as `\udcff`
        # instead of failing in a UTF-8 locale, whose stdout is strict
        sys.stdout.reconfigure(errors="backslashreplace")
    if every or model is not None or args.get("models_root"):
        return status_of_many(args, every, model, as_json, with_rows, ascii)
    path, state, mode, config = load_state_for(args)
    if state is None:
        print(f"no state file at {path}: nothing has been evaluated for this configuration yet", file=sys.stderr)
        others: list[dict] = []
        if config is not None:
            from sidecar.watch.status import format_others, other_configurations

            others = other_configurations(config.state_dir, config.identity.file_model, config.identity.payload, path)
            if others:
                print(format_others(others, config.identity.safe_model, config.state_dir), file=sys.stderr)
        if as_json:  # a script reading stdout gets an answer too
            listed = [{**o, "differs": None if o["differs"] is None else
                       [{"name": k, "here": here, "there": there} for k, here, there in o["differs"]]} for o in others]
            print(json.dumps({"state_file": str(path), "error": "no state file", "other_configurations": listed},
                             indent=2))
        return EXIT_RUNTIME
    from sidecar.watch.state import legacy_synced

    info = explained(path, state, Reading.of(args, state, config, mode),
                     synced_elsewhere=frozenset(legacy_synced(path)))
    show([(info, state)], as_json, with_rows, ascii)
    return EXIT_OK


@dataclass(frozen=True)
class Reading:
    """What one state is explained with: the summary metrics, the W&B mode, the readiness and
    retry rules and the root, each as the sidecar that wrote the state had it (its settings),
    else as the flags `status` got (a Config when they name a configuration) say, else the
    defaults. --summary-metrics given to status wins over the state's (it only changes the view)."""

    metrics: tuple[str, ...]
    lower_better: frozenset[str]
    mode: str
    rules: Rules
    sft_root: Path | None

    @classmethod
    def of(cls, args: dict, state, config=None, mode: str = "") -> Reading:
        from sidecar.config import parse_summary_metrics
        from sidecar.fleet.preview import Rules
        from sidecar.watch.plan import Policy
        from sidecar.watch.status import mode_of, summary_metrics_of

        values, given = given_metrics(args)
        if config is not None:
            fallback = (config.summary_metrics, config.summary_lower_better)
            values = {**values, **{k: getattr(config, k) for k in values if hasattr(config, k)}}
        else:
            fallback = parse_summary_metrics(values["summary_metrics"])
        metrics, lower = summary_metrics_of(state, given, fallback)
        flags_mode = "disabled" if values["disable_wandb"] or values["wandb_mode"] == "disabled" else values["wandb_mode"]
        mode = mode_of(state, flags_mode if config is not None else mode or flags_mode)
        settings = state.settings
        marker = settings.get("ready_marker", values["ready_marker"])
        quiet = _number(settings.get("checkpoint_ready_seconds"), values["checkpoint_ready_seconds"])
        backoff = _number(settings.get("retry_backoff_seconds"), values["retry_backoff_seconds"])
        policy = Policy(order=values["order"], max_attempts=state.max_attempts or values["max_attempts"],
                        backoff_seconds=backoff)
        root = config.sft_root if config is not None else None
        identity = settings.get("identity")
        if root is None and isinstance(identity, dict) and isinstance(identity.get("sft_root"), str):
            root = Path(identity["sft_root"])
        return cls(metrics, lower, mode, Rules(marker if isinstance(marker, str) and marker else None, quiet, policy),
                   root)


def given_metrics(args: dict) -> tuple[dict, tuple | None]:
    """The flags' values, and the --summary-metrics given to status (command line or --config
    file), parsed (`status.given_summary_metrics`); None when it is the default."""
    from sidecar.config import flag_values
    from sidecar.watch.status import given_summary_metrics

    sources: dict[str, str] = {}
    values, _ = flag_values(args, dict(os.environ), Path.cwd(), sources)
    if sources.get("summary_metrics", "default") == "default":
        return values, None
    return values, given_summary_metrics(values["summary_metrics"])


def _number(value, fallback: float) -> float:
    """A recorded number of seconds, or `fallback` when the record holds none (settings are never fatal)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    return float(value) if ok else fallback


def waiting_of(args: dict, path: Path, config):
    """`explain(state)` for `overview.model_row`: the checkpoints of that state without a result, and why."""
    from sidecar.fleet.preview import explain_state

    def explain(state) -> list[dict]:
        reading = Reading.of(dict(args), state, config)
        waits, _ = explain_state(state, reading.rules, reading.sft_root, time.time(), time.monotonic(),
                                 watching_of(path))
        return [w.to_json() for w in waits]

    return explain


def watching_of(path: Path, holder: str | None = ""):
    """The sidecar watching the state file `path` (`preview.Watching`: when it took the lock), or
    None when none holds its lock. `holder`: `overview.watched_by` of its lock, when known."""
    from sidecar.fleet.overview import watched_by
    from sidecar.fleet.preview import Watching

    lock = path.with_suffix(".lock")
    if holder == "":
        holder = watched_by(lock)
    return Watching.of(lock) if holder else None


def explained(path: Path, state, reading: Reading, synced_elsewhere: frozenset[str] = frozenset()) -> dict:
    """The status of one state file as `--json` prints it: `summarize` with each checkpoint without
    a result and why (`preview.explain_state`), who watches it and where its charts are."""
    from sidecar.fleet.overview import watched_by
    from sidecar.fleet.preview import explain_state
    from sidecar.watch.status import charts_of, kept_best, row_metric_names, summarize

    holder = watched_by(path.with_suffix(".lock"))
    waits, problem = explain_state(state, reading.rules, reading.sft_root, time.time(), time.monotonic(),
                                   watching_of(path, holder))
    info = summarize(state, time.time(), mode=reading.mode, synced_elsewhere=synced_elsewhere,
                     metrics=reading.metrics, lower_better=reading.lower_better,
                     waiting=[w.to_json() for w in waits])
    info["watched_by"] = holder
    info["charts"] = charts_of(state, reading.mode, dict(os.environ))
    info["kept_best"] = kept_best(state, path, reading.sft_root)
    if problem:
        info["sft_root_problem"] = problem
    if info["summary_missing"]:
        info["row_metrics"] = row_metric_names(state.rows)
    return {"state_file": str(path), **info}


def show(items: list[tuple[dict, object]], as_json: bool, with_rows: bool, ascii: bool) -> None:
    """Print each (status, state): as JSON (one object, or {"models": [...]}), else as text."""
    from sidecar.watch.status import format_rows, format_status

    if as_json:
        out = []
        for info, state in items:
            if with_rows and state is not None:
                info = {**info, "rows": [state.rows[s] for s in sorted(state.rows)]}
            out.append(info)
        print(json.dumps(out[0] if len(out) == 1 else {"models": out}, indent=2))
        return
    width = shutil.get_terminal_size((100, 24)).columns
    for info, state in items:
        if state is None:
            print(info["text"])
            continue
        print(format_status(info, info["state_file"], ascii=ascii, prog=common.PROG))
        if with_rows:
            metrics = tuple(m.rpartition(":")[0] if m.endswith(":min") else m for m in info["summary_metrics"])
            print(format_rows(state.rows, info["waiting"], metrics, width))


def status_of_many(args: dict, every: bool, model: str | None, as_json: bool, with_rows: bool,
                   ascii: bool = False) -> int:
    """`status --all` / `--model NAME` (and `status` with fleet flags): the fleet's model folders
    when --models-root is given, else every state file in --state-dir."""
    from sidecar.fleet.overview import by_model, format_table, model_row, state_files
    from sidecar.fleet.tree import resolve_tree

    if args.pop("state_file", None):
        raise ConfigError("--state-file: names one state file; --all and --model read --state-dir (or the fleet)")
    if not args.get("models_root") and not args.get("config") and "sft_root" not in args:
        args["sft_root"] = "."  # only --state-dir matters here
    config = build_config(args, dict(os.environ), Path.cwd(), check_paths=False)
    mode = config.wandb_mode if config.reporting else "disabled"
    _, given = given_metrics(args)
    now = time.time()
    rows = []
    configs: dict[str, object] = {}
    if config.models_root:
        for item in resolve_tree(config, args, dict(os.environ), Path.cwd(), check=False):
            if item.config is None:
                status, _, reason = item.problem.partition(": ")
                rows.append({"model": item.folder.name, "path": str(item.folder.path), "status": status,
                             "reason": reason, "state_file": None})
            else:
                c = item.config
                configs[str(c.state_file)] = c
                rows.append(model_row(item.folder.name, c.state_file, now, given, "disabled" if not c.reporting
                                      else c.wandb_mode, str(item.folder.path),
                                      fallback=(c.summary_metrics, c.summary_lower_better),
                                      explain=waiting_of(args, c.state_file, c)))
    else:
        rows = [model_row(name, path, now, given, mode, fallback=(config.summary_metrics, config.summary_lower_better),
                          explain=waiting_of(args, path, None))
                for name, path in state_files(config.state_dir)]
    rows = by_model(rows)
    if model is not None:
        from sidecar.identity import sanitize

        rows = [r for r in rows if r["model"] in (model, sanitize(model))]
        if not rows:
            where = "under --models-root" if config.models_root else f"in {config.state_dir}"
            print(f"{common.PROG}: error: --model {model!r}: no such model {where}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if not every:
            return full_status(rows, args, configs, mode, as_json, with_rows, ascii)
    if as_json:
        print(json.dumps({"models": rows}, indent=2))
    else:
        print(format_table(rows, config.summary_metrics[0] if given is None else given[0][0], ascii=ascii))
    return EXIT_OK


def full_status(rows: list[dict], args: dict, configs: dict, mode: str, as_json: bool, with_rows: bool,
                ascii: bool = False) -> int:
    """The one-model status of each row (a model may have several configurations' state files)."""
    from sidecar.watch.state import legacy_synced, read_state

    items: list[tuple[dict, object]] = []
    for row in rows:
        if not row.get("state_file"):
            items.append(({**row, "text": f"{row['model']}: {row['status']}: {row['reason']}"}, None))
            continue
        path = Path(row["state_file"])
        state = read_state(path)
        if state is None:
            items.append(({**row, "text": f"{row['model']}: no state file at {path}: nothing has been evaluated "
                                          f"for it yet"}, None))
            continue
        reading = Reading.of(dict(args), state, configs.get(str(path)), mode)
        items.append(({"model": row["model"], **explained(path, state, reading,
                                                          synced_elsewhere=frozenset(legacy_synced(path)))}, state))
    if as_json:
        items = [({k: v for k, v in info.items() if k != "text"}, state) for info, state in items]
    show(items, as_json, with_rows, ascii)
    return EXIT_OK
