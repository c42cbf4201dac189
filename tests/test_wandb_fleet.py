"""Fleet mode: many W&B reporters in one process, each with its own run open (`WandbOptions.shared`).

The real wandb SDK and its wandb-core run in the test's own process, as they do in a fleet. Offline
runs are read back from their folders with wandb's reader; online ones from what the W&B server
double received. A reporter is driven the way the service drives it: `bind`, `report` of a
ReportBatch, `collect`, `close` or `abandon`.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import wait_for
from sidecar.reporters import wandb as wandb_reporter
from sidecar.reporters.base import ReportBatch
from sidecar.reporters.wandb import WandbOptions, WandbReporter
from wandb_reader import records
from wandb_server import WandbServer

# a wandb thread failing with a traceback (e.g. a run left unfinished, still polling wandb-core
# after a teardown) is a failure too
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
KEY = "local0dummy0key0that0must0never0be0printed0"
METRICS = ["HR@1", "HR@3", "HR@5", "HR@10", "NDCG@1", "NDCG@3", "NDCG@5", "NDCG@10"]


def end_wandb_session() -> None:
    """Tear wandb down: the next test gets a wandb setup of its own (wandb reads its environment,
    WANDB_DIR and the server, once per process, at the first run)."""
    import wandb

    wandb.teardown()
    wandb_reporter._OPEN.clear()  # a test that failed midway must not leave its reporters "open"


@pytest.fixture(autouse=True)
def wandb_session(isolated_env):
    yield
    end_wandb_session()


@pytest.fixture
def server(monkeypatch):
    srv = WandbServer().start()
    monkeypatch.setenv("WANDB_BASE_URL", srv.url)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    yield srv
    end_wandb_session()  # while the server is up: a run left unfinished is finished at once
    srv.stop()


def run_id(model: int) -> str:
    return f"eval-fleet-{model:03d}"


def row(model: int, step: int) -> dict:
    """A state row; the best HR@K is at a model's first step, the best NDCG@K at its last."""
    metrics = {m: round((0.9 - step / 10000 if m.startswith("HR") else 0.1 + step / 10000) - model / 1000, 6)
               for m in METRICS}
    return {"checkpoint_step": step, "checkpoint_name": f"checkpoint-{step}", **metrics,
            "metrics_path": f"/results/model {model} 'q' ünï/checkpoint-{step}/metrics.json"}


def rows_of(model: int, steps) -> dict[int, dict]:
    return {step: row(model, step) for step in steps}


class Fleet:
    """Reporters of one process, one per model, driven as the service drives them; every delivery
    is kept (what the state would record: the segments each run wrote to, the rows)."""

    def __init__(self, models, mode: str = "offline") -> None:
        self.reporters = {m: WandbReporter(WandbOptions(
            project="fleet", entity=None, run_id="", run_name="", resume="allow", job_type="eval", mode=mode,
            config={"model_name": f"model {m} ünï"}, init_timeout=5.0, shared=True)) for m in models}
        self.deliveries: dict[int, list] = {m: [] for m in models}
        for m, rep in self.reporters.items():
            rep.bind(run_id(m), f"model {m} 'q' ünï")

    def report(self, model: int, pending, steps) -> None:
        """Hand model's reporter its rows at `steps`, those at `pending` unreported."""
        self.collect(model)
        self.reporters[model].report(ReportBatch(rows_of(model, pending), rows_of(model, steps)))

    def collect(self, model: int) -> list:
        self.deliveries[model] += self.reporters[model].collect()
        return self.deliveries[model]

    def written(self, model: int) -> set[int]:
        return {s for d in self.collect(model) for s in d.rows}

    def segments(self, model: int) -> set[str]:
        return {d.segment["dir"] for d in self.collect(model)}

    def close(self, *models: int) -> None:
        """Close the models' reporters at the same time, as a fleet shutting down does."""
        threads = [threading.Thread(target=self.reporters[m].close) for m in models]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        for m in models:
            self.collect(m)


