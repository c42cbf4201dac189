"""Align's upload phase: progress, one process per framework, and uploads that stop, are killed or
fail part-way, read back from the real SwanLab offline files.

Everything is real: the CLI as a process, its upload processes, CSV sources, SwanLab offline run
folders read with SwanLab's own record reader, signals sent to real pids.
"""

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ENTRY, process_gone, wait_for
from sidecar.align.config import parse_align_config
from sidecar.align.run import run_align
from sidecar.align.swanlab_io import experiment_id, upload
from swanlab_reader import run_dirs, scalars


def write_sources(folder: Path, names, steps: int, metrics: int) -> dict:
    """One CSV per framework (metric i of framework k at step s: s * (i + 1) + k, with holes)."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = {}
    for k, name in enumerate(names):
        frame = pd.DataFrame({"step": np.arange(steps),
                              **{f"m{i}": np.arange(steps) * (i + 1.0) + k for i in range(metrics)}})
        frame.loc[frame["step"] % 7 == 3, "m1"] = float("nan")  # a metric not logged at every step
        frame.to_csv(folder / f"{name}.csv", index=False)
        frames[name] = frame
    return frames


def write_config(work: Path, sources: Path, names, metrics: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    doc = {"aligned_metrics": [f"a/m{i}" for i in range(metrics)],
           "frameworks": {n: {"platform": "csv", "path": str(sources / f"{n}.csv"), "output_file": f"data/{n}.csv",
                              "target_exp_name": n, "mapping": {f"m{i}": f"a/m{i}" for i in range(metrics)}}
                          for n in names},
           "target": {"project": "p", "mode": "offline", "logdir": "swanlog"}}
    (work / "align.yaml").write_text(yaml.safe_dump(doc))
    return work / "align.yaml"


def expected_points(frame) -> dict:
    return {(f"a/{c}", int(s)): float(v) for c in frame.columns[1:]
            for s, v in zip(frame["step"], frame[c]) if v == v}


def exp_id(sources: Path, name: str) -> str:
    return experiment_id("p", name, "csv", str(sources / f"{name}.csv"))


def points_of(work: Path, sources: Path, name: str) -> list:
    """(key, step, value) of every point in every run folder of that framework's experiment."""
    return [p for d in run_dirs(work / "swanlog", exp_id(sources, name)) for p in scalars(d)]


def assert_each_point_once(points: list, expected: dict, name: str) -> None:
    counts = Counter((k, s) for k, s, _ in points)
    twice = [p for p, n in counts.items() if n > 1]
    assert not twice, f"{name}: {len(twice)} point(s) in SwanLab more than once, e.g. {twice[:3]}"
    assert set(counts) == set(expected), (name, len(set(expected) - set(counts)), "missing")
    assert all(v == pytest.approx(expected[(k, s)]) for k, s, v in points), name


def align(work: Path, *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ENTRY), "align", "--config", str(work / "align.yaml"), *flags],
                          capture_output=True, text=True, timeout=timeout, cwd=work)


class Running:
    """align started in the background, its stdout and stderr in files (read while it runs)."""

    def __init__(self, work: Path, tag: str, *flags: str) -> None:
        self.out, self.err = work / f"{tag}.out", work / f"{tag}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(ENTRY), "align", "--config", str(work / "align.yaml"),
                                          *flags], stdout=out, stderr=err, cwd=work, start_new_session=True)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def progress(self, name: str) -> int:
        """The last `NAME upload: N/M steps` count in the log (0 before the first)."""
        counts = re.findall(rf"\] {name} upload: (\d+)/\d+ steps", self.stderr())
        return int(counts[-1]) if counts else 0

    def pids(self) -> dict:
        return {name: int(pid) for name, pid in re.findall(r"\] (\w+): uploading \d+ step\(s\) in process (\d+)",
                                                           self.stderr())}

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def running():
    started: list[Running] = []
    yield lambda *args: started.append(Running(*args)) or started[-1]
    for run in started:  # a test that failed midway leaves no align or upload process behind
        run.kill()


NAMES = ("roll", "slime", "verl")


