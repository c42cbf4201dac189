"""--executor slurm against a real single-node Slurm (tests/local_slurm.py).

The cluster is started once per session in a temp folder (its own slurm.conf, ports and munge
key) and stopped by pid. The sidecar runs as a real subprocess; the stand-in eval script runs as
a real Slurm batch job and records the environment it got.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from conftest import ENTRY, process_gone, wait_for
from local_slurm import LocalSlurm, started_or_skip

POLL = ("--slurm-poll-seconds", "0.3")


@pytest.fixture(scope="session")
def slurm_cluster():
    cluster = started_or_skip(pytest.skip)
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm(slurm_cluster, monkeypatch):
    """The running cluster, with SLURM_CONF set for the sidecar; jobs a test left are cancelled."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    before = {j["id"] for j in slurm_cluster.jobs()}
    slurm_cluster.seen = before
    yield slurm_cluster
    subprocess.run(["scancel", "--state=PENDING"], env=slurm_cluster.env, capture_output=True)
    subprocess.run(["scancel", "--state=RUNNING"], env=slurm_cluster.env, capture_output=True)


def new_jobs(cluster: LocalSlurm) -> list[dict]:
    """Jobs submitted since the test began."""
    return [j for j in cluster.jobs() if j["id"] not in cluster.seen]


def overlap(ws, names: list[str]) -> int:
    """The most evals that were running at one moment, from the stand-in's start/end stamps."""
    points = []
    for name in names:
        start = float((ws.ctl / f"starts-{name}").read_text().split()[0])
        end = float((ws.ctl / f"ends-{name}").read_text().split()[0])
        points += [(start, 1), (end, -1)]
    running = peak = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        running += delta
        peak = max(peak, running)
    return peak


def test_three_checkpoints_run_as_jobs_at_most_two_at_once(ws, slurm):
    for step in (100, 200, 300):
        ws.checkpoint(step)
        ws.mode(step, "slow")
    env = ws.env(STANDIN_SLOW="2")
    out = ws.run("--once", "--executor", "slurm", "--max-parallel", "2", *POLL, env=env)
    assert out.returncode == 0, out.stderr
    jobs = new_jobs(slurm)
    assert len(jobs) == 3 and all(j["state"] == "COMPLETED" for j in jobs), (jobs, out.stderr)
    assert sorted(j["name"].rsplit("-", 1)[1] for j in jobs) == ["100", "200", "300"]
    assert all(j["name"].startswith("sidecar-") for j in jobs)
    names = [f"checkpoint-{s}" for s in (100, 200, 300)]
    assert overlap(ws, names) == 2  # Slurm had 8 CPUs free: the bound is --max-parallel
    state = ws.state()
    assert state["processed_steps"] == [100, 200, 300]
    assert not state["in_flight"] and not state["failed_steps"]
    for step, name in zip((100, 200, 300), names):
        log_file = next(ws.log_dir.glob(f"*/{name}.log"))
        text = log_file.read_text()
        assert "sidecar submits to Slurm" in text and "runs: bash " in text, text
        seen = json.loads((ws.ctl / f"env-{name}.json").read_text())
        assert seen["CKPT_LIST"] == str(ws.sft / name)
        assert seen["CUDA_LIST"] == "0" and seen["CATEGORY"] == "Industrial_and_Scientific"
        assert seen["TEST_DATA_PATH"] == str(ws.data / "sft" / "test.json")
        assert seen["SLURM_JOB_ID"] in {j["id"] for j in jobs}  # it really ran as a Slurm job
        assert seen["SLURM_JOB_NAME"].endswith(f"-{step}")


def test_a_failed_job_is_a_failure_with_state_exit_code_and_log_and_is_retried(ws, slurm):
    ws.checkpoint(100)
    ws.mode(100, "fail")  # exits 3
    out = ws.run("--once", "--executor", "slurm", *POLL, "--max-attempts", "2", "--retry-backoff-seconds", "0")
    assert out.returncode == 4, out.stderr  # given up in this run
    jobs = new_jobs(slurm)
    assert [j["state"] for j in jobs] == ["FAILED", "FAILED"]
    failure = ws.state()["failed_steps"]["100"]
    assert failure["attempts"] == 2 and failure["given_up"]
    log_file = next(ws.log_dir.glob("*/checkpoint-100.log"))
    assert f"slurm job {jobs[-1]['id']} FAILED exit 3" in failure["error"]
    assert str(log_file) in failure["error"]
    assert "stand-in: failing on purpose" in log_file.read_text()
    status = ws.status()
    assert f"slurm job {jobs[-1]['id']} FAILED exit 3" in status.stdout


