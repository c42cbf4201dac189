"""The `align` subcommand's command line: flags, then `run_align`."""

from __future__ import annotations

import os
from pathlib import Path


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
    run_align(config, apis, upload, only=only, dry_run=args.dry_run, refresh=args.refresh,
              mode=args.swanlab_mode, rebuild=args.rebuild)
    return EXIT_OK
