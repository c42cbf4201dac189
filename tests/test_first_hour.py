"""The first hour of a new user: the installed command, the help, where each value comes from, the
--repo-root default, a missing package, summary metrics with a direction.

Everything runs for real: pip builds and installs the package (no download: the build backend
comes from the test venv), the sidecar runs as a process with the stand-in eval script, and the
W&B part is judged by what the W&B server double (tests/wandb_server.py, on 127.0.0.1) received.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


from conftest import ENTRY, ROOT, STAND_IN
from test_delivery import KEY, online_env, server  # noqa: F401  (server: the W&B server double fixture)


def cli(*argv, env=None, cwd=None, timeout=60):
    return subprocess.run([sys.executable, str(ENTRY), *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def tracked_copy(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (git's list when there is one)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True)
    names = listed.stdout.split("\n") if listed.returncode == 0 and listed.stdout.strip() else None
    if names is None:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".venv", "__pycache__", "state", "log", ".git"))
        return dest
    for name in filter(None, names):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


# --- the installed command ---------------------------------------------------------------------------

def test_pip_install_gives_the_eval_sidecar_command_with_its_subcommands(ws, tmp_path):
    source = tracked_copy(tmp_path / "clone")
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-index", "--target", str(site), str(source)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr
    command = site / "bin" / "eval-sidecar"
    env = ws.env(PYTHONPATH=str(site))

    def run(*argv, cwd=tmp_path):
        return subprocess.run([sys.executable, str(command), *argv], capture_output=True, text=True, env=env,
                              cwd=cwd, timeout=120)

    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("eval-sidecar 0."), version
    usage = run("--help")
    assert usage.returncode == 0
    for name in ("watch", "once", "plan", "status", "sync", "align"):
        assert f"\n  {name} " in usage.stdout
    ws.checkpoint(100)
    ws.checkpoint(200)
    once = run("once", *ws.args())
    assert once.returncode == 0, once.stderr
    assert ws.calls() == ["checkpoint-100", "checkpoint-200"]
    status = run("status", *ws.args(), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["processed"] == 2
    # the original entry point over the same package, flat flags, nothing to do now
    again = cli(*ws.args("--once"), env=ws.env())
    assert again.returncode == 0 and ws.calls() == ["checkpoint-100", "checkpoint-200"]


# --- help ------------------------------------------------------------------------------------------------

def test_help_lists_the_commands_and_each_command_shows_its_own_flags_in_sections():
    top = cli("--help")
    assert top.returncode == 0
    assert "commands:" in top.stdout and "\n  once " in top.stdout and "\n  align " in top.stdout
    for section in ("identity", "evaluation", "watching", "state and logs", "Weights & Biases", "Slurm:",
                    "fleet mode"):
        assert section in top.stdout
    assert "--wandb-mode {online,offline,disabled}" in top.stdout
    assert "frozenset" not in top.stdout
    for line in top.stdout.splitlines():
        assert line.count("(default:") <= 1, line
    status = cli("status", "--help")
    assert status.returncode == 0
    assert "--state-file" in status.stdout and "--num-beams" in status.stdout and "--rows" in status.stdout
    assert "--slurm-args" not in status.stdout and "--batch-size" not in status.stdout
    sync = cli("sync", "--help")
    assert "--wandb-project" in sync.stdout and "--gpu-slots" not in sync.stdout


def test_a_mistyped_command_suggests_the_closest_and_version_prints(ws):
    wrong = cli("stauts", *ws.args())
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "eval_wandb_sidecar.py: error: unknown command 'stauts'; did you mean `status`?"
    assert cli("--version").stdout.startswith("eval_wandb_sidecar.py 0.")
    # status accepts the watch's whole command line, so a manager can reuse it as it is
    ws.checkpoint(100)
    assert cli(*ws.args("--once"), env=ws.env()).returncode == 0
    reused = cli("status", *ws.args("--batch-size", "4", "--gpu-slots", "0"), env=ws.env())
    assert reused.returncode == 0 and "processed 1" in reused.stdout


# --- where each value comes from ---------------------------------------------------------------------

def config_lines(text: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in text.splitlines():
        if line.startswith("--"):
            head, _, source = line.rstrip("]").rpartition("  [")
            flag, _, value = head.partition(" ")
            out[flag] = (value.strip(), source)
    return out


def test_print_config_names_where_every_value_came_from_and_a_stray_variable_is_seen(ws, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("num-beams: 20\nmax-attempts: 5\n")
    env = ws.env(BATCH_SIZE="16")
    shown = cli(*ws.args("--config", str(config), "--seed", "7", "--print-config"), env=env)
    assert shown.returncode == 0, shown.stderr
    lines = config_lines(shown.stdout)
    assert lines["--batch-size"] == ("16", "environment BATCH_SIZE")
    assert lines["--num-beams"] == ("20", f"config file {config}")
    assert lines["--seed"] == ("7", "command line")
    assert lines["--max-new-tokens"] == ("256", "default")
    assert lines["--force-eval-steps"] == ("-", "default")
    assert "state file" in shown.stdout and "W&B run id       eval-" in shown.stdout
    assert not ws.state_dir.exists()  # it only prints
    # the watch says so too, and the eval gets it (the original honoured the unprefixed names)
    ws.checkpoint(100)
    run = cli(*ws.args("--once"), env=env)
    assert run.returncode == 0, run.stderr
    assert "from the environment: BATCH_SIZE='16' sets --batch-size" in run.stderr
    assert json.loads((ws.ctl / "env-checkpoint-100.json").read_text())["BATCH_SIZE"] == "16"


# --- --repo-root ----------------------------------------------------------------------------------------

def user_repository(base: Path) -> Path:
    """A user's repository with our two files dropped in, the eval script and data at the defaults."""
    repo = base / "GenRec"
    shutil.copytree(ROOT / "sidecar", repo / "sidecar", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ENTRY, repo / "eval_wandb_sidecar.py")
    shutil.copy2(STAND_IN, repo / "evaluate_sft_3b.sh")
    data = repo / "data" / "Industrial_and_Scientific"
    (data / "sft").mkdir(parents=True)
    (data / "sft" / "test.json").write_text("[]")
    (data / "id2sid.json").write_text("{}")
    return repo


