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


class Repo:
    """A repo with data files and the eval script above, under `base`; the sidecar run in it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.repo = base / "repo"
        (self.repo / "data" / "sft").mkdir(parents=True)
        (self.repo / "data" / "sft" / "test.json").write_text("[]")
        (self.repo / "data" / "id2sid.json").write_text("{}")
        (self.repo / "eval.sh").write_text(EVAL_SCRIPT)
        self.starts = base / "starts"
        self.starts.mkdir()

    def args(self, *extra: str) -> list[str]:
        raise NotImplementedError

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

    def write_checkpoints(self, model: Path, steps, metrics: bool, of: int, marker: str | None = None) -> None:
        """Complete, old checkpoints of `model` (ready at once); with `metrics`, their metrics.json
        exist (HR@10 = step / `of`); with `marker`, that file is in each."""
        old = time.time() - 3600
        for step in steps:
            ckpt = model / f"checkpoint-{step}"
            ckpt.mkdir(parents=True)
            weights = ckpt / "model.safetensors"
            weights.write_bytes(b"x")
            os.utime(weights, (old, old))
            if marker:
                (ckpt / marker).write_text("{}")
            if metrics:
                res = self.repo / "results" / model.name / ckpt.name
                res.mkdir(parents=True)
                (res / "metrics.json").write_text(json.dumps({"HR@1": 0.01, "HR@10": step / of,
                                                              "NDCG@10": step / of / 2}))


class Tree(Repo):
    """One model: an SFT root in the repo."""

    def __init__(self, base: Path, name: str = "bench-cb64") -> None:
        super().__init__(base)
        self.sft = self.repo / "saves" / name
        self.sft.mkdir(parents=True)

    def args(self, *extra: str) -> list[str]:
        return ["--repo-root", str(self.repo), "--sft-root", str(self.sft), "--eval-script", "eval.sh",
                "--test-data-path", "data/sft/test.json", "--index-path", "data/id2sid.json",
                "--log-level", "WARNING", *extra]

    def checkpoints(self, n: int, metrics: bool, start: int = 1) -> None:
        """n complete, old checkpoints (ready at once); with `metrics`, their metrics.json exist."""
        self.write_checkpoints(self.sft, range(start, start + n), metrics, of=n + start)

    def state(self) -> tuple[Path, dict]:
        path = next((self.repo / "state" / "wandb_eval_sidecar").glob("*.json"))
        return path, json.loads(path.read_text())

    def config_args(self) -> dict:
        """The flags as `build_config` takes them (for in-process measurements)."""
        argv = self.args()
        return {argv[i][2:].replace("-", "_"): argv[i + 1] for i in range(0, len(argv), 2)}


# Every model folder of a fleet tree matches this rule: its data come from the profile.
FLEET_PROFILES = """\
rules:
  - match: "Bench-*"
    test-data-path: "data/sft/test.json"
    index-path: "data/id2sid.json"
"""


class FleetTree(Repo):
    """Many models: one `--models-root` (`saves`) of model folders and a profiles file."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.saves = self.repo / "saves"
        self.saves.mkdir()
        (self.repo / "profiles.yaml").write_text(FLEET_PROFILES)
        self.state_dir = self.repo / "state" / "wandb_eval_sidecar"

    def model(self, i: int) -> Path:
        return self.saves / f"Bench-grec-sft-{i:03d}"

    def models(self, m: int, steps, metrics: bool, marker: str | None = None) -> None:
        """m model folders, each with checkpoints `steps(i)` (a range) as `write_checkpoints` makes them."""
        for i in range(m):
            chosen = steps(i)
            self.write_checkpoints(self.model(i), chosen, metrics, of=max(chosen) + 1, marker=marker)

    def args(self, *extra: str) -> list[str]:
        return ["--repo-root", str(self.repo), "--models-root", "saves", "--profiles", "profiles.yaml",
                "--eval-script", "eval.sh", "--log-level", "WARNING", *extra]

    def states(self) -> dict[str, dict]:
        """Every model's state file, by file name (unreadable ones left out)."""
        out = {}
        for path in self.state_dir.glob("*.json") if self.state_dir.exists() else ():
            try:
                out[path.name] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        return out

    def config_args(self, *extra: str) -> dict:
        """The flags as the command line gives them to `build_config` (for in-process measurements)."""
        from sidecar.config import build_parser

        return vars(build_parser().parse_args(self.args(*extra)))


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


def _family(pid: int) -> dict[int, list[str]]:
    """The /proc/PID/stat fields (after the command name) of `pid` and all its descendants."""
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
    return {p: procs[p] for p in family if p in procs}


def tree_usage(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS (bytes) of `pid` and all its descendants (wandb-core included)."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    mine = _family(pid).values()
    cpu = sum((int(f[11]) + int(f[12])) / tick for f in mine)
    rss = sum(int(f[21]) * page for f in mine)
    return cpu, rss


def tree_rss(pid: int) -> tuple[int, int]:
    """RSS (bytes) of `pid` itself, and of all its descendants together (wandb-core)."""
    page = os.sysconf("SC_PAGE_SIZE")
    family = _family(pid)
    own = int(family[pid][21]) * page if pid in family else 0
    return own, sum(int(f[21]) * page for p, f in family.items() if p != pid)
