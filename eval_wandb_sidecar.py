#!/usr/bin/env python3
"""eval sidecar, the original tool's entry point: `python eval_wandb_sidecar.py [COMMAND] [flags]`.

The same as the installed `eval-sidecar` command (sidecar/cli), with two differences kept for the
original tool's users: messages name this file, and --repo-root defaults to this file's folder
when the eval script is there (they keep both files in their repository and run them from anywhere).

    python eval_wandb_sidecar.py --sft-root saves/my-model [flags]     watch (or --once, or `once`)
    python eval_wandb_sidecar.py status [same identity flags | --state-file F] [--json]
    python eval_wandb_sidecar.py sync|plan|align ...                   see --help

Exit codes: 0 ok, 1 runtime error, 2 bad input or set-up, 3 lock held, 4 `once`: an eval failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PROG = "eval_wandb_sidecar.py"


def main(argv: list[str] | None = None) -> int:
    import sidecar.config
    from sidecar.cli import main as cli_main

    import os

    called = Path(os.path.abspath(__file__)).parent  # a symlink's own folder: the user's repository
    sidecar.config.ENTRY_DIRS = tuple(dict.fromkeys((called, HERE)))
    return cli_main(argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