def test_parallel_upload_writes_what_one_after_another_does_and_shows_progress(tmp_path):
    sources = tmp_path / "sources"
    frames = write_sources(sources, NAMES, steps=800, metrics=4)
    results = {}
    for jobs in ("1", "3"):
        work = tmp_path / f"jobs-{jobs}"
        write_config(work, sources, NAMES, 4)
        done = align(work, "--jobs", jobs, "--progress-every", "0.001")
        assert done.returncode == 0, done.stderr
        for name in NAMES:
            # non-TTY: a periodic progress line per framework, with N/M and an ETA
            assert re.search(rf"\] {name} upload: \d+/800 steps \(\d+%\), \S+ so far, ETA \S+\n", done.stderr), \
                done.stderr
            # and one summary line at the end
            summary = [line for line in done.stdout.splitlines() if line.startswith(f"{name}: uploaded ")]
            assert len(summary) == 1 and re.fullmatch(
                rf"{name}: uploaded 800 step\(s\) with new values to p/{name} in \S+", summary[0]), done.stdout
        pids = dict(re.findall(r"\] (\w+): uploading 800 step\(s\) in process (\d+)", done.stderr))
        if jobs == "3":  # one process per framework, not align's own
            assert sorted(pids) == sorted(NAMES) and len(set(pids.values())) == 3, done.stderr
        else:
            assert not pids, done.stderr
        results[jobs] = {n: sorted(points_of(work, sources, n)) for n in NAMES}
        for name in NAMES:
            assert_each_point_once(results[jobs][name], expected_points(frames[name]), name)
    assert results["1"] == results["3"]
    records = [{n: json.loads((tmp_path / f"jobs-{j}" / "data" / f"{n}.csv.uploaded.json").read_text())
                for n in NAMES} for j in ("1", "3")]
    assert records[0] == records[1] and all("open" not in r for r in records[0].values())


def test_uploads_stopped_killed_or_failed_part_way_resume_and_swanlab_holds_every_point_once(tmp_path, running):
    """Each phase interrupts the uploads part-way; which framework is how far depends on the
    machine's load, so each phase asserts what holds either way, and the end that every point is in
    SwanLab exactly once."""
    names, steps = ("slime", "verl"), 20_000
    sources, work = tmp_path / "sources", tmp_path / "work"
    frames = write_sources(sources, names, steps=steps, metrics=2)
    write_config(work, sources, names, 2)
    flags = ("--jobs", "2", "--progress-every", "0.05")
    record = lambda n: json.loads((work / "data" / f"{n}.csv.uploaded.json").read_text())
    key = lambda n: f"p/{exp_id(sources, n)}/offline"

    # A. SIGTERM to align while both upload: each stops at a step boundary (or had finished), and
    # what SwanLab took is recorded
    a = running(work, "a", *flags)
    wait_for(lambda: all(a.progress(n) > 0 for n in names), timeout=90)
    children = a.pids()
    a.proc.send_signal(signal.SIGTERM)
    assert a.wait() == 143, a.stderr()
    assert len(children) == 2 and all(process_gone(pid) for pid in children.values())
    last = a.stderr().strip().splitlines()[-1]
    assert re.search(r"error: align stopped by SIGTERM: steps recorded as sent: (\w+ \d+ of 20000(, )?)+; "
                     r"run align again to send the rest$", last), last
    for name in names:
        [folder] = run_dirs(work / "swanlog", exp_id(sources, name))
        held = {s for k, s, _ in scalars(folder) if k == "a/m0"}
        assert record(name)["targets"][key(name)]["a/m0"] == [[0, len(held) - 1]]  # recorded = in SwanLab
        assert "open" not in record(name)  # its run was finished: nothing to read back
        if len(held) < steps:
            assert re.search(rf"^{name}: stopped after {len(held)} of {steps} step\(s\) to p/{name} in \S+; they are "
                             rf"recorded as sent, the next run sends the rest$", a.stdout(), re.M), a.stdout()
            assert re.search(rf"{name} {len(held)} of {steps}", last)

    # B. kill -9 of align alone: its upload processes notice, stop and finish their runs
    b = running(work, "b", *flags)
    wait_for(lambda: any(b.progress(n) > 0 for n in names), timeout=90)
    children = b.pids()
    os.kill(b.proc.pid, signal.SIGKILL)
    b.proc.wait()
    wait_for(lambda: all(process_gone(pid) for pid in children.values()), timeout=60)
    assert any(record(n).get("open", {}).get(key(n)) for n in names)  # an upload left unfinished

    # C. kill -9 of one framework's upload process: that one fails with one line, the other completes
    c = running(work, "c", *flags)
    wait_for(lambda: c.progress("verl") > 0, timeout=90)
    verl_pid = c.pids()["verl"]
    os.kill(verl_pid, signal.SIGKILL)
    assert c.wait() == 1, c.stderr()
    out = c.stdout()
    assert re.search(r"^\w+: an earlier upload into SwanLab experiment \w+ did not finish; the \d+ step\(s\) its run "
                     r"folder .* holds are recorded as sent, the rest is sent$", out, re.M), out  # B's, read back
    failed = [line for line in out.splitlines() if line.startswith("verl: upload failed")]
    assert len(failed) == 1 and re.fullmatch(rf"verl: upload failed: its process {verl_pid} was killed by SIGKILL; "
                                             rf"\d+ of \d+ step\(s\) recorded as sent; the next run reads back what "
                                             rf"SwanLab wrote in .*run-\S+ and sends the rest", failed[0]), out
    assert re.search(r"^slime: uploaded \d+ step\(s\) with new values to p/slime in ", out, re.M), out
    assert c.stderr().strip().splitlines()[-1].endswith(
        "error: the upload of verl failed (see its line above); 1 other framework(s) completed; "
        "run align again to send the rest")
    assert_each_point_once(points_of(work, sources, "slime"), expected_points(frames["slime"]), "slime")

    # D. the next run reads back what the killed process wrote and sends only the rest
    d = align(work, "--jobs", "2")
    assert d.returncode == 0, d.stderr
    assert re.search(r"^verl: an earlier upload .* did not finish; the \d+ step\(s\)", d.stdout, re.M), d.stdout
    assert re.search(r"^slime: uploaded 0 step\(s\)", d.stdout, re.M), d.stdout
    assert_each_point_once(points_of(work, sources, "verl"), expected_points(frames["verl"]), "verl")
    assert all("open" not in record(n) for n in names)


