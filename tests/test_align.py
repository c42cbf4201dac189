"""Align mode: three frameworks into one SwanLab project, read back from SwanLab's offline files.

wandb.Api and swanlab.Api are replaced by small fakes serving fixed histories: no W&B or SwanLab
cloud server can exist here. The SwanLab upload is the real SDK in offline mode.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ENTRY
from sidecar.align.run import run_align
from sidecar.errors import ConfigError
from sidecar.align.config import parse_align_config
from sidecar.watch.state import State, StateStore
from sidecar.align.swanlab_io import experiment_id, upload
from swanlab_reader import run_dirs, scalars

ALIGNED = ["algorithm/reward", "actor/loss", "eval/score", "perf/throughput", "HR@10"]


class FakeWandbRun:
    """Rows as W&B stores them: each metric in its own row with its group's step key. Like the
    real scan_history, a multi-key scan returns only rows holding every requested key."""

    def __init__(self, rows):
        self.rows = rows

    def scan_history(self, keys):
        return [{k: r[k] for k in keys} for r in self.rows if all(k in r for k in keys)]


class FakeWandbApi:
    def __init__(self, runs):
        self.runs = runs

    def run(self, path):
        return FakeWandbRun(self.runs[path])


class FakeSwanlabExp:
    def __init__(self, series):
        self.series = series

    def metrics(self, keys, all=False):
        """The shape swanlab 0.10.3's Experiment.metrics returns: a dict with a "list" of metrics."""
        assert all, "full resolution must be asked for (the default samples 1,500 points)"
        return {"keys": keys, "list": [{"key": k, "type": "SCALAR",
                                        "metrics": [{"step": s, "value": v, "timestamp": 0} for s, v in self.series[k]]}
                                       for k in keys if k in self.series]}


class FakeSwanlabApi:
    def __init__(self, exps):
        self.exps = exps

    def run(self, path):
        return FakeSwanlabExp(self.exps[path])


def slime_rows(last_step):
    rows = []
    for s in range(1, last_step + 1):
        rows.append({"train/step": s, "train/pg_loss": 1.0 / s})
        rows.append({"rollout/step": s, "rollout/raw_reward": 0.1 * s})
        rows.append({"rollout/step": s, "perf/actor_train_tok_per_s": 1000.0 + s, "perf/actor_train_time": 2.0 + s,
                     "perf/step_time": 10.0 + s})
        if s % 2 == 0:
            rows.append({"eval/step": s, "eval/score": 0.5 + s / 100})
    rows.append({"rollout/step": 1, "rollout/raw_reward": 0.111})  # a later value for step 1 wins
    rows.append({"rollout/step": 1, "rollout/raw_reward": None})  # ...and a later null does not erase it
    return rows


def verl_series(last_step):
    return {"critic/rewards/mean": [(s, 0.2 * s) for s in range(1, last_step + 1)],
            "actor/pg_loss": [(s, 2.0 / s) for s in range(1, last_step + 1)]}


def write_state(path: Path, steps):
    state = State("k", "eval-k", "m-eval")
    for s in steps:
        state.processed.add(s)
        state.rows[s] = {"checkpoint_step": s, "checkpoint_name": f"checkpoint-{s}", "HR@10": s / 1000,
                         "NDCG@10": s / 2000, "metrics_path": "x"}
    StateStore(path).save(state, time.time())


def config_doc(tmp_path):
    return {
        "auth": {"swanlab_api_key": None},
        "aligned_metrics": ALIGNED,
        "frameworks": {
            "verl": {"enabled": True, "platform": "swanlab", "exp_id": "me/rl/verl-run",
                     "output_file": str(tmp_path / "data" / "verl.csv"), "target_exp_name": "verl",
                     "mapping": {"critic/rewards/mean": "algorithm/reward", "actor/pg_loss": "actor/loss"}},
            "slime": {"enabled": True, "platform": "wandb", "run_path": "me/rl/slime-run", "n_gpus": 4,
                      "output_file": str(tmp_path / "data" / "slime.csv"), "target_exp_name": "slime",
                      "mapping": {"rollout/raw_reward": "algorithm/reward", "train/pg_loss": "actor/loss",
                                  "eval/score": "eval/score", "perf/throughput": "perf/throughput"}},
            "sidecar": {"platform": "sidecar", "state_file": str(tmp_path / "state.json"),
                        "output_file": str(tmp_path / "data" / "sidecar.csv"), "target_exp_name": "sidecar-eval",
                        "mapping": None},
            "roll": {"enabled": False, "platform": "swanlab", "exp_id": "me/rl/roll"},
        },
        "target": {"project": "framework-comparison", "mode": "offline", "logdir": str(tmp_path / "swanlog")},
    }


