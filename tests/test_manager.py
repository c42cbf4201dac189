"""The manager script eval_wandb_sidecar.sh: start/stop/status/tail with pid files, real processes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

from conftest import ROOT, wait_for, process_gone

MANAGER = ROOT / "eval_wandb_sidecar.sh"


def manage(ws, tmp_path, *args, timeout=120, **env):
    environ = ws.env(SIDECAR_PYTHON=sys.executable, PYTHON_BIN=sys.executable,
                     MANAGER_DIR=str(tmp_path / "manager dir"), **env)
    return subprocess.run(["bash", str(MANAGER), *args], cwd=tmp_path, env=environ, capture_output=True,
                          text=True, timeout=timeout)


def test_start_twice_status_stop_status(ws, tmp_path):
    ws.checkpoint(100)
    name = "cb64 $(touch pwned) 'q'"
    started = manage(ws, tmp_path, "start", "--instance", name, *ws.args("--poll-interval-seconds", "0.3"))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "started instance" in started.stdout
        again = manage(ws, tmp_path, "start", "--instance", name, *ws.args())
        assert again.returncode == 0 and "already running" in again.stdout
        wait_for(lambda: ws.calls() == ["checkpoint-100"])
        status = manage(ws, tmp_path, "status", "--instance", name)
        assert status.returncode == 0 and "is running" in status.stdout
        assert "processed 1" in status.stdout  # the Python status of the same configuration
    finally:
        stopped = manage(ws, tmp_path, "stop", "--instance", name)
    assert stopped.returncode == 0 and "stopped instance" in stopped.stdout
    status = manage(ws, tmp_path, "status", "--instance", name)
    assert status.returncode == 1 and "not running" in status.stdout
    assert not list(tmp_path.rglob("pwned"))
    logs = list((tmp_path / "manager dir").glob("*.log"))
    assert len(logs) == 1 and "evaluated checkpoint-100" in logs[0].read_text()


def test_stale_pid_file_is_detected_and_its_process_left_alone(ws, tmp_path):
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        folder = tmp_path / "manager dir"
        folder.mkdir()
        (folder / "x.pid").write_text(f"{unrelated.pid}\n")
        status = manage(ws, tmp_path, "status", "--instance", "x")
        assert status.returncode == 3 and "stale pid file" in status.stdout
        stop = manage(ws, tmp_path, "stop", "--instance", "x")
        assert stop.returncode == 0 and "nothing signalled" in stop.stdout
        assert unrelated.poll() is None  # not killed
        assert not (folder / "x.pid").exists()
    finally:
        unrelated.kill()
        unrelated.wait()


def test_stop_kills_a_sidecar_whose_eval_ignores_sigterm_within_stop_timeout(ws, tmp_path):
    ws.checkpoint(100)
    ws.mode(100, "ignore-term")
    started = manage(ws, tmp_path, "start", "--instance", "stubborn",
                     *ws.args("--poll-interval-seconds", "3600", "--eval-kill-grace-seconds", "600"))
    assert started.returncode == 0, started.stderr
    wait_for(lambda: (ws.ctl / "grandchild-checkpoint-100").exists())
    pid = _pid_of(tmp_path / "manager dir", "stubborn")
    t0 = time.monotonic()
    stopped = manage(ws, tmp_path, "stop", "--instance", "stubborn", STOP_TIMEOUT="2")
    elapsed = time.monotonic() - t0
    assert stopped.returncode == 0 and "SIGKILL" in stopped.stdout
    assert elapsed < 2 + 5  # STOP_TIMEOUT plus slack for a slow machine, not a speed figure
    wait_for(lambda: process_gone(pid), timeout=10)
    # The eval the killed sidecar left behind is stopped by the next start.
    grandchild = int((ws.ctl / "grandchild-checkpoint-100").read_text())
    ws.mode(100, "ok")
    assert ws.run("--once", "--eval-kill-grace-seconds", "1").returncode == 0
    wait_for(lambda: process_gone(grandchild), timeout=15)


def test_start_with_a_bad_flag_prints_the_error_and_exits_1(ws, tmp_path):
    result = manage(ws, tmp_path, "start", "--instance", "bad", *ws.args("--num-beams", "lots"),
                    START_CHECK_SECONDS="1")
    assert result.returncode == 1
    assert "exited at once" in result.stderr
    assert "--num-beams: expected an integer, got 'lots'" in result.stderr
    assert not (tmp_path / "manager dir" / "bad.pid").exists()


def test_tail_follows_the_log(ws, tmp_path):
    folder = tmp_path / "manager dir"
    folder.mkdir()
    (folder / "t.log").write_text("line one\n")
    environ = ws.env(PYTHON_BIN=sys.executable, MANAGER_DIR=str(folder))
    proc = subprocess.Popen(["bash", str(MANAGER), "tail", "--instance", "t"], env=environ, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert "following" in proc.stdout.readline()
        assert proc.stdout.readline() == "line one\n"
        with open(folder / "t.log", "a") as fh:
            fh.write("line two\n")
        assert proc.stdout.readline() == "line two\n"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def test_concurrent_starts_leave_one_tracked_sidecar_and_status_works_from_elsewhere(ws, tmp_path):
    ws.checkpoint(100)
    start_dir = tmp_path / "start here"
    start_dir.mkdir()
    environ = ws.env(PYTHON_BIN=sys.executable, MANAGER_DIR=str(tmp_path / "manager dir"))
    # relative paths: status must resolve them where the instance was started
    args = [a.replace(str(ws.repo), "../" + ws.repo.name) if isinstance(a, str) else a
            for a in ws.args("--poll-interval-seconds", "0.3")]
    starts = [subprocess.Popen(["bash", str(MANAGER), "start", "--instance", "q", *args], cwd=start_dir, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in starts]
    try:
        assert sum("started instance" in o for o, _ in outs) == 1, outs
        status = subprocess.run(["bash", str(MANAGER), "status", "--instance", "q"], cwd="/", env=environ,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "is running" in status.stdout
        wait_for(lambda: ws.calls() == ["checkpoint-100"])
        status = subprocess.run(["bash", str(MANAGER), "status", "--instance", "q"], cwd="/", env=environ,
                                capture_output=True, text=True, timeout=60)
        assert "processed 1" in status.stdout, status.stdout + status.stderr
    finally:
        subprocess.run(["bash", str(MANAGER), "stop", "--instance", "q"], env=environ, capture_output=True, timeout=120)


def _pid_of(folder, name):
    return int((folder / f"{name}.pid").read_text().splitlines()[0])


def test_a_pid_file_pointing_at_another_instances_sidecar_is_stale_and_that_sidecar_is_left_alone(ws, tmp_path):
    """Pid reuse: instance a's sidecar died, and the kernel gave its pid to instance b's sidecar."""
    folder = tmp_path / "manager dir"
    for name in ("a", "b"):
        started = manage(ws, tmp_path, "start", "--instance", name,
                         *ws.args("--poll-interval-seconds", "3600", "--state-dir", str(tmp_path / f"state {name}")),
                         START_CHECK_SECONDS="1")
        assert started.returncode == 0, started.stdout + started.stderr
    try:
        a_pid, b_pid = _pid_of(folder, "a"), _pid_of(folder, "b")
        os.kill(a_pid, signal.SIGKILL)  # a crashed; its pid file stays
        wait_for(lambda: process_gone(a_pid), timeout=30)
        lines = (folder / "a.pid").read_text().splitlines()
        (folder / "a.pid").write_text("\n".join([str(b_pid), *lines[1:]]) + "\n")  # what a's pid now names
        status = manage(ws, tmp_path, "status", "--instance", "a")
        assert status.returncode == 3, status.stdout + status.stderr
        assert "stale pid file" in status.stdout and "instance 'b'" in status.stdout, status.stdout
        stop = manage(ws, tmp_path, "stop", "--instance", "a")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert stop.stdout.count("\n") == 1 and "nothing signalled" in stop.stdout, stop.stdout
        assert not (folder / "a.pid").exists()
        # a pid file from an older manager (the pid alone) that names b's sidecar is stale too
        (folder / "a.pid").write_text(f"{b_pid}\n")
        status = manage(ws, tmp_path, "status", "--instance", "a")
        assert status.returncode == 3 and "instance 'b'" in status.stdout, status.stdout
        stop = manage(ws, tmp_path, "stop", "--instance", "a")
        assert stop.returncode == 0 and "nothing signalled" in stop.stdout
        time.sleep(0.5)  # a SIGTERM would have been handled by now; b must still run
        assert not process_gone(b_pid)
        status = manage(ws, tmp_path, "status", "--instance", "b")
        assert status.returncode == 0 and f"is running (pid {b_pid})" in status.stdout, status.stdout
    finally:
        stopped = manage(ws, tmp_path, "stop", "--instance", "b")
    assert stopped.returncode == 0 and "stopped instance" in stopped.stdout
    wait_for(lambda: process_gone(b_pid), timeout=30)


def test_a_sidecar_started_by_the_older_manager_is_still_recognised(ws, tmp_path):
    """Its pid file holds the pid alone: the process is checked against the flags and folder it was
    started with."""
    folder = tmp_path / "manager dir"
    started = manage(ws, tmp_path, "start", "--instance", "old", *ws.args("--poll-interval-seconds", "3600"),
                     START_CHECK_SECONDS="1")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = _pid_of(folder, "old")
    try:
        (folder / "old.pid").write_text(f"{pid}\n")
        status = manage(ws, tmp_path, "status", "--instance", "old")
        assert status.returncode == 0 and f"is running (pid {pid})" in status.stdout, status.stdout
    finally:
        stopped = manage(ws, tmp_path, "stop", "--instance", "old")
    assert stopped.returncode == 0 and "stopped instance" in stopped.stdout, stopped.stdout
    wait_for(lambda: process_gone(pid), timeout=30)


# A stand-in for the sidecar, for flags the real one does not take yet (fleet mode): it records its
# arguments (after its SIGTERM handler is in place), answers `status`, and waits for SIGTERM.
STAND_IN_SIDECAR = r'''
import json, os, signal, sys
record = os.environ["STANDIN_SIDECAR_RECORD"]
if sys.argv[1:2] == ["status"]:
    print("stand-in status of", json.dumps(sys.argv[2:]))
    sys.exit(0)
def on_term(signum, frame):
    open(record + ".term", "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
with open(record + ".new", "w") as fh:
    json.dump(sys.argv[1:], fh)
os.replace(record + ".new", record)
print("stand-in sidecar watching", flush=True)
while True:
    signal.pause()
'''


def _listing(result):
    """list's header cells and its rows by instance name (each row as the line it printed)."""
    assert result.returncode == 0, result.stdout + result.stderr
    header, *rows = result.stdout.splitlines()
    return header.split(), {row.split()[0]: row for row in rows}, [row.split()[0] for row in rows]


