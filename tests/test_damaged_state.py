"""The state file under bad text, damaged shapes and very long model names (reliability round 2).

Each is tried as a user meets it: real files, the real CLI as a subprocess, its exit code and
its one line; a property test mutates a real state file's fields into wrong types."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import ENTRY

from sidecar.plan import RESERVED
from sidecar.state import State, dump_state

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
    metrics = {k: v for k, v in metrics.items() if not isinstance(v, str) and k not in RESERVED}
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


# ----- a state file that is not UTF-8 -------------------------------------------------------------------------
def _real_state(ws) -> Path:
    """A state file written by the sidecar itself (one row, one failure), with its `.bak`."""
    ws.checkpoint(100)
    ws.checkpoint(200)
    ws.mode(200, "fail")
    result = ws.run("--once", "--max-attempts", "5")
    assert result.returncode == 0, result.stderr
    path = ws.state_files()[0]
    assert Path(f"{path}.bak").exists()
    return path


def test_a_state_file_that_is_not_utf8_is_exit_2(ws):
    path = _real_state(ws)
    path.write_bytes(path.read_bytes().replace(b'"table_rows"', b'"table_\xff_rows"'))
    for result in (ws.status(), ws.run("--once")):
        assert result.returncode == 2, result.stderr
        assert f"state file {path} is not valid" in _error_line(result)
