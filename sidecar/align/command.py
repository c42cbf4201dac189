"""The `align` subcommand's command line: flags, then `run_align`."""

from __future__ import annotations

import os
from pathlib import Path

PROGRESS_ENV = "SIDECAR_PROGRESS_SECONDS"  # the same variable as the watch's backfill progress
PROGRESS_SECONDS = 30.0  # align's default: its uploads take minutes


def cmd_align(argv: list[str], prog: str, setup_logging) -> int:
    from ..config import _Parser
    from ..errors import EXIT_OK

    parser = _Parser(prog=f"{prog} align", allow_abbrev=False,
                     description="Align RL framework runs and upload them into one SwanLab project.")
    parser.add_argument("--config", required=True, metavar="ALIGN.yaml")
    parser.add_argument("--only", default="", metavar="NAME,...", help="only these frameworks")
    parser.add_argument("--dry-run", action="store_true", help="fetch, map and check; upload nothing")
    parser.add_argument("--refresh", action="store_true", help="fetch again even if the cache exists")
    parser.add_argument("--rebuild", action="store_true",
                        help="upload every point into a fresh SwanLab experiment per framework (a new stable id; "
                             "the old experiment is left as it is)")
    parser.add_argument("--swanlab-mode", choices=("online", "cloud", "local", "offline", "disabled"))
    parser.add_argument("--jobs", type=_count("--jobs"), metavar="N",
                        help="frameworks uploaded at a time, each in a process of its own (default: all of them, "
                             "at most 2 per CPU); 1: one after another in this process")
    parser.add_argument("--progress-every", type=_seconds("--progress-every"), metavar="SECONDS",
                        help="when stderr is not a terminal, a progress line per framework this often (default: "
                             f"{PROGRESS_ENV} if set, else {PROGRESS_SECONDS:g}; on a terminal, a bar per framework)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    from ..reporters.wandb import make_wandb_api
    from .config import load_align_config
    from .run import run_align
    from .swanlab_io import make_api, upload

    config = load_align_config(Path(args.config).expanduser().resolve(), dict(os.environ), Path.cwd())
    only = {n.strip() for n in args.only.split(",") if n.strip()} or None
    apis = {"wandb": make_wandb_api(), "swanlab": make_api(config.swanlab_api_key)}
    if not args.dry_run and (args.swanlab_mode or config.mode) != "disabled":
        import importlib.util

        if importlib.util.find_spec("swanlab") is None:  # before any upload process would find out
            raise ModuleNotFoundError("No module named 'swanlab'", name="swanlab")
    every = args.progress_every
    if every is None:
        raw = os.environ.get(PROGRESS_ENV, "")
        every = _seconds(PROGRESS_ENV, raw)(raw) if raw.strip() else PROGRESS_SECONDS
    run_align(config, apis, upload, only=only, dry_run=args.dry_run, refresh=args.refresh,
              mode=args.swanlab_mode, rebuild=args.rebuild, out=_out(), jobs=args.jobs, progress_every=every)
    return EXIT_OK


def _out():
    """Lines to stdout; on a terminal through tqdm, so that they go above the progress bars."""
    import sys

    from ..progress import on_terminal

    if not on_terminal():
        return print
    from tqdm import tqdm

    return lambda text: tqdm.write(text, file=sys.stdout)


def _count(flag: str):
    def parse(text: str) -> int:
        from ..errors import ConfigError

        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"{flag}: expected a whole number from 1, got {text!r}")
        return value
    return parse


def _seconds(flag: str, env_value: str | None = None):
    def parse(text: str) -> float:
        from ..errors import ConfigError

        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            if env_value is not None:  # the environment's variable, as the watch names it
                raise ConfigError(f"{flag}={env_value!r}: expected a number of seconds above 0 "
                                  f"(default {PROGRESS_SECONDS:g})")
            raise ConfigError(f"{flag}: expected a number of seconds above 0, got {text!r}")
        return value
    return parse
