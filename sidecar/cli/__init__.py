"""The command line. `eval-sidecar` (installed by pip) and `python eval_wandb_sidecar.py` (the
original tool's entry, flat flags) both land in `main`: it picks the subcommand, turns errors into
one line and an exit code, and never shows a traceback for a user's mistake.

Exit codes: 0 ok, 1 runtime error, 2 bad input or set-up (flag, config file, state file, a missing
package), 3 lock held, 4 `once`: an evaluation failed in this run (retried by the next run).
"""

from __future__ import annotations

import logging
import sys

from .. import __version__
from ..errors import EXIT_BAD_INPUT, EXIT_RUNTIME, SidecarError
from . import common

log = logging.getLogger("eval_wandb_sidecar")

COMMANDS = (
    ("watch", "watch the checkpoints and evaluate each new one (the default when flags come without a command)"),
    ("once", "evaluate every checkpoint that is ready, then exit (for cron)"),
    ("plan", "what the watch would run next, and why each other checkpoint waits"),
    ("status", "what has been evaluated, what waits and why, best and last results"),
    ("sync", "upload what the W&B server lacks (offline folders, unconfirmed rows)"),
    ("align", "align RL framework runs into one SwanLab project"),
)
# the pip package that provides an import name, where the two differ
PACKAGES = {"yaml": "PyYAML"}


def usage() -> str:
    width = max(len(name) for name, _ in COMMANDS) + 2
    lines = [f"usage: {common.PROG} [COMMAND] [flags]", "", "commands:"]
    lines += [f"  {name:<{width}}{text}" for name, text in COMMANDS]
    lines += ["", f"`{common.PROG} COMMAND --help` shows the flags of one command; "
                  f"`{common.PROG} --version` the version.", ""]
    return "\n".join(lines)


def dispatch(argv: list[str]) -> int:
    from .status import cmd_status
    from .sync import cmd_sync
    from .watch import cmd_once, cmd_plan, cmd_watch

    def align(rest):
        from ..align.command import cmd_align

        return cmd_align(rest, common.PROG, common.setup_logging)

    handlers = {"watch": cmd_watch, "once": cmd_once, "plan": cmd_plan, "status": cmd_status,
                "sync": cmd_sync, "align": align}
    if argv and argv[0] in ("--version", "-V"):
        print(f"{common.PROG} {__version__}")
        return 0
    if argv and argv[0] == "help" and len(argv) > 1:
        if argv[1] not in handlers:
            return unknown_command(argv[1], handlers)
        return handlers[argv[1]](["--help"])
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        print("The flags of the watch (the default command):\n")
        return cmd_watch(["--help"])
    if argv and not argv[0].startswith("-"):
        if argv[0] not in handlers:
            return unknown_command(argv[0], handlers)
        return handlers[argv[0]](argv[1:])
    if not argv:
        print(usage(), file=sys.stderr)
        return EXIT_BAD_INPUT
    return cmd_watch(argv)


def unknown_command(name: str, handlers: dict) -> int:
    import difflib

    close = difflib.get_close_matches(name, list(handlers), n=1, cutoff=0.5)
    hint = f"; did you mean `{close[0]}`?" if close else f"; the commands are {', '.join(handlers)}"
    print(f"{common.PROG}: error: unknown command {name!r}{hint}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if prog:
        common.PROG = prog
    try:
        return dispatch(argv)
    except SidecarError as exc:
        log.debug("error details", exc_info=True)
        print(f"{common.PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # argparse's --help
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `status | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except ModuleNotFoundError as exc:  # a package missing from this interpreter
        if (exc.name or "").split(".")[0] in ("sidecar", ""):
            return internal_error(exc)  # a file of the sidecar itself is missing: not a package to install
        log.debug("missing package", exc_info=True)
        name = (exc.name or "?").split(".")[0]
        package = PACKAGES.get(name, name)
        from pathlib import Path

        requirements = Path(__file__).resolve().parents[2] / "requirements.txt"  # a clone; not an installed copy
        what = f"-r {requirements}" if requirements.is_file() else package
        print(f"{common.PROG}: error: {sys.executable} lacks the Python package {package!r}: run "
              f"{sys.executable} -m pip install {what} (or start the sidecar with the "
              f"interpreter of a venv that has it)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        return internal_error(exc)


def internal_error(exc: Exception) -> int:
    """An internal error: one line here, the traceback at debug level."""
    log.debug("internal error", exc_info=exc)
    print(f"{common.PROG}: internal error: {type(exc).__name__}: {exc} (run with --log-level DEBUG for details)",
          file=sys.stderr)
    return EXIT_RUNTIME
