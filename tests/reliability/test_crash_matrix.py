"""Crash matrix: SIGKILL at every phase (EVAL_SIDECAR_CRASH_AT, the documented debug option), then a
restart finishes the work. Invariants: state parses; every ready checkpoint processed exactly once
in state; every processed row in the union of the offline W&B segments once or twice; no eval ran
more than twice for a step; no eval process left running."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import ENTRY, wait_for  # noqa: E402
from wandb_reader import eval_rows, segments  # noqa: E402

PHASES = ["after-discovery", "eval-running:2", "eval-finished:2", "metrics-read", "state-write:3", "state-write:5",
          "state-written", "wandb-row", "table-log", "shutdown"]


def sidecar(ws, *extra, env=None, timeout=180):
    args = [a for a in ws.args("--wandb-mode", "offline", *extra) if a != "--disable-wandb"]
    return subprocess.run([sys.executable, str(ENTRY), *args], env=env or ws.env(), capture_output=True, text=True,
                          timeout=timeout)


def stand_in_processes(ws) -> list[int]:
    """Processes whose environment names this test's stand-in control folder (eval children)."""
    found = []
    marker = f"STANDIN_CONTROL={ws.ctl}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes() and b"eval_wandb_sidecar.py" not in \
                    (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_at_each_phase_loses_nothing(ws, isolated_env, phase):
    for step in (100, 200, 300):
        ws.checkpoint(step)
    ws.mode(200, "slow")  # the 2nd eval is slow: an `eval-running:2` kill leaves it running, orphaned
    # killed while checkpoint-200's eval runs, that eval must be stopped by the restart (it would
    # outlive the check below on its own)
    env = ws.env(EVAL_SIDECAR_CRASH_AT=phase, STANDIN_SLOW="60" if phase.startswith("eval-running") else "2")
    first = sidecar(ws, "--once", env=env)
    assert first.returncode == -9, f"the crash point {phase} was not reached: {first.stderr[-600:]}"
    second = sidecar(ws, "--once", env=ws.env(STANDIN_SLOW="0"))
    assert second.returncode == 0, second.stderr
    state = ws.state()
    assert state["processed_steps"] == [100, 200, 300]
    assert [r["checkpoint_step"] for r in state["table_rows"]] == [100, 200, 300]
    assert state["unreported_steps"] == [] and state["in_flight"] == {}
    union = [r["checkpoint_step"] for seg in segments(isolated_env / "wandb_dir") for r in eval_rows(seg)]
    for step in (100, 200, 300):
        assert 1 <= union.count(step) <= 2, (phase, union)
        assert 1 <= ws.calls().count(f"checkpoint-{step}") <= 2, (phase, ws.calls())
    wait_for(lambda: stand_in_processes(ws) == [], timeout=15)
    assert not (ws.state_dir / "pins").exists()
