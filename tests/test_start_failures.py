"""A start that fails after the lock was taken releases it (review defect): a soft-lock marker
left behind would keep every later sidecar out on a network filesystem, where a marker of
another host's dead pid cannot be broken."""

from __future__ import annotations

import shutil

import pytest


def _first_run(ws) -> None:
    ws.checkpoint(100)
    result = ws.run("--once", "--lock-mode", "soft")
    assert result.returncode == 0, result.stderr


def test_a_state_write_error_at_start_under_once_releases_the_soft_lock(ws):
    _first_run(ws)
    state = ws.state_files()[0]
    backup = state.with_name(state.name + ".bak")
    if backup.exists():
        backup.unlink()
    backup.mkdir()  # the state cannot be replaced with its backup kept: the first write at start fails
    (backup / "keep").write_text("x")
    before = state.read_bytes()
    result = ws.run("--once", "--lock-mode", "soft")
    assert result.returncode == 1, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and str(state) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert state.read_bytes() == before  # nothing lost
    assert not list(ws.state_dir.glob("*.lock")), "the soft-lock marker outlived the failed start"
    shutil.rmtree(backup)
    again = ws.run("--once", "--lock-mode", "soft")  # and the next start works at once
    assert again.returncode == 0, again.stderr



def test_a_failed_start_in_a_long_lived_process_leaves_no_lock_held(ws):
    """In one process (as a fleet of pipelines will be): `start()` raising after it took the lock
    must leave the lock free, not wait for the process to exit."""
    import eval_wandb_sidecar
    from sidecar.clock import SystemClock
    from sidecar.config import build_config, build_parser
    from sidecar.errors import StateWriteError
    from sidecar.watch.service import Sidecar
    from sidecar.watch.state import ProcessLock

    _first_run(ws)
    state = ws.state_files()[0]
    backup = state.with_name(state.name + ".bak")
    if backup.exists():
        backup.unlink()
    backup.mkdir()
    (backup / "keep").write_text("x")
    args = vars(build_parser(eval_wandb_sidecar.PROG).parse_args(ws.args("--once", "--lock-mode", "soft")))
    config = build_config(args, ws.env(), ws.repo)
    sidecar = Sidecar(config, SystemClock(), ws.env())
    with pytest.raises(StateWriteError):
        sidecar.start()
    assert not config.lock_file.exists(), "the soft-lock marker is still there while the process lives"
    other = ProcessLock(config.lock_file, "soft")
    other.acquire()  # raises LockHeld if the failed start kept it
    other.release()