def test_repo_root_defaults_to_the_entry_scripts_folder_when_it_holds_the_eval_script(ws, tmp_path):
    repo = user_repository(tmp_path)
    model = repo / "saves" / "m1"
    for step in (100, 200):
        folder = model / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"w")
        old = os.stat(folder).st_mtime - 3600
        for path in (folder, folder / "model.safetensors"):
            os.utime(path, (old, old))
    elsewhere = tmp_path / "somewhere else"
    elsewhere.mkdir()
    flags = ["--sft-root", "saves/m1", "--once", "--disable-wandb", "--checkpoint-ready-seconds", "1"]
    shown = subprocess.run([sys.executable, str(repo / "eval_wandb_sidecar.py"), *flags, "--print-config"],
                           capture_output=True, text=True, env=ws.env(), cwd=elsewhere, timeout=60)
    assert config_lines(shown.stdout)["--repo-root"] == (
        str(repo), "default: the folder of eval_wandb_sidecar.py (it holds evaluate_sft_3b.sh)")
    run = subprocess.run([sys.executable, str(repo / "eval_wandb_sidecar.py"), *flags],
                         capture_output=True, text=True, env=ws.env(), cwd=elsewhere, timeout=120)
    assert run.returncode == 0, run.stderr
    assert ws.calls() == ["checkpoint-100", "checkpoint-200"]
    assert (repo / "results" / "m1" / "checkpoint-200" / "metrics.json").is_file()
    assert len(list((repo / "state" / "wandb_eval_sidecar").glob("m1_*.json"))) == 1
    assert not (elsewhere / "state").exists() and not (elsewhere / "results").exists()
    # our clone elsewhere, run from the user's repository: the current folder, as before
    (model / "checkpoint-300").mkdir()
    (model / "checkpoint-300" / "model.safetensors").write_bytes(b"w")
    os.utime(model / "checkpoint-300" / "model.safetensors", (1, 1))
    os.utime(model / "checkpoint-300", (1, 1))
    from_repo = cli(*flags, env=ws.env(), cwd=repo, timeout=120)
    assert from_repo.returncode == 0, from_repo.stderr
    assert ws.calls() == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]


# --- a missing package ----------------------------------------------------------------------------------

