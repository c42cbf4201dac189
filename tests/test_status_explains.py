"""`status` that explains (issue 17): why each checkpoint waits, any summary metrics with their
direction, the W&B mode the state was written with, a sparkline and where the full charts are,
and which other configurations of the model have state files when the flags name none.

Everything through the real command line, on state files written by real `--once` runs with the
stand-in eval (and, for the chart pointer, the real wandb SDK offline)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from conftest import ENTRY, process_gone, wait_for

BLOCKS = "▁▂▃▄▅▆▇█"


def status(ws, *extra: str, drop: tuple[str, ...] = (), env: dict | None = None) -> subprocess.CompletedProcess:
    """`status` with the workspace's flags (without the flags in `drop`) and `extra`."""
    args = [a for a in ws.args() if a not in drop]
    return subprocess.run([sys.executable, str(ENTRY), "status", *args, *extra], env=env or ws.env(),
                          capture_output=True, text=True, timeout=60)


def snapshot(folder: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def by_step(info: dict) -> dict:
    return {w["step"]: w for w in info["waiting"]}


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def write_metrics(ws, step: int, metrics: dict) -> None:
    """A metrics.json already there: the sidecar records it without an eval."""
    ws.checkpoint(step)
    ws.results(step).parent.mkdir(parents=True, exist_ok=True)
    ws.results(step).write_text(json.dumps(metrics))


FAILED_ONCE = (4,)  # `once` when an eval failed in the run
CLOCK = r"(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d"


def test_status_says_why_each_checkpoint_waits_from_the_settings_the_sidecar_had(ws):
    marker = ("--ready-marker", "trainer_state.json")
    ws.checkpoint(100)
    ws.checkpoint(300)
    ws.mode(300, "fail")
    assert ws.run("--once", "--max-attempts", "1", *marker).returncode in FAILED_ONCE
    ws.checkpoint(400)
    ws.mode(400, "fail")
    ws.checkpoint(500, marker=False)
    (ws.sft / "checkpoint-600").mkdir()
    shard = ws.checkpoint(700)
    (shard / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    done = ws.run("--once", "--max-attempts", "2", "--retry-backoff-seconds", "3600", *marker)
    assert done.returncode in FAILED_ONCE, done.stderr
    before = snapshot(ws.state_dir)

    # status is given neither --ready-marker nor --max-attempts: it explains with the sidecar's own
    shown = ws.status()
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "waiting       checkpoint-300  given up after 2 attempt(s)" in text, text
    assert re.search(rf"^              checkpoint-400  retry at {CLOCK} \(attempt 2 of 2\)$", text, re.M), text
    assert "              checkpoint-500  waiting for marker trainer_state.json" in text
    assert "              checkpoint-600  empty (no files)" in text
    assert ("              checkpoint-700  shards named by the index are missing: "
            "model-00002-of-00002.safetensors") in text
    assert "pending 4" in text and "failed 2 (1 given up)" in text
    # every time in the text is local, as the reasons' (the JSON keeps the state's ISO times)
    assert re.search(rf"^last error    checkpoint-\d00 \(attempt \d, {CLOCK}\): ", text, re.M), text
    assert re.search(rf"^updated       {CLOCK}$", text, re.M), text

    info = json.loads(ws.status("--json").stdout)
    waits = by_step(info)
    assert sorted(waits) == [300, 400, 500, 600, 700] and info["pending"] == 4
    assert waits[300]["reason"] == "given_up" and (waits[300]["attempt"], waits[300]["of"]) == (2, 2)
    assert "exited 3" in waits[300]["error"]
    retry = waits[400]
    assert retry["reason"] == "retry" and (retry["attempt"], retry["of"]) == (2, 2)
    failed_at = epoch(json.loads(ws.state_files()[0].read_text())["failed_steps"]["400"]["time"])
    assert abs(epoch(retry["until"]) - (failed_at + 3600)) < 5
    assert waits[500]["reason"] == "marker" and waits[500]["marker"] == "trainer_state.json"
    assert waits[600]["reason"] == "empty"
    assert waits[700]["reason"] == "shards" and waits[700]["missing"] == ["model-00002-of-00002.safetensors"]
    assert waits[500]["checkpoint"] == "checkpoint-500" and waits[500]["text"] == "waiting for marker trainer_state.json"

    rows = ws.status("--rows").stdout.split("updated       ")[1].splitlines()[1:]
    assert rows[0].split()[:3] == ["step", "HR@10", "NDCG@10"]
    lines = {line.split()[0]: line for line in rows[1:]}
    assert list(lines) == ["100", "300", "400", "500", "600", "700"]  # evaluated and waiting, by step
    assert re.fullmatch(r"\s+100\s+0\.\d{4}\s+0\.\d{4}.*", lines["100"])
    assert lines["500"] == "     500  waiting for marker trainer_state.json"
    assert lines["300"] == "     300  given up after 2 attempt(s)"

    assert snapshot(ws.state_dir) == before  # read only: nothing written, no lock taken


def test_quiet_period_vanished_in_flight_and_ready(ws):
    quiet = ("--checkpoint-ready-seconds", "3600")
    ws.checkpoint(200, age=0)
    ws.checkpoint(300, age=0)
    assert ws.run("--once", *quiet).returncode == 0
    for path in (ws.sft / "checkpoint-300").iterdir():
        path.unlink()
    (ws.sft / "checkpoint-300").rmdir()
    assert ws.run("--once", *quiet).returncode == 0  # records 300 as vanished

    info = json.loads(ws.status("--json").stdout)  # status's own --checkpoint-ready-seconds 1 is not the sidecar's
    waits = by_step(info)
    assert waits[200]["reason"] == "quiet"
    newest = max(p.stat().st_mtime for p in (ws.sft / "checkpoint-200").iterdir())
    assert abs(epoch(waits[200]["until"]) - (newest + 3600)) < 2
    assert waits[300]["reason"] == "vanished" and waits[300]["text"].startswith("vanished: deleted before its eval")
    assert epoch(waits[300]["time"]) > 0  # ISO in the JSON
    assert info["pending"] == 1
    text = ws.status().stdout
    # no sidecar runs: what the next start would do (it counts the quiet period from its own first look)
    assert re.search(rf"checkpoint-200  in its quiet period: its files changed \d+ s ago \(at {CLOCK}\); a sidecar "
                     rf"that starts now waits 3600 s from its first look, one that starts from {CLOCK} on takes it "
                     rf"after a short check$", text, re.M), text
    assert re.search(rf"checkpoint-300  vanished: deleted before its eval \({CLOCK}\)$", text, re.M), text

    # an eval in flight: while its sidecar runs, and after that sidecar was killed
    now = ("--checkpoint-ready-seconds", "0")
    ws.checkpoint(400)
    ws.mode(400, "sleep")
    proc = ws.start("--poll-interval-seconds", "3600", *now)
    wait_for(lambda: (ws.ctl / "started-checkpoint-400").exists())
    wait_for(lambda: "400" in ws.state()["in_flight"])
    grandchild = int(wait_for(lambda: (ws.ctl / "grandchild-checkpoint-400").read_text().strip()))
    info = json.loads(ws.status("--json").stdout)
    eval_pid = ws.state()["in_flight"]["400"]["pid"]
    flight = by_step(info)[400]
    assert flight["reason"] == "in_flight" and flight["text"] == f"in flight ({flight['by']})"
    assert re.fullmatch(rf"pid {eval_pid}, started {CLOCK}", flight["by"]), flight
    assert epoch(flight["started"]) > 0  # ISO in the JSON
    assert "its sidecar is not running" not in ws.status().stdout
    proc.kill()
    proc.wait()
    ws.checkpoint(500)
    text = ws.status().stdout
    assert re.search(r"in flight     checkpoint-400 on GPUs 0 for \d+ s \(pid \d+ on .*\); its sidecar is not "
                     r"running: evaluated again at the next start", text), text
    assert "checkpoint-500  ready; no sidecar is running for this configuration (`once` evaluates it)" in text
    rows = ws.status("--rows").stdout
    assert f"     400  in flight ({flight['by']}); a sidecar that starts settles it first" in rows, rows
    ws.mode(400, "ok")
    assert ws.run("--once", *now).returncode == 0  # stops the orphaned eval, evaluates 400 and 500
    wait_for(lambda: process_gone(grandchild))
    assert [w["reason"] for w in json.loads(ws.status("--json").stdout)["waiting"]] == ["vanished"]


def test_any_summary_metrics_with_their_direction_a_sparkline_and_no_hr_at_10(ws):
    values = {100: (0.1, 0.9), 200: (0.3, 0.5), 300: (None, 0.1234), 400: (0.7, 0.3), 500: (0.9, 0.2)}
    for step, (acc, loss) in values.items():
        write_metrics(ws, step, {"loss": loss, "grad_norm": 1.5, "epoch": step // 100,
                                 **({} if acc is None else {"acc": acc})})
    done = ws.run("--once", "--summary-metrics", "acc,loss:min")
    assert done.returncode == 0, done.stderr

    text = ws.status().stdout  # the metrics and their directions come from the state
    assert "best acc      0.9000 at step 500 (highest)" in text, text
    assert "best loss     0.1234 at step 300 (lowest)" in text
    assert "last step     500  acc 0.9000  loss 0.2000" in text
    assert "HR@10" not in text and "NDCG" not in text and "None" not in text
    assert "acc curve     ▁▃ ▆█  steps 100-500, min 0.1000, max 0.9000" in text  # 300 has no acc: a space

    ascii = status(ws, env=ws.env(PYTHONIOENCODING="ascii")).stdout
    assert "acc curve     _- +#  steps 100-500" in ascii

    info = json.loads(ws.status("--json").stdout)
    assert info["summary_metrics"] == ["acc", "loss:min"]
    assert info["summary"]["loss"] == {"best": 0.1234, "best_step": 300, "last": 0.2, "goal": "min"}
    assert info["summary"]["acc"]["best_step"] == 500 and info["summary"]["acc"]["goal"] == "max"
    assert info["best_hr@10"] is None and "best_step_for_hr@10" in info  # the original's keys stay
    assert info["curve"]["line"] == "▁▃ ▆█"

    rows = ws.status("--rows").stdout.split("updated       ")[1].splitlines()[1:]
    assert rows[0].split() == ["step", "acc", "loss", "epoch", "grad_norm"]
    assert rows[3].split() == ["300", "-", "0.1234", "3", "1.5000"]  # an integer stays one

    # --summary-metrics given to status changes the view (the first one is drawn)
    text = ws.status("--summary-metrics", "loss:min,grad_norm").stdout
    assert "best loss     0.1234 at step 300 (lowest)" in text and "loss curve    █▄▁▃▂" in text
    assert "best acc" not in text
    # a metric named without a direction takes the one the state recorded; an explicit one wins
    assert "best loss     0.1234 at step 300 (lowest)" in ws.status("--summary-metrics", "loss").stdout
    assert "best loss     0.9000 at step 100 (highest)" in ws.status("--summary-metrics", "loss:max").stdout
    text = ws.status("--summary-metrics", "HR@10,loss").stdout  # a metric no row has is named once
    assert "no values     HR@10 (in no row; the rows have acc, epoch, grad_norm, loss)" in text
    assert "best HR@10" not in text

    table = ws.status("--all").stdout.splitlines()
    assert table[0].split()[6:9] == ["BEST", "acc", "CURVE"], table
    assert table[1].split()[6:9] == ["0.9000", "@", "500"] and "▁▃ ▆█" in table[1]
    row = json.loads(ws.status("--all", "--json").stdout)["models"][0]
    assert row["best"] == {"metric": "acc", "value": 0.9, "step": 500, "goal": "max"} and row["curve"] == "▁▃ ▆█"


def test_a_long_curve_is_resampled_to_40_cells(ws):
    for step in range(1, 101):
        write_metrics(ws, step * 10, {"HR@10": round(step / 1000, 4), "NDCG@10": 0.1})
    assert ws.run("--once").returncode == 0
    line = json.loads(ws.status("--json").stdout)["curve"]["line"]
    assert len(line) == 40 and line[0] == "▁" and line[-1] == "█"
    heights = [BLOCKS.index(c) for c in line]
    assert heights == sorted(heights)  # a rising metric rises
    assert f"HR@10 curve   {line}  steps 10-1000, min 0.0010, max 0.1000" in ws.status().stdout


def test_the_mode_shown_is_the_one_the_state_was_written_with(ws):
    ws.checkpoint(100)
    assert ws.run("--once").returncode == 0  # --disable-wandb
    # status without --disable-wandb: its flags (WANDB_MODE=offline here) would say offline
    shown = status(ws, drop=("--disable-wandb",))
    assert "W&B mode disabled" in shown.stdout and "W&B delivery" not in shown.stdout, shown.stdout
    assert "full charts   none: W&B is disabled for this configuration" in shown.stdout
    assert json.loads(status(ws, "--json", drop=("--disable-wandb",)).stdout)["wandb_mode"] == "disabled"
    table = status(ws, "--all", drop=("--disable-wandb",)).stdout
    assert "(disabled)" in table and "(offline)" not in table, table
    row = json.loads(status(ws, "--all", "--json", drop=("--disable-wandb",)).stdout)["models"][0]
    assert row["wandb_mode"] == "disabled"

    # a state of an older sidecar records no settings: the flags status gets decide
    path = ws.state_files()[0]
    data = json.loads(path.read_text())
    del data["sidecar_settings"]
    path.write_text(json.dumps(data))
    assert "W&B mode offline" in status(ws, drop=("--disable-wandb",)).stdout
    assert "W&B mode disabled" in ws.status().stdout
    assert "(offline)" in status(ws, "--all", drop=("--disable-wandb",)).stdout


def test_an_offline_run_points_to_its_folder_for_wandb_leet(ws):
    ws.checkpoint(100)
    ws.checkpoint(200)
    args = [a for a in ws.args("--once", "--wandb-mode", "offline") if a != "--disable-wandb"]
    done = subprocess.run([sys.executable, str(ENTRY), *args], env=ws.env(), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    folder = json.loads(ws.state_files()[0].read_text())["wandb_segments"][-1]["dir"]
    assert Path(folder).name.startswith("offline-run-") and Path(folder).is_dir()

    shown = ws.status()  # given --disable-wandb: the state says offline
    assert "W&B mode offline" in shown.stdout, shown.stdout
    line = next(x for x in shown.stdout.splitlines() if x.startswith("full charts   "))
    assert line.split("full charts   ")[1].startswith("wandb leet ")
    assert shlex.split(line.split("full charts   ")[1]) == ["wandb", "leet", folder]  # pasteable
    info = json.loads(ws.status("--json").stdout)
    assert info["wandb_mode"] == "offline" and info["charts"]["folder"] == folder
    assert "(offline)" in ws.status("--all").stdout


def test_flags_naming_no_state_file_name_the_configurations_that_have_one(ws):
    ws.checkpoint(100)
    assert ws.run("--once").returncode == 0  # --num-beams 50 (the default)
    shown = ws.status("--num-beams", "20")
    assert shown.returncode == 1 and shown.stdout == ""
    answer = ws.status("--num-beams", "20", "--json")  # the same on stderr, and an answer on stdout
    assert answer.returncode == 1 and answer.stderr == shown.stderr
    missing = json.loads(answer.stdout)
    assert missing["error"] == "no state file" and missing["state_file"].endswith(".json")
    assert [o["state_file"] for o in missing["other_configurations"]] == [str(ws.state_files()[0])]
    assert missing["other_configurations"][0]["differs"] == [{"name": "num_beams", "here": 20, "there": 50}]
    err = shown.stderr
    assert err.startswith("no state file at ") and "nothing has been evaluated for this configuration yet" in err
    assert f"other configurations of toy-grec-sft-cb16-run-1 have state files in {ws.state_dir}:" in err
    assert f"  {ws.state_files()[0].name} (1 processed, updated " in err
    assert "num_beams 20 here, 50 there" in err and "(--num-beams 50)" in err and "--state-file" in err
    assert "seed" not in err  # only what differs

    two = ws.status("--num-beams", "20", "--seed", "7").stderr
    assert "num_beams 20 here, 50 there; seed 7 here, 42 there" in two and "--num-beams 50 --seed 42" in two

    # an older sidecar's state records no identity: it is still named
    path = ws.state_files()[0]
    data = json.loads(path.read_text())
    del data["sidecar_settings"]
    path.write_text(json.dumps(data))
    old = ws.status("--num-beams", "20")
    assert old.returncode == 1 and "no identity recorded (written by an older sidecar)" in old.stderr

    # another model's state files are not this model's configurations
    other = ws.repo / "saves" / "another-model"
    lonely = subprocess.run([sys.executable, str(ENTRY), "status", *ws.args("--sft-root", str(other))],
                            env=ws.env(), capture_output=True, text=True, timeout=60)
    assert lonely.returncode == 1 and "other configurations" not in lonely.stderr


def watching(ws, proc: subprocess.Popen) -> bool:
    """The sidecar `proc` holds the lock of the workspace's configuration and has saved its state."""
    locks = list(ws.state_dir.glob("*.lock"))
    return bool(ws.state_files()) and len(locks) == 1 and locks[0].read_text().split("\n")[0] == str(proc.pid)


def plan(ws, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ENTRY), "plan", *ws.args(*extra)], env=ws.env(),
                          capture_output=True, text=True, timeout=60)


def test_status_and_plan_count_the_quiet_period_as_the_watch_does(ws):
    """The watch counts a quiet period from its own first look at the files, not from their mtime
    (SPEC §2.2): while it watches, status and plan say a checkpoint is ready only when its files had
    been still for the quiet period when the watch started; with no sidecar, what a start would do."""
    quiet = ("--checkpoint-ready-seconds", "120")
    ws.checkpoint(100)  # settled long before the watch: its eval runs (and sleeps), holding the one slot
    ws.mode(100, "sleep")
    ws.checkpoint(200)  # settled long before the watch too: ready, waiting for the slot
    ws.checkpoint(300, age=50)  # written now with times of 50 s ago (touch -d '50 seconds ago')
    proc = ws.start(*quiet, "--poll-interval-seconds", "5")
    try:
        wait_for(lambda: (ws.ctl / "started-checkpoint-100").exists(), timeout=60)
        since = ws.state_files()[0].with_suffix(".lock").stat().st_mtime  # when the watch took the lock

        waits = by_step(json.loads(ws.status("--json").stdout))
        assert waits[200]["reason"] == "ready" and waits[300]["reason"] == "quiet", waits
        assert abs(epoch(waits[300]["until"]) - (since + 120)) < 1.5, waits[300]  # not its mtime + 120
        text = ws.status().stdout
        assert re.search(rf"checkpoint-200  ready \(its files had been still for 120 s when the watch started at "
                         rf"{CLOCK}\); starts when a slot frees$", text, re.M), text
        quiet_text = (rf"in its quiet period: the watch starts it once its files have been still for 120 s as it "
                      rf"sees them \(they last changed at {CLOCK}( and the watch started at {CLOCK})?, so not before "
                      rf"{CLOCK}\)$")
        assert re.search(rf"checkpoint-300  {quiet_text}", text, re.M), text
        shown = plan(ws, *quiet)
        assert shown.returncode == 0, shown.stderr
        assert "starts at once" not in shown.stdout and "not ready" not in shown.stdout, shown.stdout
        assert re.search(r"^ +1\. \S+ +checkpoint-200 +when a slot frees$", shown.stdout, re.M), shown.stdout
        assert re.search(rf"^ +\S+ +checkpoint-300 +{quiet_text}", shown.stdout, re.M), shown.stdout
        assert not (ws.ctl / "starts-checkpoint-300").exists()
    finally:  # SIGTERM: the sidecar stops its sleeping eval (a kill would leave it)
        proc.terminate()
        proc.wait(timeout=60)

    # no sidecar: a start counts the quiet period from its own first look too, so `once` leaves it
    text = ws.status().stdout
    assert re.search(rf"checkpoint-300  in its quiet period: its files changed \d+ s ago \(at {CLOCK}\); a sidecar "
                     rf"that starts now waits 120 s from its first look, one that starts from {CLOCK} on takes it "
                     rf"after a short check$", text, re.M), text
    assert "checkpoint-200  ready; no sidecar is running for this configuration (`once` evaluates it)" in text
    ws.mode(100, "ok")
    assert ws.run("--once", *quiet).returncode == 0
    assert not (ws.ctl / "starts-checkpoint-300").exists() and ws.state()["processed_steps"] == [100, 200]


def test_a_copy_keeping_old_file_times_waits_the_watchs_whole_quiet_period(ws, tmp_path):
    """`cp -a` gives old mtimes to files written now: the watch, there before them, waits its quiet
    period from its first look, and status says when that is at the earliest (the eval starts later)."""
    proc = ws.start("--checkpoint-ready-seconds", "5", "--poll-interval-seconds", "1")
    wait_for(lambda: watching(ws, proc), timeout=60)
    assert ws.status("--rows").stdout.rstrip().endswith(
        "(no rows yet: no checkpoint has a result, and none waits for one)")
    source = tmp_path / "elsewhere" / "checkpoint-100"
    source.mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"w" * 64)
    old = time.time() - 3600
    os.utime(source / "model.safetensors", (old, old))
    shutil.copytree(source, ws.sft / "checkpoint-100")  # copies the times too

    wait = by_step(json.loads(ws.status("--json").stdout))[100]
    assert wait["reason"] == "quiet" and "the watch starts it once its files have been still for 5 s" in wait["text"]
    until = epoch(wait["until"])
    assert until > time.time() - 1
    wait_for(lambda: 100 in ws.state()["processed_steps"], timeout=60)
    started = float((ws.ctl / "starts-checkpoint-100").read_text().split()[0])
    assert started >= until - 0.1, (started, until)  # the watch did not start it before status said
    proc.terminate()
    proc.wait(timeout=60)