def test_sigterm_leaves_the_job_running_and_a_restart_reattaches_without_submitting_again(ws, slurm):
    ws.checkpoint(100)
    ws.mode(100, "slow")
    env = ws.env(STANDIN_SLOW="15")  # outlives the status calls and the stop below on a loaded machine
    proc = ws.start("--executor", "slurm", *POLL, "--poll-interval-seconds", "0.5", env=env)
    entry = wait_for(lambda: ws.state()["in_flight"]["100"]["slurm_state"] == "RUNNING"
                     and ws.state()["in_flight"]["100"], timeout=60)
    job = entry["job_id"]
    shown = ws.status()
    assert f"slurm job {job} RUNNING" in shown.stdout, shown.stdout
    assert json.loads(ws.status("--json").stdout)["in_flight"][0]["slurm_job_id"] == job
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert slurm.job_state(job) in ("RUNNING", "COMPLETING")  # left running by default (not cancelled)
    assert ws.state()["in_flight"]["100"]["job_id"] == job

    out = ws.run("--once", "--executor", "slurm", *POLL, env=env)
    assert out.returncode == 0, out.stderr
    assert "re-attaching to slurm job" in out.stderr
    assert [j["id"] for j in new_jobs(slurm)] == [job]  # no second submission
    state = ws.state()
    assert state["processed_steps"] == [100] and not state["in_flight"]
    assert ws.calls() == ["checkpoint-100"]


@pytest.mark.parametrize("mode, outcome", [("slow", "running"), ("fail", "failed")])
def test_a_sidecar_killed_right_after_sbatch_finds_its_job_instead_of_submitting_again(ws, slurm, mode, outcome):
    """kill -9 between sbatch and saving the job id: the restart finds the job by the attempt's
    tag, whether it still runs or already ended (a job that failed meanwhile is that attempt's
    failure, not a reason to submit again)."""
    ws.checkpoint(100)
    ws.mode(100, mode)
    env = ws.env(STANDIN_SLOW="3", EVAL_SIDECAR_CRASH_AT="slurm-submitted")
    out = ws.run("--once", "--executor", "slurm", *POLL, "--max-attempts", "1", env=env)
    assert out.returncode == -signal.SIGKILL
    [job] = new_jobs(slurm)
    assert ws.state()["in_flight"]["100"]["slurm_state"] == "SUBMITTING"  # saved before sbatch ran
    if outcome == "failed":
        wait_for(lambda: slurm.job_state(job["id"]) == "FAILED", timeout=30)
    else:
        assert slurm.job_state(job["id"]) in ("PENDING", "RUNNING")
    out = ws.run("--once", "--executor", "slurm", *POLL, "--max-attempts", "1", env=ws.env(STANDIN_SLOW="3"))
    assert out.returncode == (4 if outcome == "failed" else 0), out.stderr  # 4: an eval failed in this once run
    assert "instead of submitting again" in out.stderr
    assert [j["id"] for j in new_jobs(slurm)] == [job["id"]]
    assert ws.calls() == ["checkpoint-100"]
    state = ws.state()
    if outcome == "failed":
        assert f"slurm job {job['id']} FAILED exit 3" in state["failed_steps"]["100"]["error"]
    else:
        assert state["processed_steps"] == [100]
    assert not state["in_flight"]


