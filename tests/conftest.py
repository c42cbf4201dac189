"""Shared fixtures: an isolated environment and a workspace with awkward paths.

Everything is real: files in tmp_path, the sidecar as a subprocess, the stand-in eval script in
bash. Nothing touches the network or the home folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "eval_wandb_sidecar.py"
STAND_IN = Path(__file__).resolve().parent / "stand_in_eval.sh"
sys.path.insert(0, str(ROOT))

# Variables the sidecar reads as flag fallbacks: a developer's shell must not leak into tests.
_FALLBACK_ENV = ("CATEGORY", "CUDA_LIST", "PYTHON_BIN", "TEST_DATA_PATH", "INDEX_PATH", "BATCH_SIZE",
                 "MAX_NEW_TOKENS", "NUM_BEAMS", "TEMPERATURE", "DO_SAMPLE", "LENGTH_PENALTY", "SID_LEVELS",
                 "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RUN_NAME", "WANDB_RESUME",
                 "WANDB_JOB_TYPE", "WANDB_API_KEY", "SWANLAB_API_KEY")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """HOME, W&B and SwanLab folders in temp; W&B offline, its server a closed local port unless a
    test names the server double; no flag fallbacks from the shell."""
    base = tmp_path_factory.mktemp("env")
    for name in _FALLBACK_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(base / "home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    # nothing may reach a real server: an online attempt a test did not point at the server double
    # meets a closed local port
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "SWANLAB_LOG_DIR"):
        monkeypatch.setenv(var, str(base / var.lower()))
    (base / "home").mkdir()
    return base


class Workspace:
    """A repo root with data files, an SFT root and the stand-in eval script, all under awkward names."""

    def __init__(self, base: Path) -> None:
        self.repo = base / "repo root with spaces 'q' ünï"
        self.data = self.repo / "data" / "Toy_grec"
        self.sft = self.repo / "saves" / "toy-grec-sft-cb16 (run 1)"
        self.ctl = base / "control"
        for folder in (self.data / "sft", self.sft, self.ctl):
            folder.mkdir(parents=True)
        (self.data / "sft" / "test.json").write_text("[]")
        (self.data / "id2sid.json").write_text("{}")
        self.state_dir = self.repo / "state" / "wandb_eval_sidecar"
        self.log_dir = self.repo / "log" / "eval_sidecar"
        self.procs: list[subprocess.Popen] = []  # killed at teardown if a test failed midway

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, step: int, age: float = 3600.0, marker: bool = True) -> Path:
        """A complete checkpoint whose files are `age` seconds old."""
        folder = self.sft / f"checkpoint-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"w" * 64)
        if marker:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if age:
            old = time.time() - age
            for path in folder.rglob("*"):
                os.utime(path, (old, old))
        return folder

    def mode(self, step: int, mode: str) -> None:
        (self.ctl / f"checkpoint-{step}.mode").write_text(mode)

    def calls(self) -> list[str]:
        path = self.ctl / "calls.log"
        return path.read_text().split() if path.exists() else []

    def results(self, step: int) -> Path:
        return self.repo / "results" / self.sft.name / f"checkpoint-{step}" / "metrics.json"

    # --- running the sidecar ------------------------------------------------------------------------
    def args(self, *extra: str) -> list[str]:
        return [
            "--repo-root", str(self.repo), "--sft-root", str(self.sft),
            "--eval-script", str(STAND_IN),
            "--test-data-path", str(self.data / "sft" / "test.json"),
            "--index-path", str(self.data / "id2sid.json"),
            "--disable-wandb", "--checkpoint-ready-seconds", "1", *extra,
        ]

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(STANDIN_CONTROL=str(self.ctl), STANDIN_PY=sys.executable)
        env.update(extra)
        return env

    def run(self, *extra: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the sidecar to completion (pass --once for a pass) and capture its output."""
        return subprocess.run([sys.executable, str(ENTRY), *self.args(*extra)], env=env or self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *extra: str, env: dict | None = None) -> subprocess.Popen:
        """Start the sidecar in the background (output to a file)."""
        out = open(self.ctl / f"sidecar-{time.monotonic_ns()}.out", "w")
        proc = subprocess.Popen([sys.executable, str(ENTRY), *self.args(*extra)], env=env or self.env(),
                                stdout=out, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    def status(self, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ENTRY), "status", *self.args(*extra)], env=self.env(),
                              capture_output=True, text=True, timeout=60)

    def state_files(self) -> list[Path]:
        return sorted(p for p in self.state_dir.glob("*.json") if not p.name.endswith(".synced.json"))

    def state(self) -> dict:
        files = self.state_files()
        assert len(files) == 1, files
        return json.loads(files[0].read_text())


@pytest.fixture
def ws(tmp_path):
    workspace = Workspace(tmp_path)
    yield workspace
    for proc in workspace.procs:  # a test that failed midway must not leave a sidecar running
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def process_gone(pid: int) -> bool:
    """The process has exited (absent, or a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll `predicate` until it returns a truthy value (tests only; real time, generous limit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (AssertionError, ValueError, OSError, KeyError):  # e.g. no state file yet
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
