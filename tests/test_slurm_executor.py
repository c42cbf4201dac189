"""The Slurm executor on its own, through the executor protocol, against a real single-node Slurm
(tests/local_slurm.py): submission, the one watcher that follows every job, re-attaching,
adopting, shutdown; and the pure parsing of squeue's output.

The eval script is a small bash script that waits for a gate file (so a test decides when its
jobs end, with no timing assumption) and exits with the code it is given. A PATH shim in front
of squeue/scontrol/scancel records every call the executor makes.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import threading

import pytest
from conftest import wait_for
from local_slurm import LocalSlurm, started_or_skip

from sidecar.executors.base import EvalJob, Finished, Outcome, Started, Updated
from sidecar.executors.slurm import SlurmExecutor, parse_squeue

DEADLINE = 120.0  # seconds: generous, the machine may be loaded
EVAL_SCRIPT = """#!/bin/bash
# $1: exit code; $2: a file that lets it end (empty: at once)
if [ -n "$2" ]; then
  for _ in $(seq 1200); do [ -e "$2" ] && break; sleep 0.1; done
fi
echo "stand-in ends with $1"
exit "$1"
"""
SHIMMED = ("squeue", "scontrol", "scancel")


@pytest.fixture(scope="session")
def cluster():
    slurm = started_or_skip(pytest.skip)
    yield slurm
    slurm.stop()


class Events:
    """What the executor emits, in order. Plays the main thread: a Started is recorded at once."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self._cond = threading.Condition()

    def __call__(self, event: object) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()
        if isinstance(event, Started):
            event.recorded.set()

    def of(self, key: object, kind: type) -> list:
        with self._cond:
            return [e for e in self.items if e.key == key and isinstance(e, kind)]

    def wait(self, predicate, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, DEADLINE):
                raise AssertionError(f"no {what} within {DEADLINE} s; events: {self.items}")

    def finished(self, key: object):
        self.wait(lambda: self.of(key, Finished), f"Finished for {key!r}")
        return self.of(key, Finished)[0].result

    def running(self, *keys: object) -> None:
        self.wait(lambda: all(any(u.info.get("slurm_state") == "RUNNING" for u in self.of(k, Updated)) for k in keys),
                  f"RUNNING for {keys}")

    def job_id(self, key: object) -> str:
        self.wait(lambda: self.of(key, Started), f"Started for {key!r}")
        return self.of(key, Started)[0].info["job_id"]


class Bench:
    """A job name of its own, a gate file, the stand-in eval script, a shimmed PATH, executors."""

    def __init__(self, cluster: LocalSlurm, tmp_path) -> None:
        self.cluster = cluster
        self.tmp = tmp_path
        self.name = f"exec-test-{secrets.token_hex(3)}"
        self.gate = tmp_path / "gate"
        self.script = tmp_path / "eval script 'q'.sh"
        self.script.write_text(EVAL_SCRIPT)
        shim = tmp_path / "shim"
        shim.mkdir()
        self.calls = tmp_path / "calls.log"
        for command in SHIMMED:
            real = shutil.which(command, path=cluster.env["PATH"])
            (shim / command).write_text(f'#!/bin/bash\nprintf "%s\\n" "{command} $*" >> "{self.calls}"\n'
                                        f'exec "{real}" "$@"\n')
            (shim / command).chmod(0o755)
        self.env = {**cluster.env, "PATH": f"{shim}:{cluster.env['PATH']}"}
        self.executors: list[SlurmExecutor] = []

    def executor(self, **kwargs) -> SlurmExecutor:
        options = {"poll_seconds": 0.2, "grace_seconds": 1.0, "environ": self.env, "script_dir": self.tmp / "state",
                   **kwargs}
        executor = SlurmExecutor(**options)
        self.executors.append(executor)
        return executor

    def job(self, step: int, code: int = 0, gated: bool = True, **kwargs) -> EvalJob:
        argv = ["bash", str(self.script), str(code), str(self.gate) if gated else ""]
        return EvalJob(argv, self.tmp, self.env, self.tmp / "logs" / f"checkpoint-{step}.log", name=self.name,
                       tag=f"eval-sidecar:testkey:{step}", **kwargs)

    def sbatch(self, *args: str) -> str:
        out = subprocess.run(["sbatch", "--parsable", "-J", self.name, "-o", "/dev/null", *args], env=self.env,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip().split(";")[0]

    def logged(self, command: str) -> list[list[str]]:
        """The arguments of each call of `command` so far."""
        if not self.calls.exists():
            return []
        return [line.split()[1:] for line in self.calls.read_text().splitlines() if line.split()[0] == command]

    def close(self) -> None:
        for executor in self.executors:
            executor.cancel_all()
        for executor in self.executors:
            assert executor.join(DEADLINE), "the executor's threads did not end"
        subprocess.run(["scancel", f"--name={self.name}"], env=self.cluster.env, capture_output=True)


@pytest.fixture
def bench(cluster, tmp_path):
    b = Bench(cluster, tmp_path)
    yield b
    b.close()


def watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "slurm-watcher"]


