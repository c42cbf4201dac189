"""The state file under bad text, damaged shapes and very long model names (reliability round 2).

Each is tried as a user meets it: real files, the real CLI as a subprocess, its exit code and
its one line; a property test mutates a real state file's fields into wrong types."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import ENTRY

import eval_wandb_sidecar
from sidecar.clock import SystemClock
from sidecar.config import build_config, build_parser
from sidecar.errors import SidecarError, StateCorrupt
from sidecar.reporters.rows import ROW_FIELDS
from sidecar.watch.service import Sidecar
from sidecar.watch.state import State, dump_state, read_state

PROG = "eval_wandb_sidecar.py"


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ----- A: any text is stored, and read back as it was ------------------------------------------------------
any_text = st.text(st.characters(blacklist_categories=()), max_size=12)  # lone surrogates included


def _has_surrogate_pair(text: str) -> bool:
    """A high surrogate followed by a low one: JSON itself defines `\\ud83d\\ude00` as one character,
    so such a string reads back as that character (no path or json.loads result holds one)."""
    return any("\ud800" <= a <= "\udbff" and "\udc00" <= b <= "\udfff" for a, b in zip(text, text[1:]))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(any_text, st.one_of(any_text, st.floats(allow_nan=False), st.none()), max_size=5), any_text)
def test_the_state_writer_stores_any_python_text_and_reads_it_back_identically(metrics, path_text):
    assume(not any(_has_surrogate_pair(t) for t in [*metrics, *[v for v in metrics.values() if isinstance(v, str)],
                                                    path_text]))
    metrics = {k: v for k, v in metrics.items() if not isinstance(v, str) and k not in ROW_FIELDS}
    state = State("k", "eval-k", path_text)
    state.processed = {100}
    state.rows[100] = {"checkpoint_step": 100, "checkpoint_name": "checkpoint-100", **metrics,
                       "metrics_path": path_text}
    state.failed[200] = {"checkpoint": "checkpoint-200", "error": path_text, "time": "t", "attempts": 1}
    state.extra["note"] = {path_text: [path_text]}
    data = state.to_dict()
    raw = dump_state(data).encode("utf-8")  # never raises
    assert json.loads(raw) == json.loads(json.dumps(data))  # exactly what was written, surrogates included
    assert State.from_dict(json.loads(raw)).to_dict() == data


def test_readable_text_stays_readable_and_a_lone_surrogate_becomes_an_escape():
    data = {"run_name": "modèle ünï 模型", "table_rows": [{"HR@10": 0.5, "\ud800": 0.1, "p": "/m-\udcff"}]}
    text = dump_state(data)
    assert "modèle ünï 模型" in text and "\\ud800" in text and "\\udcff" in text
    assert json.loads(text.encode("utf-8")) == data


def _bytes_workspace(ws, name: bytes):
    """The workspace's SFT root renamed to a folder whose name holds raw bytes (as Python sees it:
    surrogate-escaped characters)."""
    target = ws.sft.parent / os.fsdecode(name)
    ws.sft.rename(target)
    ws.sft = target
    return ws


def test_an_sft_root_named_with_a_non_utf8_byte_is_evaluated_and_restarts(ws):
    _bytes_workspace(ws, b"model-\xff\xfe-cb16")
    ws.checkpoint(100)
    first = ws.run("--once", "--pin-checkpoints")  # pins live under the root's exact name
    assert first.returncode == 0, first.stderr
    assert "internal error" not in first.stderr
    state = ws.state()
    assert state["processed_steps"] == [100]
    assert state["table_rows"][0]["metrics_path"] == str(ws.results(100))  # the bytes survive the round trip
    assert os.path.exists(state["table_rows"][0]["metrics_path"])
    ws.checkpoint(200)
    again = ws.run("--once", "--pin-checkpoints")  # a restart reads the file back and goes on
    assert again.returncode == 0, again.stderr
    assert ws.calls() == ["checkpoint-100", "checkpoint-200"]
    assert ws.state()["processed_steps"] == [100, 200]
    strict = ws.env(PYTHONIOENCODING="utf-8")  # a UTF-8 locale's stdout: strict, unlike C.UTF-8's
    for extra in ([], ["--json"]):
        shown = subprocess.run([sys.executable, str(ENTRY), "status", *ws.args("--pin-checkpoints"), *extra],
                               env=strict, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        if extra:
            assert json.loads(shown.stdout)["processed"] == 2
        else:
            assert "processed 2" in shown.stdout
            assert "model-\\udcff\\udcfe-cb16" in shown.stdout  # the pins folder, its bytes shown as escapes


# ----- 13: damaged shapes are one line, exit 2, for every command -----------------------------------------------
def _real_state(ws) -> Path:
    """A state file written by the sidecar itself (one row, one failure), with its `.bak`."""
    ws.checkpoint(100)
    ws.checkpoint(200)
    ws.mode(200, "fail")
    result = ws.run("--once", "--max-attempts", "5")
    assert result.returncode == 4, result.stderr  # the failure of checkpoint-200
    path = ws.state_files()[0]
    assert Path(f"{path}.bak").exists()
    return path


def _damage(data: dict, what: str) -> None:
    now = time.time()
    entry = {"checkpoint": "checkpoint-300", "started": "2026-01-01T00:00:00+00:00", "started_at": now,
             "host": "elsewhere", "pid": 4242}
    if what == "processed_steps: [1e400]":
        data["processed_steps"] = ["__INF__"]
    elif what == "in-flight pid 'abc'":
        data["in_flight"] = {"300": {**entry, "pid": "abc"}}
    elif what == "HR@10 'x' in a table row":
        data["table_rows"][0]["HR@10"] = "x"
    elif what == "started_at 'yesterday'":
        data["in_flight"] = {"300": {**entry, "started_at": "yesterday"}}
    elif what == "failed attempts 1.5":
        data["failed_steps"]["200"]["attempts"] = 1.5
    elif what == "wandb_segments steps of text":
        data["wandb_segments"] = [{"dir": "/w/offline-run-1", "mode": "offline", "steps": ["one"], "closed": True}]
    elif what == "wandb_sent line null":
        data["wandb_sent"] = {"run": "e/p/r", "lines": {"100": None}}
    elif what == "negative last_seen_step":
        data["last_seen_step"] = -3
    else:
        raise AssertionError(what)


DAMAGE = ["processed_steps: [1e400]", "in-flight pid 'abc'", "HR@10 'x' in a table row", "started_at 'yesterday'",
          "failed attempts 1.5", "wandb_segments steps of text", "wandb_sent line null", "negative last_seen_step"]


def test_a_damaged_state_file_is_exit_2_naming_the_file_and_its_bak_for_every_command(ws):
    path = _real_state(ws)
    good = path.read_text()
    for what in DAMAGE:
        data = json.loads(good)
        _damage(data, what)
        path.write_text(json.dumps(data).replace('"__INF__"', "1e400"))
        before = path.read_bytes()
        runs = [ws.status(), ws.status("--json")]
        if what in DAMAGE[:4]:  # the watch command too (the same loader; four are enough for the time they take)
            runs.append(ws.run("--once"))
        for result in runs:
            assert result.returncode == 2, (what, result.args[2:4], result.stderr)
            line = _error_line(result)
            assert line.startswith(f"{PROG}: error: state file {path} is not valid ("), (what, line)
            assert f"the previous good version is {path}.bak" in line, (what, line)
        assert path.read_bytes() == before, what  # left untouched
    path.write_text(good)
    assert ws.status().returncode == 0


def test_a_state_file_that_is_not_utf8_is_exit_2(ws):
    path = _real_state(ws)
    path.write_bytes(path.read_bytes().replace(b'"table_rows"', b'"table_\xff_rows"'))
    for result in (ws.status(), ws.run("--once")):
        assert result.returncode == 2, result.stderr
        assert f"state file {path} is not valid" in _error_line(result)


# The property: a real state file with any field turned into a wrong value is either read (and
# then status, status --json and a watch pass all work) or refused with StateCorrupt.
ODD_VALUES = st.one_of(
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e300, -1, 0, 2 ** 63, 2 ** 70, 1.5, True, False,
                     None, "", "abc", "yesterday", "checkpoint-100", "../../x", "a\x00b", "\udcff", [], {}, [1],
                     {"100": 1}, {"dir": "x"}, ["a"], [1.5], [-1]]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                 max_leaves=6))


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replace(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    if rest:
        copy[head] = _replace(copy[head], rest, new)
    elif new is _DELETE and isinstance(copy, dict):
        del copy[head]
    else:
        copy[head] = None if new is _DELETE else new
    return copy


_DELETE = object()


def _rich_state(ws, path: Path) -> dict:
    data = json.loads(path.read_text())
    now = time.time()
    data["in_flight"] = {"300": {"checkpoint": "checkpoint-300", "path": str(ws.sft / "checkpoint-300"),
                                 "started": "2026-01-01T00:00:00+00:00", "started_at": now - 60, "host": "elsewhere",
                                 "pid": 4242, "pid_start": "77", "gpus": "0", "interrupted": True}}
    data["vanished_steps"] = {"50": {"checkpoint": "checkpoint-50", "reason": "deleted before its eval",
                                     "time": "2026-01-01T00:00:00+00:00"}}
    data["wandb_segments"] = [{"dir": str(ws.repo / "wandb" / "offline-run-1-eval-k"), "mode": "offline",
                               "started": "2026-01-01T00:00:00+00:00", "pid": 4242, "host": "elsewhere",
                               "steps": [100], "closed": True, "run_id": "eval-k"}]
    data["wandb_sent"] = {"run": "e/p/eval-k", "lines": {"100": 0}}
    data["wandb_run"] = "e/p/eval-k"
    data["unreported_steps"] = [100]
    data["pending_steps"] = [200]
    data["pins_dir"] = str(ws.state_dir / "pins" / ws.sft.name)
    data["failed_steps"]["200"]["previous_errors"] = ["2026-01-01T00:00:00+00:00: boom"]
    return data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.data())
def test_any_field_of_a_real_state_turned_into_a_wrong_value_is_read_or_refused_never_a_crash(ws_once, data):
    ws, path, base, config = ws_once
    mutated = base
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(sorted((p for p in _paths(mutated) if p), key=repr)))
        new = data.draw(st.one_of(ODD_VALUES, st.just(_DELETE)))
        mutated = _replace(mutated, where, new)
    path.write_text(json.dumps(mutated, allow_nan=True))
    try:
        read_state(path)
    except StateCorrupt as exc:
        message = str(exc)
        assert "\n" not in message and str(path) in message and f"{path}.bak" in message, message
        accepted = False
    else:
        accepted = True
    for argv in (["status", "--state-file", str(path)], ["status", "--state-file", str(path), "--json"],
                 ["status", "--state-file", str(path), "--rows"]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = eval_wandb_sidecar.main(argv)
        assert code == (0 if accepted else 2), (argv, err.getvalue())
    if accepted:  # the watch command's own path: start, one pass, close (what `--once` runs)
        sidecar = Sidecar(config, SystemClock(), ws.env())
        try:
            sidecar.start()
            sidecar.run_once()
        except SidecarError as exc:
            assert exc.exit_code != 1, exc
        finally:
            sidecar.close()


@pytest.fixture
def ws_once(ws):
    path = _real_state(ws)
    base = _rich_state(ws, path)
    json.loads(json.dumps(base))
    path.write_text(json.dumps(base))
    assert read_state(path) is not None  # the unmutated rich state is valid
    args = vars(build_parser(PROG).parse_args(ws.args("--once", "--max-attempts", "5")))
    config = build_config(args, ws.env(), Path.cwd())
    assert config.state_file == path
    return ws, path, base, config


# ----- 13: very long model names -------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [220, 240])
def test_a_very_long_sft_root_name_evaluates_restarts_and_shows_status(ws, length):
    name = ("m-cb16-" + "x" * 300)[:length]
    target = ws.sft.parent / name
    ws.sft.rename(target)
    ws.sft = target
    ws.checkpoint(100)
    first = ws.run("--once")
    assert first.returncode == 0, first.stderr
    assert "could not write" not in first.stderr and "internal error" not in first.stderr
    state_file = ws.state_files()[0]
    assert state_file.name.startswith("m-cb16-xxxx") and len(state_file.name.encode()) <= 255
    names = [p.name for p in ws.state_dir.iterdir()]
    assert all(len(n.encode()) <= 255 for n in names), names
    ws.checkpoint(200)
    again = ws.run("--once")
    assert again.returncode == 0, again.stderr
    assert ws.calls() == ["checkpoint-100", "checkpoint-200"]
    shown = ws.status()
    assert shown.returncode == 0, shown.stderr
    assert "processed 2" in shown.stdout


def test_names_that_fit_keep_the_original_tools_file_names_and_every_derived_name_fits():
    from sidecar.config import build_config as build

    base = {"repo_root": "/r", "test_data_path": "/r/d/sft/test.json", "index_path": "/r/d/i.json"}
    for length in (1, 50, 150, 200, 201, 229, 230, 254, 255):
        model = ("m" * 300)[:length]
        config = build({**base, "sft_root": f"/r/saves/{model}"}, {}, Path("/"), check_paths=False)
        key = config.identity.key
        state, lock = config.state_file.name, config.lock_file.name
        if length <= 200:  # the original tool's names
            assert (state, lock) == (f"{model}_{key}.json", f"{model}_{key}.lock")
        else:
            assert state.startswith("m" * 150) and state.endswith(f"_{key}.json")
            assert lock == state[:-len(".json")] + ".lock"
        # the longest names made beside the state file: its backup's temp copy and the atomic-write temp file
        longest = [f".{state}.{'0' * 16}.bak.tmp", f".{state}.{'0' * 8}.tmp", f"{state}.bak", f"{state}.synced.json"]
        assert all(len(n.encode()) <= 255 for n in longest), (length, longest)
