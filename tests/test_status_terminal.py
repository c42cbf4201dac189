"""`status` in a real terminal: tmux runs it in a pane and the screen is read back (capture-pane),
so what is checked is what a user sees, after the terminal drew it."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ENTRY, wait_for

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def in_terminal(ws, tmux: list[str], name: str, env: dict, *variables: str) -> str:
    """The screen of a tmux pane that ran `status` (with these NAME=VALUE `variables`), as drawn."""
    command = shlex.join(["env", *variables, sys.executable, str(ENTRY), "status", *ws.args()])
    subprocess.run([*tmux, "new-session", "-d", "-s", name, "-x", "200", "-y", "50",
                    f"{command}; echo STATUS-DONE; sleep 60"], env=env, check=True, timeout=30)

    def drawn() -> str:
        out = subprocess.run([*tmux, "capture-pane", "-p", "-t", name], capture_output=True, text=True,
                             timeout=30).stdout
        return out if "STATUS-DONE" in out else ""

    return wait_for(drawn, timeout=60)


def test_the_sparkline_as_a_terminal_shows_it_in_blocks_or_in_ascii(ws, tmp_path):
    for step in range(100, 1300, 100):
        ws.checkpoint(step)
        ws.results(step).parent.mkdir(parents=True, exist_ok=True)
        ws.results(step).write_text(json.dumps({"HR@10": round(step / 100000 + 0.001, 4), "NDCG@10": 0.1}))
    assert ws.run("--once").returncode == 0
    socket = tmp_path / "tmux.sock"
    if len(str(socket)) > 100:  # a Unix socket's path holds at most 107 bytes
        socket = Path(tempfile.mkdtemp(prefix="st-")) / "tmux.sock"
    tmux = ["tmux", "-u", "-S", str(socket)]
    env = ws.env(LANG="C.UTF-8", LC_ALL="C.UTF-8", TERM="xterm-256color")
    env.pop("TMUX", None)  # the test runner's own tmux, if any, is not this server
    try:
        blocks = in_terminal(ws, tmux, "utf8", env)
        ascii = in_terminal(ws, tmux, "ascii", env, "PYTHONIOENCODING=ascii")  # a terminal without them
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)
    expected = "HR@10 curve   {}  steps 100-1200, min 0.0020, max 0.0130"
    assert expected.format("▁▂▂▃▄▄▅▅▆▇▇█") in blocks.splitlines(), blocks
    assert expected.format("_..-::==+**#") in ascii.splitlines(), ascii