def apis(last_step):
    return {"wandb": lambda: FakeWandbApi({"me/rl/slime-run": slime_rows(last_step)}),
            "swanlab": lambda: FakeSwanlabApi({"me/rl/verl-run": verl_series(last_step)})}


def points_by_exp(logdir: Path, cfg, name: str):
    fw = next(f for f in cfg.frameworks if f.name == name)
    exp = experiment_id(cfg.project, fw.name, fw.platform, fw.source)
    dirs = run_dirs(logdir, exp)
    return dirs, [p for d in dirs for p in scalars(d)]


def test_three_frameworks_align_into_one_project(tmp_path):
    write_state(tmp_path / "state.json", [100, 200])
    cfg = parse_align_config(config_doc(tmp_path), tmp_path, {})
    lines = []
    results = run_align(cfg, apis(4), upload, out=lines.append)
    assert {r.name for r in results} == {"verl", "slime", "sidecar"}  # roll is disabled
    logdir = tmp_path / "swanlog"
    _, verl = points_by_exp(logdir, cfg, "verl")
    assert sorted(verl) == sorted([("algorithm/reward", s, 0.2 * s) for s in range(1, 5)]
                                  + [("actor/loss", s, 2.0 / s) for s in range(1, 5)])
    _, slime = points_by_exp(logdir, cfg, "slime")
    got = {(k, s): v for k, s, v in slime}
    for s in range(1, 5):
        assert got[("algorithm/reward", s)] == (0.111 if s == 1 else pytest.approx(0.1 * s))
        assert got[("actor/loss", s)] == pytest.approx(1.0 / s)
        expected = (1000.0 + s) * (2.0 + s) / ((10.0 + s) * 4)  # SLIME throughput formula, n_gpus 4
        assert got[("perf/throughput", s)] == pytest.approx(expected)
    assert got[("eval/score", 2)] == pytest.approx(0.52) and ("eval/score", 1) not in got
    assert len(slime) == len(got)  # one value per (metric, step)
    _, side = points_by_exp(logdir, cfg, "sidecar")
    assert sorted(side) == [("HR@10", 100, 0.1), ("HR@10", 200, 0.2)]
    text = "\n".join(lines)
    assert "verl (swanlab): 4 rows, steps 1..4; missing 3 of 5: eval/score, perf/throughput, HR@10" in text
    assert "slime (wandb): 4 rows, steps 1..4; missing 1 of 5: HR@10" in text
    assert "sidecar (sidecar): 2 rows, steps 100..200; missing 4 of 5" in text


def test_rerun_uploads_only_new_steps_into_the_same_experiments(tmp_path):
    write_state(tmp_path / "state.json", [100, 200])
    cfg = parse_align_config(config_doc(tmp_path), tmp_path, {})
    run_align(cfg, apis(4), upload, out=lambda _: None)
    time.sleep(1.1)  # SwanLab names offline folders by the second
    write_state(tmp_path / "state.json", [100, 200, 300])
    run_align(cfg, apis(5), upload, refresh=True, out=lambda _: None)
    time.sleep(1.1)
    run_align(cfg, apis(5), upload, refresh=True, out=lambda _: None)  # nothing new: no new folder
    logdir = tmp_path / "swanlog"
    for name, new_step in (("verl", 5), ("slime", 5), ("sidecar", 300)):
        dirs, points = points_by_exp(logdir, cfg, name)
        assert len(dirs) == 2, (name, dirs)
        assert {s for _, s, _ in scalars(dirs[1])} == {new_step}
        assert len(points) == len({(k, s) for k, s, _ in points})  # no step sent twice


