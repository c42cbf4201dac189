"""Notifications (--notify-command, --wandb-alerts) as a user sees them.

The user's command is a real shell script (under the repository's awkward path) that appends the
SIDECAR_* variables of each notice to a file; the sidecar, the evals (the stand-in eval script)
and the state files are real, through the real command line. Two fakes, each said where used:
the per-minute pacing runs through the sidecar's real loop with a fake clock
(tests/loop_harness.py), and W&B's server is the double tests/wandb_server.py (or a closed port
for an outage).
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ENTRY, process_gone, wait_for
from loop_harness import FakeClock, harness, succeeds
from sidecar.notify import VARIABLES, Event, Gate, Notifier, Runner
from wandb_server import WandbServer

KEY = "local0dummy0key0that0must0never0be0printed0"
RECORD = """#!/bin/sh
{ env | grep '^SIDECAR_' | sort; echo --; } >> %s
"""


def notify_script(folder, out, body: str = "") -> str:
    """A notify script in `folder` that records each notice's variables in `out` (then runs
    `body`); the --notify-command value that runs it (its path quoted as a shell would)."""
    script = folder / "notify me 'now'.sh"
    script.write_text(RECORD % shlex.quote(str(out)) + body)
    script.chmod(0o755)
    return shlex.quote(str(script))


def notices(out) -> list[dict]:
    """Each notice the script recorded, in order: its SIDECAR_* variables."""
    if not out.exists():
        return []
    blocks = out.read_text().split("--\n")[:-1]
    return [dict(line.split("=", 1) for line in block.splitlines()) for block in blocks]


def once(ws, *extra, env=None):
    return subprocess.run([sys.executable, str(ENTRY), "once", *ws.args("--checkpoint-ready-seconds", "0", *extra)],
                          env=env or ws.env(), capture_output=True, text=True, timeout=120)


def notify_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "[WARNING]" in line and "--notify-command" in line]


def test_each_event_runs_the_command_with_its_variables_and_a_burst_goes_as_its_latest(ws):
    out = ws.ctl / "notices"
    command = notify_script(ws.repo, out)
    ws.checkpoint(50)  # its metrics.json is there: reused, never a new best, but the bar
    ws.results(50).parent.mkdir(parents=True)
    ws.results(50).write_text(json.dumps({"HR@10": 0.0015}))
    for step in (100, 200, 300, 400, 500):  # the stand-in's HR@10 rises with the step
        ws.checkpoint(step)
    ws.mode(300, "fail")
    ws.mode(400, "delete-self")
    flags = ("--notify-command", command, "--max-attempts", "2", "--retry-backoff-seconds", "0")
    done = once(ws, *flags)
    assert done.returncode == 4, done.stderr  # checkpoint-300 was given up in this run
    assert notify_warnings(done.stderr) == []

    got = notices(out)
    assert [(n["SIDECAR_EVENT"], n["SIDECAR_STEP"]) for n in got] == [
        ("new_best", "100"), ("eval_failed", "300"), ("given_up", "300"), ("vanished", "400"), ("new_best", "500")]
    for n in got:
        assert set(n) == set(VARIABLES)
        assert n["SIDECAR_MODEL"] == "toy-grec-sft-cb16-run-1" and n["SIDECAR_RUN_URL"] == ""  # W&B disabled
        assert json.loads(n["SIDECAR_TEXT_JSON"]) == n["SIDECAR_TEXT"]
    first, failed, given_up, vanished, latest = got
    log_100 = ws.log_dir / "toy-grec-sft-cb16-run-1" / "checkpoint-100.log"
    best = (first["SIDECAR_METRIC"], first["SIDECAR_VALUE"], first["SIDECAR_PREVIOUS_BEST"])
    assert best == ("HR@10", "0.002", "0.0015")  # the reused checkpoint-50 set the bar
    assert first["SIDECAR_LOG"] == str(log_100) and first["SIDECAR_COALESCED"] == "1"
    assert first["SIDECAR_TEXT"] == "toy-grec-sft-cb16-run-1: new best HR@10 = 0.002 at checkpoint-100 (was 0.0015)"
    # the two later new bests came within the minute: the latest goes at the end (here the run's
    # end), standing for both, with the best before the first of them
    assert (latest["SIDECAR_VALUE"], latest["SIDECAR_PREVIOUS_BEST"]) == ("0.006", "0.002")
    assert (latest["SIDECAR_COALESCED"], latest["SIDECAR_STEPS"]) == ("2", "200 500")
    assert failed["SIDECAR_ERROR"].startswith("eval of checkpoint-300 exited 3 after ")
    assert (failed["SIDECAR_ATTEMPTS"], given_up["SIDECAR_ATTEMPTS"]) == ("1", "2")
    assert given_up["SIDECAR_LOG"].endswith("checkpoint-300.log") and "stand-in: failing on purpose" in open(
        given_up["SIDECAR_LOG"]).read()
    assert given_up["SIDECAR_LOG_TAIL"] == "stand-in: failing on purpose"  # what the eval printed last
    assert given_up["SIDECAR_TEXT"].startswith("toy-grec-sft-cb16-run-1: gave up on checkpoint-300 after 2 attempts: ")
    assert given_up["SIDECAR_TEXT"].endswith("; its log ends: stand-in: failing on purpose")
    assert vanished["SIDECAR_ERROR"] == "deleted during its eval" and vanished["SIDECAR_CHECKPOINT"] == "checkpoint-400"


def test_a_fleet_sends_one_notice_a_kind_a_minute_naming_each_models_checkpoints(ws):
    out = ws.ctl / "notices"
    command = notify_script(ws.repo, out)
    ws.checkpoint(100)
    other = ws.sft.parent / "other-model"
    (other / "checkpoint-100").mkdir(parents=True)
    (other / "checkpoint-100" / "model.safetensors").write_bytes(b"w" * 64)
    argv = ws.args("--checkpoint-ready-seconds", "0", "--notify-command", command)
    at = argv.index("--sft-root")
    argv[at:at + 2] = ["--models-root", str(ws.sft.parent)]
    done = subprocess.run([sys.executable, str(ENTRY), "once", *argv], env=ws.env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    first, second = notices(out)  # the second model's new best came within the minute: sent at the end
    assert {first["SIDECAR_MODEL"], second["SIDECAR_MODEL"]} == {"other-model", "toy-grec-sft-cb16-run-1"}
    assert (second["SIDECAR_EVENT"], second["SIDECAR_STEPS"]) == ("new_best", f"{second['SIDECAR_MODEL']}/100")
    assert second["SIDECAR_TEXT"].startswith(f"{second['SIDECAR_MODEL']}: new best HR@10 = ")


def test_a_failing_or_hanging_command_is_one_warning_each_and_never_touches_evaluation(ws):
    out = ws.ctl / "notices"
    sleeper = ws.ctl / "sleeper.pid"
    command = notify_script(ws.repo, out, f"""if [ "$SIDECAR_STEP" != 200 ]; then echo "webhook said no" >&2; exit 7; fi