def _boot_id():
    return open("/proc/sys/kernel/random/boot_id").read().strip()


def test_list_shows_running_stopped_and_stale_instances_as_status_judges_them(ws, tmp_path):
    folder = tmp_path / "manager dir"
    unrelated = subprocess.Popen(["sleep", "60"])
    started = manage(ws, tmp_path, "start", "--instance", "sft-running", *ws.args("--poll-interval-seconds", "3600"),
                     START_CHECK_SECONDS="1")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        running_pid = _pid_of(folder, "sft-running")
        started = manage(ws, tmp_path, "start", "--instance", "old-stopped",
                         *ws.args("--poll-interval-seconds", "3600", "--state-dir", str(tmp_path / "state old")),
                         START_CHECK_SECONDS="1")
        assert started.returncode == 0, started.stdout + started.stderr
        stopped = manage(ws, tmp_path, "stop", "--instance", "old-stopped")
        assert stopped.returncode == 0 and "stopped instance" in stopped.stdout, stopped.stdout
        # pid reuse: the pid file names a process that started after it was written
        (folder / "reused-stale.pid").write_text(f"{unrelated.pid}\nstart=1 boot={_boot_id()}\n")
        (folder / "reused-stale.args").write_bytes((folder / "sft-running.args").read_bytes())
        (folder / "log-only.log").write_text("an instance whose pid and args files are gone\n")
        (folder / "notes.txt").write_text("not an instance\n")
        before = sorted(p.name for p in folder.iterdir())

        listed = manage(ws, tmp_path, "list")
        header, rows, order = _listing(listed)
        assert header == ["INSTANCE", "STATE", "PID", "LOG", "WATCHES"]
        assert order == ["log-only", "old-stopped", "reused-stale", "sft-running"], listed.stdout
        assert rows["sft-running"].split()[1:3] == ["running", str(running_pid)]
        assert str(folder / "sft-running.log") in rows["sft-running"]
        assert rows["sft-running"].endswith(f"--sft-root {ws.sft}"), rows["sft-running"]
        assert rows["old-stopped"].split()[1:3] == ["stopped", "-"]
        assert str(folder / "old-stopped.log") in rows["old-stopped"]
        assert rows["old-stopped"].endswith(f"--sft-root {ws.sft}")
        assert rows["reused-stale"].split()[1:3] == ["stale", str(unrelated.pid)]
        assert rows["reused-stale"].endswith("(stale pid file: now belongs to another program, started after this"
                                             " pid file)"), rows["reused-stale"]
        assert rows["reused-stale"].split()[3] == "-"  # it never started here: no log
        assert rows["log-only"].split()[1:3] == ["stopped", "-"] and rows["log-only"].endswith(" -")
        # the columns line up, also with spaces in the log path
        starts = {line.index(str(folder)) for line in listed.stdout.splitlines()[1:] if str(folder) in line}
        assert len(starts) == 1 and listed.stdout.splitlines()[0].index("LOG") in starts

        # the same verdicts as status, instance by instance
        for name, code in (("sft-running", 0), ("old-stopped", 1), ("reused-stale", 3), ("log-only", 1)):
            assert manage(ws, tmp_path, "status", "--instance", name).returncode == code, name
        # listing changes nothing: the stale pid file stays, its process is not signalled
        assert sorted(p.name for p in folder.iterdir()) == before
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()
        stopped = manage(ws, tmp_path, "stop", "--instance", "sft-running")
    assert stopped.returncode == 0 and "stopped instance" in stopped.stdout
    wait_for(lambda: process_gone(running_pid), timeout=30)


