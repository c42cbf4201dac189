"""Fleet mode through the real command line: two model roots, profiles (rules and the original
manifest format), models appearing and disappearing, a live profile change, a model locked by a
single-model sidecar, identity equal to single mode, fairness, and kill -9 mid-evaluation.

Everything is real: folders in tmp_path, the sidecar and the stand-in eval script as processes,
filesystem events from watchdog, locks.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ENTRY, STAND_IN, process_gone, wait_for

PROFILES = """\
rules:
  - match: "Skip-*"
    skip: true
  - regex: '^(?P<domain>[A-Z][a-z]+)-grec-'
    category: "{domain}_grec"
    test-data-path: "data/{domain}_grec/sft/test.json"
    index-path: "data/{domain}_grec/id2sid.json"
"""


class FleetTree:
    """A repository with two model roots (`saves`, `rl outputs`), data for two domains, a profiles
    file and the stand-in eval script."""

    def __init__(self, base: Path) -> None:
        self.repo = base / "repo ünï"
        self.ctl = base / "control"
        self.ctl.mkdir()
        for domain in ("Toy", "Beauty", "Zed"):
            data = self.repo / "data" / f"{domain}_grec"
            (data / "sft").mkdir(parents=True)
            (data / "sft" / "test.json").write_text("[]")
            (data / "id2sid.json").write_text("{}")
        self.saves = self.repo / "saves"
        self.rl = self.repo / "rl outputs"
        self.saves.mkdir()
        self.rl.mkdir()
        self.profiles = self.repo / "profiles.yaml"
        self.profiles.write_text(PROFILES)
        self.state_dir = self.repo / "state" / "wandb_eval_sidecar"
        self.procs: list[subprocess.Popen] = []

    def checkpoint(self, model: Path, step: int, marker: bool = True, mode: str | None = None) -> Path:
        folder = model / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"w" * 64)
        if marker:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        old = time.time() - 3600
        for path in (folder, *folder.iterdir()):
            os.utime(path, (old, old))
        if mode:
            (self.ctl / f"checkpoint-{step}.mode").write_text(mode)
        return folder

    def args(self, *extra: str) -> list[str]:
        return ["--repo-root", str(self.repo), "--models-root", "saves", "--models-root", "rl outputs",
                "--profiles", "profiles.yaml", "--eval-script", str(STAND_IN), "--disable-wandb",
                "--ready-marker", "trainer_state.json", "--checkpoint-ready-seconds", "1", *extra]

    def single_args(self, model: Path, domain: str, *extra: str) -> list[str]:
        """The flags of a single-model sidecar for `model` that the profiles file gives it."""
        return ["--repo-root", str(self.repo), "--sft-root", str(model.relative_to(self.repo)),
                "--category", f"{domain}_grec", "--test-data-path", f"data/{domain}_grec/sft/test.json",
                "--index-path", f"data/{domain}_grec/id2sid.json", "--eval-script", str(STAND_IN),
                "--disable-wandb", "--ready-marker", "trainer_state.json", "--checkpoint-ready-seconds", "1", *extra]

    def env(self) -> dict[str, str]:
        return dict(os.environ, STANDIN_CONTROL=str(self.ctl), STANDIN_PY=sys.executable)

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ENTRY), *argv], env=self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *argv: str) -> tuple[subprocess.Popen, Path]:
        out = self.ctl / f"sidecar-{time.monotonic_ns()}.out"
        proc = subprocess.Popen([sys.executable, str(ENTRY), *argv], env=self.env(), stdout=open(out, "w"),
                                stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc, out

    def calls(self) -> list[str]:
        log = self.ctl / "calls.log"
        return log.read_text().split() if log.exists() else []

    def state_file(self, model: str) -> Path:
        found = sorted(self.state_dir.glob(f"{model}_*.json"))
        assert len(found) == 1, found
        return found[0]

    def processed(self, model: str) -> list[int]:
        return sorted(json.loads(self.state_file(model).read_text())["processed_steps"])

    def rows(self, model: str) -> list[int]:
        return [r["checkpoint_step"] for r in json.loads(self.state_file(model).read_text())["table_rows"]]


@pytest.fixture
def tree(tmp_path):
    t = FleetTree(tmp_path)
    yield t
    for proc in t.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def test_two_roots_each_model_gets_its_profile_and_the_identity_of_a_single_sidecar(tree):
    toy, beauty, rl = tree.saves / "Toy-grec-sft-cb16", tree.saves / "Beauty-grec-sft-cb64", tree.rl / "Toy-grec-rl-cb16"
    for model, steps in ((toy, (1, 2)), (beauty, (10,)), (rl, (100,))):
        for step in steps:
            tree.checkpoint(model, step)
    tree.checkpoint(tree.saves / "Other-run", 500)  # no rule matches it
    tree.checkpoint(tree.saves / "Skip-me", 600)  # a skip rule
    (tree.saves / "notes").mkdir()  # no checkpoints: not a model

    done = tree.run(*tree.args("--once", "--gpu-slots", "0;1"))
    assert done.returncode == 0, done.stderr
    assert sorted(tree.calls()) == ["checkpoint-1", "checkpoint-10", "checkpoint-100", "checkpoint-2"]
    assert "model Other-run: no profile: no rule of profiles.yaml matches 'Other-run'" in done.stderr
    assert "model Toy-grec-sft-cb16: evaluated checkpoint-1" in done.stderr
    env = json.loads((tree.ctl / "env-checkpoint-10.json").read_text())
    assert env["CATEGORY"] == "Beauty_grec"
    assert env["TEST_DATA_PATH"] == str(tree.repo / "data" / "Beauty_grec" / "sft" / "test.json")

    # the same state file and run id as a single-model sidecar started with the profile's flags
    for model, domain in ((toy, "Toy"), (beauty, "Beauty"), (rl, "Toy")):
        single = tree.run("status", *tree.single_args(model, domain), "--json")
        assert single.returncode == 0, single.stderr
        info = json.loads(single.stdout)
        assert info["state_file"] == str(tree.state_file(model.name))
        assert info["run_id"] == "eval-" + tree.state_file(model.name).stem.rsplit("_", 1)[1]
    assert tree.processed("Toy-grec-sft-cb16") == [1, 2]

    # ... so the single-model sidecar repeats nothing the fleet did, and the fleet nothing it did
    tree.checkpoint(toy, 3)
    single = tree.run(*tree.single_args(toy, "Toy", "--once"))
    assert single.returncode == 0, single.stderr
    assert tree.calls().count("checkpoint-3") == 1 and tree.calls().count("checkpoint-1") == 1
    again = tree.run(*tree.args("--once"))
    assert again.returncode == 0, again.stderr
    assert len(tree.calls()) == 5
    assert tree.rows("Toy-grec-sft-cb16") == [1, 2, 3]

    table = tree.run("status", "--all", *tree.args())
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert lines["Other-run"].split(None, 1)[1] == "no profile: no rule of profiles.yaml matches 'Other-run'"
    assert "excluded by profiles.yaml rule 1 (skip)" in lines["Skip-me"]
    assert lines["Toy-grec-sft-cb16"].split()[1:6] == ["3", "0", "0", "0", "3"]
    assert "notes" not in lines
    as_json = json.loads(tree.run("status", "--all", "--json", *tree.args()).stdout)
    by_model = {m["model"]: m for m in as_json["models"]}
    assert by_model["Beauty-grec-sft-cb64"]["processed"] == 1
    assert by_model["Beauty-grec-sft-cb64"]["run_id"] == "eval-" + tree.state_file("Beauty-grec-sft-cb64").stem[-20:]
    assert by_model["Other-run"]["status"] == "no profile"
    one = tree.run("status", "--model", "Toy-grec-rl-cb16", *tree.args())
    assert one.returncode == 0 and "processed 1" in one.stdout, one.stdout + one.stderr


def test_the_original_manifest_format_gives_the_profiles(tree):
    manifest = tree.repo / "data" / "eval_profile_manifest.json"
    manifest.write_text(json.dumps({
        "version": 1,
        "datasets": {"Toy_grec": {"category": "Toy_grec", "test_data_path": "Toy_grec/sft/test.json",
                                  "index_path": "Toy_grec/id2sid.json", "num_beams": 30},
                     "Beauty_grec": {"category": "Beauty_grec", "test_data_path": "Beauty_grec/sft/test.json",
                                     "index_path": "Beauty_grec/id2sid.json"}},
        "aliases": {"my-odd-run": {"dataset_variant": "Beauty_grec", "num_beams": 7}}}))
    tree.checkpoint(tree.saves / "my-odd-run", 1)
    tree.checkpoint(tree.saves / "toy-grec-sft-cb8", 2)  # no alias: the variant is in its name
    tree.checkpoint(tree.saves / "unknown", 3)
    argv = [a if a != "profiles.yaml" else "data/eval_profile_manifest.json" for a in tree.args("--once")]
    done = tree.run(*argv)
    assert done.returncode == 0, done.stderr
    assert sorted(tree.calls()) == ["checkpoint-1", "checkpoint-2"]
    odd = json.loads((tree.ctl / "env-checkpoint-1.json").read_text())
    assert (odd["CATEGORY"], odd["NUM_BEAMS"]) == ("Beauty_grec", "7")
    assert odd["INDEX_PATH"] == str(tree.repo / "data" / "Beauty_grec" / "id2sid.json")
    toy = json.loads((tree.ctl / "env-checkpoint-2.json").read_text())
    assert (toy["CATEGORY"], toy["NUM_BEAMS"]) == ("Toy_grec", "30")
    assert "model unknown: no profile" in done.stderr


def test_models_appear_and_disappear_and_a_profile_change_is_picked_up_live(tree):
    first = tree.saves / "Toy-grec-sft-a"
    tree.checkpoint(first, 1)
    zed = tree.rl / "Zed-x"  # no rule matches it yet
    tree.checkpoint(zed, 300)
    proc, out = tree.start(*tree.args("--poll-interval-seconds", "2"))
    wait_for(lambda: tree.processed("Toy-grec-sft-a") == [1], timeout=60)
    assert "checkpoint-300" not in tree.calls()

    tree.checkpoint(tree.rl / "Beauty-grec-rl-b", 20)  # a new model folder while running
    wait_for(lambda: tree.processed("Beauty-grec-rl-b") == [20], timeout=60)

    subprocess.run(["rm", "-rf", str(first)], check=True)  # a model folder removed
    wait_for(lambda: "its folder was removed" in out.read_text(), timeout=60)

    tree.profiles.write_text(PROFILES + "  - match: 'Zed-*'\n    category: Zed_grec\n"
                             "    test-data-path: data/Zed_grec/sft/test.json\n"
                             "    index-path: data/Zed_grec/id2sid.json\n")
    wait_for(lambda: tree.processed("Zed-x") == [300], timeout=60)
    assert proc.poll() is None, out.read_text()
    assert stop(proc) == 0, out.read_text()
    log = out.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log
    assert "model Toy-grec-sft-a: its folder" in log
    assert "profiles file" in log and "changed" in log
    assert sorted(tree.calls()) == ["checkpoint-1", "checkpoint-20", "checkpoint-300"]


def test_a_model_locked_by_a_single_sidecar_is_skipped_then_taken_over(tree):
    toy, beauty = tree.saves / "Toy-grec-sft-a", tree.saves / "Beauty-grec-sft-b"
    tree.checkpoint(toy, 1)
    tree.checkpoint(beauty, 2)
    single, single_out = tree.start(*tree.single_args(toy, "Toy", "--poll-interval-seconds", "1"))
    wait_for(lambda: tree.processed("Toy-grec-sft-a") == [1], timeout=60)
    fleet, out = tree.start(*tree.args("--poll-interval-seconds", "1"))
    wait_for(lambda: tree.processed("Beauty-grec-sft-b") == [2], timeout=60)
    wait_for(lambda: f"model Toy-grec-sft-a: locked: locked by pid {single.pid}" in out.read_text(), timeout=30)
    assert stop(single) == 0, single_out.read_text()
    tree.checkpoint(toy, 3)
    wait_for(lambda: tree.processed("Toy-grec-sft-a") == [1, 3], timeout=60)
    assert stop(fleet) == 0, out.read_text()
    assert tree.calls().count("checkpoint-1") == 1 and tree.calls().count("checkpoint-3") == 1
    assert "Traceback" not in out.read_text()


def test_a_model_with_100_pending_does_not_block_a_model_with_one(tree):
    busy, small = tree.saves / "Alpha-grec-busy", tree.saves / "Toy-grec-small"
    (tree.repo / "data" / "Alpha_grec" / "sft").mkdir(parents=True)
    (tree.repo / "data" / "Alpha_grec" / "sft" / "test.json").write_text("[]")
    (tree.repo / "data" / "Alpha_grec" / "id2sid.json").write_text("{}")
    for step in range(1, 101):
        tree.checkpoint(busy, step)
    tree.checkpoint(small, 1000)
    proc, out = tree.start(*tree.args())  # one slot
    wait_for(lambda: "checkpoint-1000" in tree.calls(), timeout=60)
    assert stop(proc) == 0, out.read_text()
    # models take turns: the busy one (first by name) got the first slot, the small one the next
    assert tree.calls().index("checkpoint-1000") <= 1, tree.calls()[:5]


def test_kill_9_mid_evaluation_of_several_models_then_restart_loses_and_repeats_nothing(tree):
    toy, beauty = tree.saves / "Toy-grec-sft-a", tree.rl / "Beauty-grec-rl-b"
    tree.checkpoint(toy, 1)  # evaluated before the kill
    tree.checkpoint(toy, 2, mode="slow-once")  # the first call sleeps; a second one writes its metrics
    tree.checkpoint(beauty, 3, mode="slow-once")
    proc, out = tree.start(*tree.args("--gpu-slots", "0;1;2"))
    wait_for(lambda: (tree.ctl / "started-checkpoint-2").exists() and (tree.ctl / "started-checkpoint-3").exists()
             and tree.processed("Toy-grec-sft-a") == [1], timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tree.calls().count("checkpoint-1") <= 1

    done = tree.run(*tree.args("--once", "--gpu-slots", "0;1"))
    assert done.returncode == 0, done.stderr
    assert tree.processed("Toy-grec-sft-a") == [1, 2] and tree.rows("Toy-grec-sft-a") == [1, 2]
    assert tree.processed("Beauty-grec-rl-b") == [3] and tree.rows("Beauty-grec-rl-b") == [3]
    calls = tree.calls()
    assert calls.count("checkpoint-1") == 1  # a finished result is never evaluated again
    assert calls.count("checkpoint-2") == 2 and calls.count("checkpoint-3") == 2  # the interrupted ones once more
    pids = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True).stdout.split()
    assert all(process_gone(int(p)) or not _ours(int(p), tree) for p in pids)  # the orphans were stopped


def _ours(pid: int, tree: FleetTree) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return str(tree.ctl).encode() in environ


def test_plan_shows_what_runs_next_and_why_the_rest_waits(tree):
    toy, beauty = tree.saves / "Toy-grec-sft-a", tree.saves / "Beauty-grec-sft-b"
    tree.checkpoint(toy, 1)
    tree.checkpoint(toy, 2)
    tree.checkpoint(toy, 3, marker=False)
    tree.checkpoint(beauty, 10)
    tree.checkpoint(tree.saves / "Other-run", 5)
    plan = tree.run("plan", *tree.args())
    assert plan.returncode == 0, plan.stderr
    text = plan.stdout
    lines = [line.split() for line in text.splitlines()]
    nexts = [(w[1], w[2]) for w in lines if len(w) > 2 and w[0].rstrip(".").isdigit()]
    assert nexts == [("Beauty-grec-sft-b", "checkpoint-10"), ("Toy-grec-sft-a", "checkpoint-1"),
                     ("Toy-grec-sft-a", "checkpoint-2")], text
    assert "starts at once on slot 1 (GPUs 0)" in text
    assert "not ready: waiting for marker trainer_state.json" in text
    assert "no profile: no rule of profiles.yaml matches 'Other-run'" in text
    assert not tree.state_dir.exists()  # nothing written
    dry = tree.run(*tree.args("--dry-run"))
    assert dry.returncode == 0 and dry.stdout == text and not tree.calls()


@pytest.mark.parametrize("extra, message", [
    (("--sft-root", "saves/x"), "--sft-root 'saves/x' and --models-root"),
    (("--wandb-run-id", "one"), "--wandb-run-id 'one': not in fleet mode"),
    (("--force-eval-steps", "5,1"), "--force-eval-steps '1,5': not in fleet mode"),
    (("--profiles", "missing.yaml"), "missing.yaml"),
    (("--models-root", "nowhere"), "--models-root: not a folder"),
])
def test_bad_fleet_input_is_one_line_and_exit_2(tree, extra, message):
    argv = tree.args("--once")
    if extra[0] == "--profiles":
        argv[argv.index("profiles.yaml")] = extra[1]
        extra = ()
    done = tree.run(*argv, *extra)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr


def test_fleet_only_flags_need_models_root(tree):
    done = tree.run(*tree.single_args(tree.saves / "x", "Toy", "--max-parallel-per-model", "2"))
    assert done.returncode == 2
    assert done.stderr.strip().endswith("--max-parallel-per-model 2: applies to fleet mode only (--models-root DIR)")


def test_a_model_whose_lock_another_process_takes_is_left_to_it_and_taken_back_later(tree):
    """The lock file replaced by one another process holds (as a sidecar started after the file
    was deleted would): the fleet writes nothing more for that model, the others go on, and the
    model is taken back once the other process lets go."""
    toy, beauty = tree.saves / "Toy-grec-sft-a", tree.saves / "Beauty-grec-sft-b"
    tree.checkpoint(toy, 1)
    tree.checkpoint(beauty, 2)
    fleet, out = tree.start(*tree.args("--poll-interval-seconds", "1"))
    wait_for(lambda: tree.processed("Toy-grec-sft-a") == [1] and tree.processed("Beauty-grec-sft-b") == [2],
             timeout=60)
    lock = tree.state_file("Toy-grec-sft-a").with_suffix(".lock")
    other = lock.with_name(lock.name + ".other")
    other.write_text(f"{os.getpid()}\n{socket.gethostname()}\n")
    fd = os.open(other, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(other, lock)
    try:
        wait_for(lambda: "this fleet writes nothing more for it" in out.read_text(), timeout=60)
        tree.checkpoint(toy, 3)  # nobody evaluates it while the other process holds the lock
        tree.checkpoint(beauty, 4)  # the other models go on
        wait_for(lambda: tree.processed("Beauty-grec-sft-b") == [2, 4], timeout=60)
        assert "checkpoint-3" not in tree.calls()
    finally:
        os.close(fd)  # the other process stops
    wait_for(lambda: tree.processed("Toy-grec-sft-a") == [1, 3], timeout=60)
    assert fleet.poll() is None, out.read_text()
    assert stop(fleet) == 0, out.read_text()
    assert sorted(tree.calls()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    text = out.read_text()
    assert f"another sidecar (pid {os.getpid()} on host" in text and "Traceback" not in text


def test_max_parallel_per_model_caps_one_model_while_the_others_use_the_slots(tree):
    busy, other = tree.saves / "Toy-grec-busy", tree.saves / "Beauty-grec-other"
    for step in (1, 2, 3):
        tree.checkpoint(busy, step, mode="slow")
    tree.checkpoint(other, 10, mode="slow")
    env_slow = {"STANDIN_SLOW": "0.5"}
    done = subprocess.run([sys.executable, str(ENTRY), *tree.args("--once", "--gpu-slots", "0;1;2",
                                                                   "--max-parallel-per-model", "1")],
                          env={**tree.env(), **env_slow}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    spans = []
    for step in (1, 2, 3):
        start = float((tree.ctl / f"starts-checkpoint-{step}").read_text().split()[0])
        end = float((tree.ctl / f"ends-checkpoint-{step}").read_text().split()[0])
        spans.append((start, end))
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans  # never two at once
    other_start = float((tree.ctl / "starts-checkpoint-10").read_text().split()[0])
    assert other_start < spans[0][1]  # the other model ran beside the busy one's first eval


def test_the_roots_and_profiles_can_come_from_the_config_file(tree):
    tree.checkpoint(tree.saves / "Toy-grec-sft-a", 1)
    tree.checkpoint(tree.rl / "Beauty-grec-rl-b", 2)
    config = tree.repo / "fleet.yaml"
    config.write_text("models-root: [saves, rl outputs]\nprofiles: profiles.yaml\nmodel-filter: ['*-grec-*']\n")
    argv = tree.args("--once", "--config", str(config))
    for flag in ("--models-root", "--models-root", "--profiles"):
        i = argv.index(flag)
        del argv[i:i + 2]
    done = tree.run(*argv)
    assert done.returncode == 0, done.stderr
    assert sorted(tree.calls()) == ["checkpoint-1", "checkpoint-2"]


def test_sync_names_one_model_at_a_time(tree):
    done = tree.run("sync", *tree.args())
    assert done.returncode == 2
    assert "--models-root: sync uploads one model's runs" in done.stderr and len(done.stderr.splitlines()) == 1


def test_one_folder_name_under_two_roots_is_refused_for_the_second_not_mixed(tree):
    """Both would write results/<name>/checkpoint-N/metrics.json and the same log folder."""
    tree.checkpoint(tree.saves / "Toy-grec-x", 1)
    tree.checkpoint(tree.saves / "Toy-grec-x", 2)
    tree.checkpoint(tree.rl / "Toy-grec-x", 5)
    done = tree.run(*tree.args("--once", "--gpu-slots", "0;1"))
    assert done.returncode == 0, done.stderr
    assert tree.calls() == ["checkpoint-5"]  # rl outputs/ comes first by path; saves/ is refused
    assert "would share" in done.stderr and "rename one of the folders" in done.stderr
    assert "; 1 model(s) not evaluated: Toy-grec-x (error:" in done.stderr.splitlines()[-1]
    table = tree.run("status", "--all", *tree.args()).stdout
    assert "error: " in table and "(the same folder name under two roots)" in table  # status says so too


def test_a_profile_removed_and_restored_during_an_eval_watches_the_model_again(tree):
    model = tree.saves / "Toy-grec-sft-a"
    tree.checkpoint(model, 1, mode="slow")
    proc = subprocess.Popen([sys.executable, str(ENTRY), *tree.args("--poll-interval-seconds", "0.5")],
                            env={**tree.env(), "STANDIN_SLOW": "3"}, stdout=open(tree.ctl / "fleet.out", "w"),
                            stderr=subprocess.STDOUT)
    tree.procs.append(proc)
    out = tree.ctl / "fleet.out"
    wait_for(lambda: (tree.ctl / "starts-checkpoint-1").exists(), timeout=60)
    tree.profiles.write_text("rules: []\n")
    wait_for(lambda: "model Toy-grec-sft-a: no profile" in out.read_text(), timeout=30)
    tree.profiles.write_text(PROFILES)
    wait_for(lambda: tree.processed("Toy-grec-sft-a") == [1], timeout=60)  # the running eval is recorded
    tree.checkpoint(model, 2)
    wait_for(lambda: tree.processed("Toy-grec-sft-a") == [1, 2], timeout=60)  # and the model is watched again
    assert stop(proc) == 0, out.read_text()
    assert tree.calls() == ["checkpoint-1", "checkpoint-2"]


def test_plan_counts_the_slots_a_watching_fleet_uses(tree):
    model = tree.saves / "Toy-grec-sft-a"
    tree.checkpoint(model, 1, mode="slow-once")
    tree.checkpoint(model, 2)
    proc, out = tree.start(*tree.args())
    wait_for(lambda: (tree.ctl / "started-checkpoint-1").exists(), timeout=60)
    plan = tree.run("plan", *tree.args())
    assert plan.returncode == 0, plan.stderr
    assert "running now:" in plan.stdout and "checkpoint-1" in plan.stdout.split("running now:")[1].split("\n")[1]
    assert "checkpoint-2        when a slot frees" in plan.stdout, plan.stdout
    assert stop(proc) == 0, out.read_text()


def test_once_says_which_models_it_did_not_evaluate(tree):
    toy, beauty = tree.saves / "Toy-grec-sft-a", tree.saves / "Beauty-grec-sft-b"
    tree.checkpoint(toy, 1)
    tree.checkpoint(beauty, 2)
    single, single_out = tree.start(*tree.single_args(toy, "Toy"))
    wait_for(lambda: tree.processed("Toy-grec-sft-a") == [1], timeout=60)
    tree.checkpoint(toy, 3)
    done = tree.run(*tree.args("--once"))
    assert done.returncode == 0, done.stderr
    last = done.stderr.splitlines()[-1]
    assert f"; 1 model(s) not evaluated: Toy-grec-sft-a (locked: locked by pid {single.pid}" in last, last
    assert stop(single) == 0, single_out.read_text()


def test_a_symlinked_model_folder_is_one_model_and_a_repointed_link_is_followed(tree):
    first, second = tree.saves / "Toy-grec-r1", tree.saves / "Toy-grec-r2"
    tree.checkpoint(first, 1)
    tree.checkpoint(second, 7)
    link = tree.saves / "Toy-grec-latest"
    link.symlink_to(first.name)
    proc, out = tree.start(*tree.args("--poll-interval-seconds", "0.5"))
    wait_for(lambda: tree.processed("Toy-grec-r1") == [1] and tree.processed("Toy-grec-r2") == [7], timeout=60)
    wait_for(lambda: "model Toy-grec-latest: duplicate: the same model as" in out.read_text(), timeout=30)
    third = tree.repo / "elsewhere" / "Toy-grec-r3"  # outside the roots: reached only through the link
    tree.checkpoint(third, 9)
    link.unlink()
    link.symlink_to(third)
    wait_for(lambda: tree.processed("Toy-grec-r3") == [9], timeout=60)
    fourth = tree.repo / "elsewhere" / "Toy-grec-r4"
    tree.checkpoint(fourth, 11)
    replacement = tree.repo / "new-link"  # made outside the roots, then renamed over the link
    replacement.symlink_to(fourth)
    os.replace(replacement, link)  # the link, watched through, now points at another run
    wait_for(lambda: tree.processed("Toy-grec-r4") == [11], timeout=60)
    assert stop(proc) == 0, out.read_text()
    assert sorted(tree.calls()) == ["checkpoint-1", "checkpoint-11", "checkpoint-7", "checkpoint-9"]
    assert "Traceback" not in out.read_text()
