#!/usr/bin/env python3
"""eval sidecar entry point: argument parsing, logging set-up, exit codes. No logic here.

    python eval_wandb_sidecar.py --sft-root saves/my-model [flags]     watch (or --once)
    python eval_wandb_sidecar.py status [same identity flags | --state-file F] [--json]
    python eval_wandb_sidecar.py sync [same identity flags | --state-file F] [--dry-run]
    python eval_wandb_sidecar.py plan [same flags as the watch] [--json]   (or the watch with --dry-run)
    python eval_wandb_sidecar.py --models-root saves --profiles profiles.yaml [flags]   fleet mode

Exit codes: 0 ok, 1 runtime error, 2 bad input (flag, config file, state file), 3 lock held.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sidecar import __version__  # noqa: E402
from sidecar.clock import SystemClock  # noqa: E402
from sidecar.config import build_config, build_parser, check_start_paths  # noqa: E402
from sidecar.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME, ConfigError, SidecarError  # noqa: E402

log = logging.getLogger("eval_wandb_sidecar")
PROG = "eval_wandb_sidecar.py"


def setup_logging(level: str) -> None:
    """Log lines to stderr; in fleet mode a line about one model starts with `model NAME: `."""
    from sidecar.labels import ModelField

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="[%(asctime)s] [%(levelname)s] %(model)s%(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(ModelField())


def make_reporter(config, shared: bool = False):
    """The W&B reporter for an enabled mode, else the null one (wandb is then never imported).
    `shared`: one of many runs open in this process (fleet mode)."""
    from sidecar.reporters.base import NullReporter

    if not config.reporting:
        return NullReporter()
    require_wandb(config.wandb_mode)
    from sidecar.reporters.wandb import WandbReporter, options_for

    options = options_for(config, config.identity.wandb_config())
    return WandbReporter(replace(options, shared=True) if shared else options)


def stopping_text(config) -> str:
    if config.executor == "slurm" and not config.slurm_cancel_on_exit:
        return "Slurm jobs in flight are left running; the next start re-attaches to them"
    if config.executor == "slurm":
        return "Slurm jobs in flight are cancelled and their checkpoints stay pending"
    return "a running eval is stopped and stays pending"


def stop_on_signals(sidecar, config) -> None:
    from sidecar.signals import relay_signals

    stopping = stopping_text(config)

    def on_signal(signum):
        log.info("received %s; stopping (%s)", signal.Signals(signum).name, stopping)
        sidecar.request_stop()

    relay_signals((signal.SIGTERM, signal.SIGINT), on_signal)


def watch(sidecar, config, roots) -> None:
    """Run the loop (`--once`, or until stopped), then close."""
    try:
        if config.once:
            done = sidecar.run_once()
            skipped = sidecar.skipped()
            log.info("--once: %d checkpoint(s) handled; nothing ready is left%s", done,
                     f" but in {len(skipped)} model(s) not evaluated: {'; '.join(skipped)}" if skipped else "")
        elif config.watch_mode == "poll":
            sidecar.run_forever()
        else:
            from sidecar.watch.watcher import Watcher

            markers = (config.ready_marker,) if config.ready_marker else ()
            sidecar.run_forever(watchers=tuple(Watcher(root, sidecar.notify, markers) for root in roots))
    finally:
        sidecar.close()


def require_wandb(mode: str) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"--wandb-mode {mode}: the wandb package is not installed "
                          f"(pip install -r requirements.txt, or pass --disable-wandb)")


def cmd_watch(argv: list[str]) -> int:
    from sidecar.watch.service import Sidecar

    args = vars(build_parser(PROG, (DRY_RUN_FLAG,)).parse_args(argv))
    if args.pop("dry_run", False):
        return show_plan(args, as_json=False)
    config = build_config(args, dict(os.environ), Path.cwd(), check_paths=False)
    if config.models_root:
        setup_logging(config.log_level)
        return cmd_fleet(config, args)
    check_start_paths(config)
    setup_logging(config.log_level)
    sidecar = Sidecar(config, SystemClock(), dict(os.environ), reporter=make_reporter(config))
    stop_on_signals(sidecar, config)
    sidecar.start()  # the lock and the state file: errors here are one line, before any banner
    mode = "disabled" if not config.reporting else config.wandb_mode
    log.info("eval sidecar %s: sft root %s", __version__, config.sft_root)
    log.info("state file %s (lock: %s); watch: %s; W&B mode %s; run id %s", config.state_file,
             sidecar.lock.kind, "once" if config.once else f"{config.watch_mode} (poll interval "
             f"{config.poll_interval_seconds:g} s)", mode, sidecar.state.run_id)
    watch(sidecar, config, (config.sft_root,))
    return EXIT_OK


DRY_RUN_FLAG = ("--dry-run", {"action": "store_true", "help": "print what would run next (as `plan`), then exit"})


def cmd_plan(argv: list[str]) -> int:
    extra = (("--json", {"action": "store_true", "help": "print JSON"}),)
    args = vars(build_parser(f"{PROG} plan", extra).parse_args(argv))
    return show_plan(args, as_json=bool(args.pop("json", False)))


def show_plan(args: dict, as_json: bool) -> int:
    """Which checkpoints the watch would run next, in order, and why each other one waits (reads only)."""
    from sidecar.config import check_common_paths
    from sidecar.fleet.preview import ModelPreview, format_preview, preview, preview_model
    from sidecar.fleet.tree import resolve_tree

    config = build_config(args, dict(os.environ), Path.cwd(), check_paths=False)
    now_wall, now_mono = time.time(), time.monotonic()
    if config.models_root:
        check_common_paths(config)
        models = [preview_model(item.folder.name, item.config, now_wall, now_mono) if item.config is not None
                  else ModelPreview(item.folder.name, None, item.problem)
                  for item in resolve_tree(config, args, dict(os.environ), Path.cwd())]
    else:
        check_start_paths(config)
        models = [preview_model(config.identity.safe_model, config, now_wall, now_mono)]
    if config.executor == "slurm":
        slots = [f"Slurm job {i + 1}" for i in range(config.max_parallel)]
    else:
        slots = [f"GPUs {s}" for s in config.gpu_slots]
    plan = preview(models, slots, config.order, config.max_parallel_per_model)
    print(json.dumps(plan, indent=2) if as_json else format_preview(plan, single=not config.models_root))
    return EXIT_OK


def cmd_fleet(config, args: dict) -> int:
    """Fleet mode: every model folder under the --models-root folders, each with its profile."""
    from sidecar.config import check_common_paths
    from sidecar.fleet.service import Fleet

    check_common_paths(config)
    if config.reporting:
        require_wandb(config.wandb_mode)
    fleet = Fleet(config, args, SystemClock(), dict(os.environ), lambda c: make_reporter(c, shared=True), Path.cwd())
    stop_on_signals(fleet, config)
    mode = "disabled" if not config.reporting else config.wandb_mode
    log.info("eval sidecar %s: fleet over %s; profiles %s; watch: %s; W&B mode %s", __version__,
             ", ".join(str(r) for r in config.models_root), config.profiles or "none (the command line's flags)",
             "once" if config.once else f"{config.watch_mode} (poll interval {config.poll_interval_seconds:g} s)", mode)
    try:
        fleet.start()
    except BaseException:
        fleet.close()
        raise
    watch(fleet, config, config.models_root)
    return EXIT_OK


STATE_FILE_FLAG = ("--state-file", {"metavar": "FILE", "help": "read this state file instead of deriving it"})


def load_state_for(args: dict):
    """(state file path, state, W&B mode, config or None) from `--state-file` or the identity
    flags; reads only."""
    from sidecar.watch.state import read_state

    state_file = args.pop("state_file", None)
    mode, config = "", None
    if state_file:
        path = Path(state_file).expanduser().resolve()
    else:
        config = build_config(args, dict(os.environ), Path.cwd(), check_paths=False)
        path = config.state_file
        mode = config.wandb_mode if config.reporting else "disabled"
    return path, read_state(path), mode, config


def cmd_status(argv: list[str]) -> int:
    from sidecar.watch.status import format_rows, format_status, summarize

    extra = (STATE_FILE_FLAG,
             ("--json", {"action": "store_true", "help": "print JSON"}),
             ("--rows", {"action": "store_true", "help": "also print one line per evaluated checkpoint"}),
             ("--all", {"action": "store_true", "help": "one line per model: of the fleet (--models-root), "
                                                        "else of every state file in --state-dir"}),
             ("--model", {"metavar": "NAME", "help": "the full status of this model of the fleet or --state-dir"}))
    args = vars(build_parser(f"{PROG} status", extra).parse_args(argv))
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
            print(f"{PROG}: error: --model {model!r}: no such model {where}", file=sys.stderr)
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


def cmd_sync(argv: list[str]) -> int:
    from types import SimpleNamespace

    from sidecar.config import flag_values, parse_summary_metrics

    extra = (STATE_FILE_FLAG, ("--dry-run", {"action": "store_true", "help": "print what would be uploaded"}),
             ("--original-wandb-dir", {"action": "append", "default": [], "metavar": "DIR",
                                       "help": "also look here for the original tool's offline folders"}))
    args = vars(build_parser(f"{PROG} sync", extra).parse_args(argv))
    if args.get("models_root"):
        raise ConfigError("--models-root: sync uploads one model's runs; give that model's --sft-root and flags, or "
                          "--state-file FILE (`status --all` lists the state files of a fleet)")
    dry_run = bool(args.pop("dry_run", False))
    more = [Path(d).expanduser().resolve() for d in args.pop("original_wandb_dir", [])]
    flags = dict(args)
    flags.pop("state_file", None)
    values, _ = flag_values(flags, dict(os.environ), Path.cwd())
    setup_logging(values["log_level"])
    values["summary_metrics"] = parse_summary_metrics(values["summary_metrics"])
    path, state, _, config = load_state_for(args)
    if state is None:
        print(f"no state file at {path}: nothing to sync", file=sys.stderr)
        return EXIT_RUNTIME
    require_wandb("online")
    from sidecar.watch.state import ProcessLock, StateStore
    from sidecar.reporters.wandb import options_for
    from sidecar.watch.sync import run_sync, sync_target

    repo = Path(values["repo_root"]).expanduser().resolve()
    search = [*more, repo / "wandb", Path.cwd() / "wandb", path.parent.parent.parent / "wandb"]
    if os.environ.get("WANDB_DIR"):
        search.insert(len(more), Path(os.environ["WANDB_DIR"]).expanduser().resolve() / "wandb")
    lock = ProcessLock(path.with_suffix(".lock"), values["lock_mode"])
    options = options_for(config or SimpleNamespace(**values), config.identity.wandb_config() if config else {})
    given = {dest: values[dest] for dest, env in (("wandb_project", "WANDB_PROJECT"), ("wandb_entity", "WANDB_ENTITY"))
             if dest in flags or os.environ.get(env)}
    options = replace(options, **sync_target(state, given))
    return run_sync(StateStore(path), state, options, lock, search, dry_run=dry_run)


def cmd_align(argv: list[str]) -> int:
    from sidecar.align.command import cmd_align as run

    return run(argv, PROG, setup_logging)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "status":
            return cmd_status(argv[1:])
        if argv and argv[0] == "sync":
            return cmd_sync(argv[1:])
        if argv and argv[0] == "align":
            return cmd_align(argv[1:])
        if argv and argv[0] == "plan":
            return cmd_plan(argv[1:])
        return cmd_watch(argv)
    except SidecarError as exc:
        log.debug("error details", exc_info=True)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an internal error: one line here, the traceback at debug level
        log.debug("internal error", exc_info=True)
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (run with --log-level DEBUG for details)",
              file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
