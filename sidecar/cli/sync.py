"""`sync`: upload what the W&B server lacks (offline folders, rows not confirmed)."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from ..config import SYNC_GROUPS, build_parser
from ..errors import EXIT_RUNTIME, ConfigError
from . import common
from .common import STATE_FILE_FLAG, load_state_for, require_wandb, setup_logging

SYNC_TEXT = ("Upload what the W&B server lacks for one configuration: its offline folders and any row\n"
             "sent online but not confirmed. Every flag of the watch is accepted; only those below matter.")


def cmd_sync(argv: list[str]) -> int:
    from types import SimpleNamespace

    from ..config import flag_values, parse_summary_metrics

    extra = (STATE_FILE_FLAG, ("--dry-run", {"action": "store_true", "help": "print what would be uploaded"}),
             ("--original-wandb-dir", {"action": "append", "default": [], "metavar": "DIR",
                                       "help": "also look here for the original tool's offline folders"}))
    args = vars(build_parser(f"{common.PROG} sync", extra, groups=SYNC_GROUPS,
                                     description=SYNC_TEXT).parse_args(argv))
    if args.get("models_root"):
        raise ConfigError("--models-root: sync uploads one model's runs; give that model's --sft-root and flags, or "
                          "--state-file FILE (`status --all` lists the state files of a fleet)")
    dry_run = bool(args.pop("dry_run", False))
    more = [Path(d).expanduser().resolve() for d in args.pop("original_wandb_dir", [])]
    flags = dict(args)
    flags.pop("state_file", None)
    values, _ = flag_values(flags, dict(os.environ), Path.cwd())
    setup_logging(values["log_level"])
    values["summary_metrics"], values["summary_lower_better"] = parse_summary_metrics(values["summary_metrics"])
    path, state, _, config = load_state_for(args)
    if state is None:
        print(f"no state file at {path}: nothing to sync", file=sys.stderr)
        return EXIT_RUNTIME
    require_wandb("online")
    from ..reporters.wandb import options_for
    from ..watch.state import ProcessLock, StateStore
    from ..watch.sync import run_sync, sync_target

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


