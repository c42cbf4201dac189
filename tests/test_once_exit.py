"""cron: `--once` (and the `once` command) exits 0 when everything it ran succeeded and 4 when an
evaluation failed in that run; it does not promise a retry it will not be there for, and its last
line counts evaluated / reused / failed / waiting. `--force-eval` with nothing to run says that
`--force-eval-steps` is the way to re-evaluate. Real processes, the stand-in eval script.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from conftest import ENTRY
from sidecar.watch.outcome import Counted, RunTally, once_summary


def once(ws, *extra: str) -> subprocess.CompletedProcess:
    """The `once` command (the same as the watch's --once)."""
    return subprocess.run([sys.executable, str(ENTRY), "once", *ws.args(*extra)], env=ws.env(), capture_output=True,
                          text=True, timeout=120)


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_a_failure_exits_4_and_says_the_next_run_retries_it_and_that_run_exits_0(ws):
    for step in (100, 200, 300):
        ws.checkpoint(step)
    ws.checkpoint(400, marker=False, age=0)  # still being written: waits
    ws.results(100).parent.mkdir(parents=True)
    ws.results(100).write_text(json.dumps({"HR@10": 0.5}))
    ws.mode(300, "fail")
    first = once(ws, "--ready-marker", "trainer_state.json", "--retry-backoff-seconds", "300")
    assert first.returncode == 4, first.stderr
    assert "retry in" not in first.stderr
    warning = next(line for line in first.stderr.splitlines() if "eval of checkpoint-300 exited 3" in line)
    assert re.search(r"attempt 1 of 3; the next run retries it \(from \d\d:\d\d:\d\d on\) \(see .*checkpoint-300\.log\)$",
                     warning), warning
    assert re.fullmatch(r".*\[INFO\] once: 1 evaluated, 1 reused \(metrics\.json existed\), 1 failed \(checkpoint-300: "
                        r"attempt 1 of 3; retried by the next run from \d\d:\d\d:\d\d on\), 1 waiting \(not ready yet\)",
                        last_line(first)), last_line(first)

    # the next run: the retry is not due yet, nothing failed in it
    second = once(ws, "--ready-marker", "trainer_state.json", "--retry-backoff-seconds", "300")
    assert second.returncode == 0, second.stderr
    assert re.fullmatch(r".*once: 0 evaluated, 0 reused \(metrics\.json existed\), 0 failed, 2 waiting \(1 not ready "
                        r"yet, 1 to retry an earlier failure from \d\d:\d\d:\d\d on\)", last_line(second)), last_line(second)
    assert ws.calls() == ["checkpoint-200", "checkpoint-300"]


def test_a_checkpoint_given_up_in_the_run_is_a_failure_and_one_that_recovers_is_not(ws):
    ws.checkpoint(100)
    ws.checkpoint(200)
    ws.mode(100, "fail")
    ws.mode(200, "fail-once")  # fails, then succeeds on its retry in the same run
    done = ws.run("--once", "--max-attempts", "2", "--retry-backoff-seconds", "0")
    assert done.returncode == 4, done.stderr
    assert last_line(done).endswith("once: 1 evaluated, 0 reused (metrics.json existed), 1 failed (checkpoint-100: "
                                    "given up after 2 attempts; --retry-failed runs it again), 0 waiting (not ready yet)")
    assert "giving up after 2 attempts" in done.stderr

    ws.mode(100, "fail-once")  # third call: succeeds
    again = ws.run("--once", "--max-attempts", "2", "--retry-failed")
    assert again.returncode == 0, again.stderr
    assert last_line(again).endswith("once: 1 evaluated, 0 reused (metrics.json existed), 0 failed, 0 waiting "
                                     "(not ready yet)")


def test_force_eval_with_nothing_new_says_force_eval_steps_re_evaluates(ws):
    for step in (100, 200, 300):
        ws.checkpoint(step)
    assert ws.run("--once").returncode == 0
    done = ws.run("--once", "--force-eval")
    assert done.returncode == 0, done.stderr
    hint = [line for line in done.stderr.splitlines() if "--force-eval-steps" in line]
    assert len(hint) == 1 and hint[0].split("] ", 2)[2] == (
        "--force-eval: nothing new to evaluate; the 3 processed checkpoint(s) keep their results (--force-eval makes "
        "new checkpoints run the eval script even when a metrics.json exists; --force-eval-steps 200,300 re-evaluates "
        "processed ones)")
    assert ws.calls() == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    steps = ws.run("--once", "--force-eval-steps", "200")
    assert steps.returncode == 0 and "--force-eval:" not in steps.stderr
    assert ws.calls()[-1] == "checkpoint-200"


def test_the_summary_names_several_failures_vanished_and_models_not_evaluated():
    now = time.time()
    tally = RunTally()
    for step in (1, 2):
        tally.add(Counted.EVALUATED, "m", step)
    tally.add(Counted.REUSED, "m", 3)
    tally.add(Counted.FAILED, "m", 4, {"label": "a/checkpoint-4", "attempts": 1, "max_attempts": 3,
                                       "retry_after": now + 600})
    tally.add(Counted.GIVEN_UP, "m", 5, {"label": "a/checkpoint-5", "attempts": 3, "given_up": True})
    tally.add(Counted.FAILED, "m", 6, {"label": "a/checkpoint-6", "attempts": 1, "retry_after": now})
    tally.add(Counted.EVALUATED, "m", 6)  # its retry succeeded: not a failure any more
    tally.add(Counted.VANISHED, "m", 7)
    line = once_summary(tally, 2, [], ["b (locked: locked by pid 42)"], now)
    when = time.strftime("%H:%M:%S", time.localtime(now + 600))
    assert line == (f"once: 3 evaluated, 1 reused (metrics.json existed), 2 failed (a/checkpoint-4, a/checkpoint-5; "
                    f"1 retried by the next run from {when} on, 1 given up (--retry-failed runs them again)), "
                    f"1 vanished (deleted before or during their eval), 2 waiting (not ready yet); 1 model(s) not "
                    f"evaluated: b (locked: locked by pid 42)")
    stopped = once_summary(RunTally(), 5, [], [], now, stopped=True)
    assert stopped.endswith("0 failed, 5 waiting (left for the next run: stopped first)")
    when = time.strftime("%H:%M:%S", time.localtime(now + 60))
    retries = once_summary(RunTally(), 0, [now + 60, now + 120], [], now)
    assert retries.endswith(f"0 failed, 2 waiting (to retry earlier failures, the first from {when} on)")