def test_eval_timeout_counts_slurm_running_time_not_time_in_the_queue(ws, slurm):
    """A requeued job waits in PENDING again: that wait is not running time."""
    ws.checkpoint(100)
    ws.mode(100, "slow")
    proc = ws.start("--executor", "slurm", *POLL, "--eval-timeout-seconds", "4", "--poll-interval-seconds", "0.5",
                    env=ws.env(STANDIN_SLOW="120"))
    entry = wait_for(lambda: ws.state()["in_flight"]["100"]["slurm_state"] == "RUNNING"
                     and ws.state()["in_flight"]["100"], timeout=60)
    time.sleep(1)
    slurm.scontrol("requeue", entry["job_id"])
    wait_for(lambda: ws.state()["in_flight"]["100"]["slurm_state"] == "PENDING", timeout=30)
    time.sleep(6)  # longer than the timeout, all of it in the queue (Slurm delays a requeued job)
    assert slurm.job_state(entry["job_id"]) == "PENDING"
    state = ws.state()
    assert not state["failed_steps"] and state["in_flight"]["100"]["job_id"] == entry["job_id"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_cancel_on_exit_cancels_the_job_and_the_step_stays_pending(ws, slurm):
    ws.checkpoint(100)
    ws.mode(100, "slow")
    proc = ws.start("--executor", "slurm", *POLL, "--slurm-cancel-on-exit", "--poll-interval-seconds", "0.5",
                    env=ws.env(STANDIN_SLOW="120"))
    entry = wait_for(lambda: ws.state()["in_flight"]["100"]["slurm_state"] == "RUNNING"
                     and ws.state()["in_flight"]["100"], timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert slurm.job_state(entry["job_id"]) == "CANCELLED"
    state = ws.state()
    assert state["pending_steps"] == [100]
    assert not state["in_flight"] and not state["failed_steps"] and not state["processed_steps"]


def test_a_partition_that_does_not_exist_is_a_failure_and_the_loop_goes_on(ws, slurm):
    ws.checkpoint(100)
    ws.checkpoint(200)
    out = ws.run("--once", "--executor", "slurm", *POLL, "--slurm-args", "--partition=nope --time=5",
                 "--max-attempts", "1")
    assert out.returncode == 4, out.stderr  # an eval failed in this once run
    failed = ws.state()["failed_steps"]
    assert sorted(failed) == ["100", "200"]  # both tried: one failure does not stop the loop
    for record in failed.values():
        assert "slurm submission failed" in record["error"] and "invalid partition specified: nope" in record["error"]
    assert new_jobs(slurm) == []


def test_eval_timeout_cancels_the_job_and_counts_as_a_failure(ws, slurm):
    ws.checkpoint(100)
    ws.mode(100, "slow")
    out = ws.run("--once", "--executor", "slurm", *POLL, "--eval-timeout-seconds", "2", "--max-attempts", "1",
                 env=ws.env(STANDIN_SLOW="120"))
    assert out.returncode == 4, out.stderr  # an eval failed in this once run
    assert [j["state"] for j in new_jobs(slurm)] == ["CANCELLED"]
    assert "timed out after 2 s" in ws.state()["failed_steps"]["100"]["error"]


def test_a_node_failure_does_not_use_up_an_attempt(ws, slurm):
    ws.checkpoint(100)
    ws.mode(100, "slow-once")  # the first run hangs until its node fails; the second succeeds
    proc = ws.start("--once", "--executor", "slurm", *POLL, "--slurm-args", "--no-requeue --time=10",
                    "--max-attempts", "1", "--retry-backoff-seconds", "0")
    wait_for(lambda: ws.state()["in_flight"]["100"]["slurm_state"] == "RUNNING", timeout=60)
    try:
        slurm.scontrol("update", f"nodename={slurm.node}", "state=down", "reason=sidecar-test")
        assert proc.wait(timeout=60) == 0
    finally:
        slurm.scontrol("update", f"nodename={slurm.node}", "state=resume")
        wait_for(slurm.node_idle, timeout=30)
    jobs = new_jobs(slurm)
    assert [j["state"] for j in jobs] == ["NODE_FAIL", "COMPLETED"]
    state = ws.state()
    assert state["processed_steps"] == [100]  # --max-attempts 1, and still evaluated
    output = (ws.ctl / next(p.name for p in ws.ctl.glob("sidecar-*.out"))).read_text()
    assert f"slurm job {jobs[0]['id']} NODE_FAIL" in output and "not counted as an attempt" in output


def test_a_job_slurm_no_longer_knows_is_settled_by_its_metrics(ws, slurm):
    """A sidecar down for longer than MinJobAge finds its job forgotten (an id that never existed
    here stands for it): no accounting record, so a valid metrics.json decides."""
    for step in (100, 200, 300):
        ws.checkpoint(step)
    ws.run("--once")  # create the state file
    path = ws.state_files()[0]
    state = json.loads(path.read_text())
    state["processed_steps"], state["table_rows"] = [], []
    state["in_flight"] = {str(s): {"checkpoint": f"checkpoint-{s}", "job_id": str(900000 + s), "slurm_state": "RUNNING",
                                   "started_at": 0, "metrics_before": None} for s in (100, 200, 300)}
    # step 300's metrics.json was there before its job was submitted, and the job never rewrote it
    state["in_flight"]["300"]["metrics_before"] = ws.results(300).stat().st_mtime_ns
    path.write_text(json.dumps(state))
    ws.results(200).unlink()  # step 200's job left nothing
    out = ws.run("--once", "--executor", "slurm", *POLL, "--max-attempts", "1")
    assert out.returncode == 4, out.stderr  # an eval failed in this once run
    state = ws.state()
    assert state["processed_steps"] == [100]
    assert "slurm job 900200 is no longer known to Slurm" in state["failed_steps"]["200"]["error"]
    assert "its metrics.json is older than the job" in state["failed_steps"]["300"]["error"]
    assert new_jobs(slurm) == []


def test_a_job_id_now_naming_someone_elses_job_is_left_alone(ws, slurm):
    """Job ids are reused (a controller whose saved state was wiped): the comment tells."""
    out = subprocess.run(["sbatch", "--parsable", "-J", "someone-elses-training", "-o", "/dev/null", "--wrap",
                          "sleep 120"], env=slurm.env, capture_output=True, text=True, check=True)
    foreign = out.stdout.strip()
    wait_for(lambda: slurm.job_state(foreign) == "RUNNING", timeout=30)
    ws.checkpoint(100)
    ws.run("--once")
    ws.results(100).unlink()
    path = ws.state_files()[0]
    state = json.loads(path.read_text())
    state["processed_steps"], state["table_rows"] = [], []
    state["in_flight"] = {"100": {"checkpoint": "checkpoint-100", "job_id": foreign, "slurm_state": "RUNNING",
                                  "slurm_tag": "eval-sidecar:x:100:0123456789ab", "started_at": 0}}
    path.write_text(json.dumps(state))
    out = ws.run("--once", "--executor", "slurm", *POLL, "--max-attempts", "1", "--slurm-cancel-on-exit",
                 "--eval-timeout-seconds", "1")
    assert out.returncode == 4, out.stderr  # an eval failed in this once run
    assert f"slurm job {foreign} is not the job of" in out.stderr
    assert slurm.job_state(foreign) == "RUNNING"  # neither cancelled nor timed out by us
    assert "is no longer known to Slurm" in ws.state()["failed_steps"]["100"]["error"]


def test_an_unreachable_controller_at_submission_does_not_use_up_attempts(ws, slurm, tmp_path):
    conf = tmp_path / "slurm.conf"
    text = slurm.conf.read_text()
    port = next(line for line in text.splitlines() if line.startswith("SlurmctldPort="))
    conf.write_text(text.replace(port, "SlurmctldPort=9"))  # nothing listens there
    ws.checkpoint(100)
    out = ws.run("--once", "--executor", "slurm", *POLL, "--max-attempts", "1", env=ws.env(SLURM_CONF=str(conf)),
                 timeout=300)
    assert out.returncode == 4, out.stderr  # an eval failed in this once run
    assert "1 failed (checkpoint-100: not started, not counted as an attempt; retried by the next run" in out.stderr
    failure = ws.state()["failed_steps"]["100"]
    assert "Unable to contact slurm controller" in failure["error"]
    assert failure["attempts"] == 0 and not failure.get("given_up")  # retried after the backoff
    assert failure["retry_after"] > time.time() + 200


def test_finished_jobs_are_found_in_the_job_completion_record(slurm):
    """sacct reads finished jobs (here from jobcomp/filetxt, as without a database)."""
    from sidecar.executors.slurm import SlurmExecutor

    out = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "exit 5"], env=slurm.env,
                         capture_output=True, text=True, check=True)
    job = out.stdout.strip()
    wait_for(lambda: slurm.job_state(job) == "FAILED", timeout=30)
    info = wait_for(lambda: SlurmExecutor(environ=slurm.env).lookup_finished(job), timeout=30)
    assert (info.state, info.exit_code) == ("FAILED", 5)


