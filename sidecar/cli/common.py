"""What every subcommand shares: the program name in messages, logging, the wandb check, reading a
state file by flags or by `--state-file`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..config import build_config
from ..errors import ConfigError

PROG = "eval-sidecar"  # `python eval_wandb_sidecar.py` sets its own name (main)

STATE_FILE_FLAG = ("--state-file", {"metavar": "FILE", "help": "read this state file instead of deriving it"})


def setup_logging(level: str) -> None:
    """Log lines to stderr; in fleet mode a line about one model starts with `model NAME: `."""
    from ..labels import ModelField

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="[%(asctime)s] [%(levelname)s] %(model)s%(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(ModelField())


def require_wandb(mode: str) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"--wandb-mode {mode}: the wandb package is not installed in {sys.executable} "
                          f"({sys.executable} -m pip install -r requirements.txt, or pass --disable-wandb)")


def load_state_for(args: dict):
    """(state file path, state, W&B mode, config or None) from `--state-file` or the identity
    flags; reads only. The mode is the one the state was written with when it recorded one."""
    from ..watch.state import read_state

    state_file = args.pop("state_file", None)
    mode, config = "", None
    if state_file:
        path = Path(state_file).expanduser().resolve()
    else:
        config = build_config(args, dict(os.environ), Path.cwd(), check_paths=False)
        path = config.state_file
        mode = config.wandb_mode if config.reporting else "disabled"
    state = read_state(path)
    if state is not None and state.settings.get("wandb_mode"):
        mode = str(state.settings["wandb_mode"])
    return path, state, mode, config
