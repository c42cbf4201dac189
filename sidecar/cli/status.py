"""`status`: what the sidecar has done and why each waiting checkpoint waits (reads only)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..config import STATUS_GROUPS, build_config, build_parser
from ..errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME, ConfigError
from . import common
from .common import STATE_FILE_FLAG, load_state_for

STATUS_TEXT = ("What the sidecar has done for one configuration (the same identity flags as the watch, or\n"
               "--state-file), or for every model (--all). Every flag of the watch is accepted, so its command\n"
               "line can be reused as it is; only those below change what is read.")


def cmd_status(argv: list[str]) -> int:
    from sidecar.watch.status import format_rows, format_status, summarize

    extra = (STATE_FILE_FLAG,
             ("--json", {"action": "store_true", "help": "print JSON"}),
             ("--rows", {"action": "store_true", "help": "also print one line per evaluated checkpoint"}),
             ("--all", {"action": "store_true", "help": "one line per model: of the fleet (--models-root), "
                                                        "else of every state file in --state-dir"}),
             ("--model", {"metavar": "NAME", "help": "the full status of this model of the fleet or --state-dir"}))
    args = vars(build_parser(f"{common.PROG} status", extra, groups=STATUS_GROUPS,
                                     description=STATUS_TEXT).parse_args(argv))
    as_json = bool(args.pop("json", False))
    with_rows = bool(args.pop("rows", False))
    every, model = bool(args.pop("all", False)), args.pop("model", None)
    if hasattr(sys.stdout, "reconfigure"):
        # a path holding a byte that is not UTF-8 (Python's surrogate escape) prints as `\udcff`
        # instead of failing in a UTF-8 locale, whose stdout is strict
        sys.stdout.reconfigure(errors="backslashreplace")
    if every or model is not None or args.get("models_root"):
        return status_of_many(args, every, model, as_json, with_rows)
    path, state, mode, _ = load_state_for(args)
    if state is None:
        print(f"no state file at {path}: nothing has been evaluated for this configuration yet", file=sys.stderr)
        return EXIT_RUNTIME
    from sidecar.watch.state import legacy_synced

    info = summarize(state, time.time(), mode=mode, synced_elsewhere=frozenset(legacy_synced(path)))
    if as_json:
        if with_rows:
            info["rows"] = [state.rows[s] for s in sorted(state.rows)]
        print(json.dumps({"state_file": str(path), **info}, indent=2))
    else:
        print(format_status(info, str(path)))
        if with_rows:
            print(format_rows(state.rows))
    return EXIT_OK


def status_of_many(args: dict, every: bool, model: str | None, as_json: bool, with_rows: bool) -> int:
    """`status --all` / `--model NAME` (and `status` with fleet flags): the fleet's model folders
    when --models-root is given, else every state file in --state-dir."""
    from sidecar.fleet.overview import format_table, model_row, state_files
    from sidecar.fleet.tree import resolve_tree

    if args.pop("state_file", None):
        raise ConfigError("--state-file: names one state file; --all and --model read --state-dir (or the fleet)")
    if not args.get("models_root") and not args.get("config") and "sft_root" not in args:
        args["sft_root"] = "."  # only --state-dir matters here
    config = build_config(args, dict(os.environ), Path.cwd(), check_paths=False)
    mode = config.wandb_mode if config.reporting else "disabled"
    metric = config.summary_metrics[0]
    now = time.time()
    rows = []
    if config.models_root:
        for item in resolve_tree(config, args, dict(os.environ), Path.cwd(), check=False):
            if item.config is None:
                status, _, reason = item.problem.partition(": ")
                rows.append({"model": item.folder.name, "path": str(item.folder.path), "status": status,
                             "reason": reason, "state_file": None})
            else:
                rows.append(model_row(item.folder.name, item.config.state_file, now, metric, mode,
                                      str(item.folder.path)))
    else:
        rows = [model_row(name, path, now, metric, mode) for name, path in state_files(config.state_dir)]
    if model is not None:
        from sidecar.identity import sanitize

        rows = [r for r in rows if r["model"] in (model, sanitize(model))]
        if not rows:
            where = "under --models-root" if config.models_root else f"in {config.state_dir}"
            print(f"{common.PROG}: error: --model {model!r}: no such model {where}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if not every:
            return full_status(rows, mode, as_json, with_rows)
    if as_json:
        print(json.dumps({"models": rows}, indent=2))
    else:
        print(format_table(rows, metric))
    return EXIT_OK


def full_status(rows: list[dict], mode: str, as_json: bool, with_rows: bool) -> int:
    """The one-model status of each row (a model may have several configurations' state files)."""
    from sidecar.watch.state import read_state
    from sidecar.watch.status import format_rows, format_status, summarize

    out = []
    for row in rows:
        if not row.get("state_file"):
            out.append(row)
            if not as_json:
                print(f"{row['model']}: {row['status']}: {row['reason']}")
            continue
        path = Path(row["state_file"])
        state = read_state(path)
        if state is None:
            out.append(row)
            if not as_json:
                print(f"{row['model']}: no state file at {path}: nothing has been evaluated for it yet")
            continue
        info = {"model": row["model"], "state_file": str(path), **summarize(state, time.time(), mode=mode)}
        if with_rows:
            info["rows"] = [state.rows[s] for s in sorted(state.rows)]
        out.append(info)
        if not as_json:
            print(format_status(info, str(path)))
            if with_rows:
                print(format_rows(state.rows))
    if as_json:
        print(json.dumps(out[0] if len(out) == 1 else {"models": out}, indent=2))
    return EXIT_OK


