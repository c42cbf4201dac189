"""Disk full, eight sidecars at once, symlinked state paths, hostile paths and names, secrets."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import ENTRY, ROOT, Workspace, wait_for  # noqa: E402


@pytest.fixture
def tiny_fs(tmp_path):
    """A 512 KiB tmpfs mounted by the test (skipped where mounting is not permitted)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing left to fail at close
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_disk_full_keeps_the_previous_state_and_resumes_when_space_returns(ws, tiny_fs):
    state_dir = tiny_fs / "state"
    ws.checkpoint(100)
    assert ws.run("--once", "--state-dir", str(state_dir)).returncode == 0
    filler = fill(tiny_fs)
    ws.checkpoint(200)
    once = ws.run("--once", "--state-dir", str(state_dir))
    assert once.returncode == 1
    last = once.stderr.strip().splitlines()[-1]
    assert "could not write state file" in last and "No space left on device" in last and "intact" in last
    [path] = [p for p in state_dir.glob("*.json")]
    assert json.loads(path.read_text())["processed_steps"] == [100]
    proc = ws.start("--state-dir", str(state_dir), "--poll-interval-seconds", "0.3")
    try:
        wait_for(lambda: "will retry" in "".join(p.read_text() for p in ws.ctl.glob("sidecar-*.out")))
        filler.unlink()  # space returns: the running sidecar writes its state again
        wait_for(lambda: json.loads(path.read_text())["processed_steps"] == [100, 200])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    out = "".join(p.read_text() for p in ws.ctl.glob("sidecar-*.out"))
    assert out.count("No space left on device") == 1  # one error per outage, not one per tick
    assert "written again" in out


@pytest.mark.parametrize("lock_mode", ["auto", "soft"])
def test_eight_sidecars_started_at_once_exactly_one_runs(ws, lock_mode):
    ws.checkpoint(100)
    ws.mode(100, "slow")
    env = ws.env(STANDIN_SLOW="3")
    procs = [subprocess.Popen([sys.executable, str(ENTRY), *ws.args("--once", "--lock-mode", lock_mode)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [(p.pid, *p.communicate(timeout=120), p.returncode) for p in procs]
    winners = [r for r in results if r[3] == 0]
    losers = [r for r in results if r[3] != 0]
    assert len(winners) == 1, [(r[0], r[3], r[2][-200:]) for r in results]
    holder = winners[0][0]
    for _pid, _out, err, code in losers:
        assert code == 3, err
        assert f"another sidecar (pid {holder} on host {socket.gethostname()})" in err
    assert ws.calls() == ["checkpoint-100"]


def test_a_state_path_that_is_a_symlink_is_refused(ws, tmp_path):
    ws.checkpoint(100)
    assert ws.run("--once").returncode == 0
    [state] = ws.state_files()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(state.read_text())
    state.unlink()
    state.symlink_to(elsewhere)
    before = elsewhere.read_text()
    result = ws.run("--once")
    assert result.returncode == 2 and "refusing to use the state file" in result.stderr
    assert elsewhere.read_text() == before


HOSTILE = "x $(touch pwned) `touch pwned2`; touch pwned3 'q' \"dq\"\nnewline"


def test_hostile_paths_and_instance_names_execute_nothing(tmp_path):
    base = tmp_path / HOSTILE
    base.mkdir()
    ws = Workspace(base)
    ws.checkpoint(100)
    result = ws.run("--once", "--category", HOSTILE)
    assert result.returncode == 0, result.stderr
    env = json.loads((ws.ctl / "env-checkpoint-100.json").read_text())
    assert env["CATEGORY"] == HOSTILE and env["CKPT_LIST"] == str(ws.sft / "checkpoint-100")
    manager_env = ws.env(PYTHON_BIN=sys.executable, SIDECAR_PYTHON=sys.executable, MANAGER_DIR=str(base / "mgr $(touch pwned)"))
    run = lambda *a: subprocess.run(["bash", str(ROOT / "eval_wandb_sidecar.sh"), *a], env=manager_env,  # noqa: E731
                                    capture_output=True, text=True, timeout=120, cwd=base)
    ws.checkpoint(200)
    assert run("start", "--instance", HOSTILE, *ws.args("--poll-interval-seconds", "0.3")).returncode == 0
    try:
        wait_for(lambda: "checkpoint-200" in ws.calls())
        assert run("status", "--instance", HOSTILE).returncode == 0
    finally:
        assert run("stop", "--instance", HOSTILE).returncode == 0
    assert run("status", "--instance", HOSTILE).returncode == 1
    for root in (tmp_path, Path.cwd(), ROOT):
        assert not [p for p in root.rglob("pwned*")], root


def test_secrets_never_appear_in_any_output_log_state_or_wandb_file(ws, isolated_env, tmp_path):
    keys = {"WANDB_API_KEY": "wbkey0123456789abcdef0123456789abcdef0123", "SWANLAB_API_KEY": "slkey-42-secret-value"}
    env = ws.env(**keys)
    outputs = []
    wb = [a for a in ws.args("--wandb-mode", "offline") if a != "--disable-wandb"]
    call = lambda *a, **kw: subprocess.run(a, env=env, capture_output=True, text=True, timeout=180,  # noqa: E731
                                           cwd=tmp_path, **kw)
    ws.checkpoint(100)
    outputs.append(call(sys.executable, str(ENTRY), *wb, "--once"))
    proc = subprocess.Popen([sys.executable, str(ENTRY), *wb, "--poll-interval-seconds", "0.3"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ws.checkpoint(200)
    wait_for(lambda: "checkpoint-200" in ws.calls())
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    outputs.append(subprocess.CompletedProcess([], proc.returncode, out, err))
    outputs.append(call(sys.executable, str(ENTRY), "status", *wb, "--json"))
    outputs.append(call(sys.executable, str(ENTRY), "sync", *wb, "--dry-run"))
    (tmp_path / "run.csv").write_text("step,reward\n1,0.5\n")
    (tmp_path / "align.yaml").write_text(yaml.safe_dump({
        "aligned_metrics": ["algorithm/reward"], "frameworks": {"c": {"platform": "csv", "path": "run.csv",
                                                                      "mapping": {"reward": "algorithm/reward"}}},
        "target": {"project": "p", "mode": "offline"}}))
    outputs.append(call(sys.executable, str(ENTRY), "align", "--config", "align.yaml", "--dry-run"))
    menv = {**env, "PYTHON_BIN": sys.executable, "SIDECAR_PYTHON": sys.executable, "MANAGER_DIR": str(tmp_path / "mgr")}
    manager = lambda *a: subprocess.run(["bash", str(ROOT / "eval_wandb_sidecar.sh"), *a], env=menv,  # noqa: E731
                                        capture_output=True, text=True, timeout=120)
    outputs.append(manager("start", "--instance", "s", *wb, "--poll-interval-seconds", "0.3"))
    time.sleep(1)
    outputs.append(manager("status", "--instance", "s"))
    outputs.append(manager("stop", "--instance", "s"))
    for result in outputs:
        assert result.returncode in (0, 1), (result.args, result.stderr[-400:])
        for value in keys.values():
            assert value not in result.stdout + result.stderr
    for folder in (ws.repo, isolated_env, tmp_path / "mgr"):
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for value in keys.values():
                    assert value.encode() not in data, path
