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
             "sent online but not confirmed. While its sidecar runs offline with --wandb-segment-minutes,\n"
             "the segments it has closed (--follow: as they close, until Ctrl-C or SIGTERM).\n"
             "Every flag of the watch is accepted; only those below matter.")
FOLLOW_SECONDS = 60.0


def follow_seconds(raw: str | None) -> float:
    """The poll interval of --follow (seconds, 0.1 to a day); ConfigError naming the value."""
    if raw is None:
        return FOLLOW_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"--follow-seconds: must be a number of seconds, got {raw!r}") from None
    if not 0.1 <= value <= 86400:  # NaN fails too
        raise ConfigError(f"--follow-seconds: must be from 0.1 to 86400 seconds, got {raw!r}")
    return value


def cmd_sync(argv: list[str]) -> int:
    from types import SimpleNamespace

    from ..config import flag_values, parse_summary_metrics

    extra = (STATE_FILE_FLAG, ("--dry-run", {"action": "store_true", "help": "print what would be uploaded"}),
             ("--original-wandb-dir", {"action": "append", "default": [], "metavar": "DIR",
                                       "help": "also look here for the original tool's offline folders"}),
             ("--follow", {"action": "store_true",
                           "help": "keep uploading the offline segments the sidecar closes (--wandb-segment-minutes) "
                                   "until Ctrl-C or SIGTERM; never takes the sidecar's lock"}),
             ("--follow-seconds", {"metavar": "S", "help": f"with --follow: look for closed segments every S seconds "
                                                           f"(default {FOLLOW_SECONDS:g})"}))
    args = vars(build_parser(f"{common.PROG} sync", extra, groups=SYNC_GROUPS,
                                     description=SYNC_TEXT).parse_args(argv))
    if args.get("models_root"):
        raise ConfigError("--models-root: sync uploads one model's runs; give that model's --sft-root and flags, or "
                          "--state-file FILE (`status --all` lists the state files of a fleet)")
    dry_run = bool(args.pop("dry_run", False))
    following = bool(args.pop("follow", False))
    every = follow_seconds(args.pop("follow_seconds", None))
    if following and dry_run:
        raise ConfigError("--follow: cannot be combined with --dry-run (which uploads nothing)")
    more = [Path(d).expanduser().resolve() for d in args.pop("original_wandb_dir", [])]
    flags = dict(args)
    flags.pop("state_file", None)
    values, _ = flag_values(flags, dict(os.environ), Path.cwd())
    setup_logging(values["log_level"])
    values["summary_metrics"], values["summary_lower_better"] = parse_summary_metrics(values["summary_metrics"])
    path, state, _, config = load_state_for(args)
    if state is None and not following:  # --follow waits for the sidecar's first segment
        print(f"no state file at {path}: nothing to sync", file=sys.stderr)
        return EXIT_RUNTIME
    require_wandb("online")
    from ..reporters.wandb import options_for
    from ..watch.state import ProcessLock, StateStore
    from ..watch.sync import FollowStop, follow, run_sync, sync_target

    repo = Path(values["repo_root"]).expanduser().resolve()
    search = [*more, repo / "wandb", Path.cwd() / "wandb", path.parent.parent.parent / "wandb"]
    if os.environ.get("WANDB_DIR"):
        search.insert(len(more), Path(os.environ["WANDB_DIR"]).expanduser().resolve() / "wandb")
    lock = ProcessLock(path.with_suffix(".lock"), values["lock_mode"])
    options = options_for(config or SimpleNamespace(**values), config.identity.wandb_config() if config else {})
    given = {dest: values[dest] for dest, env in (("wandb_project", "WANDB_PROJECT"), ("wandb_entity", "WANDB_ENTITY"))
             if dest in flags or os.environ.get(env)}
    options = replace(options, **(sync_target(state, given) if state is not None else {}))
    sync_lock = ProcessLock(path.with_suffix(".sync.lock"), values["lock_mode"])
    if following:
        stop = FollowStop()
        stop.install()
        return follow(StateStore(path), options, sync_lock, every, stop, given=given)
    return run_sync(StateStore(path), state, options, lock, search, dry_run=dry_run, sync_lock=sync_lock)