def expected_summary(rows: dict[int, dict]) -> dict:
    first, last = rows[min(rows)], rows[max(rows)]
    return {"best_hr@10": first["HR@10"], "best_step_for_hr@10": first["checkpoint_step"],
            "best_ndcg@10": last["NDCG@10"], "best_step_for_ndcg@10": last["checkpoint_step"],
            "last_hr@10": last["HR@10"], "last_ndcg@10": last["NDCG@10"], "last_step": last["checkpoint_step"]}


def read_offline_run(folder: Path) -> dict:
    """The run record, eval rows (logged order), final summary and exit code of an offline folder,
    from one pass of wandb's reader over its records."""
    recs = records(folder)
    summary: dict = {}
    for rec in recs:
        if rec["type"] == "summary":
            summary.update(rec["summary"].get("update", {}))
    items = [r["history"]["item"] for r in recs if r["type"] == "history"]
    items = [i for i in items if "eval/checkpoint_name" in i]  # the table's lines carry checkpoint_step too
    return {"run": next(r["run"] for r in recs if r["type"] == "run"),
            "rows": [{k: v for k, v in i.items() if not k.startswith("_")} for i in items],
            "summary": summary,
            "exit_code": next((r["exit"].get("exit_code", 0) for r in recs if r["type"] == "exit"), None)}


def server_steps(server: WandbServer, model: int) -> list[int]:
    """checkpoint_step of every eval row the server holds for the model's run, in its order."""
    return [r["checkpoint_step"] for r in server.run(run_id(model), project="fleet").eval_rows()]


def assert_on_server_once(server: WandbServer, model: int, rows: dict[int, dict]) -> None:
    held = server.run(run_id(model), project="fleet").eval_rows()
    assert [r["checkpoint_step"] for r in held] == sorted(rows)
    for item in held:
        assert item["eval/HR@10"] == rows[item["checkpoint_step"]]["HR@10"]


def test_twenty_reporters_in_one_process_each_write_their_own_rows_once_and_summary(isolated_env):
    models = range(20)
    fleet = Fleet(models)
    for m in models:  # all twenty open their runs at the same time
        fleet.report(m, (100, 200, 300), (100, 200, 300))
    fleet.close(*models)

    folders = {}
    for m in models:
        assert fleet.reporters[m].finished_cleanly, m
        [folders[m]] = fleet.segments(m)  # one segment per run
        assert fleet.written(m) == {100, 200, 300} and fleet.deliveries[m][-1].closed
    assert len(set(folders.values())) == 20
    with ThreadPoolExecutor(4) as pool:
        read = dict(zip(models, pool.map(lambda m: read_offline_run(Path(folders[m])), models)))
    for m in models:
        run, rows = read[m], rows_of(m, (100, 200, 300))
        assert run["run"]["run_id"] == run_id(m) and run["run"]["display_name"] == f"model {m} 'q' ünï"
        assert [r["checkpoint_step"] for r in run["rows"]] == [100, 200, 300]  # its rows, each once
        for item in run["rows"]:
            want = rows[item["checkpoint_step"]]
            assert {k: item[f"eval/{k}"] for k in METRICS} == {k: want[k] for k in METRICS}
            assert item["eval/metrics_path"] == want["metrics_path"]
        assert {k: run["summary"].get(k) for k in expected_summary(rows)} == expected_summary(rows)
        assert run["exit_code"] == 0


def assert_undisturbed(fleet: Fleet, server: WandbServer, caplog, model: int, steps) -> None:
    """The model's run stayed open from its first row to its clean finish (one segment, no W&B
    warning about it) and the server holds each of its rows once, its summary and exit code."""
    rows = rows_of(model, steps)
    assert fleet.reporters[model].finished_cleanly
    assert len(fleet.segments(model)) == 1  # never lost, never opened again
    assert_on_server_once(server, model, rows)
    held = server.run(run_id(model), project="fleet")
    assert held.exit_code == 0 and held.complete
    assert {k: held.summary.get(k) for k in expected_summary(rows)} == expected_summary(rows)
    assert not [r for r in caplog.records if r.name == wandb_reporter.__name__ and r.levelname == "WARNING"
                and run_id(model) in r.getMessage()]


