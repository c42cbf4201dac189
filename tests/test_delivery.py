"""W&B delivery judged by the server: every row in state ends up in what a W&B server received.

The server is `wandb_server.WandbServer`, a recording stand-in for the W&B cloud (the one fake
here), on 127.0.0.1; everything else is real: the wandb SDK and wandb-core, `wandb sync`, the
sidecar as a process, kill -9 and SIGTERM. Assertions read the server's record (history lines in
the order it holds them, summary, the uploaded table file), the state file and `status`.
"""

import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import ENTRY, process_gone, wait_for
from test_wandb import backfilled, metrics_for
from wandb_server import WandbServer

KEY = "local0dummy0key0that0must0never0be0printed0"


@pytest.fixture
def server():
    srv = WandbServer().start()
    yield srv
    srv.stop()


def online_env(ws, server, **extra):
    env = ws.env(WANDB_BASE_URL=server.url, WANDB_API_KEY=KEY, WANDB_ERROR_REPORTING="false", **extra)
    env.pop("WANDB_MODE", None)
    return env


def args(ws, *extra, mode="online"):
    return [a for a in ws.args("--wandb-mode", mode, "--wandb-init-timeout", "5", *extra) if a != "--disable-wandb"]


def sidecar(ws, env, *extra, mode="online", timeout=180):
    return subprocess.run([sys.executable, str(ENTRY), *args(ws, *extra, mode=mode)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def start(ws, env, *extra, mode="online"):
    out = open(ws.ctl / f"sidecar-{time.monotonic_ns()}.out", "w")
    proc = subprocess.Popen([sys.executable, str(ENTRY), *args(ws, *extra, mode=mode)], env=env, stdout=out,
                            stderr=subprocess.STDOUT)
    ws.procs.append(proc)
    return proc


def sync(ws, env, *extra):
    return subprocess.run([sys.executable, str(ENTRY), "sync", *args(ws, mode="offline"), *extra], env=env,
                          capture_output=True, text=True, timeout=300)


def status(ws, env, mode="online"):
    result = subprocess.run([sys.executable, str(ENTRY), "status", *args(ws, mode=mode), "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sent(ws) -> dict:
    """The rows the state file says are sent online but not confirmed by the server."""
    return ws.state().get("wandb_sent", {}).get("lines", {})


@contextmanager
def watching_after_one_row(ws, server, env):
    """An online sidecar watching, whose checkpoint-100 the server has confirmed; SIGTERM at the end."""
    backfilled(ws, 100)
    proc = start(ws, env, "--poll-interval-seconds", "0.3")
    try:
        wait_for(lambda: server_steps(server, ws) == [100] and not sent(ws), timeout=60)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0


def log_text(ws) -> str:
    return "".join(p.read_text() for p in sorted(ws.ctl.glob("sidecar-*.out")))


def server_steps(server, ws) -> list[int]:
    """checkpoint_step of every eval row the server holds, in its history order."""
    return [r["checkpoint_step"] for r in server.run(ws.state()["run_id"]).eval_rows()]


def assert_every_row_once_or_in_flight(server, ws, in_flight=()):
    """Each row of state is on the server once (twice only if it was in flight at a crash), with
    the values in state; `_step` strictly increases."""
    state = ws.state()
    run = server.run(state["run_id"])
    steps = [r["_step"] for r in run.rows()]
    assert steps == sorted(set(steps)), steps
    on_server = {}
    for row in run.eval_rows():
        on_server.setdefault(row["checkpoint_step"], []).append(row)
    for row in state["table_rows"]:
        step = row["checkpoint_step"]
        copies = on_server.get(step, [])
        assert 1 <= len(copies) <= (2 if step in in_flight else 1), (step, len(copies))
        for copy in copies:
            assert copy["eval/HR@10"] == row["HR@10"] and copy["eval/checkpoint_name"] == row["checkpoint_name"]
    assert set(on_server) == {r["checkpoint_step"] for r in state["table_rows"]}


def assert_summary_and_table_cover_all_rows(server, ws):
    state = ws.state()
    run = server.run(state["run_id"])
    rows = state["table_rows"]
    last = rows[-1]
    best = max(rows, key=lambda r: (r["HR@10"], -r["checkpoint_step"]))
    assert run.summary["last_step"] == last["checkpoint_step"]
    assert run.summary["last_hr@10"] == last["HR@10"]
    assert run.summary["best_hr@10"] == best["HR@10"] and run.summary["best_step_for_hr@10"] == best["checkpoint_step"]
    table = run.table()
    assert [r[0] for r in table["data"]] == [r["checkpoint_step"] for r in rows]


def test_online_run_reaches_the_server_with_history_summary_table_and_config(ws, server):
    backfilled(ws, 100, 200, 300)
    env = online_env(ws, server)
    result = sidecar(ws, env, "--once")
    assert result.returncode == 0, result.stderr
    state = ws.state()
    run = server.run(state["run_id"], project="MIMIGenRec-Eval")
    assert run.entity == "tester" and run.display_name == "toy-grec-sft-cb16-run-1-eval" and run.job_type == "eval"
    assert {k: v["value"] for k, v in run.config.items() if k != "_wandb"} == {
        "model_name": ws.sft.name, "dataset": "Toy_grec", "cb_setting": "cb16", "seed": 42, "num_beams": 50,
        "sid_levels": -1, "eval_split": "test"}
    rows = run.eval_rows()
    assert [r["checkpoint_step"] for r in rows] == [100, 200, 300]
    assert rows[1]["eval/HR@20"] == metrics_for(200)["HR@20"]
    assert run.summary["best_hr@10"] == metrics_for(200)["HR@10"] and run.summary["best_step_for_hr@10"] == 200
    assert run.summary["last_step"] == 300 and run.summary["best_step_for_ndcg@10"] == 300
    assert [r[0] for r in run.table()["data"]] == [100, 200, 300]
    assert run.complete and run.exit_code == 0
    assert state["unreported_steps"] == [] and "wandb_sent" not in state  # every row confirmed
    info = status(ws, env)
    assert (info["unreported"], info["unconfirmed"]) == (0, 0)
    human = subprocess.run([sys.executable, str(ENTRY), "status", *args(ws)], env=env, capture_output=True,
                           text=True, timeout=60).stdout
    assert "W&B delivery  every row is on the W&B server" in human
    assert KEY not in result.stdout + result.stderr


def test_server_down_at_start_rows_wait_in_state_and_reach_it_when_it_is_back(ws, server):
    backfilled(ws, 100, 200)
    env = online_env(ws, server)
    server.stop()
    first = sidecar(ws, env, "--once")
    assert first.returncode == 0, first.stderr
    assert ws.state()["unreported_steps"] == [100, 200]
    assert [line for line in first.stderr.splitlines() if "[WARNING]" in line
            and "reusing metrics.json files" not in line][0].count("could not be written") == 1
    assert status(ws, env)["unreported"] == 2
    server.start()
    backfilled(ws, 300)
    second = sidecar(ws, env, "--once")
    assert second.returncode == 0, second.stderr
    assert server_steps(server, ws) == [100, 200, 300]
    assert_summary_and_table_cover_all_rows(server, ws)
    assert status(ws, env)["unreported"] == 0


def test_5xx_while_watching_rows_wait_as_sent_then_are_confirmed(ws, server):
    env = online_env(ws, server)
    with watching_after_one_row(ws, server, env):
        server.fail_with = 503  # every request, GraphQL and file stream
        backfilled(ws, 200)
        wait_for(lambda: sent(ws).keys() == {"200"}, timeout=60)
        info = status(ws, env)
        assert (info["unreported"], info["unconfirmed"]) == (0, 1)  # sent, the server has not confirmed it
        wait_for(lambda: "W&B server unreachable (the server answered HTTP 503)" in log_text(ws), timeout=60)
        assert server_steps(server, ws) == [100]
        server.fail_with = None
        wait_for(lambda: not sent(ws), timeout=90)
        assert server_steps(server, ws) == [100, 200]
    assert log_text(ws).count("W&B server unreachable") == 1  # one warning for the outage
    assert "W&B server reachable again" in log_text(ws)
    assert_every_row_once_or_in_flight(server, ws)
    assert_summary_and_table_cover_all_rows(server, ws)


def test_outage_while_watching_the_row_arrives_when_the_server_is_back(ws, server):
    env = online_env(ws, server)
    with watching_after_one_row(ws, server, env):
        server.stop()
        backfilled(ws, 200)
        wait_for(lambda: "200" in sent(ws), timeout=60)
        assert status(ws, env)["unconfirmed"] == 1
        server.start()
        wait_for(lambda: not sent(ws), timeout=90)
    assert server_steps(server, ws) == [100, 200]
    assert_summary_and_table_cover_all_rows(server, ws)


def test_sigterm_during_an_outage_then_a_restart_delivers_every_row(ws, server):
    env = online_env(ws, server)
    with watching_after_one_row(ws, server, env):
        server.stop()
        backfilled(ws, 200, 300)
        wait_for(lambda: sent(ws).keys() == {"200", "300"}, timeout=60)
    state = ws.state()
    assert sorted(state["wandb_sent"]["lines"]) == ["200", "300"]  # not counted as reported
    assert status(ws, env)["unconfirmed"] == 2
    core = state["wandb_segments"][-1]["core_pid"]
    wait_for(lambda: process_gone(core), timeout=30)  # its wandb-core must not deliver them behind our back
    server.start()
    result = sidecar(ws, env, "--once")
    assert result.returncode == 0, result.stderr
    assert "lacks 2 row(s)" in result.stderr
    assert server_steps(server, ws) == [100, 200, 300]
    assert_summary_and_table_cover_all_rows(server, ws)
    assert "wandb_sent" not in ws.state()


def test_kill_9_within_3_s_of_a_row_then_a_restart_loses_nothing(ws, server):
    ws.checkpoint(100)
    env = online_env(ws, server)
    proc = start(ws, env, "--poll-interval-seconds", "0.3")
    wait_for(lambda: "100" in sent(ws), timeout=60, interval=0.01)
    proc.kill()  # within a second of the row being logged: wandb-core may not have sent it
    proc.wait()
    ws.checkpoint(200)
    result = sidecar(ws, env, "--once")
    assert result.returncode == 0, result.stderr
    assert_every_row_once_or_in_flight(server, ws, in_flight=(100,))
    assert_summary_and_table_cover_all_rows(server, ws)
    assert ws.calls() == ["checkpoint-100", "checkpoint-200"]


def test_kill_9_before_the_server_took_a_row_then_sync_delivers_it_once(ws, server):
    """The file stream fails, so the row is surely not on the server when the sidecar dies; the
    local run folder holds it, but only the server counts: `sync` sends it (never the online
    folder itself, which `wandb sync` would skip or resend at the same `_step`)."""
    backfilled(ws, 100)
    env = online_env(ws, server)
    assert sidecar(ws, env, "--once").returncode == 0
    server.fail_with, server.fail_paths = 503, ("file_stream",)
    proc = start(ws, env, "--poll-interval-seconds", "0.3")
    backfilled(ws, 200)
    wait_for(lambda: "200" in sent(ws), timeout=60)
    time.sleep(2)  # several rejected transmissions
    proc.kill()
    proc.wait()
    assert server_steps(server, ws) == [100]
    server.fail_with = None
    result = sync(ws, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wandb sync" not in result.stdout  # no folder was uploaded: the row came from the state file
    assert server_steps(server, ws) == [100, 200]
    assert_summary_and_table_cover_all_rows(server, ws)
    assert (status(ws, env)["unconfirmed"], status(ws, env)["unreported"]) == (0, 0)


def test_fallback_offline_then_online_then_sync_summary_and_table_come_from_all_rows(ws, server):
    backfilled(ws, 100, 200)
    env = online_env(ws, server)
    server.stop()
    first = sidecar(ws, env, "--once", "--wandb-fallback", "offline")
    assert first.returncode == 0, first.stderr
    assert status(ws, env)["offline_unsynced"] == 2
    server.start()
    backfilled(ws, 300, 400)
    assert sidecar(ws, env, "--once").returncode == 0
    assert server_steps(server, ws) == [300, 400]
    result = sync(ws, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(server_steps(server, ws)) == [100, 200, 300, 400]
    assert_every_row_once_or_in_flight(server, ws)
    assert_summary_and_table_cover_all_rows(server, ws)  # last_step 400, not the fallback's 200
    info = status(ws, env)
    assert (info["offline_unsynced"], info["unreported"], info["unconfirmed"]) == (0, 0, 0)
    again = sync(ws, env)
    assert again.returncode == 0 and "nothing to sync" in again.stdout


def test_three_offline_processes_and_sync_make_one_run_with_each_row_once(ws, server):
    env = online_env(ws, server)
    for i, steps in enumerate(((100,), (200, 300), (400,))):
        backfilled(ws, *steps)
        resume = ("allow", "auto", "must")[i]  # auto is written as allow offline: no _step collision
        result = sidecar(ws, env, "--once", "--wandb-resume", resume, mode="offline")
        assert result.returncode == 0, result.stderr
        time.sleep(1.1)  # offline folders are named by the second they start
    assert status(ws, env, mode="offline")["offline_unsynced"] == 4
    result = sync(ws, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("wandb sync -p MIMIGenRec-Eval") == 3
    assert sorted(server_steps(server, ws)) == [100, 200, 300, 400]
    assert_every_row_once_or_in_flight(server, ws)  # and _step strictly increasing
    assert_summary_and_table_cover_all_rows(server, ws)
    assert len(server.runs) == 1


def test_offline_with_resume_never_is_refused_before_anything_is_written(ws, server):
    backfilled(ws, 100)
    result = sidecar(ws, online_env(ws, server), "--once", "--wandb-resume", "never", mode="offline")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("eval_wandb_sidecar.py: error: --wandb-resume never:")
    assert "Traceback" not in result.stderr and not ws.state_files()


def test_sync_never_records_a_folder_wandb_skipped(ws, server, isolated_env):
    """`wandb sync` skips a folder not named offline-* and still exits 0: the server's history
    did not grow, so sync says so, exits 1 and leaves it unsynced."""
    backfilled(ws, 100)
    env = online_env(ws, server)
    assert sidecar(ws, env, "--once", mode="offline").returncode == 0
    state_file = ws.state_files()[0]
    data = json.loads(state_file.read_text())
    folder = Path(data["wandb_segments"][0]["dir"])
    renamed = folder.with_name(folder.name.replace("offline-run-", "run-"))
    folder.rename(renamed)
    data["wandb_segments"][0]["dir"] = str(renamed)
    state_file.write_text(json.dumps(data))
    result = sync(ws, env)
    assert result.returncode == 1
    assert f"wandb sync did not upload {renamed}: the server holds 0 of its 2 history line(s)" in result.stderr
    assert "synced" not in ws.state()["wandb_segments"][0]
    assert status(ws, env, mode="offline")["offline_unsynced"] == 1


def original_state(ws, env, steps) -> Path:
    """A state file exactly as the original tool left it (version 1) for this configuration."""
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run([sys.executable, str(ENTRY), "status", *args(ws)], env=env, capture_output=True,
                           text=True, timeout=60)
    name = Path(probe.stderr.split("no state file at ", 1)[1].rsplit(": nothing", 1)[0])  # the original's name too
    run_id = "eval-" + name.stem.rsplit("_", 1)[1]
    rows = [{"checkpoint_step": s, "checkpoint_name": f"checkpoint-{s}",
             **{k: v for k, v in metrics_for(s).items() if k in ("HR@1", "HR@10", "NDCG@1", "NDCG@10")},
             "metrics_path": str(ws.results(s))} for s in steps]
    name.write_text(json.dumps({"version": 1, "model_config_key": run_id[5:], "run_id": run_id,
                                "run_name": "toy-grec-sft-cb16-run-1-eval", "processed_steps": list(steps),
                                "failed_steps": {}, "table_rows": rows, "last_seen_step": max(steps),
                                "last_update_time": "2026-01-01T00:00:00+00:00"}))
    return name


def test_the_original_tools_offline_folder_is_synced_before_ours(ws, server):
    """A user of the original tool switches over: its state file (version 1) and its offline run
    folder (its default mode) under the repository's wandb/ are adopted; sync uploads that folder
    first, then ours, and the server ends with one run, every row once, a full summary."""
    env = online_env(ws, server)
    name = original_state(ws, env, [100, 200])
    run_id = "eval-" + name.stem.rsplit("_", 1)[1]
    original_rows = json.loads(name.read_text())["table_rows"]
    writer = r'''
import sys, json, wandb
rows = json.loads(sys.argv[1])
run = wandb.init(project="MIMIGenRec-Eval", id=sys.argv[2], resume="allow", mode="offline", dir=sys.argv[3],
                 settings=wandb.Settings(console="off", x_disable_stats=True, quiet=True))
run.define_metric("checkpoint_step"); run.define_metric("eval/*", step_metric="checkpoint_step")
for r in rows:
    run.log({"checkpoint_step": r["checkpoint_step"], "eval/HR@10": r["HR@10"], "eval/NDCG@10": r["NDCG@10"],
             "eval/checkpoint_name": r["checkpoint_name"], "eval/metrics_path": r["metrics_path"]})
run.summary.update({"last_step": rows[-1]["checkpoint_step"]})
run.finish()
'''
    made = subprocess.run([sys.executable, "-c", writer, json.dumps(original_rows), run_id, str(ws.repo)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    [original] = (ws.repo / "wandb").glob(f"offline-run-*-{run_id}")
    time.sleep(1.1)
    for s in (100, 200):
        ws.checkpoint(s)
    backfilled(ws, 300)
    result = sidecar(ws, env, "--once", mode="offline")
    assert result.returncode == 0, result.stderr
    assert status(ws, env, mode="offline")["original_tool_unchecked"] == 2
    synced = sync(ws, env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    uploads = [line for line in synced.stdout.splitlines() if line.startswith("wandb sync")]
    assert len(uploads) == 2 and shlex.split(uploads[0])[-1] == str(original)  # the original's folder first
    assert server_steps(server, ws) == [100, 200, 300]
    assert_every_row_once_or_in_flight(server, ws)
    assert_summary_and_table_cover_all_rows(server, ws)
    info = status(ws, env, mode="offline")
    assert (info["original_tool_unchecked"], info["offline_unsynced"]) == (0, 0)


def test_sync_while_the_sidecar_runs_is_refused_with_one_line(ws, server):
    backfilled(ws, 100)
    env = online_env(ws, server)
    proc = start(ws, env, "--poll-interval-seconds", "0.3", mode="offline")
    try:
        wait_for(lambda: ws.state()["wandb_segments"], timeout=60)
        result = sync(ws, env)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert result.returncode == 3
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("eval_wandb_sidecar.py: error: another sidecar (pid ") and "stop it first" in line
    assert server.runs == {}  # nothing was sent


# ----- what an adversarial review broke (each failed before its fix) ------------------------------------
def test_a_finish_after_the_server_refused_the_history_confirms_nothing(ws, server):
    """wandb-core drops history the server refuses (4xx) and still finishes cleanly: the rows must
    stay sent, not reported, until the server holds them."""
    backfilled(ws, 100, 200)
    env = online_env(ws, server)
    server.fail_with, server.fail_paths = 400, ("file_stream",)
    first = sidecar(ws, env, "--once")
    assert first.returncode == 0, first.stderr
    assert "the W&B server holds 0 of the 3 history lines this run logged" in first.stderr
    assert (status(ws, env)["unconfirmed"], server_steps(server, ws)) == (2, [])
    server.fail_with = None
    assert sidecar(ws, env, "--once").returncode == 0
    assert server_steps(server, ws) == [100, 200]
    assert status(ws, env)["unconfirmed"] == 0


def test_sync_uploads_a_folder_again_whatever_wandbs_marker_and_sync_state_say(ws, server):
    """wandb writes its .synced marker even when the server refused the upload, and an interrupted
    upload leaves a .syncstate whose starting step is stale: neither is trusted."""
    backfilled(ws, 100)
    env = online_env(ws, server)
    assert sidecar(ws, env, "--once").returncode == 0  # the server holds 2 lines: the row and a table
    backfilled(ws, 200)
    assert sidecar(ws, env, "--once", mode="offline").returncode == 0
    folder = Path(next(s["dir"] for s in ws.state()["wandb_segments"] if s["mode"] == "offline"))
    [log_file] = folder.glob("*.wandb")
    Path(f"{log_file}.synced").write_text("")
    Path(f"{log_file}.syncstate").write_text('{"starting_step": 0}')
    result = sync(ws, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_row_once_or_in_flight(server, ws)  # 200 arrived, and _step strictly increases
    assert_summary_and_table_cover_all_rows(server, ws)


def test_ctrl_c_during_sync_then_sync_again_sends_no_row_twice(ws, server):
    backfilled(ws, 100, 200, 300)
    env = online_env(ws, server)
    server.stop()
    assert sidecar(ws, env, "--once").returncode == 0  # all unreported
    server.start()
    server.fail_with, server.fail_paths = 503, ("/upload/",)  # the table file cannot be uploaded: finish waits
    out = open(ws.ctl / "sync-interrupted.out", "w")
    # Ctrl-C as a terminal delivers it: the sync starts with SIGINT's default disposition even when the
    # test runner's was "ignore" (a runner started in the background by a non-interactive shell), which
    # a child would inherit and Python would then keep, so the Ctrl-C below would never arrive
    proc = subprocess.Popen([sys.executable, str(ENTRY), "sync", *args(ws, mode="offline")], env=env, stdout=out,
                            stderr=subprocess.STDOUT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: server_steps(server, ws) == [100, 200, 300], timeout=60)
    wait_for(lambda: sent(ws).keys() == {"100", "200", "300"}, timeout=30)  # recorded while sync still runs
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "Traceback" not in (ws.ctl / "sync-interrupted.out").read_text()
    server.fail_with = None
    again = sync(ws, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_every_row_once_or_in_flight(server, ws)
    assert_summary_and_table_cover_all_rows(server, ws)


def test_an_earlier_versions_killed_online_segment_is_judged_by_the_server(ws, server):
    """What the previous version left after a kill -9 (no history lines recorded): its rows the
    server holds are not sent again."""
    backfilled(ws, 100, 200)
    env = online_env(ws, server)
    assert sidecar(ws, env, "--once").returncode == 0
    state_file = ws.state_files()[0]
    data = json.loads(state_file.read_text())
    for seg in data["wandb_segments"]:
        for key in ("run", "core_pid", "core_start", "closed"):
            seg.pop(key, None)
    data.pop("wandb_sent", None)
    data.pop("wandb_run", None)
    state_file.write_text(json.dumps(data))
    backfilled(ws, 300)
    result = sidecar(ws, env, "--once")
    assert result.returncode == 0, result.stderr
    assert server_steps(server, ws) == [100, 200, 300]


def test_sync_of_a_state_file_goes_to_the_project_its_rows_were_written_to(ws, server):
    backfilled(ws, 100)
    env = online_env(ws, server)
    assert sidecar(ws, env, "--once", "--wandb-project", "Custom", mode="offline").returncode == 0
    result = subprocess.run([sys.executable, str(ENTRY), "sync", "--state-file", str(ws.state_files()[0])], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {project for (_, project, _) in server.runs} == {"Custom"}
    clash = subprocess.run([sys.executable, str(ENTRY), "sync", "--state-file", str(ws.state_files()[0]),
                            "--wandb-project", "Elsewhere"], env=env, capture_output=True, text=True, timeout=60)
    assert clash.returncode == 2 and "--wandb-project 'Elsewhere': the rows of this state were reported to " \
        "/Custom/" in clash.stderr


def test_a_new_project_gets_every_row_and_status_says_so_until_it_has_them(ws, server):
    backfilled(ws, 100, 200)
    env = online_env(ws, server)
    assert sidecar(ws, env, "--once").returncode == 0
    backfilled(ws, 300)
    result = sidecar(ws, env, "--once", "--wandb-project", "Other")
    assert result.returncode == 0, result.stderr
    assert "the W&B run changed since rows were reported" in result.stderr
    assert [r["checkpoint_step"] for r in server.run(ws.state()["run_id"], project="Other").eval_rows()] == [
        100, 200, 300]
    assert status(ws, env)["unreported"] == 0


def test_online_resume_never_after_the_first_start_is_one_clear_line(ws, server):
    backfilled(ws, 100)
    env = online_env(ws, server)
    assert sidecar(ws, env, "--once", "--wandb-resume", "never").returncode == 0
    again = sidecar(ws, env, "--once", "--wandb-resume", "never")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("eval_wandb_sidecar.py: error: --wandb-resume never: ")


def test_sync_sends_the_rows_of_a_deleted_offline_folder_from_the_state_file(ws, server):
    backfilled(ws, 100, 200)
    env = online_env(ws, server)
    assert sidecar(ws, env, "--once", mode="offline").returncode == 0
    shutil.rmtree(ws.state()["wandb_segments"][0]["dir"])
    result = sync(ws, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is gone: its 2 row(s) are sent from the state file instead" in result.stdout
    assert server_steps(server, ws) == [100, 200]
    assert status(ws, env, mode="offline")["offline_unsynced"] == 0
    assert "nothing to sync" in sync(ws, env).stdout


def test_an_original_state_without_its_folders_is_checked_once_and_explained(ws, server):
    env = online_env(ws, server)
    name = original_state(ws, env, [100])
    ws.checkpoint(100)
    assert sidecar(ws, env, "--once").returncode == 0
    assert status(ws, env)["original_tool_unchecked"] == 1
    result = sync(ws, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no offline folder of the original tool's run eval-{name.stem.rsplit('_', 1)[1]} was found" in result.stdout
    assert status(ws, env)["original_tool_unchecked"] == 0