def test_a_fleet_instance_starts_without_sft_root_and_list_shows_its_models_roots(ws, tmp_path):
    folder = tmp_path / "manager dir"
    sidecar = tmp_path / "stand-in sidecar ü.py"
    sidecar.write_text(STAND_IN_SIDECAR)
    record = tmp_path / "sidecar argv.json"
    (tmp_path / "profiles.yaml").write_text("profiles: {}\n")
    env = dict(SIDECAR_PY=str(sidecar), STANDIN_SIDECAR_RECORD=str(record), START_CHECK_SECONDS="1")
    flags = ["--models-root", "saves", "--models-root", "rl outputs (ünï)", "--profiles", "profiles.yaml"]
    started = manage(ws, tmp_path, "start", "--instance", "fleet", *flags, **env)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = _pid_of(folder, "fleet")
    try:
        assert wait_for(lambda: json.loads(record.read_text())) == flags  # forwarded as given
        header, rows, order = _listing(manage(ws, tmp_path, "list", **env))
        assert order == ["fleet"]
        assert rows["fleet"].split()[1:3] == ["running", str(pid)]
        assert rows["fleet"].endswith("--models-root saves --models-root rl outputs (ünï)"), rows["fleet"]
        status = manage(ws, tmp_path, "status", "--instance", "fleet", **env)
        assert status.returncode == 0 and f"is running (pid {pid})" in status.stdout, status.stdout
        assert "stand-in status of " + json.dumps(flags) in status.stdout  # the saved flags, to the sidecar
    finally:
        stopped = manage(ws, tmp_path, "stop", "--instance", "fleet", **env)
    assert stopped.returncode == 0 and "stopped instance" in stopped.stdout, stopped.stdout
    assert (tmp_path / "sidecar argv.json.term").exists()  # it was asked to stop, not killed
    wait_for(lambda: process_gone(pid), timeout=30)
    header, rows, order = _listing(manage(ws, tmp_path, "list", **env))
    assert rows["fleet"].split()[1:3] == ["stopped", "-"]
    assert rows["fleet"].endswith("--models-root saves --models-root rl outputs (ünï)")
    assert "stand-in sidecar watching" in (folder / "fleet.log").read_text()