# ----- pure parsing --------------------------------------------------------------------------------
def test_squeue_lines_are_parsed_by_job_id():
    text = ("4|COMPLETED|None|vm|0:00|(null)\n"
            "5|PENDING|JobHeldUser|n/a|0:00|(null)\n"
            "2|RUNNING|None|gpu07|1-02:03:04|eval-sidecar:k:1:abc|x y\n"
            "\n"
            "7|RUNNING|None|gpu01|INVALID|c\n"
            "not a squeue line\n")
    jobs = parse_squeue(text)
    assert sorted(jobs) == ["2", "4", "5", "7"]
    assert (jobs["4"].state, jobs["4"].exit_code, jobs["4"].node, jobs["4"].comment) == ("COMPLETED", None, "vm", "")
    assert (jobs["5"].state, jobs["5"].reason, jobs["5"].node, jobs["5"].runtime) == ("PENDING", "JobHeldUser", "", 0)
    assert (jobs["2"].node, jobs["2"].runtime, jobs["2"].comment) == ("gpu07", 93784, "eval-sidecar:k:1:abc|x y")
    assert jobs["7"].runtime == 0  # squeue's "obviously wrong" time
    assert parse_squeue("") == {}


def test_prepare_tags_each_attempt_and_slurm_records_are_owned_and_recovered(tmp_path):
    executor = SlurmExecutor(max_parallel=3, gpus="0 1")
    job = EvalJob(["bash", "x"], tmp_path, {}, tmp_path / "log", tag="eval-sidecar:KEY:100")
    first, record = executor.prepare(job)
    second, _ = executor.prepare(job)
    assert first.tag.startswith("eval-sidecar:KEY:100:") and len(first.tag.rsplit(":", 1)[1]) == 12
    assert first.tag != second.tag
    assert record == {"slurm_tag": first.tag, "slurm_state": "SUBMITTING"}
    assert executor.owns(record) and executor.owns({"job_id": "12"}) and not executor.owns({"attempt": "x"})
    assert executor.recover(record)
    assert executor.slots() == ["0 1"] * 3
    assert executor.name == "slurm" and executor.where(first) == "as a Slurm job"


def test_missing_commands_are_named(tmp_path, cluster):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    assert SlurmExecutor(environ={"PATH": str(empty)}).missing_commands() == ["sbatch", "squeue", "scontrol",
                                                                               "scancel"]
    assert SlurmExecutor(environ=cluster.env).missing_commands() == []


