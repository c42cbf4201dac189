"""Acceptance 11: the README's commands work, CI runs exactly the README's test command."""

import re
import subprocess
import sys

from conftest import ROOT


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^    (python3 -m venv .+)$", readme, flags=re.M)
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "bash examples/demo.sh" in demo and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


def run_demo(tmp_path, script: str, folder: str) -> str:
    """Run a demo as a user would (a plain PATH, its own HOME); its output."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DEMO_DIR": str(tmp_path / folder),
           "PYTHON_BIN": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "examples" / script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_demo_evaluates_every_checkpoint_and_says_where_state_lives(tmp_path):
    out = run_demo(tmp_path, "demo.sh", "demo dir")
    for step in (100, 200, 300, 400, 500):
        assert re.search(rf"^\s+{step}\s+0\.\d{{4}}", out, flags=re.M), out
    assert "processed 5  pending 0  failed 0" in out
    assert f"state file    {tmp_path / 'demo dir'}/state/wandb_eval_sidecar/toy-grec-sft-cb16_" in out
    assert "evaluated checkpoint-500" in out and "watching" in out  # evaluated live, while watching
    assert "once: 0 evaluated, 0 reused (metrics.json existed), 0 failed" in out  # the second pass re-evaluates nothing


def test_fleet_demo_evaluates_three_models_at_once_and_lists_the_one_without_a_profile(tmp_path):
    out = run_demo(tmp_path, "demo_fleet.sh", "fleet demo")
    for model in ("Toy-grec-sft-cb16", "Beauty-grec-sft-cb64", "Toy-grec-rl-cb16"):
        assert re.search(rf"^{model}\s+3\s+0\s+0\s+0\s+300\s+0\.\d{{4}} @ \d+", out, flags=re.M), out
        for step in (100, 200, 300):
            assert f"model {model}: evaluated checkpoint-{step}" in out, out
    assert "Other-notes           no profile: no rule of profiles.yaml matches 'Other-notes'" in out
    assert "next: nothing is ready to run" in out and "done: 9 checkpoint(s) already processed" in out


def test_manager_script_passes_flags_through_from_any_folder(ws, tmp_path):
    ws.checkpoint(100)
    env = ws.env(PYTHON_BIN=sys.executable, SIDECAR_PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "eval_wandb_sidecar.sh"), "once", "--instance", "x y",
                             *ws.args()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ws.calls() == ["checkpoint-100"]
    result = subprocess.run(["bash", str(ROOT / "eval_wandb_sidecar.sh"), "status", *ws.args()], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not running" in result.stdout and "processed 1" in result.stdout
    result = subprocess.run(["bash", str(ROOT / "eval_wandb_sidecar.sh"), "bogus"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "unknown command 'bogus'" in result.stderr
