"""The manager script's interpreter (SIDECAR_PYTHON), its dependency check, its rotated logs and its
restarts (start --restart-on-failure). Real processes throughout: the manager under bash, the real
sidecar, or a small stand-in sidecar where a test needs a sidecar that fails on cue or prints a
known stream of lines."""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ROOT, wait_for, process_gone

MANAGER = ROOT / "eval_wandb_sidecar.sh"
REQUIREMENTS = ROOT / "requirements.txt"


def manage(ws, tmp_path, *args, timeout=120, script=MANAGER, cwd=None, **env):
    environ = ws.env(**{"SIDECAR_PYTHON": sys.executable, "MANAGER_DIR": str(tmp_path / "manager dir"), **env})
    environ = {k: v for k, v in environ.items() if v is not None}  # None: leave the variable unset
    return subprocess.run(["bash", str(script), *args], cwd=cwd or tmp_path, env=environ, capture_output=True,
                          text=True, timeout=timeout)


def instance_processes(folder):
    """Pids of the processes an instance in MANAGER_DIR `folder` left (its supervisor, log writer,
    sidecar, evals: all have that MANAGER_DIR in their environment)."""
    mark = b"\0MANAGER_DIR=" + os.fsencode(folder) + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark in b"\0" + (entry / "environ").read_bytes() and not process_gone(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def pid_in(folder, name):
    return int((folder / f"{name}.pid").read_text().splitlines()[0])


def recording_python(path, record, name):
    """A wrapper interpreter that notes each use in `record` (its arguments; for `-c CODE` those after
    the code), then runs this test's Python (same pid: exec)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n"
                    'if [ "$1" = -c ]; then line="-c $(shift 2; printf \'%s \' "$@")"; else line="$(printf \'%s \' "$@")"; fi\n'
                    f'printf "%s %s\\n" "{name}" "$line" >> "{record}"\n'
                    f'exec "{sys.executable}" "$@"\n')
    path.chmod(0o755)
    return path


def uses(record, name):
    return [line[len(name) + 1:] for line in record.read_text().splitlines() if line.startswith(name + " ")] \
        if record.exists() else []


# --- SIDECAR_PYTHON --------------------------------------------------------------------------------

def test_with_nothing_set_the_sidecar_runs_under_the_repositorys_venv_else_python3_and_the_eval_keeps_python_bin(
        ws, tmp_path):
    """The repository is the folder of the manager script: a copy of the script in a folder with a
    recording `.venv/bin/python`; then the same folder without `.venv`, with recording `python3` and
    `python` first on PATH. PYTHON_BIN only ever reaches the eval."""
    copy = tmp_path / "repo copy"
    copy.mkdir()
    shutil.copy(MANAGER, copy / MANAGER.name)
    record = tmp_path / "used.txt"
    recording_python(copy / ".venv" / "bin" / "python", record, "venv")
    env = dict(SIDECAR_PYTHON=None, PYTHON_BIN=None, SIDECAR_PY=str(ROOT / "eval_wandb_sidecar.py"))
    ws.checkpoint(100)
    result = manage(ws, tmp_path, "once", *ws.args(), script=copy / MANAGER.name, **env)
    assert result.returncode == 0, result.stderr
    venv_uses = uses(record, "venv")
    assert venv_uses[0].startswith("-c yaml:PyYAML ")  # the dependency check
    assert venv_uses[1].startswith(f"{ROOT / 'eval_wandb_sidecar.py'} --once "), venv_uses
    assert ws.calls() == ["checkpoint-100"]
    eval_env = (ws.ctl / "env-checkpoint-100.json").read_text()
    assert '"PYTHON_BIN": "python"' in eval_env  # the sidecar's own default, as before

    shutil.rmtree(copy / ".venv")
    bin_dir = tmp_path / "bin"
    recording_python(bin_dir / "python3", record, "python3")
    recording_python(bin_dir / "python", record, "python")
    ws.checkpoint(200)
    result = manage(ws, tmp_path, "once", *ws.args(), script=copy / MANAGER.name,
                    PATH=f"{bin_dir}:{os.environ['PATH']}", **{**env, "PYTHON_BIN": "/opt/eval env/bin/python"})
    assert result.returncode == 0, result.stderr
    assert [u.split()[0] for u in uses(record, "python3")] == ["-c", str(ROOT / "eval_wandb_sidecar.py")]
    assert uses(record, "python") == []  # the old default, PYTHON_BIN's "python", runs no sidecar
    assert ws.calls() == ["checkpoint-100", "checkpoint-200"]
    assert '"PYTHON_BIN": "/opt/eval env/bin/python"' in (ws.ctl / "env-checkpoint-200.json").read_text()


def test_a_started_instance_runs_its_supervisor_writer_and_sidecar_with_sidecar_python(ws, tmp_path):
    record = tmp_path / "used.txt"
    python = recording_python(tmp_path / "sidecar python ü" / "python", record, "mine")
    folder = tmp_path / "manager dir"
    started = manage(ws, tmp_path, "start", "--instance", "p", *ws.args("--poll-interval-seconds", "3600"),
                     SIDECAR_PYTHON=str(python), PYTHON_BIN="/opt/eval/bin/python", START_CHECK_SECONDS="0.5")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        used = uses(record, "mine")
        assert len(used) == 3 and used[0].startswith("-c yaml:PyYAML ")  # the dependency check
        # the log writer (default cap and copies) and the sidecar, which start in either order
        assert f"- {folder / 'p.log'} 50 3 " in used[1:]
        assert [u for u in used[1:] if u.startswith(f"{ROOT / 'eval_wandb_sidecar.py'} --repo-root ")]
        sidecar_env = Path(f"/proc/{pid_in(folder, 'p')}/environ").read_bytes().split(b"\0")
        assert b"PYTHON_BIN=/opt/eval/bin/python" in sidecar_env  # passed on as it was
    finally:
        stopped = manage(ws, tmp_path, "stop", "--instance", "p")
    assert stopped.returncode == 0 and "stopped instance" in stopped.stdout


def test_an_interpreter_without_the_sidecars_packages_is_named_with_the_fix_in_one_line(ws, tmp_path):
    """The stand-in interpreter is a venv made with `python -m venv --without-pip`: no yaml, filelock,
    watchdog or tqdm."""
    venv = tmp_path / "bare venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    expected = (f"eval_wandb_sidecar.sh: {python} lacks the Python packages 'yaml' (PyYAML), 'filelock' (filelock),"
                f" 'watchdog' (watchdog) and 'tqdm' (tqdm): run {python} -m pip install -r {REQUIREMENTS}, or set"
                f" SIDECAR_PYTHON to the interpreter of a venv that has them\n")
    for command in ("start", "once", "run"):
        result = manage(ws, tmp_path, command, *ws.args(), SIDECAR_PYTHON=str(python))
        assert (result.returncode, result.stdout, result.stderr) == (2, "", expected), command
    assert not (tmp_path / "manager dir").exists()  # nothing started, nothing written
    assert ws.calls() == [] and not ws.state_dir.exists()
    # a user who set PYTHON_BIN for the old manager is told it no longer picks the sidecar's interpreter
    result = manage(ws, tmp_path, "start", *ws.args(), SIDECAR_PYTHON=str(python), PYTHON_BIN=sys.executable)
    assert result.returncode == 2
    assert result.stderr == expected[:-1] + " (PYTHON_BIN is only the eval script's interpreter)\n"
    # align needs other packages
    result = manage(ws, tmp_path, "align", "--config", "x.yaml", SIDECAR_PYTHON=str(python))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "'swanlab' (swanlab)" in result.stderr and "'watchdog'" not in result.stderr


def test_only_the_missing_packages_are_named_and_an_interpreter_that_does_not_run_is_named(ws, tmp_path):
    """The stand-in interpreter is a wrapper around a venv made with `--without-pip` that puts a folder
    holding a (stub) `yaml` package on PYTHONPATH: yaml is there, the others are not."""
    venv = tmp_path / "bare venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = tmp_path / "site with yaml"
    (site / "yaml").mkdir(parents=True)
    (site / "yaml" / "__init__.py").write_text("")
    wrapper = tmp_path / "python with yaml only"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{venv}/bin/python" "$@"\n')
    wrapper.chmod(0o755)
    result = manage(ws, tmp_path, "start", *ws.args(), SIDECAR_PYTHON=str(wrapper))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"eval_wandb_sidecar.sh: {wrapper} lacks the Python packages 'filelock' (filelock),"
                             f" 'watchdog' (watchdog) and 'tqdm' (tqdm): run {wrapper} -m pip install -r"
                             f" {REQUIREMENTS}, or set SIDECAR_PYTHON to the interpreter of a venv that has them\n")
    result = manage(ws, tmp_path, "run", *ws.args(), SIDECAR_PYTHON="no-such-python3")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("eval_wandb_sidecar.sh: SIDECAR_PYTHON 'no-such-python3' is not found: set SIDECAR_PYTHON"
                             f" to a Python interpreter that has the packages of {REQUIREMENTS}\n")
    not_python = tmp_path / "not python"
    not_python.write_text("#!/bin/sh\necho 'this is no interpreter' >&2\nexit 7\n")
    not_python.chmod(0o755)
    result = manage(ws, tmp_path, "once", *ws.args(), SIDECAR_PYTHON=str(not_python))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"eval_wandb_sidecar.sh: SIDECAR_PYTHON {not_python} did not run (exit 7: this is no"
                             f" interpreter): set SIDECAR_PYTHON to a Python interpreter that has the packages of"
                             f" {REQUIREMENTS}\n")
    assert not (tmp_path / "manager dir").exists() and ws.calls() == []


def test_bad_log_and_restart_settings_and_a_misplaced_flag_are_refused_in_one_line(ws, tmp_path):
    cases = [(dict(SIDECAR_LOG_MAX_MB="lots"), "SIDECAR_LOG_MAX_MB", "'lots'"),
             (dict(SIDECAR_LOG_MAX_MB="-1"), "SIDECAR_LOG_MAX_MB", "'-1'"),
             (dict(SIDECAR_LOG_KEEP="2.5"), "SIDECAR_LOG_KEEP", "'2.5'"),
             (dict(SIDECAR_RESTART_BACKOFF_SECONDS="0"), "SIDECAR_RESTART_BACKOFF_SECONDS", "'0'"),
             (dict(SIDECAR_RESTART_BACKOFF_MAX_SECONDS="10m"), "SIDECAR_RESTART_BACKOFF_MAX_SECONDS", "'10m'"),
             (dict(SIDECAR_RESTART_RESET_SECONDS="1h"), "SIDECAR_RESTART_RESET_SECONDS", "'1h'"),
             (dict(START_CHECK_SECONDS="soon"), "START_CHECK_SECONDS", "'soon'")]
    for env, name, value in cases:
        result = manage(ws, tmp_path, "start", "--restart-on-failure", *ws.args(), **env)
        assert (result.returncode, result.stdout) == (2, ""), env
        assert result.stderr.count("\n") == 1 and name in result.stderr and value in result.stderr, result.stderr
    result = manage(ws, tmp_path, "run", "--restart-on-failure", *ws.args())
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "eval_wandb_sidecar.sh: --restart-on-failure is a flag of start, not of run\n"
    assert not (tmp_path / "manager dir").exists()


# --- log rotation ----------------------------------------------------------------------------------

# A stand-in sidecar printing STANDIN_LINES numbered lines as fast as it can, half on stdout, half on
# stderr, then exiting 0.
PRINTING_SIDECAR = r'''
import os, sys
for i in range(int(os.environ["STANDIN_LINES"])):
    (sys.stdout if i % 2 else sys.stderr).write("line %06d %s\n" % (i, "x" * 40))
    (sys.stdout if i % 2 else sys.stderr).flush()
'''


def log_files(folder, name):
    """The instance's log and its rotated copies, oldest first."""
    rotated = sorted(folder.glob(f"{name}.log.*"), key=lambda p: -int(p.name.rsplit(".", 1)[1]))
    return [*rotated, folder / f"{name}.log"]


def test_the_log_is_rotated_at_the_cap_at_line_ends_and_no_line_is_lost(ws, tmp_path):
    sidecar = tmp_path / "printing sidecar.py"
    sidecar.write_text(PRINTING_SIDECAR)
    folder = tmp_path / "manager dir"
    cap = int(0.05 * 1048576)
    lines = 20000
    for name, keep in (("all", "40"), ("last", "2")):
        started = manage(ws, tmp_path, "start", "--instance", name, SIDECAR_PY=str(sidecar), STANDIN_LINES=str(lines),
                         SIDECAR_LOG_MAX_MB="0.05", SIDECAR_LOG_KEEP=keep, START_CHECK_SECONDS="0")
        assert started.returncode == 0, started.stdout + started.stderr
        # the sidecar exits 0 by itself: its supervisor and log writer end with it
        wait_for(lambda: not instance_processes(folder), timeout=60)
    files = log_files(folder, "all")
    assert len(files) == 21, [p.name for p in files]  # 20,000 lines of 53 bytes, 52,428 bytes a log
    for path in files[:-1]:
        assert cap <= path.stat().st_size < cap + 100, (path.name, path.stat().st_size)  # rotated at a line end
    text = "".join(p.read_text() for p in files)
    numbered = [int(line.split()[1]) for line in text.splitlines() if line.startswith("line ")]
    assert numbered == list(range(lines))  # every line once, in order, across the rotations
    assert text.startswith("===== ")
    assert re.search(r"^===== .* the sidecar \(pid \d+\) exited with code 0 after [0-9.]+ s$", text.splitlines()[-1])
    kept = log_files(folder, "last")
    assert [p.name for p in kept] == ["last.log.2", "last.log.1", "last.log"]  # older ones are dropped
    numbered = [int(line.split()[1]) for p in kept for line in p.read_text().splitlines() if line.startswith("line ")]
    assert numbered == list(range(lines - len(numbered), lines))  # the newest lines, none missing
    listed = manage(ws, tmp_path, "list")
    rows = listed.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["all", "last"]  # rotated logs name no instance
    assert rows[0].split()[1:3] == ["stopped", "-"] and f"{folder / 'all.log'}  " in rows[0]


def test_a_running_sidecars_log_rotates_and_tail_and_list_follow_the_current_log(ws, tmp_path):
    folder = tmp_path / "manager dir"
    env = dict(SIDECAR_LOG_MAX_MB="0.02", SIDECAR_LOG_KEEP="2", START_CHECK_SECONDS="0.5")
    started = manage(ws, tmp_path, "start", "--instance", "rot",
                     *ws.args("--poll-interval-seconds", "0.2", "--log-level", "DEBUG"), **env)
    assert started.returncode == 0, started.stdout + started.stderr
    environ = ws.env(SIDECAR_PYTHON=sys.executable, MANAGER_DIR=str(folder))
    tail = subprocess.Popen(["bash", str(MANAGER), "tail", "--instance", "rot"], env=environ, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(iter(tail.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("following" in line for line in seen))
        assert not (folder / "rot.log.1").exists()  # tail began before the first rotation
        step = 100
        while not (folder / "rot.log.1").exists():  # checkpoints to evaluate: log lines (DEBUG: many)
            ws.checkpoint(step)
            wait_for(lambda: f"evaluated checkpoint-{step}" in "".join(seen), timeout=60)
            step += 100
            assert step < 5000, "the log was never rotated"
        ws.checkpoint(step)
        wait_for(lambda: f"evaluated checkpoint-{step}" in "".join(seen), timeout=60)  # tail went on
        assert f"evaluated checkpoint-{step}" in (folder / "rot.log").read_text()  # logged after the rotation
        listed = manage(ws, tmp_path, "list")
        (row,) = listed.stdout.splitlines()[1:]
        assert row.split()[:3] == ["rot", "running", str(pid_in(folder, "rot"))]
        assert f"  {folder / 'rot.log'}  " in row
    finally:
        os.killpg(tail.pid, signal.SIGTERM)
        tail.wait()
        stopped = manage(ws, tmp_path, "stop", "--instance", "rot")
    assert stopped.returncode == 0 and "stopped instance" in stopped.stdout
    assert instance_processes(folder) == []  # sidecar, supervisor and log writer all gone
    assert (folder / "rot.log").read_text().splitlines()[-1].endswith(": stopped")


# --- restarts ----------------------------------------------------------------------------------------

def test_restart_on_failure_restarts_a_killed_or_failing_sidecar_with_backoff_and_stop_ends_it(ws, tmp_path):
    folder = tmp_path / "manager dir"
    env = dict(SIDECAR_RESTART_BACKOFF_SECONDS="0.2", START_CHECK_SECONDS="0.5")
    ws.checkpoint(100)
    started = manage(ws, tmp_path, "start", "--instance", "r", "--restart-on-failure",
                     *ws.args("--poll-interval-seconds", "0.2"), **env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "restarted on failure by supervisor pid" in started.stdout
    log = folder / "r.log"
    try:
        wait_for(lambda: "processed 1" in ws.status().stdout)  # in the state (it is logged just before)
        first = pid_in(folder, "r")
        os.kill(first, signal.SIGKILL)  # what the kernel's OOM killer does
        wait_for(lambda: pid_in(folder, "r") != first and not process_gone(pid_in(folder, "r")))
        assert re.search(rf"^===== .* the sidecar \(pid {first}\) was killed by signal 9 \(SIGKILL\) after [0-9.]+ s;"
                         r" restart 1 in 0\.2 s$", log.read_text(), flags=re.M), log.read_text()
        status = manage(ws, tmp_path, "status", "--instance", "r")
        assert status.returncode == 0 and f"is running (pid {pid_in(folder, 'r')})" in status.stdout
        assert "1 restart, the last after the sidecar was killed by signal 9 (SIGKILL) at " in status.stdout
        assert "processed 1" in status.stdout, status.stdout  # the sidecar's status summary, as before
        # the sidecar now fails at start (exit 2: its --sft-root is gone): each restart waits twice as long
        away = tmp_path / "moved away"
        ws.sft.rename(away)
        second = pid_in(folder, "r")
        os.kill(second, signal.SIGKILL)
        wait_for(lambda: " restart 3 in 0.8 s" in log.read_text(), timeout=60)
        text = log.read_text()
        assert f"(pid {second}) was killed by signal 9 (SIGKILL) after" in text and " restart 2 in 0.4 s" in text
        assert re.search(r"exited with code 2 after [0-9.]+ s; restart 3 in 0\.8 s$", text, flags=re.M), text
        away.rename(ws.sft)  # restart 3 finds it again (or restart 4, if this test was slower than 0.8 s)

        def watching_again():
            last_start = log.read_text().rsplit("\n===== ", 1)[-1]
            return re.match(r"\S+ \S+ restart (\d+): ", last_start) and "[INFO] watching " in last_start
        wait_for(watching_again, timeout=60)
        restarts = len(re.findall(r"^===== \S+ \S+ restart \d+: ", log.read_text(), flags=re.M))
        assert restarts >= 3
        status = manage(ws, tmp_path, "status", "--instance", "r")
        assert status.returncode == 0 and f"is running (pid {pid_in(folder, 'r')})" in status.stdout
        assert f"{restarts} restarts, the last after the sidecar exited with code 2" in status.stdout, status.stdout
        assert "processed 1" in status.stdout, status.stdout
    finally:
        stopped = manage(ws, tmp_path, "stop", "--instance", "r")
    assert stopped.returncode == 0 and "stopped instance" in stopped.stdout, stopped.stdout + stopped.stderr
    assert instance_processes(folder) == []  # supervisor and sidecar: no restart after a stop
    assert re.search(r"exited with code 0 after [0-9.]+ s: stopped$", log.read_text().splitlines()[-1])
    assert manage(ws, tmp_path, "status", "--instance", "r").returncode == 1


# A stand-in sidecar that follows a plan, one entry per run (the last one repeats): "SECONDS:CODE"
# (run that long, exit with CODE) or "wait" (until SIGTERM, then exit 0).
PLANNED_SIDECAR = r'''
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
count = os.environ["STANDIN_COUNT"]
runs = int(open(count).read()) if os.path.exists(count) else 0
open(count, "w").write(str(runs + 1))
plan = os.environ["STANDIN_PLAN"].split(",")
step = plan[min(runs, len(plan) - 1)]
print("stand-in run %d: %s" % (runs + 1, step), flush=True)
if step == "wait":
    while True:
        signal.pause()
seconds, code = step.split(":")
time.sleep(float(seconds))
sys.exit(int(code))
'''


def planned(tmp_path, plan, **env):
    sidecar = tmp_path / "planned sidecar.py"
    sidecar.write_text(PLANNED_SIDECAR)
    return dict(SIDECAR_PY=str(sidecar), STANDIN_PLAN=plan, STANDIN_COUNT=str(tmp_path / "runs"), **env)


def test_the_backoff_doubles_up_to_its_cap_resets_after_a_long_run_and_an_exit_0_is_not_restarted(ws, tmp_path):
    folder = tmp_path / "manager dir"
    env = planned(tmp_path, "0.5:3,0:3,0:3,2.2:1,0:4,0:0", START_CHECK_SECONDS="0.3",
                  SIDECAR_RESTART_BACKOFF_SECONDS="0.1", SIDECAR_RESTART_BACKOFF_MAX_SECONDS="0.25",
                  SIDECAR_RESTART_RESET_SECONDS="2")
    started = manage(ws, tmp_path, "start", "--instance", "b", "--restart-on-failure", **env)
    assert started.returncode == 0, started.stdout + started.stderr
    wait_for(lambda: not instance_processes(folder), timeout=60)  # the 6th run exits 0: the end
    text = (folder / "b.log").read_text()
    waits = re.findall(r"exited with code (\d) after [0-9.]+ s; restart (\d) in ([0-9.]+) s$", text, flags=re.M)
    assert waits == [("3", "1", "0.1"), ("3", "2", "0.2"), ("3", "3", "0.25"),
                     ("1", "4", "0.1"), ("4", "5", "0.2")], text  # after 2.2 s of running: back to the first
    assert [int(n) for n in re.findall(r"^stand-in run (\d+):", text, flags=re.M)] == list(range(1, 7))
    assert re.search(r"exited with code 0 after [0-9.]+ s$", text.splitlines()[-1])
    status = manage(ws, tmp_path, "status", "--instance", "b", **env)
    assert status.returncode == 1, status.stdout  # a clean exit leaves no stale pid file
    assert re.search(r"is not running \(the sidecar, pid \d+, exited with code 0 at ", status.stdout), status.stdout


def test_stop_while_waiting_to_restart_ends_the_supervisor_at_once(ws, tmp_path):
    folder = tmp_path / "manager dir"
    env = planned(tmp_path, "1:5", START_CHECK_SECONDS="0.5", SIDECAR_RESTART_BACKOFF_SECONDS="600")
    started = manage(ws, tmp_path, "start", "--instance", "w", "--restart-on-failure", **env)
    assert started.returncode == 0, started.stdout + started.stderr
    supervisor = int(re.search(r"supervisor pid (\d+)", started.stdout).group(1))
    wait_for(lambda: " restart 1 in 600 s" in (folder / "w.log").read_text(), timeout=60)
    status = manage(ws, tmp_path, "status", "--instance", "w", **env)
    assert status.returncode == 0, status.stdout
    assert re.search(rf"is waiting to restart the sidecar \(supervisor pid {supervisor}\): it exited with code 5 at"
                     r" [0-9: -]+; restart 1 at [0-9: -]+; log: ", status.stdout), status.stdout
    (row,) = manage(ws, tmp_path, "list", **env).stdout.splitlines()[1:]
    assert row.split()[:3] == ["w", "restarting", str(supervisor)]
    started_again = manage(ws, tmp_path, "start", "--instance", "w", **env)
    assert started_again.returncode == 0 and "already running" in started_again.stdout
    t0 = time.monotonic()
    stopped = manage(ws, tmp_path, "stop", "--instance", "w", STOP_TIMEOUT="60", **env)
    assert stopped.returncode == 0 and "stopped instance" in stopped.stdout, stopped.stdout + stopped.stderr
    assert time.monotonic() - t0 < 30  # not the backoff, not STOP_TIMEOUT: the wait is cut short
    assert instance_processes(folder) == []
    assert (folder / "w.log").read_text().splitlines()[-1].endswith(" stopped before restart 1")
    assert (tmp_path / "runs").read_text() == "1"


def test_a_sidecar_that_fails_at_once_is_reported_by_start_and_not_restarted(ws, tmp_path):
    folder = tmp_path / "manager dir"
    result = manage(ws, tmp_path, "start", "--instance", "bad", "--restart-on-failure",
                    *ws.args("--num-beams", "lots"), START_CHECK_SECONDS="1", SIDECAR_RESTART_BACKOFF_SECONDS="0.2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "instance 'bad' exited at once: the sidecar exited with code 2; last lines of" in result.stderr
    assert "--num-beams: expected an integer, got 'lots'" in result.stderr
    assert result.stderr.rstrip().endswith("within START_CHECK_SECONDS of its start: not restarted")
    assert instance_processes(folder) == []  # no supervisor left to retry a bad command line
    assert not (folder / "bad.pid").exists()
    assert manage(ws, tmp_path, "status", "--instance", "bad").returncode == 1


def test_stop_in_the_middle_of_restarts_leaves_nothing_running(ws, tmp_path):
    """The supervisor restarts every ~0.15 s (the stand-in fails after 0.1 s); stops land at
    staggered moments: while a sidecar starts, runs, or the supervisor waits to restart it."""
    folder = tmp_path / "manager dir"
    env = planned(tmp_path, "0.4:1,0.1:1", START_CHECK_SECONDS="0.2", SIDECAR_RESTART_BACKOFF_SECONDS="0.05",
                  SIDECAR_RESTART_BACKOFF_MAX_SECONDS="0.05", STOP_TIMEOUT="20")
    for delay in (0.45, 0.55, 0.7):
        (tmp_path / "runs").unlink(missing_ok=True)  # each start begins the plan again
        started = manage(ws, tmp_path, "start", "--instance", "s", "--restart-on-failure", **env)
        assert started.returncode == 0, started.stdout + started.stderr
        time.sleep(delay)
        stopped = manage(ws, tmp_path, "stop", "--instance", "s", **env)
        assert stopped.returncode == 0 and stopped.stdout.endswith("stopped instance 's'\n"), stopped.stdout
        assert "SIGKILL" not in stopped.stdout  # the supervisor ended by itself
        assert instance_processes(folder) == []
        assert not (folder / "s.stopping").exists() and not (folder / "s.pid").exists()
        last = (folder / "s.log").read_text().splitlines()[-1]
        assert last.endswith(": stopped") or last.endswith(" stopped before restart " + last.split()[-1]), last
