"""Processes: signals to process groups, /proc lookups, short helper commands.

With `local` the only modules that import subprocess or send signals.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Every local eval gets this variable, naming its attempt (saved in state before the eval starts):
# whatever it leaves behind, even outside its process group, is found by it after a kill -9.
# Its value is `<step>-<16 random hex digits>-<sidecar pid>-<sidecar start time>`: the end names
# the sidecar that started it, so the manager's `stop` finds every eval of a sidecar it had to kill.
ATTEMPT_ENV = "EVAL_SIDECAR_ATTEMPT"


def owner_tag() -> str:
    """`<pid>-<start time>` of this process: the end of its evals' attempt tags."""
    return f"{os.getpid()}-{process_start_time(os.getpid())}"


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    """(command name, the fields after it) of /proc/<pid>/stat: fields[0] is the state, [1] the
    parent pid, [19] the start time in clock ticks since boot; None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.find("(") + 1:stat.rfind(")")], stat.rsplit(")", 1)[-1].split()


def process_start_time(pid: int) -> str:
    """The start time of a local pid in clock ticks since boot ('' if unknown): with the pid it
    names one process for good, so a reused pid is never mistaken for it."""
    seen = _stat(pid)
    return seen[1][19] if seen else ""


def _other_pids() -> list[str]:
    """The pids in /proc (as its folder names), this process left out; empty without /proc."""
    me = str(os.getpid())
    try:
        return [e for e in os.listdir("/proc") if e.isdigit() and e != me]
    except OSError:
        return []


def tagged_processes(tag: str) -> list[tuple[int, str]]:
    """(pid, start time) of every process whose environment carries this attempt's tag: an eval's
    children, also those that left its process group (setsid) or outlived its leader."""
    if not tag:
        return []
    needle = f"{ATTEMPT_ENV}={tag}\0".encode()
    found = []
    for entry in _other_pids():
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = b"\0" + fh.read()
        except OSError:
            continue
        if b"\0" + needle in environ or environ.endswith(b"\0" + needle[:-1]):
            start = process_start_time(int(entry))
            if start:
                found.append((int(entry), start))
    return found


def terminate(pgid: int | None, tagged=(), grace: float = 10.0, reap=None) -> None:
    """The one way the sidecar stops processes: SIGTERM to the group `pgid` (if given) and to each
    tagged (pid, start time) that is still the same process, up to `grace` seconds for them to go,
    then SIGKILL to what is left. `reap` (e.g. `Popen.poll`) is called while waiting, so that a
    leader this process started does not linger as a zombie that keeps its group alive."""
    def signal_all(sig: int) -> bool:
        alive = False
        if pgid:
            alive = _signal_group(pgid, sig) or alive
        for pid, start in tagged:
            if process_start_time(pid) == start:
                try:
                    os.kill(pid, sig)
                    alive = alive or not _is_zombie(pid)
                except OSError:
                    pass
        return alive

    if not signal_all(signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not signal_all(0):
            return
        time.sleep(0.05)
    signal_all(signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    seen = _stat(pid)
    return seen is None or seen[1][0] == "Z"


def reap_orphan(pgid: int | None, start_time: str, tag: str = "", grace: float = 10.0) -> bool:
    """Stop what an eval left running when its sidecar was killed (-9): its process group while
    its leader is still the very process that was started (same pid and start time, so a reused
    pid of an unrelated program is never signalled), and every process carrying its attempt tag
    (children that left the group or outlived the leader). True if anything was stopped."""
    leader = pgid if pgid and start_time and process_start_time(pgid) == start_time else None
    tagged = tagged_processes(tag)
    if leader is None and not tagged:
        return False
    log.warning("stopping eval processes left running by a previous sidecar (%s)",
                ", ".join([f"group {leader}"] * (leader is not None) + [f"pid {p}" for p, _ in tagged]))
    terminate(leader, tagged, grace)
    return True


def child_processes(name: str) -> list[tuple[int, str]]:
    """(pid, start time) of this process's children whose command name is `name` (Linux /proc)."""
    me = str(os.getpid())
    found = []
    for entry in _other_pids():
        seen = _stat(entry)
        if seen is not None and seen[0] == name and seen[1][1] == me:
            found.append((int(entry), seen[1][19]))
    return found


def kill_orphan(pid: int, start_time: str) -> bool:
    """SIGKILL one process a killed sidecar left behind (its wandb-core, which could still send
    old history lines after a restarted sidecar counted the server's), only if `pid` is still that
    very process (same start time). True if it was killed."""
    if not start_time or process_start_time(pid) != start_time:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        seen = _stat(pid)
        if seen is None or seen[1][0] == "Z" or seen[1][19] != start_time:
            break
        time.sleep(0.02)
    return True


def run_command(argv: list[str], timeout: float, env: dict[str, str] | None = None,
                capture: bool = True) -> tuple[int, str, str]:
    """Run a short helper command (wandb's own tools) without a shell; (returncode, stdout, stderr).

    A command that cannot start returns 127; one that exceeds `timeout` is killed and returns 124.
    """
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=timeout, text=True,
                              capture_output=capture, start_new_session=True)
    except FileNotFoundError as exc:
        return 127, "", str(exc)
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout:g} s"
    return proc.returncode, proc.stdout or "", proc.stderr or ""

