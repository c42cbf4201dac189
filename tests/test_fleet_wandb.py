"""A fleet's W&B runs: one run per model, all in one sidecar process, offline (read back with
wandb's own reader) and online against the W&B server double on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ENTRY
from test_fleet import FleetTree
from wandb_reader import eval_rows, records, segments, summary
from wandb_server import WandbServer

KEY = "local0dummy0key0that0must0never0be0printed0"
MODELS = (("saves", "Toy-grec-sft-a", (1, 2)), ("saves", "Beauty-grec-sft-b", (10, 20, 30)),
          ("rl", "Toy-grec-rl-c", (100,)))


@pytest.fixture
def tree(tmp_path):
    t = FleetTree(tmp_path)
    for root, name, steps in MODELS:
        for step in steps:
            t.checkpoint((t.saves if root == "saves" else t.rl) / name, step)
    return t


def fleet_argv(tree, mode: str) -> list[str]:
    return [a for a in tree.args("--once", "--wandb-mode", mode, "--wandb-init-timeout", "10")
            if a != "--disable-wandb"]


def state_of(tree, name: str) -> dict:
    return json.loads(tree.state_file(name).read_text())


def test_offline_one_run_per_model_in_one_process_each_with_its_rows_and_summary(tree, isolated_env):
    done = subprocess.run([sys.executable, str(ENTRY), *fleet_argv(tree, "offline")], env=tree.env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    by_run = {}
    for seg in segments(isolated_env / "wandb_dir"):
        run = next(r["run"] for r in records(seg) if r["type"] == "run")
        by_run[run["run_id"]] = seg
    assert len(by_run) == 3
    pids = set()
    for _, name, steps in MODELS:
        state = state_of(tree, name)
        seg = by_run[state["run_id"]]
        assert [r["checkpoint_step"] for r in eval_rows(seg)] == list(steps)
        assert summary(seg)["summary"]["last_step"] == steps[-1]
        assert not state["unreported_steps"]
        pids |= {s["pid"] for s in state["wandb_segments"]}
    assert len(pids) == 1  # one sidecar process wrote every model's run


@pytest.fixture
def server():
    srv = WandbServer().start()
    yield srv
    srv.stop()


def test_online_every_models_rows_reach_the_server_once_and_are_confirmed(tree, server):
    env = {**tree.env(), "WANDB_BASE_URL": server.url, "WANDB_API_KEY": KEY, "WANDB_ERROR_REPORTING": "false"}
    env.pop("WANDB_MODE", None)
    done = subprocess.run([sys.executable, str(ENTRY), *fleet_argv(tree, "online")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stderr
    for _, name, steps in MODELS:
        state = state_of(tree, name)
        run = server.run(state["run_id"])
        assert [r["checkpoint_step"] for r in run.eval_rows()] == list(steps)  # each row once
        assert run.summary["last_step"] == steps[-1]
        assert run.config["model_name"]["value"] == name and run.complete and run.exit_code == 0
        assert not state.get("wandb_sent") and not state["unreported_steps"]  # confirmed by the server