# ----- against the real Slurm -------------------------------------------------------------------
def test_three_jobs_are_followed_by_one_watcher_with_one_squeue_per_poll(bench):
    executor = bench.executor()
    events = Events()
    codes = {1: 0, 2: 3, 3: 0}
    for key, code in codes.items():
        job, _ = executor.prepare(bench.job(key, code))
        executor.start(key, job, events)
    events.running(*codes)
    assert len(watchers()) == 1  # three jobs RUNNING, one thread follows them
    ids = {key: events.job_id(key) for key in codes}
    bench.gate.touch()
    results = {key: events.finished(key) for key in codes}
    assert executor.join(DEADLINE)
    assert watchers() == []  # nothing tracked: the watcher ended
    assert (results[1].outcome, results[1].returncode, results[1].error) == (Outcome.EXITED, 0, "")
    assert (results[3].outcome, results[3].returncode, results[3].error) == (Outcome.EXITED, 0, "")
    failed = results[2]
    assert (failed.outcome, failed.returncode, failed.consume_attempt) == (Outcome.EXITED, 3, True)
    assert failed.error == f"slurm job {ids[2]} FAILED exit 3"
    for key in codes:
        assert len(events.of(key, Started)) == 1 and len(events.of(key, Finished)) == 1
        assert events.of(key, Started)[0].info == {"job_id": ids[key], "slurm_state": "PENDING"}
        assert events.items.index(events.of(key, Finished)[0]) > events.items.index(events.of(key, Started)[0])
    text = (bench.tmp / "logs" / "checkpoint-2.log").read_text()
    assert "sidecar submits to Slurm" in text and "runs: bash " in text and "stand-in ends with 3" in text
    # one squeue call asks about every job; each job that ended is asked about once on its own
    queued = [args for args in bench.logged("squeue")]
    assert max(len(a[-3].split("=", 1)[1].split(",")) for a in queued) == 3, queued
    assert sorted(a[-1] for a in bench.logged("scontrol")) == sorted(ids.values())


def test_a_submission_slurm_rejects_is_not_started(bench):
    executor = bench.executor(extra_args=("--partition=nope",))
    events = Events()
    job, _ = executor.prepare(bench.job(1))
    executor.start("k", job, events)
    result = events.finished("k")
    assert result.outcome is Outcome.NOT_STARTED and result.consume_attempt
    assert "slurm submission failed" in result.error and "invalid partition specified: nope" in result.error
    assert events.of("k", Started) == []


def test_resume_follows_a_saved_job_id(bench):
    executor = bench.executor()
    events = Events()
    tag = "eval-sidecar:testkey:5:0123456789ab"
    job_id = bench.sbatch(f"--comment={tag}", "--wrap", f"until [ -e '{bench.gate}' ]; do sleep 0.1; done; exit 4")
    wait_for(lambda: bench.cluster.job_state(job_id) == "RUNNING", timeout=DEADLINE)
    record = {"job_id": job_id, "slurm_tag": tag, "slurm_state": "RUNNING"}
    job = EvalJob([], bench.tmp, {}, bench.tmp / "logs" / "checkpoint-5.log", name=bench.name, tag=tag, attach=job_id)
    executor.resume(5, record, job, events)
    assert events.job_id(5) == job_id
    bench.gate.touch()
    result = events.finished(5)
    assert (result.outcome, result.returncode, result.error) == (Outcome.EXITED, 4, f"slurm job {job_id} FAILED exit 4")
    assert f"re-attaches to slurm job {job_id}" in (bench.tmp / "logs" / "checkpoint-5.log").read_text()
    assert len(bench.logged("scontrol")) == 1


def test_adopt_finds_the_job_by_its_tag_or_reports_none_submitted(bench, caplog):
    executor = bench.executor()
    events = Events()
    job, record = executor.prepare(bench.job(6, code=0, gated=False))
    executor.resume("none", record, job, events)  # the earlier sidecar died before sbatch
    assert events.finished("none").outcome is Outcome.NOT_SUBMITTED
    assert events.of("none", Started) == []

    job_id = bench.sbatch(f"--comment={job.tag}", "--wrap", "exit 0")  # ... or right after it
    executor.resume("found", record, job, events)
    assert events.job_id("found") == job_id
    result = events.finished("found")
    assert (result.outcome, result.returncode) == (Outcome.EXITED, 0)
    assert "instead of submitting again" in caplog.text