def test_one_reporter_abandoning_its_run_leaves_the_other_runs_of_the_process_going(server, caplog):
    fleet = Fleet(range(3), mode="online")
    for m in range(3):
        fleet.report(m, (100, 200), (100, 200))
    wait_for(lambda: all(server_steps(server, m) == [100, 200] for m in range(3)), timeout=60)

    fleet.reporters[0].abandon()  # another sidecar took model 0's lock
    for m in (1, 2):  # the others go on: two more checkpoints each
        fleet.report(m, (300, 400), (100, 200, 300, 400))
    wait_for(lambda: all(server_steps(server, m) == [100, 200, 300, 400] for m in (1, 2)), timeout=60)
    fleet.close(1, 2)

    for m in (1, 2):
        assert_undisturbed(fleet, server, caplog, m, (100, 200, 300, 400))
    assert_on_server_once(server, 0, rows_of(0, (100, 200)))
    assert server.run(run_id(0), project="fleet").exit_code is None  # left unfinished, for the new holder


def test_two_runs_torn_down_at_once_leave_the_open_run_of_the_process_writing(server, caplog):
    """Models 0 and 1 cannot finish (the server refuses their history): both give up at the same
    time and tear down what they can; model 2's run stays open and its later rows arrive."""
    fleet = Fleet(range(3), mode="online")
    fleet.report(2, (100,), (100,))
    wait_for(lambda: server_steps(server, 2) == [100], timeout=60)
    server.fail_paths = tuple(f"/{run_id(m)}/file_stream" for m in (0, 1))
    server.fail_with = 503
    for m in (0, 1):
        fleet.report(m, (100,), (100,))

    def logged_and_refused(m: int) -> bool:
        return 100 in fleet.written(m) and any(what == f"/files/tester/fleet/{run_id(m)}/file_stream"
                                               for _, what in list(server.requests))
    wait_for(lambda: logged_and_refused(0) and logged_and_refused(1), timeout=60)

    fleet.close(0, 1)  # each finish times out: the run is lost, and wandb is not torn down under model 2
    assert not fleet.reporters[0].finished_cleanly and not fleet.reporters[1].finished_cleanly
    fleet.report(2, (200, 300), (100, 200, 300))
    wait_for(lambda: server_steps(server, 2) == [100, 200, 300], timeout=60)
    fleet.close(2)
    assert_undisturbed(fleet, server, caplog, 2, (100, 200, 300))


def test_a_run_whose_init_failed_opens_again_while_another_run_of_the_process_is_open(server, monkeypatch,
                                                                                      caplog):
    """wandb-core keeps the stream of an init that failed; only a teardown would free it, and that
    would end the open run of model 0."""
    monkeypatch.setattr(wandb_reporter, "BACKOFF_FIRST", 0.5)  # the retry after the failure comes soon
    fleet = Fleet(range(2), mode="online")
    fleet.report(0, (100,), (100,))
    wait_for(lambda: server_steps(server, 0) == [100], timeout=60)
    server.fail_paths, server.fail_with = ("RunResumeStatus",), 503  # model 1's init fails after its timeout
    fleet.report(1, (100, 200), (100, 200))
    wait_for(lambda: "W&B online run could not be written" in caplog.text, timeout=60)
    server.fail_with = None

    wait_for(lambda: server_steps(server, 1) == [100, 200], timeout=60)
    fleet.report(0, (200,), (100, 200))
    wait_for(lambda: server_steps(server, 0) == [100, 200], timeout=60)
    fleet.close(0, 1)
    assert fleet.reporters[1].finished_cleanly
    assert_on_server_once(server, 1, rows_of(1, (100, 200)))
    assert_undisturbed(fleet, server, caplog, 0, (100, 200))