def test_dry_run_uploads_nothing(tmp_path):
    write_state(tmp_path / "state.json", [100])
    cfg = parse_align_config(config_doc(tmp_path), tmp_path, {})
    lines = []
    run_align(cfg, apis(3), upload, dry_run=True, out=lines.append)
    assert not (tmp_path / "swanlog").exists()
    assert len(lines) == 3 and all("rows, steps" in line for line in lines)


BAD = [
    (("frameworks", "slime", "platform"), "mlflow", "frameworks.slime.platform: expected one of"),
    (("frameworks", "slime", "mapping", "train/pg_loss"), "loss", "frameworks.slime.mapping.train/pg_loss: expected one of aligned_metrics, got 'loss'"),
    (("frameworks", "slime", "run_path"), None, "frameworks.slime.run_path: expected a non-empty string, got None"),
    (("target", "project"), "", "target.project: expected a non-empty string"),
]


@pytest.mark.parametrize("path, value, message", BAD, ids=[".".join(b[0]) for b in BAD])
def test_bad_config_is_one_line_naming_the_key_path_and_exit_2(tmp_path, path, value, message):
    doc = config_doc(tmp_path)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    cfg_file = tmp_path / "align.yaml"
    cfg_file.write_text(yaml.safe_dump(doc))
    result = subprocess.run([sys.executable, str(ENTRY), "align", "--config", str(cfg_file)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "swanlog").exists()


def _csv_config(tmp_path, csv_text):
    (tmp_path / "run.csv").write_text(csv_text)
    doc = {"aligned_metrics": ["algorithm/reward"],
           "auth": {"swanlab_api_key": "sl-secret-key-0123456789"},
           "frameworks": {"local": {"platform": "csv", "path": "run.csv", "output_file": "data/local.csv",
                                    "mapping": {"reward": "algorithm/reward"}}},
           "target": {"project": "p", "mode": "offline", "logdir": "swanlog"}}
    (tmp_path / "align.yaml").write_text(yaml.safe_dump(doc))
    return subprocess.run([sys.executable, str(ENTRY), "align", "--config", "align.yaml"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env={**__import__("os").environ,
                                                                    "SWANLAB_API_KEY": "sl-env-secret-987654"})


def test_csv_without_step_column_or_unreadable_is_exit_2(tmp_path):
    result = _csv_config(tmp_path, "iteration,reward\n1,0.5\n")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("frameworks.local.path: " + str(tmp_path / "run.csv")
                                                           + " has no 'step' column (columns: iteration, reward)")
    (tmp_path / "run.csv").unlink()
    (tmp_path / "run.csv").mkdir()
    result = subprocess.run([sys.executable, str(ENTRY), "align", "--config", "align.yaml"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "frameworks.local.path: cannot read CSV" in result.stderr
    assert not (tmp_path / "swanlog").exists()


def test_csv_source_uploads_and_no_key_is_printed(tmp_path):
    result = _csv_config(tmp_path, "step,reward\n1,0.5\n2,0.75\n2,0.8\n3.0,\n")
    assert result.returncode == 0, result.stderr
    assert "all 1 aligned metrics present" in result.stderr + result.stdout
    [run] = run_dirs(tmp_path / "swanlog")
    assert sorted(scalars(run)) == [("algorithm/reward", 1, 0.5), ("algorithm/reward", 2, 0.8)]
    for secret in ("sl-secret-key-0123456789", "sl-env-secret-987654"):
        assert secret not in result.stdout + result.stderr
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes() or path.name == "align.yaml", path


def test_points_not_steps_are_remembered_and_a_bad_source_uploads_nothing(tmp_path):
    (tmp_path / "a.csv").write_text("step,reward,loss\n1,0.5,\n2,0.6,bad\n")
    doc = {"aligned_metrics": ["algorithm/reward", "actor/loss"],
           "frameworks": {"a": {"platform": "csv", "path": "a.csv", "output_file": "data/a.csv",
                                "mapping": {"reward": "algorithm/reward", "loss": "actor/loss"}},
                          "b": {"platform": "csv", "path": "missing.csv", "output_file": "data/b.csv"}},
           "target": {"project": "p", "mode": "offline", "logdir": "swanlog"}}
    cfg = parse_align_config(doc, tmp_path, {})
    with pytest.raises(Exception, match="frameworks.b.path: cannot read CSV"):
        run_align(cfg, {}, upload, out=lambda _: None)
    assert not (tmp_path / "swanlog").exists()  # a bad source fails before anything is uploaded
    doc["frameworks"].pop("b")
    cfg = parse_align_config(doc, tmp_path, {})
    run_align(cfg, {}, upload, out=lambda _: None)  # 'bad' is a missing value, not a crash
    time.sleep(1.1)
    (tmp_path / "a.csv").write_text("step,reward,loss\n1,0.5,2.0\n2,0.6,1.5\n")  # values filled in later
    run_align(cfg, {}, upload, out=lambda _: None)
    first, second = run_dirs(tmp_path / "swanlog")
    assert sorted(scalars(first)) == [("algorithm/reward", 1, 0.5), ("algorithm/reward", 2, 0.6)]
    assert sorted(scalars(second)) == [("actor/loss", 1, 2.0), ("actor/loss", 2, 1.5)]


def _numbers_csv_config(tmp_path, steps: int):
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"step": np.arange(steps), **{f"m{i}": np.arange(steps) * (i + 1.0) for i in range(3)}})
    frame.loc[500:599, "m2"] = float("nan")  # m2 was not logged for steps 500..599 (yet)
    frame.to_csv(tmp_path / "run.csv", index=False)
    doc = {"aligned_metrics": ["a/m0", "a/m1", "a/m2"],
           "frameworks": {"csvrun": {"platform": "csv", "path": str(tmp_path / "run.csv"),
                                     "output_file": str(tmp_path / "cache.csv"),
                                     "mapping": {f"m{i}": f"a/m{i}" for i in range(3)}}},
           "target": {"project": "p", "mode": "offline", "logdir": str(tmp_path / "swanlog")}}
    return frame, parse_align_config(doc, tmp_path, {})


def test_upload_record_keeps_runs_of_steps_and_a_value_filled_in_later_is_not_recorded_as_sent(tmp_path):
    frame, cfg = _numbers_csv_config(tmp_path, 1000)
    run_align(cfg, {}, upload, out=lambda _: None)
    record_file = tmp_path / "cache.csv.uploaded.json"
    record = json.loads(record_file.read_text())
    [target] = record["targets"].values()
    assert target == {"a/m0": [[0, 999]], "a/m1": [[0, 999]], "a/m2": [[0, 499], [600, 999]]}
    time.sleep(1.1)  # SwanLab names offline folders by the second
    frame.loc[500:599, "m2"] = 7.0  # filled in later: an append cannot add them (SwanLab keeps only later steps)
    frame.to_csv(tmp_path / "run.csv", index=False)
    lines = []
    run_align(cfg, {}, upload, out=lines.append)
    assert json.loads(record_file.read_text()) == record  # not recorded as sent: still to be rebuilt
    dirs, _ = points_by_exp(tmp_path / "swanlog", cfg, "csvrun")
    assert len(dirs) == 1  # nothing appendable: no upload at all
    assert "csvrun: 100 point(s) not sent" in lines[-1] and "a/m2 steps 500..599" in lines[-1], lines


def test_upload_record_of_the_first_format_is_read(tmp_path):
    """The record used to be a list of [step, metric] pairs: those points are not sent again."""
    _, cfg = _numbers_csv_config(tmp_path, 20)
    fw = cfg.frameworks[0]
    key = f"{cfg.project}/{experiment_id(cfg.project, fw.name, fw.platform, fw.source)}/offline"
    pairs = [[s, f"a/m{i}"] for s in range(15) for i in range(3)]
    (tmp_path / "cache.csv.uploaded.json").write_text(json.dumps({"targets": {key: pairs}}))
    run_align(cfg, {}, upload, out=lambda _: None)
    _, points = points_by_exp(tmp_path / "swanlog", cfg, "csvrun")
    assert sorted({s for _, s, _ in points}) == [15, 16, 17, 18, 19]


@pytest.mark.parametrize("record", ['{"targets": []}', "[]", '{"targets": {"KEY": {"a/m0": [[1]]}}}', "{not json",
                                    '{"targets": {}, "versions": {"KEY": "two"}}',
                                    '{"targets": {}, "open": {"KEY": ["swanlog/run-1"]}}'])
def test_a_malformed_upload_record_stops_before_uploading_with_one_line(tmp_path, record):
    _, cfg = _numbers_csv_config(tmp_path, 20)
    fw = cfg.frameworks[0]
    key = f"{cfg.project}/{experiment_id(cfg.project, fw.name, fw.platform, fw.source)}/offline"
    (tmp_path / "cache.csv.uploaded.json").write_text(record.replace("KEY", key))
    with pytest.raises(ConfigError, match="upload record .* remove it to upload every point again"):
        run_align(cfg, {}, upload, out=lambda _: None)
    assert not (tmp_path / "swanlog").exists()  # nothing uploaded


def _align_cli(tmp_path, *flags):
    return subprocess.run([sys.executable, str(ENTRY), "align", "--config", str(tmp_path / "align.yaml"), *flags],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_a_value_filled_in_later_at_an_old_step_is_named_and_rebuild_uploads_every_point_afresh(tmp_path):
    """SwanLab keeps a resumed experiment's metrics append-only: a point at or before a metric's last
    step is not added (SwanHubX/SwanLab#1318, #1576). align says so and --rebuild is the way out."""
    frame, cfg = _numbers_csv_config(tmp_path, 1000)
    doc = {"aligned_metrics": ["a/m0", "a/m1", "a/m2"],
           "frameworks": {"csvrun": {"platform": "csv", "path": "run.csv", "output_file": "cache.csv",
                                     "mapping": {f"m{i}": f"a/m{i}" for i in range(3)}}},
           "target": {"project": "p", "mode": "offline", "logdir": "swanlog"}}
    (tmp_path / "align.yaml").write_text(yaml.safe_dump(doc))
    cfg = parse_align_config(doc, tmp_path, {})
    first = _align_cli(tmp_path)
    assert first.returncode == 0, first.stderr
    time.sleep(1.1)  # SwanLab names offline folders by the second
    frame.loc[500:599, "m2"] = 7.0  # filled in later, at old steps
    import pandas as pd
    more = pd.DataFrame({"step": range(1000, 1010), **{f"m{i}": [1.0] * 10 for i in range(3)}})
    pd.concat([frame, more]).to_csv(tmp_path / "run.csv", index=False)  # and 10 new steps
    dry = _align_cli(tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "csvrun: 100 point(s) cannot be appended" in dry.stdout and "a/m2 steps 500..599" in dry.stdout, dry.stdout
    assert "--rebuild" in dry.stdout
    second = _align_cli(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "csvrun: uploaded 10 step(s)" in second.stdout, second.stdout
    assert "100 point(s) not sent" in second.stdout and "a/m2 steps 500..599" in second.stdout, second.stdout
    old_id = experiment_id(cfg.project, "csvrun", "csv", str(tmp_path / "run.csv"))
    old_dirs = run_dirs(tmp_path / "swanlog", old_id)
    assert len(old_dirs) == 2
    assert sorted(scalars(old_dirs[1])) == sorted((f"a/m{i}", s, 1.0) for i in range(3) for s in range(1000, 1010))
    rebuilt = _align_cli(tmp_path, "--rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    new_id = experiment_id(cfg.project, "csvrun", "csv", str(tmp_path / "run.csv"), version=2)
    assert new_id != old_id and new_id in rebuilt.stdout and old_id in rebuilt.stdout, rebuilt.stdout
    [new_dir] = run_dirs(tmp_path / "swanlog", new_id)
    points = scalars(new_dir)
    assert len(points) == 3 * 1010 and len({(k, s) for k, s, _ in points}) == 3 * 1010  # every point, once
    assert {(k, s): v for k, s, v in points}[("a/m2", 550)] == 7.0
    assert {s for _, s, _ in points} == set(range(1010))
    assert run_dirs(tmp_path / "swanlog", old_id) == old_dirs  # the old experiment is left alone
    time.sleep(1.1)
    again = _align_cli(tmp_path)  # the fresh experiment is the one re-runs add to
    assert again.returncode == 0, again.stderr
    assert "uploaded 0 step(s)" in again.stdout and "not sent" not in again.stdout, again.stdout
    assert len(run_dirs(tmp_path / "swanlog", new_id)) == 1


def test_a_malformed_upload_record_of_a_later_framework_stops_before_the_first_uploads(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.csv").write_text("step,reward\n1,0.5\n")
    doc = {"aligned_metrics": ["algorithm/reward"],
           "frameworks": {n: {"platform": "csv", "path": f"{n}.csv", "output_file": f"data/{n}.csv",
                              "mapping": {"reward": "algorithm/reward"}} for n in ("a", "b")},
           "target": {"project": "p", "mode": "offline", "logdir": "swanlog"}}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "b.csv.uploaded.json").write_text("[]")
    with pytest.raises(ConfigError, match="upload record .*b.csv.uploaded.json"):
        run_align(parse_align_config(doc, tmp_path, {}), {}, upload, out=lambda _: None)
    assert not (tmp_path / "swanlog").exists()


def test_rebuild_dry_run_names_the_fresh_experiment_and_uploads_nothing(tmp_path):
    _, cfg = _numbers_csv_config(tmp_path, 20)
    run_align(cfg, {}, upload, out=lambda _: None)
    record = (tmp_path / "cache.csv.uploaded.json").read_text()
    lines = []
    run_align(cfg, {}, upload, dry_run=True, rebuild=True, out=lines.append)
    fw = cfg.frameworks[0]
    old_id, new_id = (experiment_id(cfg.project, fw.name, fw.platform, fw.source, v) for v in (1, 2))
    assert lines[-1] == (f"csvrun: --rebuild would upload 20 step(s) into a fresh SwanLab experiment {new_id}; "
                         f"experiment {old_id} would be left as it is")
    assert (tmp_path / "cache.csv.uploaded.json").read_text() == record
    assert len(run_dirs(tmp_path / "swanlog")) == 1


def test_points_an_append_cannot_add_are_listed_briefly():
    import numpy as np

    from sidecar.align.run import describe_steps

    blocked = {"a/m2": np.array([500, 501, 502, 700]), "a/m0": np.array([3])}
    assert describe_steps(blocked) == "a/m2 steps 500..502, 700; a/m0 step 3"
    many = {f"m{i}": np.arange(0, 40, 2) for i in range(10)}
    text = describe_steps(many)
    assert text.startswith("m0 steps 0, 2, 4, 6, 8, 10 (+14 more runs); m1 steps")
    assert text.endswith("; and 2 more metrics")


def test_a_fetch_shows_its_progress_per_framework_and_a_summary_line(tmp_path, caplog):
    """Not on a terminal: a log line every `progress_every` seconds (tiny here), then the summary."""
    import logging

    write_state(tmp_path / "state.json", [100])
    cfg = parse_align_config(config_doc(tmp_path), tmp_path, {})
    with caplog.at_level(logging.INFO, logger="sidecar.align.run"):
        run_align(cfg, apis(30), upload, dry_run=True, out=lambda _: None, progress_every=1e-9, bar=False)
    lines = [r.getMessage() for r in caplog.records]
    wanted = 10  # slime's 4 mapping sources, the 3 aligned names it does not map, the 3 throughput inputs
    assert any(re.fullmatch(rf"slime fetch: \d+/{wanted} metrics \(\d+%\), \S+ so far, ETA \S+", line)
               for line in lines), lines
    assert any(re.fullmatch(rf"slime fetch: {wanted}/{wanted} metrics in \S+, 30 rows", line) for line in lines), lines
    assert any(re.fullmatch(r"verl fetch: \d+/\d+ metrics in \S+, 30 rows", line) for line in lines), lines
