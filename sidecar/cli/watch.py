"""`watch` (the default), `once`, `plan` and fleet mode: run the loop, or show what it would run."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import time
from dataclasses import replace
from pathlib import Path

from .. import __version__
from ..clock import SystemClock
from ..config import build_config, build_parser, check_start_paths
from ..errors import EXIT_OK
from . import common
from .common import require_wandb, setup_logging

log = logging.getLogger("eval_wandb_sidecar")

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


def watch(sidecar, config, roots) -> int:
    """Run the loop (`--once`, or until stopped), then close; the exit code. A `once` run ends with
    one line counting what it did and exits EXIT_ONCE_FAILED (4) when an evaluation failed in it."""
    summary, code = "", EXIT_OK
    try:
        if config.once:
            sidecar.run_once()
            summary, code = sidecar.once_result()
        elif config.watch_mode == "poll":
            sidecar.run_forever()
        else:
            from sidecar.watch.watcher import Watcher

            markers = (config.ready_marker,) if config.ready_marker else ()
            sidecar.run_forever(watchers=tuple(Watcher(root, sidecar.notify, markers) for root in roots))
    finally:
        sidecar.close()
    if summary:  # after the close: the last line
        log.info("%s", summary)
    return code


WATCH_TEXT = ("Evaluate every new checkpoint once and report it to one W&B run.\n\n"
              "  {prog} --sft-root saves/my-model [flags]           watch until stopped (Ctrl-C, SIGTERM)\n"
              "  {prog} once --sft-root saves/my-model [flags]      evaluate what is ready, then exit (cron)")
PRINT_CONFIG_FLAG = ("--print-config", {"action": "store_true",
                                        "help": "print every effective value and where it came from "
                                                "(flag, environment, config file, default), then exit"})
DRY_RUN_FLAG = ("--dry-run", {"action": "store_true", "help": "print what would run next (as `plan`), then exit"})


def cmd_watch(argv: list[str], once: bool = False, description: str | None = None) -> int:
    """The watch (`once`: as with --once). Exit code: `watch`'s."""
    from sidecar.watch.service import Sidecar

    name = f"{common.PROG} once" if once else common.PROG
    parser = build_parser(name, (PRINT_CONFIG_FLAG, DRY_RUN_FLAG),
                          description=description or WATCH_TEXT.format(prog=common.PROG))
    args = vars(parser.parse_args(argv))
    if once:
        args["once"] = True
    if args.pop("print_config", False):
        return print_config(args)
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
    log_environment(args)
    return watch(sidecar, config, (config.sft_root,))


def cmd_once(argv: list[str]) -> int:
    return cmd_watch(argv, once=True, description=(
        f"Evaluate every checkpoint that is ready, then exit (for cron): the watch with --once.\n\n"
        f"  {common.PROG} once --sft-root saves/my-model [flags]"))


def environment_values(args: dict) -> list[tuple[str, str, str]]:
    """(flag, variable, value) for each value an environment variable supplies (the original's
    unprefixed names: a stray BATCH_SIZE in the shell changes the eval)."""
    from sidecar.config import FLAGS, flag_values

    sources: dict[str, str] = {}
    flag_values(args, dict(os.environ), Path.cwd(), sources)
    return [(f"--{f.name}", f.env, os.environ[f.env]) for f in FLAGS
            if f.env and sources.get(f.dest, "").startswith("environment")]


def log_environment(args: dict) -> None:
    given = environment_values(args)
    if given:
        log.info("from the environment: %s (a flag overrides; --print-config shows every value)",
                 ", ".join(f"{var}={value!r} sets {flag}" for flag, var, value in given))


def print_config(args: dict) -> int:
    """`--print-config`: every effective value, where it came from, and the derived identity."""
    from sidecar.config import FLAGS, flag_values

    sources: dict[str, str] = {}
    values, _ = flag_values(args, dict(os.environ), Path.cwd(), sources)
    config = build_config(args, dict(os.environ), Path.cwd(), check_paths=False)
    width = max(len(f.name) for f in FLAGS) + 2
    for flag in FLAGS:
        value, source = getattr(config, flag.dest, values[flag.dest]), sources[flag.dest]
        if flag.dest == "summary_metrics":
            value = ",".join(f"{m}:min" if m in config.summary_lower_better else m for m in value)
        elif flag.dest == "keep_best_metric":
            value = f"{value}:{'min' if config.keep_best_lower_better else 'max'}"
            if source == "default":
                source = "default: the first --summary-metrics"
        elif flag.dest == "gpu_slots":
            value = ";".join(slot.replace(" ", ",") for slot in value)
            if source == "default":
                source = f"default: one slot, --cuda-list ({sources['cuda_list']})"
        elif flag.dest == "sft_root" and config.models_root:
            value, source = None, "fleet mode: each model folder under --models-root"
        print(f"--{flag.name:<{width}} {shown(value):<40}  [{source}]")
    if not config.models_root:
        print(f"\nmodel config key {config.identity.key}\nstate file       {config.state_file}\n"
              f"W&B run id       {config.wandb_run_id or config.identity.default_run_id}")
    return EXIT_OK


def shown(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (frozenset, set)):
        return ",".join(str(v) for v in sorted(value)) or "-"
    if isinstance(value, tuple):
        return " ".join(shlex.quote(str(v)) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if str(value) != "" else "''"


def cmd_plan(argv: list[str]) -> int:
    extra = (("--json", {"action": "store_true", "help": "print JSON"}),)
    args = vars(build_parser(f"{common.PROG} plan", extra, description=(
        "What the watch would run next, in order over the slots, and why each other checkpoint waits\n"
        "(reads only; the same flags as the watch).")).parse_args(argv))
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
    log_environment(args)
    mode = "disabled" if not config.reporting else config.wandb_mode
    log.info("eval sidecar %s: fleet over %s; profiles %s; watch: %s; W&B mode %s", __version__,
             ", ".join(str(r) for r in config.models_root), config.profiles or "none (the command line's flags)",
             "once" if config.once else f"{config.watch_mode} (poll interval {config.poll_interval_seconds:g} s)", mode)
    try:
        fleet.start()
    except BaseException:
        fleet.close()
        raise
    return watch(fleet, config, config.models_root)