def test_a_missing_package_names_the_interpreter_and_the_fix(ws, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("seed: 1\n")
    # yaml is hidden from this interpreter (None in sys.modules makes its import fail as if absent)
    code = ("import runpy, sys; sys.modules['yaml'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, str(ENTRY), *ws.args("--once", "--config", str(config))],
                            capture_output=True, text=True, env=ws.env(), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"eval_wandb_sidecar.py: error: {sys.executable} lacks the Python package 'PyYAML': run {sys.executable} "
        f"-m pip install -r {ROOT / 'requirements.txt'} (or start the sidecar with the interpreter of a venv that "
        f"has it)")
    assert "Traceback" not in result.stderr and not ws.state_dir.exists()


# --- summary metrics with a direction ------------------------------------------------------------------

def test_summary_metrics_with_a_direction_reach_the_server_and_bad_ones_are_one_line(ws, server):
    losses = {100: 0.9, 200: 0.4, 300: 0.6}
    for step, loss in losses.items():
        ws.checkpoint(step)
        ws.results(step).parent.mkdir(parents=True, exist_ok=True)
        ws.results(step).write_text(json.dumps({"acc": round(1 - loss, 2), "loss": loss}))
    env = online_env(ws, server)
    flags = [a for a in ws.args("--once", "--wandb-mode", "online", "--wandb-init-timeout", "5",
                                "--summary-metrics", "acc,loss:min") if a != "--disable-wandb"]
    result = cli(*flags, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    state = ws.state()
    assert state["sidecar_settings"]["summary_metrics"] == ["acc", "loss:min"]
    run = server.run(state["run_id"], project="MIMIGenRec-Eval")
    assert run.summary["best_loss"] == 0.4 and run.summary["best_step_for_loss"] == 200
    assert run.summary["best_acc"] == 0.6 and run.summary["best_step_for_acc"] == 200
    assert run.summary["last_loss"] == 0.6 and run.summary["last_step"] == 300
    assert "best_hr@10" not in run.summary
    # W&B's own summary agrees: loss is summarised by its minimum, acc keeps the original's last value
    assert run.summary["eval/loss"] == {"min": 0.4} and run.summary["eval/acc"] == 0.4
    defined = run.config["_wandb"]["value"]["m"]
    assert any(m.get("1") == "eval/loss" and m.get("7") == [1] for m in defined), defined  # 7: summary, 1: min
    wrong = cli(*ws.args("--once", "--summary-metrics", "acc,acc"), env=ws.env())
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "eval_wandb_sidecar.py: error: --summary-metrics: 'acc' is named twice in 'acc,acc'"
    assert KEY not in result.stderr


def test_a_closed_pipe_a_bare_call_and_help_of_an_unknown_command(ws):
    ws.checkpoint(100)
    assert cli(*ws.args("--once"), env=ws.env()).returncode == 0
    # the reader is gone before status writes (as `status | head` once head has its line)
    piped = subprocess.Popen([sys.executable, str(ENTRY), "status", *ws.args("--rows")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=ws.env())
    piped.stdout.close()
    assert piped.stderr.read() == b"" and piped.wait(timeout=60) == 0
    piped.stderr.close()
    bare = cli()
    assert bare.returncode == 2 and bare.stderr.startswith("usage: eval_wandb_sidecar.py [COMMAND] [flags]")
    unknown = cli("help", "bogus")
    assert unknown.returncode == 2 and "unknown command 'bogus'" in unknown.stderr
    assert "--state-file" in cli("help", "status").stdout


def test_repo_root_follows_a_symlinked_entry_and_an_absolute_eval_script_inside_it(ws, tmp_path):
    repo = user_repository(tmp_path)
    linked = tmp_path / "Linked"
    linked.mkdir()
    (linked / "eval_wandb_sidecar.py").symlink_to(repo / "eval_wandb_sidecar.py")
    shutil.copy2(STAND_IN, linked / "evaluate_sft_3b.sh")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def repo_root(entry, *flags):
        shown = subprocess.run([sys.executable, str(entry), "--sft-root", "saves/m", *flags, "--print-config"],
                               capture_output=True, text=True, env=ws.env(), cwd=elsewhere, timeout=60)
        assert shown.returncode == 0, shown.stderr
        return config_lines(shown.stdout)["--repo-root"][0]

    assert repo_root(linked / "eval_wandb_sidecar.py") == str(linked)  # the link's folder, the user's repository
    assert repo_root(repo / "eval_wandb_sidecar.py", "--eval-script", str(repo / "evaluate_sft_3b.sh")) == str(repo)
    assert repo_root(repo / "eval_wandb_sidecar.py", "--eval-script", str(STAND_IN)) == str(elsewhere)


def test_print_config_in_fleet_mode_and_for_derived_gpu_slots(ws, tmp_path):
    (tmp_path / "saves").mkdir()
    fleet = cli("--models-root", str(tmp_path / "saves"), "--print-config", env=ws.env(CUDA_LIST="2 3"))
    lines = config_lines(fleet.stdout)
    assert lines["--sft-root"] == ("-", "fleet mode: each model folder under --models-root")
    assert lines["--gpu-slots"] == ("2,3", "default: one slot, --cuda-list (environment CUDA_LIST)")
    assert "state file" not in fleet.stdout


def test_a_yaml_list_of_steps_to_re_evaluate(ws, tmp_path):
    for step in (100, 200, 300):
        ws.checkpoint(step)
    assert cli(*ws.args("--once"), env=ws.env()).returncode == 0
    config = tmp_path / "again.yaml"
    config.write_text("force-eval-steps: [100, 300]\n")
    again = cli(*ws.args("--once", "--config", str(config)), env=ws.env())
    assert again.returncode == 0, again.stderr
    assert ws.calls() == ["checkpoint-100", "checkpoint-200", "checkpoint-300", "checkpoint-100", "checkpoint-300"]
