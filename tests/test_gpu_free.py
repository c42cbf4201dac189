"""Evaluate only on a free GPU (`--gpu-free-memory-mb`, issue 18 part 5): an eval starts on a slot
only when every GPU of the slot has that much memory free; otherwise the checkpoint waits (the
log says so once, `status` and `plan` say why) and the slot is asked again every
`--gpu-free-check-seconds`.

There is no GPU here: the tests put a stand-in `nvidia-smi` first on the sidecar's PATH, a bash
script that prints a CSV file the test rewrites (so a test can free the GPU mid-run) and records
each call. Everything else is real: the CLI as a subprocess, the stand-in eval script, the state
file, the log. The eval sees its slot as CUDA_LIST (the real eval script turns it into
CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ENTRY, wait_for
from sidecar.gpu_memory import GpuReadError, parse_free, read_free, short_gpus
from sidecar.watch.scheduler import MemoryGate

GATE = ("--gpu-free-memory-mb", "20000", "--gpu-free-check-seconds", "0.5")


class StandInSmi:
    """A stand-in `nvidia-smi` in `bin/`: prints `gpus.csv` (what `--query-gpu=index,memory.free
    --format=csv,noheader,nounits` prints), appends its arguments to `calls`."""

    def __init__(self, folder: Path, csv: str) -> None:
        self.bin = folder / "bin"
        self.bin.mkdir()
        self.csv = folder / "gpus.csv"
        self.calls_file = folder / "nvidia-smi.calls"
        self.set(csv)
        script = self.bin / "nvidia-smi"
        script.write_text(f"#!/usr/bin/env bash\n# stand-in nvidia-smi: no GPU here\n"
                          f"echo \"$*\" >> {shlex.quote(str(self.calls_file))}\n"
                          f"cat -- {shlex.quote(str(self.csv))}\n")
        script.chmod(0o755)

    def set(self, csv: str) -> None:
        """New free memory, replaced atomically (the sidecar may be reading it)."""
        tmp = self.csv.with_suffix(".tmp")
        tmp.write_text(csv)
        os.replace(tmp, self.csv)

    def calls(self) -> list[str]:
        return self.calls_file.read_text().splitlines() if self.calls_file.exists() else []

    def env(self, ws) -> dict[str, str]:
        return ws.env(PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}")


def run(ws, command: str, *extra: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ENTRY), command, *ws.args(*extra)], env=env, capture_output=True,
                          text=True, timeout=120)


def lines_with(text: str, part: str) -> list[str]:
    return [line for line in text.splitlines() if part in line]


def cuda_seen(ws, step: int) -> str:
    return json.loads((ws.ctl / f"env-checkpoint-{step}.json").read_text())["CUDA_LIST"]


def test_a_checkpoint_waits_for_gpu_memory_then_starts_when_the_gpu_frees(ws, tmp_path):
    smi = StandInSmi(tmp_path, "0, 100\n")
    ws.checkpoint(100)
    proc = ws.start(*GATE, env=smi.env(ws))
    out = next(ws.ctl.glob("sidecar-*.out"))
    waits = "GPU 0 has 100 MiB free, --gpu-free-memory-mb 20000: checkpoint-100 waits; asking again every 0.5 s"
    wait_for(lambda: waits in out.read_text())
    wait_for(lambda: len(smi.calls()) >= 3)  # asked again, and again: still one line
    assert len(lines_with(out.read_text(), " waits; ")) == 1, out.read_text()
    assert smi.calls()[0] == "--query-gpu=index,memory.free --format=csv,noheader,nounits"
    assert ws.calls() == []

    def status_says_so():
        shown = run(ws, "status", env=smi.env(ws))
        return shown if "waiting for free GPU memory" in shown.stdout else None

    shown = wait_for(status_says_so)
    assert re.search(r"waiting +checkpoint-100  ready, waiting for free GPU memory \(GPU 0: 100 MiB free, "
                     r"needs 20,000\)$", shown.stdout, re.M), shown.stdout

    smi.set("0, 30000\n")
    wait_for(lambda: ws.results(100).is_file() and 100 in ws.state()["processed_steps"])
    wait_for(lambda: "checkpoint-100 starts" in out.read_text())
    assert lines_with(out.read_text(), "checkpoint-100 starts")[0].endswith(
        "[INFO] GPU 0 has 30000 MiB free now (--gpu-free-memory-mb 20000): checkpoint-100 starts")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, out.read_text()
    assert ws.calls() == ["checkpoint-100"]


def test_two_slots_one_busy_the_eval_runs_on_the_free_one_and_at_0_nvidia_smi_is_never_run(ws, tmp_path):
    smi = StandInSmi(tmp_path, "0, 100\n1, 30000\n")  # training holds GPU 0
    ws.checkpoint(100)
    ws.checkpoint(200)
    done = run(ws, "once", *GATE, "--gpu-slots", "0;1", env=smi.env(ws))
    assert done.returncode == 0, done.stderr
    assert sorted(ws.calls()) == ["checkpoint-100", "checkpoint-200"]
    assert cuda_seen(ws, 100) == cuda_seen(ws, 200) == "1"  # one after the other, never on GPU 0
    said = [line.split("] ", 2)[2] for line in done.stderr.splitlines() if "--gpu-free-memory-mb" in line]
    assert said == ["GPU 0 has 100 MiB free, --gpu-free-memory-mb 20000: checkpoint-200 waits; asking again every "
                    "0.5 s while this run's evals go on, then the next run does",
                    "GPU 1 has 30000 MiB free now (--gpu-free-memory-mb 20000): checkpoint-200 starts"], done.stderr
    assert "once: 2 evaluated" in done.stderr.splitlines()[-1]

    asked = len(smi.calls())
    ws.checkpoint(300)
    plain = run(ws, "once", "--gpu-slots", "0;1", env=smi.env(ws))
    assert plain.returncode == 0, plain.stderr
    assert cuda_seen(ws, 300) == "0"
    assert len(smi.calls()) == asked  # the option at 0: nvidia-smi is not asked


def test_once_leaves_a_checkpoint_waiting_for_gpu_memory_to_the_next_run_and_plan_says_why(ws, tmp_path):
    smi = StandInSmi(tmp_path, "0, 100\n")
    ws.checkpoint(100)
    done = run(ws, "once", *GATE, env=smi.env(ws))
    assert done.returncode == 0, done.stderr
    assert lines_with(done.stderr, " waits; ") == [
        line for line in done.stderr.splitlines()
        if line.endswith("[INFO] GPU 0 has 100 MiB free, --gpu-free-memory-mb 20000: checkpoint-100 waits; "
                         "the next run asks again")]
    assert len(lines_with(done.stderr, " waits; ")) == 1, done.stderr
    assert done.stderr.splitlines()[-1].endswith("once: 0 evaluated, 0 reused (metrics.json existed), 0 failed, "
                                                 "1 waiting (for free GPU memory)")
    assert ws.calls() == []

    plan = run(ws, "plan", *GATE, env=smi.env(ws))
    assert plan.returncode == 0, plan.stderr
    assert re.search(r"1\. \S+ +checkpoint-100 +when a slot's GPUs have room \(GPU 0: 100 MiB free, needs 20,000\)$",
                     plan.stdout, re.M), plan.stdout


def test_nvidia_smi_missing_with_the_option_is_one_clear_line_and_nothing_starts(ws):
    ws.checkpoint(100)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if p and not (Path(p) / "nvidia-smi").exists())
    done = run(ws, "once", *GATE, env=ws.env(PATH=path))
    assert done.returncode == 0, done.stderr
    said = lines_with(done.stderr, "nvidia-smi")
    assert len(said) == 1 and said[0].endswith(
        "[WARNING] --gpu-free-memory-mb 20000: cannot read the free GPU memory (nvidia-smi not found on PATH); "
        "checkpoint-100 waits until it can; the next run asks again"), done.stderr
    assert "Traceback" not in done.stderr
    assert ws.calls() == []


# ----- the parts, without a sidecar ---------------------------------------------------------------
def test_nvidia_smi_output_is_parsed_and_bad_output_or_failure_is_one_line(tmp_path, monkeypatch):
    assert parse_free("0, 1200\n1, 30000\n\n") == {0: 1200, 1: 30000}
    for text, said in (("", "nvidia-smi listed no GPUs"),
                       ("0, [N/A]\n", "nvidia-smi printed '0, [N/A]' (expected 'index, free MiB' lines)")):
        with pytest.raises(GpuReadError, match=re.escape(said)):
            parse_free(text)
    assert short_gpus("0 1", {0: 30000, 1: 100}, 20000) == [(1, 100)]
    assert short_gpus("2", {0: 30000}, 20000) == [(2, None)]  # not listed: cannot tell, so it waits
    assert short_gpus("", {0: 30000, 1: 100}, 20000) == [(1, 100)]  # no ids: every GPU

    smi = tmp_path / "nvidia-smi"  # a stand-in (no GPU here) that fails, as with the driver gone
    smi.write_text("#!/usr/bin/env bash\necho \"NVIDIA-SMI has failed because it couldn't communicate with the "
                   "NVIDIA driver.\"\nexit 9\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(GpuReadError, match=r"^nvidia-smi exited 9: NVIDIA-SMI has failed because it couldn't"):
        read_free()
    smi.write_text("#!/usr/bin/env bash\nexec sleep 5\n")
    with pytest.raises(GpuReadError, match=r"^nvidia-smi did not answer within 0.2 s$"):
        read_free(timeout=0.2)


def test_the_gate_reads_once_per_interval_logs_two_lines_per_wait_and_wakes_the_loop(caplog):
    readings = [{0: 100}]
    now = [0.0]
    asked = []
    woken = threading.Event()

    def read():
        asked.append(now[0])
        return dict(readings[-1])

    gate = MemoryGate(20000, 0.05, woken.set, read=read, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="sidecar.watch.scheduler")
    assert gate.pick([0], ["0"], "checkpoint-1") is None
    assert gate.pick([0], ["0"], "checkpoint-1") is None  # the same reading, no second line
    assert asked == [0.0]
    assert woken.wait(10)  # the timer: the loop asks again
    now[0] = 0.01  # before the interval, on the loop's clock: the timer said it ended
    readings.append({0: 30000})
    assert gate.pick([0], ["0"], "checkpoint-1") == 0
    assert asked == [0.0, 0.01]
    assert [r.getMessage() for r in caplog.records] == [
        "GPU 0 has 100 MiB free, --gpu-free-memory-mb 20000: checkpoint-1 waits; asking again every 0.05 s",
        "GPU 0 has 30000 MiB free now (--gpu-free-memory-mb 20000): checkpoint-1 starts"]
    gate.close()


def test_a_result_already_there_is_recorded_while_the_gpus_are_full(ws, tmp_path):
    # a reused metrics.json needs no GPU: it must not wait behind a checkpoint that does
    smi = StandInSmi(tmp_path, "0, 100\n")
    ws.checkpoint(100)
    ws.checkpoint(200)
    ws.results(200).parent.mkdir(parents=True)
    ws.results(200).write_text(json.dumps({"HR@10": 0.5, "NDCG@10": 0.25}))
    done = run(ws, "once", *GATE, env=smi.env(ws))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1].endswith("once: 0 evaluated, 1 reused (metrics.json existed), 0 failed, "
                                                 "1 waiting (for free GPU memory)"), done.stderr
    assert [r["checkpoint_step"] for r in ws.state()["table_rows"]] == [200]
