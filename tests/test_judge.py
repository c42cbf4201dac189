"""The pure `judge`: every executor Outcome and every Decision, with the exact error text a user
reads in `status` and the log; and `wants_metrics` (which results get their metrics.json read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import MetricsError
from sidecar.executors.base import EvalResult, Outcome
from sidecar.watch.outcome import Decision, Evidence, Verdict, judge, wants_metrics

NAME = "checkpoint-500"
PATH = "/r/results/m ü/checkpoint-500/metrics.json"
METRICS = {"HR@10": 0.25, "NDCG@10": 0.125}


def seen(**kw) -> Evidence:
    return Evidence(NAME, PATH, **kw)


# ----- success -----------------------------------------------------------------------------------------
def test_an_eval_that_exited_0_with_metrics_is_a_success():
    assert judge(EvalResult(Outcome.EXITED, 0, 41.2), METRICS, seen()) == Verdict(Decision.SUCCESS)


def test_a_successful_eval_counts_even_when_its_checkpoint_was_deleted_meanwhile():
    # the numbers exist: a rotation after the eval finished reading the weights loses nothing
    assert judge(EvalResult(Outcome.EXITED, 0, 1.0), METRICS, seen(present=False)).decision is Decision.SUCCESS
    verdict = judge(EvalResult(Outcome.EXITED, 0, 1.0), METRICS, seen(present=False, reevaluation=True))
    assert verdict.decision is Decision.SUCCESS


# ----- failures: the exact texts --------------------------------------------------------------------------
@pytest.mark.parametrize("result, text", [
    (EvalResult(Outcome.EXITED, 3, 41.2), "eval of checkpoint-500 exited 3 after 41.2 s"),
    (EvalResult(Outcome.EXITED, 1, 0.04), "eval of checkpoint-500 exited 1 after 0.0 s"),
    (EvalResult(Outcome.EXITED, -9, 7.25), "eval of checkpoint-500 was killed by signal 9 after 7.2 s"),
    (EvalResult(Outcome.EXITED, -15, 12.0), "eval of checkpoint-500 was killed by signal 15 after 12.0 s"),
    (EvalResult(Outcome.NOT_STARTED, error="No such file or directory"),
     "eval of checkpoint-500 could not start: No such file or directory"),
    (EvalResult(Outcome.EXITED, 3, 5.0, error="slurm job 12 FAILED exit 3 on node n1"),
     "eval of checkpoint-500: slurm job 12 FAILED exit 3 on node n1 after 5.0 s"),
    # a Slurm error text wins over the exit code, even over 0 (a job that COMPLETED with a signal)
    (EvalResult(Outcome.EXITED, 0, 2.5, error="slurm job 13 COMPLETED, signal 9"),
     "eval of checkpoint-500: slurm job 13 COMPLETED, signal 9 after 2.5 s"),
], ids=["exit-3", "exit-1", "sigkill", "sigterm", "not-started", "slurm-error", "slurm-error-exit-0"])
def test_a_failed_eval_is_a_failure_with_its_exact_text(result, text):
    # metrics are not read for these (wants_metrics); a stale dict passed by mistake changes nothing
    for metrics in (None, METRICS):
        assert judge(result, metrics, seen()) == Verdict(Decision.FAILURE, text, True)


def test_a_timeout_names_the_configured_limit_not_the_running_time():
    verdict = judge(EvalResult(Outcome.TIMED_OUT, -15, 600.7), None, seen(timeout=600.0))
    assert verdict == Verdict(Decision.FAILURE, "eval of checkpoint-500 timed out after 600 s", True)
    assert judge(EvalResult(Outcome.TIMED_OUT, None, 1.5), None, seen(timeout=1.5)).error == \
        "eval of checkpoint-500 timed out after 1.5 s"


def test_exit_0_with_an_unreadable_metrics_json_is_a_failure_naming_the_file_and_the_reason():
    error = MetricsError(Path(PATH), "invalid JSON (Expecting value: line 1 column 1 (char 0))")
    verdict = judge(EvalResult(Outcome.EXITED, 0, 3.0), error, seen())
    assert verdict == Verdict(Decision.FAILURE, f"eval of checkpoint-500 exited 0 but metrics.json at {PATH}: "
                                                f"invalid JSON (Expecting value: line 1 column 1 (char 0))", True)
    missing = judge(EvalResult(Outcome.EXITED, 0, 3.0), MetricsError(Path(PATH), "not found"), seen())
    assert missing.error == f"eval of checkpoint-500 exited 0 but metrics.json at {PATH}: not found"


def test_exit_0_with_metrics_not_read_is_a_failure():
    verdict = judge(EvalResult(Outcome.EXITED, 0, 3.0), None, seen())
    assert verdict == Verdict(Decision.FAILURE, "eval of checkpoint-500 exited 0 but its metrics were not read", True)


def test_exit_0_leaving_another_configurations_metrics_json_is_a_failure():
    verdict = judge(EvalResult(Outcome.EXITED, 0, 3.0), METRICS, seen(foreign=True))
    assert verdict == Verdict(Decision.FAILURE, f"eval of checkpoint-500 exited 0 but did not write {PATH}: the file "
                                                f"there is another configuration's", True)


# ----- unknown: the metrics.json decides ----------------------------------------------------------------------
def test_an_unknown_end_with_a_fresh_metrics_json_is_a_success():
    result = EvalResult(Outcome.UNKNOWN, error="slurm job 12 left no record")
    assert judge(result, METRICS, seen(metrics_fresh=True)) == Verdict(Decision.SUCCESS)


def test_an_unknown_end_with_a_stale_metrics_json_is_a_failure():
    result = EvalResult(Outcome.UNKNOWN, error="slurm job 12 left no record")
    verdict = judge(result, METRICS, seen(metrics_fresh=False))
    assert verdict == Verdict(Decision.FAILURE, "eval of checkpoint-500: slurm job 12 left no record, and its "
                                                "metrics.json is older than the job", True)


def test_an_unknown_end_without_a_metrics_json_is_a_failure_naming_why():
    result = EvalResult(Outcome.UNKNOWN, error="slurm job 12 left no record", consume_attempt=False)
    verdict = judge(result, MetricsError(Path(PATH), "not found"), seen())
    assert verdict == Verdict(Decision.FAILURE, f"eval of checkpoint-500: slurm job 12 left no record, and "
                                                f"metrics.json at {PATH}: not found", False)


# ----- not run to an end -------------------------------------------------------------------------------------
@pytest.mark.parametrize("outcome", [Outcome.CANCELLED, Outcome.NOT_SUBMITTED])
def test_cancelled_and_not_submitted_stay_pending_whatever_else_is_known(outcome):
    for kw in ({}, {"present": False}, {"present": False, "reevaluation": True}, {"foreign": True}):
        for metrics in (None, METRICS, MetricsError(Path(PATH), "not found")):
            assert judge(EvalResult(outcome, -15, 3.0), metrics, seen(**kw)) == Verdict(Decision.PENDING)


def test_a_detached_job_stays_in_flight():
    result = EvalResult(Outcome.DETACHED, error="slurm job 12 left running")
    for kw in ({}, {"present": False}):
        assert judge(result, None, seen(**kw)) == Verdict(Decision.IN_FLIGHT)


# ----- the checkpoint was deleted during its eval --------------------------------------------------------------
@pytest.mark.parametrize("result, text", [
    (EvalResult(Outcome.EXITED, 1, 2.0), "eval of checkpoint-500 exited 1 after 2.0 s"),
    (EvalResult(Outcome.TIMED_OUT, -15, 9.0), "eval of checkpoint-500 timed out after 9 s"),
    (EvalResult(Outcome.NOT_STARTED, error="No such file or directory"),
     "eval of checkpoint-500 could not start: No such file or directory"),
])
def test_a_failed_eval_of_a_deleted_checkpoint_is_vanished(result, text):
    assert judge(result, None, seen(present=False, timeout=9.0)) == Verdict(Decision.VANISHED, text)


def test_a_failed_reevaluation_of_a_deleted_checkpoint_keeps_the_earlier_row():
    verdict = judge(EvalResult(Outcome.EXITED, 2, 4.0), None, seen(present=False, reevaluation=True))
    assert verdict == Verdict(Decision.KEEP_EARLIER, "it was deleted during its re-evaluation (eval of "
                                                     "checkpoint-500 exited 2 after 4.0 s)")


def test_a_failed_reevaluation_of_a_present_checkpoint_is_an_ordinary_failure():
    verdict = judge(EvalResult(Outcome.EXITED, 2, 4.0), None, seen(reevaluation=True))
    assert verdict == Verdict(Decision.FAILURE, "eval of checkpoint-500 exited 2 after 4.0 s", True)


# ----- consume_attempt ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("result", [
    EvalResult(Outcome.NOT_STARTED, error="Resource temporarily unavailable", consume_attempt=False),
    EvalResult(Outcome.EXITED, 1, 3.0, error="slurm job 9 PREEMPTED", consume_attempt=False),
    EvalResult(Outcome.EXITED, 4, 3.0, consume_attempt=False),
])
def test_consume_attempt_is_passed_through(result):
    assert judge(result, None, seen()).consume_attempt is False
    assert judge(EvalResult(result.outcome, result.returncode, result.duration, result.error), None,
                 seen()).consume_attempt is True


# ----- wants_metrics ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("result, wanted", [
    (EvalResult(Outcome.EXITED, 0, 1.0), True),
    (EvalResult(Outcome.UNKNOWN, error="no record"), True),
    (EvalResult(Outcome.EXITED, 3, 1.0), False),
    (EvalResult(Outcome.EXITED, -9, 1.0), False),
    (EvalResult(Outcome.EXITED, 0, 1.0, error="slurm job 13 COMPLETED, signal 9"), False),
    (EvalResult(Outcome.TIMED_OUT, -15, 1.0), False),
    (EvalResult(Outcome.CANCELLED, -15, 1.0), False),
    (EvalResult(Outcome.NOT_STARTED, error="No such file or directory"), False),
    (EvalResult(Outcome.DETACHED), False),
    (EvalResult(Outcome.NOT_SUBMITTED), False),
])
def test_wants_metrics_only_for_an_eval_that_may_have_succeeded(result, wanted):
    assert wants_metrics(result) is wanted


def test_every_outcome_and_every_decision_is_covered_here():
    """A new Outcome or Decision must get its own cases above."""
    assert {o.name for o in Outcome} == {"EXITED", "TIMED_OUT", "CANCELLED", "NOT_STARTED", "DETACHED", "UNKNOWN",
                                         "NOT_SUBMITTED"}
    assert {d.name for d in Decision} == {"SUCCESS", "FAILURE", "VANISHED", "KEEP_EARLIER", "PENDING", "IN_FLIGHT"}
