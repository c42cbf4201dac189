"""--keep-best N (issue 18): the N best evaluated checkpoints are kept as hard links in
STATE_DIR/best/<sft-root name>/, with a `best` symlink to the top one, through the real command
line: a tiny bash eval script writes the HR@10 this test chooses per checkpoint, the trainer's
rotation is a deleted folder, and what is checked is what a user finds (folders, inodes, the
--sft-root left as it was, `status`, exit codes). One test puts the state on another filesystem
(/dev/shm) under a file-size limit: a copy there and a copy that fails are real ones."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ENTRY
from sidecar.checkpoints import Checkpoint
from sidecar.errors import ConfigError
from sidecar.watch.keep_best import Keeper, Ranked, best_of, values_of

EVAL = """#!/usr/bin/env bash
# writes the HR@10 of $VALUES/<checkpoint>; notes which folder it was given
name="$(basename -- "$CKPT_LIST")"
echo "$CKPT_LIST" >> "$VALUES/calls"
out="results/$(basename -- "$(dirname -- "$CKPT_LIST")")/$name"
mkdir -p -- "$out"
printf '{"HR@10": %s, "NDCG@10": 0.1}' "$(cat -- "$VALUES/$name")" > "$out/metrics.json"
"""
MB = 2 ** 20


class Run:
    """The workspace (awkward paths) with the value-writing eval script instead of the stand-in."""

    def __init__(self, ws, state_dir: Path | None = None) -> None:
        self.ws = ws
        self.values = ws.ctl / "values"
        self.values.mkdir()
        self.script = ws.ctl / "eval.sh"
        self.script.write_text(EVAL)
        self.state_dir = state_dir or ws.state_dir
        self.best = self.state_dir / "best" / ws.sft.name

    def checkpoint(self, step: int, value: float | None, size: int = 1024) -> Path:
        folder = self.ws.checkpoint(step)
        (folder / "model.safetensors").write_bytes(b"w" * size)
        if value is not None:
            self.value(step, value)
        return folder

    def value(self, step: int, value: float) -> None:
        (self.values / f"checkpoint-{step}").write_text(str(value))

    def args(self, *extra: str) -> list[str]:
        args = self.ws.args("--checkpoint-ready-seconds", "0", "--state-dir", str(self.state_dir), *extra)
        args[args.index("--eval-script") + 1] = str(self.script)
        return args

    def cli(self, command: str, *extra: str, preexec=None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ENTRY), command, *self.args(*extra)],
                              env=self.ws.env(VALUES=str(self.values)), capture_output=True, text=True, timeout=120,
                              preexec_fn=preexec)

    def kept(self) -> list[str]:
        return sorted(p.name for p in self.best.iterdir() if p.name.startswith("checkpoint-"))

    def link(self) -> str:
        return os.readlink(self.best / "best")

    def calls(self) -> list[str]:
        return (self.values / "calls").read_text().split("\n")[:-1]


def tree(folder: Path) -> dict:
    """Every file's bytes and modification time, and every folder, under `folder`."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def kept_lines(status_text: str) -> list[str]:
    lines = status_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("kept best"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    return lines[start:end]


def test_the_best_are_kept_survive_rotation_and_follow_re_evaluations_and_restarts(ws):
    run = Run(ws)
    run.checkpoint(100, None, size=MB)  # its metrics.json exists: reused, and ranked too
    ws.results(100).parent.mkdir(parents=True)
    ws.results(100).write_text(json.dumps({"HR@10": 0.5}))
    for step, value in ((200, 0.4), (300, 0.3), (400, 0.4), (500, 0.1)):  # 400 ties 200: the earlier step keeps it
        run.checkpoint(step, value)
    before = tree(ws.sft)

    first = run.cli("once", "--keep-best", "2")
    assert first.returncode == 0, first.stderr
    assert run.kept() == ["checkpoint-100", "checkpoint-200"] and run.link() == "checkpoint-100"
    said = [line.split("] ", 2)[2] for line in first.stderr.splitlines() if "] kept " in line]
    assert said == ["kept checkpoint-100 (HR@10=0.5, best 1 of 2)", "kept checkpoint-200 (HR@10=0.4, best 2 of 2)"]
    for step in (100, 200):  # hard links of the trainer's files, not copies
        kept = (run.best / f"checkpoint-{step}" / "model.safetensors").stat()
        original = (ws.sft / f"checkpoint-{step}" / "model.safetensors").stat()
        assert (kept.st_ino, kept.st_nlink) == (original.st_ino, 2)
    assert tree(ws.sft) == before  # nothing under --sft-root was changed

    shutil.rmtree(ws.sft / "checkpoint-100")  # the trainer's rotation
    assert (run.best / "checkpoint-100" / "model.safetensors").read_bytes() == b"w" * MB
    only = sum(p.stat().st_size for p in (run.best / "checkpoint-100").iterdir())  # its files, no other name now
    info = json.loads(run.cli("status", "--json").stdout)["kept_best"]
    assert [(c["rank"], c["step"], c["value"], c["bytes_held_only_here"]) for c in info["checkpoints"]] == [
        (1, 100, 0.5, only), (2, 200, 0.4, 0)]
    assert (info["best"], info["bytes_held_only_by_kept"], info["metric"], info["goal"]) == (
        "checkpoint-100", only, "HR@10", "max")
    lines = kept_lines(run.cli("status").stdout)
    assert lines == ["kept best     2 of 2 by HR@10 (highest), 1.0 MB held only by them; best -> checkpoint-100",
                     f"              in {run.best}",
                     "              1.  checkpoint-100  HR@10 0.5000  1.0 MB only here",
                     "              2.  checkpoint-200  HR@10 0.4000  0.0 MB only here"]

    # re-evaluations: 200 drops out (400 takes its place), 300 goes to the top, and 100, whose
    # original is gone, is evaluated from its kept copy and stays
    for step, value in ((100, 0.6), (200, 0.05), (300, 0.9)):
        run.value(step, value)
    again = run.cli("once", "--keep-best", "2", "--force-eval-steps", "100,200,300")
    assert again.returncode == 0, again.stderr
    assert str(run.best / "checkpoint-100") in run.calls()
    assert run.kept() == ["checkpoint-100", "checkpoint-300"] and run.link() == "checkpoint-300"
    assert "kept checkpoint-300 (HR@10=0.9, best 1 of 2)" in again.stderr
    assert (run.best / "checkpoint-100" / "model.safetensors").read_bytes() == b"w" * MB

    # a restart with --keep-best 1: the folder follows the ranking of the state's rows
    shutil.rmtree(ws.sft / "checkpoint-300")
    third = run.cli("once", "--keep-best", "1")
    assert third.returncode == 0, third.stderr
    assert run.kept() == ["checkpoint-300"] and run.link() == "checkpoint-300"
    assert (run.best / "checkpoint-300" / "model.safetensors").read_bytes() == b"w" * 1024


def test_a_pin_becomes_the_kept_copy_and_another_configuration_is_refused(ws):
    run = Run(ws)
    run.checkpoint(100, 0.2)
    run.checkpoint(200, 0.3)
    done = run.cli("once", "--keep-best", "1", "--pin-checkpoints")
    assert done.returncode == 0, done.stderr
    assert run.kept() == ["checkpoint-200"]
    assert [p.name for p in (run.state_dir / "pins" / ws.sft.name).iterdir()] == []
    kept = (run.best / "checkpoint-200" / "model.safetensors").stat()
    original = (ws.sft / "checkpoint-200" / "model.safetensors").stat()
    assert (kept.st_ino, kept.st_nlink) == (original.st_ino, 2)  # the pin moved in: no second set of links
    assert (ws.sft / "checkpoint-100" / "model.safetensors").stat().st_nlink == 1

    other = run.cli("once", "--keep-best", "1", "--seed", "7")  # another configuration of this SFT root
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"eval_wandb_sidecar.py: error: --keep-best: {run.best} keeps the best checkpoints of another "
        f"configuration of this SFT root (state file {ws.state_files()[0]}); two configurations cannot share "
        f"it: move that folder away to keep this configuration's best there"]
    assert run.kept() == ["checkpoint-200"]


