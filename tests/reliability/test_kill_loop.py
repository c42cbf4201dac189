"""A random kill -9 loop against a rotating trainer: 50 kills at random moments (seeded, so a
failure can be replayed), checkpoints arriving and being deleted (save_total_limit) all along,
evals in flight at many of the kills; then one calm --once. Every checkpoint a sidecar ever saw
ends processed or vanished, nothing stays in flight, no eval process is left running.

Real parts only: the sidecar CLI as a process, the stand-in eval in bash, real folders; the
randomness is a seeded RNG (the test prints the seed)."""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import process_gone, wait_for  # noqa: E402
from test_crash_matrix import stand_in_processes  # noqa: E402

KILLS = 50
KEEP = 4  # the trainer's save_total_limit
SEED = 20261201


def _state(ws) -> dict | None:
    files = ws.state_files()
    return json.loads(files[0].read_text()) if files else None


def test_fifty_random_kill_9s_with_rotation_leave_everything_settled(ws):
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    step, alive, created, seen = 0, [], [], set()
    args = ("--ready-marker", "trainer_state.json", "--poll-interval-seconds", "0.2")
    for _ in range(KILLS):
        proc = ws.start(*args, env=ws.env(STANDIN_SLOW="0.4"))
        deadline = time.monotonic() + rng.uniform(0.25, 1.0)
        while time.monotonic() < deadline:  # the trainer saves and rotates while the sidecar runs
            step += 10
            folder = ws.checkpoint(step, age=0, marker=False)
            ws.mode(step, "slow")
            (folder / "trainer_state.json").write_text("{}")  # the marker comes last, as the callback writes it
            created.append(step)
            alive.append(folder)
            while len(alive) > KEEP:
                shutil.rmtree(alive.pop(0))
            time.sleep(rng.uniform(0.05, 0.4))
        proc.kill()
        proc.wait()
        state = _state(ws)
        if state:
            seen |= set(state["pending_steps"]) | {int(s) for s in state["in_flight"]}
            seen |= set(state["processed_steps"]) | {int(s) for s in state["failed_steps"]}
    final = ws.run("--once", *args, env=ws.env(STANDIN_SLOW="0"), timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    state = _state(ws)
    settled = set(state["processed_steps"]) | {int(s) for s in state["vanished_steps"]}
    evaluated = {int(name.split("-")[1]) for name in ws.calls()}
    assert state["in_flight"] == {}
    assert (seen | evaluated) - settled == set(), "seen by a sidecar but neither processed nor vanished"
    assert {int(f.name.split("-")[1]) for f in alive} <= set(state["processed_steps"])
    assert state["failed_steps"] == {}
    wait_for(lambda: not stand_in_processes(ws), timeout=30)
    assert all(process_gone(p.pid) for p in ws.procs)
    print(f"{len(created)} checkpoints, {len(seen | evaluated)} seen, {len(state['processed_steps'])} processed, "
          f"{len(state['vanished_steps'])} vanished, {len(ws.calls())} eval runs")
