"""A lock file removed or replaced under a running sidecar (reliability round 2, item 12).

A flock held on a deleted file excludes nobody: the next sidecar creates a new file and locks
that. `ProcessLock.check()` notices (one lstat per tick): it takes the lock again with one
warning, or, if another process holds the new file, raises LockLost so this sidecar stops.
Real locks and real processes throughout."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ENTRY, ROOT, wait_for

from sidecar.errors import LockLost
from sidecar.watch.state import ProcessLock

HOST = socket.gethostname()
CONTENDER = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(ROOT)!r})
    from pathlib import Path
    from sidecar.errors import LockHeld
    from sidecar.watch.state import ProcessLock
    lock = ProcessLock(Path(sys.argv[1]), sys.argv[2])
    try:
        lock.acquire()
    except LockHeld as exc:
        print(exc, flush=True)
        sys.exit(3)
    print("held", flush=True)
    if sys.argv[3] == "hold":
        sys.stdin.read()  # until the test closes stdin
    lock.release()
""")


def _contend(path: Path, mode: str) -> subprocess.CompletedProcess:
    """Another process trying to take the lock once."""
    return subprocess.run([sys.executable, "-c", CONTENDER, str(path), mode, "once"], capture_output=True, text=True,
                          timeout=60)


def _holder(path: Path, mode: str) -> subprocess.Popen:
    """Another process that takes the lock and holds it until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", CONTENDER, str(path), mode, "hold"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@contextlib.contextmanager
def _held(tmp_path: Path, mode: str):
    """(lock file path, a ProcessLock of this process holding it), released at the end."""
    path = tmp_path / "m_key.lock"
    lock = ProcessLock(path, mode)
    lock.acquire()
    try:
        yield path, lock
    finally:
        lock.release()


def _names(path: Path, pid: int) -> bool:
    return path.read_text().split("\n")[:2] == [str(pid), HOST]


@pytest.mark.parametrize("mode", ["auto", "soft"])
def test_a_removed_lock_file_is_taken_again_loudly_and_excludes_the_next_sidecar(tmp_path, mode, caplog):
    with _held(tmp_path, mode) as (path, lock):
        assert lock.check() is False  # unchanged: nothing happens
        path.unlink()
        with caplog.at_level(logging.WARNING):
            assert lock.check() is True
        warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert f"the lock file {path} was removed while this sidecar ran; it was re-created and taken again" in warning
        assert _names(path, os.getpid())
        other = _contend(path, mode)
        assert other.returncode == 3
        assert other.stdout.strip() == f"another sidecar (pid {os.getpid()} on host {HOST}) holds {path}"
        assert lock.check() is False


@pytest.mark.parametrize("mode", ["auto", "soft"])
def test_a_lock_file_another_process_took_meanwhile_stops_this_one_and_is_left_to_it(tmp_path, mode):
    path = tmp_path / "m_key.lock"
    lock = ProcessLock(path, mode)
    lock.acquire()
    path.unlink()
    holder = _holder(path, mode)  # a second sidecar started while the file was gone
    try:
        with pytest.raises(LockLost) as caught:
            lock.check()
        assert str(caught.value) == (f"the lock file {path} was removed or replaced while this sidecar ran and another "
                                     f"sidecar "
                                     f"(pid {holder.pid} on host {HOST}) holds it now; stopping, so that one sidecar "
                                     f"works on this configuration")
        assert caught.value.exit_code == 3
        lock.release()  # the new holder's file is not ours to remove or unlock
        assert path.exists() and _names(path, holder.pid)
        third = _contend(path, mode)
        assert third.returncode == 3 and f"pid {holder.pid}" in third.stdout
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0


@pytest.mark.parametrize("mode", ["auto", "soft"])
def test_a_lock_file_replaced_by_a_file_nobody_holds_is_taken_again(tmp_path, mode, caplog):
    with _held(tmp_path, mode) as (path, lock):
        copy = tmp_path / "restored"
        copy.write_text(path.read_text())  # a backup restored over it: same text, another file
        os.replace(copy, path)
        with caplog.at_level(logging.WARNING):
            assert lock.check() is True
        assert f"the lock file {path} was removed or replaced while this sidecar ran; it was re-created" in caplog.text
        assert _names(path, os.getpid())
        assert _contend(path, mode).returncode == 3


# ----- end to end: the sidecar calls check() once per tick --------------------------------------------------------
def _start(ws, *extra: str) -> tuple[subprocess.Popen, Path]:
    out = ws.ctl / f"sidecar-{time.monotonic_ns()}.out"
    with open(out, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(ENTRY), *ws.args(*extra)], env=ws.env(), stdout=fh,
                                stderr=subprocess.STDOUT, text=True)
    ws.procs.append(proc)
    return proc, out


def _lock_of(ws, pid: int) -> Path:
    return wait_for(lambda: next((p for p in ws.state_dir.glob("*.lock") if _names(p, pid)), None))


def test_a_running_sidecar_whose_lock_file_is_deleted_takes_it_again_and_a_second_one_exits_3(ws):
    first, out = _start(ws, "--poll-interval-seconds", "0.2")
    try:
        lock = _lock_of(ws, first.pid)
        lock.unlink()
        wait_for(lambda: lock.exists() and _names(lock, first.pid), timeout=20)
        second = ws.run("--once")
        assert second.returncode == 3, second.stderr
        assert second.stderr.strip() == (f"eval_wandb_sidecar.py: error: another sidecar (pid {first.pid} on host "
                                         f"{HOST}) holds {lock}")
        assert f"the lock file {lock} was removed while this sidecar ran; it was re-created and taken again" \
            in out.read_text()
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0


def test_a_running_sidecar_whose_deleted_lock_another_sidecar_took_stops_with_one_line_writing_nothing(ws):
    first, first_out = _start(ws, "--poll-interval-seconds", "0.3")
    lock = _lock_of(ws, first.pid)
    first.send_signal(signal.SIGSTOP)  # no tick of its own comes between the deletion and the second start
    try:
        lock.unlink()
        ws.checkpoint(100)
        second, _ = _start(ws, "--watch-mode", "events")  # it ticks only when something under the root changes
        _lock_of(ws, second.pid)  # the file was gone, so nothing stopped the second sidecar
        wait_for(lambda: ws.state()["processed_steps"] == [100] and not ws.state()["in_flight"], timeout=60)
        first.send_signal(signal.SIGCONT)  # its next poll finds the lock file replaced
        assert first.wait(timeout=30) == 3
        text = first_out.read_text()
        assert [line for line in text.splitlines() if "error" in line.lower()] == [
            f"eval_wandb_sidecar.py: error: the lock file {lock} was removed or replaced while this sidecar ran and "
            f"another sidecar (pid {second.pid} on host {HOST}) holds it now; stopping, so that one sidecar works on "
            f"this configuration"], text
        assert "Traceback" not in text
        # the stopped sidecar wrote nothing on its way out: the second one's result is still in the file
        assert ws.state()["processed_steps"] == [100]
        assert ws.calls() == ["checkpoint-100"]
        assert second.poll() is None
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0


def test_a_state_write_after_another_sidecar_took_the_lock_is_refused_and_changes_nothing(ws, tmp_path):
    """A sidecar paused (SIGSTOP, a long GC, a slow disk) between its tick's lock check and the
    tick's state write must not overwrite the state of the sidecar that took the lock meanwhile:
    every write checks the lock first (review: the test above failed now and then this way)."""
    import eval_wandb_sidecar
    from sidecar.clock import SystemClock
    from sidecar.config import build_config, build_parser
    from sidecar.errors import LockLost
    from sidecar.watch.service import Sidecar

    args = vars(build_parser(eval_wandb_sidecar.PROG).parse_args(ws.args("--once")))
    config = build_config(args, ws.env(), ws.repo)
    sidecar = Sidecar(config, SystemClock(), ws.env())
    sidecar.start()
    config.lock_file.unlink()  # removed, and another sidecar takes it before our next check
    holder = _holder(config.lock_file, config.lock_mode)
    try:
        before = config.state_file.read_bytes()
        sidecar.state.last_seen_step = 100  # what a tick found: the state is to be written
        sidecar.pipeline.dirty = True
        with pytest.raises(LockLost):
            sidecar.pipeline.save(force=True)
        sidecar.close()  # the lock-lost way out: writes nothing, leaves the lock file alone
        assert config.state_file.read_bytes() == before
        assert _names(config.lock_file, holder.pid)
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
