"""What the benchmark scenarios share: generated checkpoint trees, an isolated environment, the
sidecar run as a real process, and measuring a process tree (CPU seconds, RSS) from /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "eval_wandb_sidecar.py"
# An eval script that records when it started and writes a metrics.json (optionally after a sleep).
EVAL_SCRIPT = ('[ -n "${STARTS:-}" ] && date +%s.%N > "$STARTS/$(basename "$CKPT_LIST")"\n'
               'sleep "${EVAL_SECONDS:-0}"\n'
               'out="results/$(basename "$(dirname "$CKPT_LIST")")/$(basename "$CKPT_LIST")"\n'
               'mkdir -p "$out" && printf \'{"HR@10": 0.1, "NDCG@10": 0.05}\' > "$out/metrics.json"\n')


class Tree:
    """A repo with data files, the eval script above and an SFT root, under `base`."""

    def __init__(self, base: Path, name: str = "bench-cb64") -> None:
        self.base = base
        self.repo = base / "repo"
        self.sft = self.repo / "saves" / name
        self.sft.mkdir(parents=True)
        (self.repo / "data" / "sft").mkdir(parents=True)
        (self.repo / "data" / "sft" / "test.json").write_text("[]")
        (self.repo / "data" / "id2sid.json").write_text("{}")
        (self.repo / "eval.sh").write_text(EVAL_SCRIPT)
        self.starts = base / "starts"
        self.starts.mkdir()

    def args(self, *extra: str) -> list[str]:
        return ["--repo-root", str(self.repo), "--sft-root", str(self.sft), "--eval-script", "eval.sh",
                "--test-data-path", "data/sft/test.json", "--index-path", "data/id2sid.json",
                "--log-level", "WARNING", *extra]

    def checkpoints(self, n: int, metrics: bool, start: int = 1) -> None:
        """n complete, old checkpoints (ready at once); with `metrics`, their metrics.json exist."""
        old = time.time() - 3600
        for step in range(start, start + n):
            ckpt = self.sft / f"checkpoint-{step}"
            ckpt.mkdir()
            weights = ckpt / "model.safetensors"
            weights.write_bytes(b"x")
            os.utime(weights, (old, old))
            if metrics:
                res = self.repo / "results" / self.sft.name / ckpt.name
                res.mkdir(parents=True)
                (res / "metrics.json").write_text(json.dumps({"HR@1": 0.01, "HR@10": step / (n + start),
                                                              "NDCG@10": step / (n + start) / 2}))

    def env(self, **extra: str) -> dict[str, str]:
        """The sidecar's environment: HOME and every W&B folder inside `base`, W&B offline."""
        env = dict(os.environ, HOME=str(self.base / "home"), WANDB_MODE="offline", STARTS=str(self.starts))
        for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "SWANLAB_LOG_DIR"):
            folder = self.base / var.lower()
            folder.mkdir(parents=True, exist_ok=True)
            env[var] = str(folder)
        env.update(extra)
        return env

    def run(self, *extra: str, env: dict | None = None) -> float:
        """Run the sidecar to completion; its wall time in seconds."""
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ENTRY), *self.args(*extra)], env=env or self.env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started

    def start(self, *extra: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(ENTRY), *self.args(*extra)], env=env or self.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def state(self) -> tuple[Path, dict]:
        path = next((self.repo / "state" / "wandb_eval_sidecar").glob("*.json"))
        return path, json.loads(path.read_text())

    def config_args(self) -> dict:
        """The flags as `build_config` takes them (for in-process measurements)."""
        argv = self.args()
        return {argv[i][2:].replace("-", "_"): argv[i + 1] for i in range(0, len(argv), 2)}


def folder_bytes(*folders: Path) -> int:
    return sum(p.stat().st_size for f in folders if f.exists() for p in f.rglob("*") if p.is_file())


def wait_file(path: Path, timeout: float = 60.0) -> float:
    """The number written in `path`, once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if text:
            return float(text)
        time.sleep(0.005)
    raise RuntimeError(f"{path} never appeared")


def tree_usage(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS (bytes) of `pid` and all its descendants (wandb-core included)."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            procs[int(entry.name)] = fields
    family, grew = {pid}, True
    while grew:
        grew = False
        for p, fields in procs.items():
            if int(fields[1]) in family and p not in family:
                family.add(p)
                grew = True
    mine = [procs[p] for p in family if p in procs]
    cpu = sum((int(f[11]) + int(f[12])) / tick for f in mine)
    rss = sum(int(f[21]) * page for f in mine)
    return cpu, rss