def test_the_original_tools_state_file_says_where_its_rows_are_before_and_after_adoption(ws):
    """A state file of the original tool (version 1: rows, no W&B segments) says its rows were
    reported by that tool (and how to upload its offline folders) before a sidecar adopts it, as after;
    the commands named are the program the user ran; the curve places the rows by step."""
    probe = status(ws, "--json", drop=("--disable-wandb",))
    assert probe.returncode == 1 and probe.stderr.startswith("no state file at "), probe.stderr
    missing = json.loads(probe.stdout)  # --json answers on stdout too
    assert missing["error"] == "no state file" and missing["other_configurations"] == []
    path = Path(missing["state_file"])
    key = path.stem.rsplit("_", 1)[1]
    steps = [100, 200, 300, 1000]
    rows = [{"checkpoint_step": s, "checkpoint_name": f"checkpoint-{s}", "HR@10": s / 10000, "NDCG@10": 0.05,
             "metrics_path": str(ws.results(s))} for s in steps]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "model_config_key": key, "run_id": f"eval-{key}",
                                "run_name": "toy-grec-sft-cb16-run-1-eval", "processed_steps": steps,
                                "failed_steps": {}, "table_rows": rows, "last_seen_step": 1000,
                                "last_update_time": "2026-01-01T12:00:00+00:00"}))
    delivery = ("W&B delivery  4 reported by the original tool: if it ran offline, `{}` uploads "
                "its folders")
    before = status(ws, drop=("--disable-wandb",)).stdout
    assert delivery.format("eval_wandb_sidecar.py sync") in before, before
    assert "HR@10 curve   ▁▂▃      █  steps 100-1000, min 0.0100, max 0.1000" in before  # 1000 is far from 300
    assert re.search(r"^updated       2026-01-0\d \d\d:\d\d:\d\d$", before, re.M), before  # not today: the date
    installed = subprocess.run([sys.executable, "-c", "import sys; from sidecar.cli import main; sys.exit(main())",
                                "status", *[a for a in ws.args() if a != "--disable-wandb"]],
                               env=ws.env(PYTHONPATH=str(ENTRY.parent)), capture_output=True, text=True, timeout=60)
    assert delivery.format("eval-sidecar sync") in installed.stdout, installed.stdout + installed.stderr

    args = [a for a in ws.args("--once", "--wandb-mode", "offline") if a != "--disable-wandb"]
    done = subprocess.run([sys.executable, str(ENTRY), *args], env=ws.env(), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(path.read_text())["version"] != 1  # adopted
    after = status(ws, drop=("--disable-wandb",)).stdout
    assert delivery.format("eval_wandb_sidecar.py sync") in after, after


def test_all_lists_the_models_in_natural_order_and_tells_configurations_apart(ws):
    ws.checkpoint(100)
    assert ws.run("--once").returncode == 0
    data = json.loads(ws.state_files()[0].read_text())

    def put(model: str, key: str, **identity) -> Path:
        copy = json.loads(json.dumps(data))
        copy["sidecar_settings"]["identity"].update(identity)
        path = ws.state_dir / f"{model}_{key}.json"
        path.write_text(json.dumps(copy))
        return path

    put("m10", "a" * 20)
    put("m2", "b" * 20)
    put("m4", "c" * 20, num_beams=50)
    put("m4", "d" * 20, num_beams=20)
    table = ws.status("--all").stdout.splitlines()
    assert [line.split("  ")[0] for line in table[1:]] == [
        "m2", "m4 [num_beams 20]", "m4 [num_beams 50]", "m10", "toy-grec-sft-cb16-run-1"], table
    rows = json.loads(ws.status("--all", "--json").stdout)["models"]
    assert [r.get("configuration") for r in rows] == [None, "num_beams 20", "num_beams 50", None, None]
    assert "_identity" not in rows[0]

    older = put("m4", "e" * 20)  # an older sidecar's state records no identity: its key tells it apart
    older_data = json.loads(older.read_text())
    del older_data["sidecar_settings"]
    older.write_text(json.dumps(older_data))
    names = [line.split("  ")[0] for line in ws.status("--all").stdout.splitlines()[1:]]
    assert names[1:4] == ["m4 [key cccccccc]", "m4 [key dddddddd]", "m4 [key eeeeeeee]"], names