@pytest.mark.parametrize("args, message", [
    (("--gpu-slots", "0;1"), "GPU slots do not apply to --executor slurm"),
    (("--slurm-args", "--output=/tmp/x"), "--slurm-args: --output is set by the sidecar"),
    (("--slurm-args", "-J name"), "--slurm-args: -J is set by the sidecar"),
    (("--slurm-args", "--partition='gpu"), "--slurm-args: cannot split"),
    (("--slurm-args", "--arr=0-2"), "--slurm-args: --arr is set by the sidecar (--array"),
    (("--slurm-args", "--wait --time=5"), "--slurm-args: --wait is set by the sidecar"),
    (("--slurm-args", "-W"), "--slurm-args: -W is set by the sidecar"),
    (("--slurm-args", "--exclusive gpu --time=5 extra"), "--slurm-args: 'extra' is not an option"),
    (("--max-parallel", "0"), "--max-parallel: must be at least 1"),
])
def test_bad_slurm_flags_exit_2_with_one_line(ws, args, message):
    out = ws.run("--once", "--executor", "slurm", *args)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not ws.state_dir.exists()


def test_max_parallel_without_slurm_is_refused(ws):
    out = ws.run("--once", "--max-parallel", "2")
    assert out.returncode == 2 and "--max-parallel 2: applies to --executor slurm" in out.stderr


