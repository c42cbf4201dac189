"""A backfill (many checkpoints ready at once) shows one progress instead of a line per checkpoint:
a tqdm bar with N/M on a terminal (a real tmux session), a periodic line in a log file (stderr to
a file), one summary line at the end; the live case (a few checkpoints) keeps its INFO lines.

Everything is real: the sidecar as a process, a small bash eval script that takes ~0.1 s, a
terminal from tmux. The tests wait for what shows on screen, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import ENTRY, wait_for
from test_fleet import FleetTree

# The eval: a short sleep (so the bar has time to show), then the metrics.json the sidecar reads.
EVAL = """\
sleep 0.1
out="results/$(basename "$(dirname "$CKPT_LIST")")/$(basename "$CKPT_LIST")"
mkdir -p "$out" && printf '{"HR@10": 0.25, "NDCG@10": 0.125}' > "$out/metrics.json"
"""
PER_CHECKPOINT = re.compile(r"\[INFO\] (evaluating|evaluated|recorded existing metrics of) checkpoint-")


def eval_script(ws):
    script = ws.repo / "quick eval.sh"
    script.write_text(EVAL)
    return script


def reuse(ws, step: int) -> None:
    """A metrics.json already there (a restart over evaluated checkpoints)."""
    ws.results(step).parent.mkdir(parents=True, exist_ok=True)
    ws.results(step).write_text(json.dumps({"HR@10": 0.5, "NDCG@10": 0.25}))


class Tmux:
    """A private tmux server (its own socket, no config file) with one 120x30 window."""

    def __init__(self, env: dict[str, str]) -> None:
        self.base = ["tmux", "-L", f"sidecar-test-{os.getpid()}-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]
        self.env = {k: v for k, v in env.items() if k not in ("TMUX", "TMUX_PANE")}

    def run(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-x", "120", "-y", "30", "-s", "t", command)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-J", "-S", "-100", "-t", "t")

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], env=self.env, capture_output=True, timeout=30)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_backfill_on_a_terminal_shows_a_bar_with_n_of_m_and_ends_with_the_summary(ws, tmp_path):
    for step in range(1, 23):
        ws.checkpoint(step)
    argv = [sys.executable, str(ENTRY), "once", *ws.args("--eval-script", str(eval_script(ws)))]
    runner = tmp_path / "run.sh"
    runner.write_text(f"{shlex.join(argv)} 2>&1\necho \"[exit $?]\"\nexec cat\n")  # keeps the pane open
    tmux = Tmux(ws.env())
    try:
        tmux.start(f"bash {shlex.quote(str(runner))}")
        # the bar with N/M while it runs: `backfill:  41%|████▌      |  9/22 [00:01<00:02, ...]`
        partial = wait_for(lambda: re.search(r"backfill:\s+\d+%\|.*\| ?([0-9]|1[0-9]|2[01])/22 \[", tmux.screen()),
                           timeout=60, interval=0.05)
        assert int(partial.group(1)) < 22
        wait_for(lambda: "[exit " in tmux.screen(), timeout=120)
        screen = tmux.screen()
    finally:
        tmux.kill()
    assert "[exit 0]" in screen, screen
    assert re.search(r"backfill: 100%\|.*\| 22/22 \[", screen), screen  # the finished bar stays
    lines = [line for line in screen.splitlines() if line.strip()]
    assert re.search(r"\[INFO\] backfill: 22/22 checkpoints in \d+s \(22 evaluated, 0 reused, 0 failed\)$", lines[-3])
    assert lines[-2].endswith("[INFO] once: 22 evaluated, 0 reused (metrics.json existed), 0 failed, "
                              "0 waiting (not ready yet)"), screen
    assert not PER_CHECKPOINT.search(screen), screen


def test_a_backfill_in_a_log_has_a_periodic_line_one_summary_and_no_line_per_checkpoint(ws):
    for step in range(1, 31):
        ws.checkpoint(step)
        if step <= 24:
            reuse(ws, step)  # 24 restarts' worth of metrics.json, 6 to evaluate
    log = ws.ctl / "sidecar.log"
    with open(log, "w") as err:
        done = subprocess.run([sys.executable, str(ENTRY), *ws.args("--once", "--eval-script", str(eval_script(ws)))],
                              env=ws.env(SIDECAR_PROGRESS_SECONDS="0.1"), stdout=subprocess.DEVNULL, stderr=err,
                              timeout=120)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "[INFO] backfill: 30 checkpoints are ready at once; a progress line at most every 0.1 s" in text, text
    periodic = re.findall(r"\[INFO\] backfill: (\d+)/30 checkpoints \(\d+%\), \d+s so far, ETA \S+$", text, flags=re.M)
    assert periodic and all(int(n) < 30 for n in periodic), text
    lines = text.splitlines()
    assert re.search(r"\[INFO\] backfill: 30/30 checkpoints in \d+s \(6 evaluated, 24 reused, 0 failed\)$", lines[-2])
    assert lines[-1].endswith("once: 6 evaluated, 24 reused (metrics.json existed), 0 failed, 0 waiting (not ready yet)")
    assert not PER_CHECKPOINT.search(text), text
    assert "\r" not in text and "█" not in text  # no bar in a file
    assert sorted(json.loads(ws.state_files()[0].read_text())["processed_steps"]) == list(range(1, 31))


def test_a_few_new_checkpoints_keep_one_info_line_each(ws):
    for step in (100, 200, 300):
        ws.checkpoint(step)
    reuse(ws, 100)
    done = ws.run("--once", "--eval-script", str(eval_script(ws)), env=ws.env(SIDECAR_PROGRESS_SECONDS="0.1"))
    assert done.returncode == 0, done.stderr
    assert "[INFO] recorded existing metrics of checkpoint-100: HR@10=0.5, NDCG@10=0.25" in done.stderr
    for step in (200, 300):
        assert f"[INFO] evaluating checkpoint-{step} on GPUs 0 (log: " in done.stderr
        assert f"[INFO] evaluated checkpoint-{step}: HR@10=0.25, NDCG@10=0.125" in done.stderr
    assert "backfill" not in done.stderr
    assert done.stderr.splitlines()[-1].endswith(
        "once: 2 evaluated, 1 reused (metrics.json existed), 0 failed, 0 waiting (not ready yet)")


def test_a_fleet_backfill_is_one_progress_over_every_model(tmp_path):
    tree = FleetTree(tmp_path)
    models = (tree.saves / "Toy-grec-sft-a", tree.rl / "Beauty-grec-rl-b")
    for model in models:
        for step in range(1, 13):
            tree.checkpoint(model, step)
            metrics = tree.repo / "results" / model.name / f"checkpoint-{step}" / "metrics.json"
            metrics.parent.mkdir(parents=True)
            metrics.write_text(json.dumps({"HR@10": 0.5}))
    done = tree.run(*tree.args("--once"))
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert err.count("backfill: 24 checkpoints are ready at once") == 1, err
    assert re.search(r"\] \[INFO\] backfill: 24/24 checkpoints in \d+s of 2 models \(0 evaluated, 24 reused, 0 failed\)$",
                     err, flags=re.M), err  # the fleet's line: no model prefix
    assert "recorded existing metrics" not in err
    assert err.splitlines()[-1].endswith("once: 0 evaluated, 24 reused (metrics.json existed), 0 failed, "
                                         "0 waiting (not ready yet)")
    for model in models:
        assert tree.processed(model.name) == list(range(1, 13))
    again = tree.run(*tree.args("--once", "--force-eval"))  # nothing new: one line for the fleet says what would
    assert again.returncode == 0, again.stderr
    hint = [line for line in again.stderr.splitlines() if "--force-eval-steps" in line]
    assert len(hint) == 1 and "nothing new to evaluate in 2 model(s) (Beauty-grec-rl-b, Toy-grec-sft-a); their 24 " \
                               "processed checkpoint(s) keep their results" in hint[0], again.stderr


@pytest.mark.parametrize("value", ["0", "soon", "nan"])
def test_a_bad_progress_interval_is_one_line_and_exit_2(ws, value):
    ws.checkpoint(100)
    done = ws.run("--once", env=ws.env(SIDECAR_PROGRESS_SECONDS=value))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"eval_wandb_sidecar.py: error: SIDECAR_PROGRESS_SECONDS={value!r}: expected a number of seconds above 0 "
        f"(default 60)"]
    assert ws.calls() == []