def test_a_job_id_naming_another_job_is_left_alone(bench, caplog):
    executor = bench.executor(cancel_on_exit=True)
    events = Events()
    foreign = bench.sbatch("--comment=someone-elses", "--wrap", "sleep 120")
    wait_for(lambda: bench.cluster.job_state(foreign) == "RUNNING", timeout=DEADLINE)
    tag = "eval-sidecar:x:100:0123456789ab"
    job = EvalJob([], bench.tmp, {}, bench.tmp / "log", timeout=0.5, name=bench.name, tag=tag, attach=foreign)
    executor.resume(100, {"job_id": foreign, "slurm_tag": tag}, job, events)
    result = events.finished(100)
    assert result.outcome is Outcome.UNKNOWN and "is no longer known to Slurm" in result.error
    assert f"slurm job {foreign} is not the job of" in caplog.text
    executor.cancel_all()
    assert executor.join(DEADLINE)
    assert bench.cluster.job_state(foreign) == "RUNNING"  # neither timed out nor cancelled by us
    assert bench.logged("scancel") == []


def test_a_job_slurm_never_knew_is_unknown(bench):
    executor = bench.executor()
    events = Events()
    job = EvalJob([], bench.tmp, {}, bench.tmp / "log", name=bench.name, attach="999999")
    executor.resume(1, {"job_id": "999999"}, job, events)
    result = events.finished(1)
    assert result.outcome is Outcome.UNKNOWN
    assert result.error == "slurm job 999999 is no longer known to Slurm and has no accounting record"


def test_the_timeout_counts_slurm_running_time_and_cancels_the_job(bench):
    executor = bench.executor()
    events = Events()
    job, _ = executor.prepare(bench.job(1, timeout=1.0))
    executor.start(1, job, events)
    job_id = events.job_id(1)
    result = events.finished(1)
    assert result.outcome is Outcome.TIMED_OUT
    assert bench.cluster.job_state(job_id) == "CANCELLED"
    assert [job_id] in bench.logged("scancel")


def test_cancel_all_leaves_jobs_running_and_submits_nothing_more(bench):
    executor = bench.executor()
    events = Events()
    job, _ = executor.prepare(bench.job(1))
    executor.start(1, job, events)
    events.running(1)
    job_id = events.job_id(1)
    executor.cancel_all()
    result = events.finished(1)
    assert (result.outcome, result.error) == (Outcome.DETACHED, f"slurm job {job_id} left RUNNING")
    assert executor.join(DEADLINE) and watchers() == []
    assert bench.cluster.job_state(job_id) == "RUNNING"  # the next start re-attaches to it
    assert bench.logged("scancel") == []

    later, _ = executor.prepare(bench.job(2))
    executor.start(2, later, events)
    assert events.finished(2).outcome is Outcome.CANCELLED  # nothing submitted after cancel_all
    assert [j["id"] for j in bench.cluster.jobs() if j["name"] == bench.name] == [job_id]


def test_cancel_on_exit_cancels_every_job_with_one_scancel(bench):
    executor = bench.executor(cancel_on_exit=True)
    events = Events()
    for key in (1, 2):
        job, _ = executor.prepare(bench.job(key))
        executor.start(key, job, events)
    events.running(1, 2)
    ids = [events.job_id(1), events.job_id(2)]
    executor.cancel_all()
    assert [events.finished(k).outcome for k in (1, 2)] == [Outcome.CANCELLED, Outcome.CANCELLED]
    assert executor.join(DEADLINE)
    assert [bench.cluster.job_state(i) for i in ids] == ["CANCELLED", "CANCELLED"]
    [scancel] = bench.logged("scancel")  # one call for both
    assert sorted(scancel) == sorted(ids)


def test_leave_running_keeps_jobs_of_a_sidecar_that_lost_its_lock(bench):
    executor = bench.executor(cancel_on_exit=True)
    events = Events()
    job, _ = executor.prepare(bench.job(1))
    executor.start(1, job, events)
    events.running(1)
    executor.leave_running()
    executor.cancel_all()
    assert events.finished(1).outcome is Outcome.DETACHED
    assert bench.cluster.job_state(events.job_id(1)) == "RUNNING"
