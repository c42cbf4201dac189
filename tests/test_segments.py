"""Offline runs visible while they run: an offline watch closes its segment every
--wandb-segment-minutes, and `sync` (or `sync --follow`) uploads the closed ones while it goes on.

The W&B server is the recording stand-in `wandb_server.WandbServer` on 127.0.0.1 (the one fake:
a cloud server); everything else is real: the sidecar watching in a subprocess, the wandb SDK's
offline folders, `wandb sync`, SIGTERM. Assertions read what the server holds (history lines,
summary, the uploaded table file), the exit codes and `status`.
"""

import json
import signal
import subprocess
import sys

from conftest import ENTRY, wait_for
from test_delivery import args, online_env, server, start, status  # noqa: F401 - server is a fixture
from test_wandb import backfilled

SEGMENT_MINUTES = "0.02"  # 1.2 s: a segment closes soon after the pass that opened it


def state_of(ws) -> dict:
    """The state file (`ws.state()` would also count the `<state>.synced.json` sync writes beside it)."""
    [path] = [p for p in ws.state_dir.glob("*_*.json") if not p.name.endswith(".synced.json")]
    return json.loads(path.read_text())


def closed_steps(ws) -> set[int]:
    steps: set[int] = set()
    for seg in state_of(ws)["wandb_segments"]:
        if seg["mode"] == "offline" and seg.get("closed"):
            steps.update(seg["steps"])
    return steps


def server_rows(server, ws) -> dict[int, int]:
    """How many history lines the server holds for each checkpoint_step."""
    counts: dict[int, int] = {}
    for row in server.run(state_of(ws)["run_id"]).eval_rows():
        counts[row["checkpoint_step"]] = counts.get(row["checkpoint_step"], 0) + 1
    return counts