def test_list_without_instances_says_so_in_one_line_and_exits_0(ws, tmp_path):
    folder = tmp_path / "manager dir"
    for _ in ("absent", "holding no instance's files"):
        listed = manage(ws, tmp_path, "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout == f"eval_wandb_sidecar.sh: no instances are known in MANAGER_DIR {folder}\n"
        folder.mkdir(exist_ok=True)
        (folder / "x.start.lock").write_text("")
        (folder / "notes.txt").write_text("")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "x.start.lock"]
    assert manage(ws, tmp_path, "list", "--sft-root", "x").returncode == 2


def test_tail_of_an_unknown_instance_is_an_error_and_creates_nothing(ws, tmp_path):
    folder = tmp_path / "manager dir"
    result = manage(ws, tmp_path, "tail", "--instance", "ghost", timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "'ghost'" in result.stderr and str(folder) in result.stderr
    assert not folder.exists()
    folder.mkdir()
    (folder / "other.log").write_text("")
    result = manage(ws, tmp_path, "tail", "--instance", "ghost", timeout=30)
    assert result.returncode == 2 and "'ghost'" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["other.log"]


def test_usage_is_the_help_a_user_needs_and_nothing_else(ws, tmp_path):
    helped = manage(ws, tmp_path, "help")
    assert helped.returncode == 0 and helped.stderr == ""
    text = helped.stdout
    lines = text.splitlines()
    assert lines[0] == "Usage: bash eval_wandb_sidecar.sh COMMAND [--instance NAME] [flags...]"
    assert lines[1] == "" and lines[-1].strip() and text.endswith("\n") and "\n\n\n" not in text
    # no remnant of the script: shebang, comments, shell code, the internal command
    assert not [line for line in lines if line.lstrip().startswith("#") or "set -e" in line or "_supervise" in line]
    assert max(len(line) for line in lines) <= 100
    commands_part = text.split("\nCommands:\n")[1].split("\nEnvironment:\n")[0]
    environment_part = text.split("\nEnvironment:\n")[1]
    script = MANAGER.read_text()
    # every command of the script's dispatch, and every setting it reads from the environment
    dispatch = script[script.rindex('case "$command" in'):]
    commands = {c for label in re.findall(r"^  ([a-z_|-]+)\)", dispatch, flags=re.M) for c in label.split("|")}
    commands = {c for c in commands if not c.startswith(("_", "-"))}
    assert commands == {"start", "stop", "status", "tail", "list", "run", "once", "sync", "align", "help"}
    for name in commands:
        assert re.search(rf"^  (\S+\|)?{name}\b", commands_part, flags=re.M), name
    variables = set(re.findall(r"\$\{([A-Z][A-Z_]+):-", script))
    assert {"SIDECAR_PYTHON", "PYTHON_BIN", "SIDECAR_LOG_MAX_MB", "SIDECAR_RESTART_BACKOFF_SECONDS"} <= variables
    for name in variables:
        assert re.search(rf"^  {name} ", environment_part, flags=re.M), name
    # no arguments, or an unknown command: the same text on stderr, exit 2
    bare = manage(ws, tmp_path)
    assert (bare.returncode, bare.stdout, bare.stderr) == (2, "", text)
    unknown = manage(ws, tmp_path, "bogus")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == "eval_wandb_sidecar.sh: unknown command 'bogus'\n" + text