def test_a_segmented_upload_records_each_finished_run_and_sends_each_point_once(tmp_path):
    """Cloud uploads finish their SwanLab run every CLOUD_SEGMENT_ROWS rows (then the server holds
    them) and record them; the same loop here in offline mode, with short segments."""
    sources = tmp_path / "sources"
    frames = write_sources(sources, ["verl"], steps=900, metrics=2)
    write_config(tmp_path, sources, ["verl"], 2)
    cfg = parse_align_config(yaml.safe_load((tmp_path / "align.yaml").read_text()), tmp_path, {})
    lines = []
    run_align(cfg, {}, upload, out=lines.append, segment_rows=400)
    dirs = run_dirs(tmp_path / "swanlog", exp_id(sources, "verl"))
    assert [sorted({s for _, s, _ in scalars(d)}) for d in dirs] == [list(range(0, 400)), list(range(400, 800)),
                                                                     list(range(800, 900))]
    assert_each_point_once(points_of(tmp_path, sources, "verl"), expected_points(frames["verl"]), "verl")
    assert lines[-1].startswith("verl: uploaded 900 step(s) with new values to p/verl in ")


@pytest.mark.parametrize("flag, value, message", [
    ("--jobs", "0", "--jobs: expected a whole number from 1, got '0'"),
    ("--jobs", "two", "--jobs: expected a whole number from 1, got 'two'"),
    ("--progress-every", "0", "--progress-every: expected a number of seconds above 0, got '0'"),
])
def test_a_bad_jobs_or_progress_value_is_one_line_and_exit_2(tmp_path, flag, value, message):
    write_sources(tmp_path / "sources", ["verl"], steps=10, metrics=1)
    write_config(tmp_path, tmp_path / "sources", ["verl"], 1)
    done = align(tmp_path, flag, value)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"error: {message}"), done.stderr
    assert not (tmp_path / "swanlog").exists()