def sync(ws, env, *extra, timeout=180):
    return subprocess.run([sys.executable, str(ENTRY), "sync", *args(ws, mode="offline"), *extra], env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_summary_and_table_of(server, ws, steps):
    """The server's summary and newest table are those of the rows of `steps` (in state)."""
    rows = [r for r in state_of(ws)["table_rows"] if r["checkpoint_step"] in steps]
    run = server.run(state_of(ws)["run_id"])
    best = max(rows, key=lambda r: (r["HR@10"], -r["checkpoint_step"]))
    assert run.summary["last_step"] == rows[-1]["checkpoint_step"]
    assert run.summary["last_hr@10"] == rows[-1]["HR@10"]
    assert (run.summary["best_hr@10"], run.summary["best_step_for_hr@10"]) == (best["HR@10"], best["checkpoint_step"])
    assert [r[0] for r in run.table()["data"]] == sorted(steps)


def test_an_offline_watch_closes_segments_and_sync_uploads_them_while_it_runs(ws, server):
    env = online_env(ws, server)
    backfilled(ws, 100, 200)
    watch = start(ws, env, "--poll-interval-seconds", "0.3", "--wandb-segment-minutes", SEGMENT_MINUTES,
                  mode="offline")
    follower = None
    try:
        wait_for(lambda: closed_steps(ws) == {100, 200}, timeout=60)  # the first segment is closed
        first = sync(ws, env)  # e.g. from cron on a node with internet, while the sidecar runs
        assert first.returncode == 0, first.stdout + first.stderr
        assert "synced 1 closed segment(s): the server holds 2 of the 2 row(s)" in first.stdout
        assert server_rows(server, ws) == {100: 1, 200: 1}
        assert_summary_and_table_of(server, ws, {100, 200})

        backfilled(ws, 300, 400)  # the sidecar evaluates them into a new segment, closed 1.2 s later
        out = open(ws.ctl / "follow.out", "w")
        follower = subprocess.Popen([sys.executable, str(ENTRY), "sync", *args(ws, mode="offline"), "--follow",
                                     "--follow-seconds", "0.3"], env=env, stdout=out, stderr=subprocess.STDOUT)
        ws.procs.append(follower)
        wait_for(lambda: server_rows(server, ws) == {100: 1, 200: 1, 300: 1, 400: 1}, timeout=90)
        # the follower then writes the table and summary of all the rows
        wait_for(lambda: [r[0] for r in server.run(state_of(ws)["run_id"]).table()["data"]] == [100, 200, 300, 400],
                 timeout=60)
        assert_summary_and_table_of(server, ws, {100, 200, 300, 400})
        assert status(ws, env, mode="offline")["offline_unsynced"] == 0  # status reads what sync recorded
    finally:
        if follower is not None:
            follower.send_signal(signal.SIGTERM)
            assert follower.wait(timeout=60) == 0  # stopped while waiting for the next segment: nothing left
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(timeout=60) == 0
    followed = (ws.ctl / "follow.out").read_text()
    assert "synced 1 closed segment(s): the server holds 4 of the 4 row(s)" in followed and "Traceback" not in followed
    assert len(server.runs) == 1
    run = server.run(state_of(ws)["run_id"])
    steps = [r["_step"] for r in run.rows()]
    assert steps == sorted(set(steps))  # one run: the segments' `_step` continue one another
    assert server_rows(server, ws) == {100: 1, 200: 1, 300: 1, 400: 1}
    offline = [s for s in state_of(ws)["wandb_segments"] if s["mode"] == "offline"]
    assert len(offline) == 2 and all(s["closed"] for s in offline)
    again = sync(ws, env)  # the sidecar stopped: nothing is sent twice
    assert again.returncode == 0 and "nothing to sync" in again.stdout, again.stdout + again.stderr
    assert server_rows(server, ws) == {100: 1, 200: 1, 300: 1, 400: 1}


def test_follow_flags_are_checked_before_anything_runs(ws, server):
    env = online_env(ws, server)
    for extra, line in ((("--follow", "--follow-seconds", "0"), "--follow-seconds: must be from 0.1 to 86400 seconds, "
                                                                   "got '0'"),
                        (("--follow", "--dry-run"), "--follow: cannot be combined with --dry-run (which uploads "
                                                    "nothing)")):
        result = sync(ws, env, *extra, timeout=60)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [f"eval_wandb_sidecar.py: error: {line}"]
    assert server.requests == []


# ----- the decisions behind it (pure functions, no W&B) ----------------------------------------------
def _state_with_segments():
    from sidecar.watch.state import State

    state = State("k", "eval-k", "m-eval")
    state.rows = {s: {"checkpoint_step": s, "HR@10": s / 1000} for s in (100, 200, 300, 400)}
    state.segments = [
        {"dir": "/w/offline-run-1", "mode": "offline", "started": "2026-12-01T10:00:00+00:00", "steps": [100],
         "closed": True, "synced": "2026-12-01T10:31:00+00:00"},
        {"dir": "/w/offline-run-2", "mode": "offline", "started": "2026-12-01T10:30:00+00:00", "steps": [200],
         "closed": True},
        {"dir": "/w/offline-run-4", "mode": "offline", "started": "2026-12-01T11:30:00+00:00", "steps": [400]},
        {"dir": "/w/offline-run-3", "mode": "offline", "started": "2026-12-01T11:00:00+00:00", "steps": [300],
         "closed": True},
    ]
    return state


def test_only_closed_segments_not_uploaded_yet_go_while_the_sidecar_runs_in_start_order():
    from sidecar.watch.sync import closed_uploads

    state = _state_with_segments()
    assert [str(u.folder) for u in closed_uploads(state, {})] == ["/w/offline-run-2", "/w/offline-run-3"]
    assert [str(u.folder) for u in closed_uploads(state, {"/w/offline-run-2": "t"})] == ["/w/offline-run-3"]


def test_the_table_and_summary_of_a_sync_beside_the_sidecar_hold_only_rows_on_the_server():
    from sidecar.watch.sync import rows_on_server

    state = _state_with_segments()
    assert sorted(rows_on_server(state, {})) == [100]
    assert sorted(rows_on_server(state, {"/w/offline-run-2": "t"})) == [100, 200]
    state.segments[2]["steps"].append(100)  # re-evaluated into the open segment: the server has an older copy
    assert sorted(rows_on_server(state, {"/w/offline-run-2": "t"})) == [200]


def test_the_record_beside_the_state_reads_an_earlier_versions_file_and_ignores_a_damaged_one(tmp_path):
    from sidecar.watch.state import legacy_synced
    from sidecar.watch.sync import SyncRecord, synced_file

    state_file = tmp_path / "m_0123456789abcdef0123.json"
    synced_file(state_file).write_text(json.dumps({"synced": ["/w/offline-run-1"]}))
    assert SyncRecord.read(state_file) == SyncRecord({"/w/offline-run-1": "recorded by an earlier version"})
    SyncRecord({"/w/offline-run-2": "2026-12-01T10:31:00+00:00"}, 2, "d").write(state_file)
    assert SyncRecord.read(state_file) == SyncRecord({"/w/offline-run-2": "2026-12-01T10:31:00+00:00"}, 2, "d")
    assert legacy_synced(state_file) == {"/w/offline-run-2"}  # what `status` counts as synced
    synced_file(state_file).write_text('{"synced": "not a list"')
    assert SyncRecord.read(state_file) == SyncRecord()