sleep 600 & echo $! > {shlex.quote(str(sleeper))}; wait
""")
    for step in (100, 200, 300):
        ws.checkpoint(step)
    ws.mode(300, "fail")
    done = once(ws, "--notify-command", command, "--notify-timeout-seconds", "1", "--max-attempts", "1")
    assert done.returncode == 4, done.stderr
    assert [r["checkpoint_step"] for r in ws.state()["table_rows"]] == [100, 200]
    assert [n["SIDECAR_EVENT"] for n in notices(out)] == ["new_best", "given_up", "new_best"]
    warnings = notify_warnings(done.stderr)
    assert len(warnings) == 2, done.stderr  # given_up's exit 7 is the same kind of failure: DEBUG
    assert "--notify-command for new_best: " in warnings[0] and " exited 7 after " in warnings[0]
    assert warnings[0].endswith("(webhook said no); evaluation goes on (later failures like this are logged at DEBUG)")
    assert "did not end within 1 s (--notify-timeout-seconds) and was stopped" in warnings[1]
    assert process_gone(int(sleeper.read_text()))  # its whole process group was stopped


def test_a_notify_program_that_is_not_there_is_one_line_at_start_and_exit_2(ws):
    ws.checkpoint(100)
    done = once(ws, "--notify-command", "no-such-notifier --channel x")
    assert done.returncode == 2
    assert done.stderr == "eval_wandb_sidecar.py: error: --notify-command: 'no-such-notifier' not found on PATH\n"
    assert ws.state_files() == [] and ws.calls() == []


def test_events_within_a_minute_go_as_one_notice_when_the_minute_ends(tmp_path):
    # A fake clock (the one fake here) drives the real loop: each eval takes 30 fake seconds, so
    # new bests come every 30 s; the command is a real process.
    out = tmp_path / "notices"
    command = notify_script(tmp_path, out)
    h = harness(tmp_path, "--notify-command", command, "--poll-interval-seconds", "1000", default=succeeds(after=30.0))
    for step in (100, 200, 300, 400):
        h.checkpoint(step)
    seen_before_stop: list[int] = []

    def look() -> None:  # long after the last minute ended, long before the stop's flush
        wait_for(lambda: len(notices(out)) >= 3, timeout=30)
        seen_before_stop.append(len(notices(out)))

    h.clock.at(900.0, look)
    h.run_forever(stop_at=3000.0)
    got = notices(out)
    fields = ("SIDECAR_STEP", "SIDECAR_COALESCED", "SIDECAR_STEPS", "SIDECAR_PREVIOUS_BEST")
    assert [tuple(n[f] for f in fields) for n in got] == [
        ("100", "1", "100", ""),  # the first goes at once
        ("300", "2", "200 300", "0.01"),  # 200 within its minute: held, then 300 folded in
        ("400", "1", "400", "0.03"),  # held, sent when its minute ended (the loop woke for it)
    ]
    assert seen_before_stop == [3]


def test_outage_and_outage_over_once_each_from_the_reporters_outage(tmp_path):
    # A fake clock, and a reporter that says since when W&B is unreachable (the cloud server is
    # the thing faked); the notifier and the command (a real process) are the real ones.
    out = tmp_path / "notices"
    clock = FakeClock()
    reporter = SimpleNamespace(enabled=True, since=None, outage_since=lambda: reporter.since, run_url=lambda: None)
    config = SimpleNamespace(wandb_alerts=False, notify_outage_minutes=10.0, notify_timeout_seconds=10.0)
    runner = Runner(["sh", "-c", RECORD % shlex.quote(str(out))], tmp_path, 10.0)
    notifier = Notifier(config, clock, {"PATH": "/usr/bin:/bin"}, runner)
    notifier.watch(SimpleNamespace(model="key", reporter=reporter), "m")
    reporter.since = clock.time()
    for _ in range(5):  # 9 minutes and 50 s: not yet an outage
        clock.sleep(118.0)
        notifier.tick()
    assert notifier.deadline() == pytest.approx(clock.monotonic() + 10.0)  # the outage's tenth minute ends then
    clock.sleep(10.0)
    notifier.tick()
    notifier.tick()
    reporter.since = None
    clock.sleep(120.0)
    notifier.tick()
    notifier.flush()
    notifier.close()
    got = notices(out)
    assert [(n["SIDECAR_EVENT"], n["SIDECAR_MODEL"]) for n in got] == [("outage", "m"), ("outage_over", "m")]
    assert got[0]["SIDECAR_SINCE"] == got[1]["SIDECAR_SINCE"] != ""
    assert got[1]["SIDECAR_TEXT"] == "m: W&B reachable again after 12 min"


def test_an_outage_while_watching_runs_the_command(ws):
    # W&B online at a closed local port: unreachable from the start (with 0 minutes, at once)
    out = ws.ctl / "notices"
    command = notify_script(ws.repo, out)
    ws.checkpoint(100)  # a row to report
    env = ws.env(WANDB_API_KEY=KEY)
    env.pop("WANDB_MODE", None)
    args = [a for a in ws.args("--wandb-mode", "online", "--notify-command", command, "--notify-outage-minutes", "0")
            if a != "--disable-wandb"]
    proc = subprocess.Popen([sys.executable, str(ENTRY), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ws.procs.append(proc)
    wait_for(lambda: [n for n in notices(out) if n["SIDECAR_EVENT"] == "outage"], timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert [n["SIDECAR_EVENT"] for n in notices(out)] == ["new_best", "outage"]
    outage = notices(out)[1]
    assert (outage["SIDECAR_EVENT"], outage["SIDECAR_MODEL"]) == ("outage", "toy-grec-sft-cb16-run-1")
    assert outage["SIDECAR_SINCE"] and "W&B unreachable since " in outage["SIDECAR_TEXT"]


def test_wandb_alerts_reach_the_server_for_new_bests(ws):
    # the W&B server double stands in for the cloud; everything else is real
    ws.checkpoint(100)
    ws.checkpoint(200)
    with WandbServer() as server:
        env = ws.env(WANDB_BASE_URL=server.url, WANDB_API_KEY=KEY)
        env.pop("WANDB_MODE", None)
        args = [a for a in ws.args("--checkpoint-ready-seconds", "0", "--wandb-mode", "online", "--wandb-init-timeout",
                                   "10", "--wandb-alerts") if a != "--disable-wandb"]
        done = subprocess.run([sys.executable, str(ENTRY), "once", *args], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        # 100 at once; 200 within its minute, sent at the end of the run, before the run finished
        assert server.operations().count("NotifyScriptableRunAlert") == 2
        alerts = server.alerts
        assert [a.get("runName") for a in alerts] == [ws.state()["run_id"]] * 2, alerts
        assert all("new best" in (a.get("title") or "").lower() for a in alerts), alerts
        assert "200" in (alerts[1].get("text") or ""), alerts
        assert [r["checkpoint_step"] for r in server.run(ws.state()["run_id"]).eval_rows()] == [100, 200]


def test_w_and_b_alerts_keep_one_pace_per_model_and_the_command_one_per_kind():
    # pure pacing (times are numbers here): model b's alert is not folded into model a's
    a, b = Event("new_best", 0.0, model="a", key="ka", step=100), Event("new_best", 1.0, model="b", key="kb", step=100)
    alerts, command = Gate(by_model=True), Gate()
    assert alerts.offer(a, 0.0) is not None and alerts.offer(b, 1.0) is not None
    assert command.offer(a, 0.0) is not None and command.offer(b, 1.0) is None
    [held] = command.drain()
    assert held.count == 1 and held.event.model == "b"  # sent when the minute ends, not dropped