def test_across_filesystems_it_copies_with_one_warning_and_a_failed_copy_is_one_warning(ws):
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(ws.sft).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's temp folder")
    state_dir = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="keep-best-test-"))
    try:
        run = Run(ws, state_dir)
        run.checkpoint(100, 0.1, size=4096)
        run.checkpoint(200, 0.2, size=MB)  # more than the file-size limit below: its copy fails
        done = run.cli("once", "--keep-best", "2", "--log-dir", str(ws.ctl / "logs"),
                       preexec=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024)))
        assert done.returncode == 0, done.stderr
        warnings = [line for line in done.stderr.splitlines() if "[WARNING]" in line]
        assert len(warnings) == 2, done.stderr
        assert re.search(r"cannot hard-link .* into .*; copying instead \(uses disk space\)$", warnings[0])
        assert warnings[1].endswith(f"could not keep checkpoint-200 in {run.best} (File too large); it is not kept "
                                    f"for now (the evaluation goes on; tried again after 10 minutes, at a result, "
                                    f"and at the next start)")
        assert json.loads(next(state_dir.glob("*.json")).read_text())["processed_steps"] == [100, 200]
        assert sorted(p.name for p in run.best.iterdir()) == [".owner.json", "best", "checkpoint-100"]  # no temp
        assert (run.best / "checkpoint-100" / "model.safetensors").stat().st_nlink == 1  # a copy
        lines = kept_lines(run.cli("status").stdout)
        assert lines[2:] == ["              1.  checkpoint-200  HR@10 0.2000  not kept yet (its checkpoint is "
                             "still in --sft-root; the sidecar's log says why)",
                             "              2.  checkpoint-100  HR@10 0.1000  0.0 MB only here"]
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def test_fleet_models_keep_their_own_best(ws, tmp_path):
    run = Run(ws)
    models = tmp_path / "models"
    for model, values in (("a", (0.3, 0.1)), ("b", (0.1, 0.3))):
        for step, value in zip((100, 200), values):
            folder = models / model / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            (folder / "weights").write_text(model)
            result = ws.repo / "results" / model / f"checkpoint-{step}" / "metrics.json"
            result.parent.mkdir(parents=True)
            result.write_text(json.dumps({"HR@10": value}))
    args = [a for a in run.args("--keep-best", "1", "--models-root", str(models)) if a not in ("--sft-root",
                                                                                              str(ws.sft))]
    done = subprocess.run([sys.executable, str(ENTRY), "once", *args], env=ws.env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    best = run.state_dir / "best"
    assert {m: sorted(p.name for p in (best / m).iterdir() if p.is_dir() and not p.is_symlink())
            for m in ("a", "b")} == {"a": ["checkpoint-100"], "b": ["checkpoint-200"]}
    assert (best / "a" / "best" / "weights").read_text() == "a"


# ----- the ranking and the folder, without the command line ----------------------------------------------------

def test_ranking_keeps_the_earlier_step_of_a_tie_skips_rows_without_the_metric_and_can_prefer_lower():
    rows = {100: {"HR@10": 0.4}, 200: {"HR@10": 0.5}, 300: {"HR@10": 0.4}, 400: {"loss": 1.0},
            500: {"HR@10": float("nan")}, 600: {"HR@10": True}}
    assert best_of(values_of(rows, "HR@10"), 2, False) == [Ranked(200, 0.5), Ranked(100, 0.4)]
    assert best_of(values_of(rows, "HR@10"), 5, True) == [Ranked(100, 0.4), Ranked(300, 0.4), Ranked(200, 0.5)]
    assert best_of(values_of(rows, "NDCG@10"), 3, False) == []


def make(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "w").write_text(text)
    return folder


def test_start_cleans_temps_puts_back_a_copy_set_aside_and_keeps_what_a_row_ranks(tmp_path):
    sft, state_dir = tmp_path / "run", tmp_path / "state"
    for step in (100, 200, 300):
        make(sft / f"checkpoint-{step}", str(step))
    keeper = Keeper(state_dir, sft, 2, "HR@10", False, "key", state_dir / "s.json")
    keeper.start({})  # nothing ranked yet: nothing made
    assert not keeper.root.exists()
    keeper.offer(Checkpoint(100, "checkpoint-100", sft), {"HR@10": 0.1}, {}, set())
    # a crash left: a half copy, a copy set aside while it was being replaced, a pin moved in, a stray link
    make(keeper.root / ".tmp-keep-new-99-checkpoint-300", "half")
    make(keeper.root / ".tmp-keep-old-99-checkpoint-200", "200 set aside")
    make(keeper.root / ".tmp-keep-moved-99-checkpoint-400", "400")  # its row was not saved: ranked once it is
    os.symlink("checkpoint-100", keeper.root / ".tmp-keep-link-99")
    make(keeper.root / "checkpoint-50", "no row")  # e.g. a state file that was deleted: left alone
    rows = {100: {"HR@10": 0.1}, 200: {"HR@10": 0.5}, 300: {"HR@10": 0.4}}
    keeper = Keeper(state_dir, sft, 2, "HR@10", False, "key", state_dir / "s.json")
    kept = keeper.start(rows)
    assert [c.name for c in kept] == ["checkpoint-50", "checkpoint-200", "checkpoint-300", "checkpoint-400"]
    assert sorted(os.listdir(keeper.root)) == [".owner.json", "best", "checkpoint-200", "checkpoint-300",
                                               "checkpoint-400", "checkpoint-50"]
    assert (keeper.root / "best" / "w").read_text() == "200 set aside"
    assert sorted(os.listdir(sft)) == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    with pytest.raises(ConfigError, match="another configuration"):
        Keeper(state_dir, sft, 2, "HR@10", False, "other key", state_dir / "t.json").start(rows)


def test_a_re_evaluation_without_the_metric_never_removes_the_last_copy(ws):
    run = Run(ws)
    for step, value in ((100, 0.5), (200, 0.7), (300, 0.6)):
        run.checkpoint(step, value)
    assert run.cli("once", "--keep-best", "2").returncode == 0
    assert run.kept() == ["checkpoint-200", "checkpoint-300"]
    shutil.rmtree(ws.sft / "checkpoint-200")  # the trainer's rotation: the kept copy is the only one left
    run.value(200, "null")  # a broken re-evaluation: HR@10 is no number
    done = run.cli("once", "--keep-best", "2", "--force-eval-steps", "200")
    assert done.returncode == 0, done.stderr
    assert "checkpoint-200" in run.kept(), done.stderr
    assert (run.best / "checkpoint-200" / "model.safetensors").stat().st_size == 1024