def test_slurm_without_sbatch_on_path_is_refused(ws, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = ws.env(PATH=str(empty))
    out = subprocess.run([sys.executable, str(ENTRY), *ws.args("--once", "--executor", "slurm")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--executor slurm: sbatch" in out.stderr and "not found on PATH" in out.stderr


def test_slurm_args_from_a_yaml_list_and_options_with_separate_values(ws, slurm):
    ws.checkpoint(100)
    config = ws.ctl / "sidecar.yaml"
    config.write_text("executor: slurm\nslurm-poll-seconds: 0.3\nslurm-args: [--partition=debug, -t, '5']\n")
    out = ws.run("--once", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert ws.state()["processed_steps"] == [100]
    [job] = new_jobs(slurm)
    shown = slurm.scontrol("show", "job", "-o", job["id"]).stdout
    assert "Partition=debug" in shown and "TimeLimit=00:05:00" in shown


def test_a_local_sidecar_without_slurm_commands_refuses_to_drop_jobs_in_flight(ws, tmp_path):
    ws.checkpoint(100)
    ws.run("--once")
    path = ws.state_files()[0]
    state = json.loads(path.read_text())
    state["in_flight"] = {"100": {"checkpoint": "checkpoint-100", "job_id": "4711", "slurm_state": "RUNNING"}}
    path.write_text(json.dumps(state))
    before = path.read_bytes()
    empty = tmp_path / "no-slurm-bin"
    empty.mkdir()
    out = subprocess.run([sys.executable, str(ENTRY), *ws.args("--once")], env=ws.env(PATH=str(empty)),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Slurm jobs in flight (checkpoint-100)" in out.stderr and "not on PATH" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert path.read_bytes() == before  # nothing lost, nothing rewritten


@pytest.mark.parametrize("state, exit_field, consumed, text", [
    ("COMPLETED", "0:0", None, None),
    ("FAILED", "3:0", True, "slurm job 7 FAILED exit 3"),
    ("TIMEOUT", "0:15", True, "slurm job 7 TIMEOUT exit 0 signal 15"),
    ("OUT_OF_MEMORY", "0:125", True, "slurm job 7 OUT_OF_MEMORY exit 0 signal 125"),
    ("CANCELLED", "0:15", True, "slurm job 7 CANCELLED exit 0 signal 15"),
    ("PREEMPTED", "0:15", False, "slurm job 7 PREEMPTED exit 0 signal 15"),
    ("NODE_FAIL", "0:0", False, "slurm job 7 NODE_FAIL exit 0 (NodeDown)"),
    ("BOOT_FAIL", "0:0", False, "slurm job 7 BOOT_FAIL exit 0 (NodeDown)"),
])
def test_final_states_map_to_outcomes(state, exit_field, consumed, text):
    """Final states one node cannot produce (PREEMPTED without a preemption set-up, OUT_OF_MEMORY
    without cgroups) go through the same mapping as those produced for real above."""
    from sidecar.executors.slurm import final_result, parse_scontrol

    line = (f"JobId=7 JobName=x JobState={state} Reason={'NodeDown' if 'FAIL' in state and state != 'FAILED' else 'None'} "
            f"ExitCode={exit_field} RunTime=1-02:03:04 BatchHost=gpu07 Comment=eval-sidecar:k:1:ab")
    info = parse_scontrol(line)
    assert (info.runtime, info.node, info.comment) == (93784, "gpu07", "eval-sidecar:k:1:ab")
    result = final_result("7", info, 1.0, timed_out=False, cancelling=False)
    if consumed is None:
        assert result.returncode == 0 and not result.error
    else:
        assert result.error == text and result.consume_attempt is consumed


def test_a_slurm_sidecar_stops_what_a_killed_local_sidecar_left_and_evaluates_it_again(ws, slurm):
    """A record of a local eval is the local executor's to recover, also under --executor slurm
    (review: it was taken for a Slurm attempt submitted by nobody; the orphan kept its GPU)."""
    ws.checkpoint(100)
    ws.mode(100, "sleep")  # a local eval that would run for 10 minutes
    proc = ws.start("--poll-interval-seconds", "3600")
    wait_for(lambda: (ws.ctl / "started-checkpoint-100").exists())
    grandchild = int(wait_for(lambda: (ws.ctl / "grandchild-checkpoint-100").read_text().strip()
                              if (ws.ctl / "grandchild-checkpoint-100").exists() else ""))
    wait_for(lambda: ws.state()["in_flight"].get("100", {}).get("pid"))
    proc.kill()
    proc.wait()
    ws.mode(100, "ok")
    out = ws.run("--once", "--executor", "slurm", *POLL)
    assert out.returncode == 0, out.stderr
    assert "checkpoint-100 was being evaluated when the previous sidecar stopped; it will be evaluated again" \
        in out.stderr, out.stderr
    wait_for(lambda: process_gone(grandchild))  # the orphan of the local eval was stopped
    jobs = new_jobs(slurm)
    assert [j["state"] for j in jobs] == ["COMPLETED"], (jobs, out.stderr)
    state = ws.state()
    assert state["processed_steps"] == [100] and state["in_flight"] == {}


def test_a_fleet_runs_every_models_evals_as_jobs_over_one_max_parallel(tmp_path, slurm):
    from test_fleet import FleetTree

    tree = FleetTree(tmp_path)
    for model, steps in (("Toy-grec-sft-a", (1, 2)), ("Beauty-grec-sft-b", (3,))):
        for step in steps:
            tree.checkpoint(tree.saves / model, step, mode="slow")
    env = {**tree.env(), "STANDIN_SLOW": "1"}
    out = subprocess.run([sys.executable, str(ENTRY), *tree.args("--once", "--executor", "slurm", "--max-parallel",
                                                                  "2", *POLL)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    jobs = new_jobs(slurm)
    assert len(jobs) == 3 and all(j["state"] == "COMPLETED" for j in jobs), (jobs, out.stderr)
    assert sorted(j["name"] for j in jobs) == ["sidecar-Beauty-grec-sft-b-3", "sidecar-Toy-grec-sft-a-1",
                                                "sidecar-Toy-grec-sft-a-2"]
    ctl = SimpleNamespace(ctl=tree.ctl)
    assert overlap(ctl, ["checkpoint-1", "checkpoint-2", "checkpoint-3"]) == 2
    assert tree.processed("Toy-grec-sft-a") == [1, 2] and tree.processed("Beauty-grec-sft-b") == [3]
