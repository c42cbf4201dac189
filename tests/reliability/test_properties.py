"""Property tests (hypothesis): hostile metrics.json bytes, folder names and flag values."""

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import ENTRY  # noqa: E402
from sidecar.config import FLAGS, build_config  # noqa: E402
from sidecar.watch.discover import Discoverer  # noqa: E402
from sidecar.errors import ConfigError, MetricsError  # noqa: E402
from sidecar.watch.metrics import read_metrics  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def _check_metrics_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.json"
        path.write_bytes(data)
        try:
            metrics = read_metrics(path)
        except MetricsError as exc:
            assert "\n" not in str(exc) or "invalid JSON" in str(exc)
            return
        assert metrics and all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_metrics_bytes_never_crash_and_never_give_non_finite_values(data):
    _check_metrics_file(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_metrics_never_crash_and_never_give_non_finite_values(value):
    _check_metrics_file(json.dumps(value, allow_nan=True).encode())


name_chars = st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",))
names = st.one_of(st.text(name_chars, min_size=1, max_size=30),
                  st.builds(lambda s: f"checkpoint-{s}", st.text(name_chars, max_size=8)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(names, st.booleans()), max_size=12))
def test_arbitrary_folder_names_never_crash_discovery(entries):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, is_dir in entries:
            if name in (".", "..") or len(name.encode()) > 255:
                continue
            try:
                (root / name).mkdir() if is_dir else (root / name).write_bytes(b"x")
            except OSError:
                continue
        found = Discoverer(root).scan()
        for ckpt in found:
            digits = ckpt.name[len("checkpoint-"):]
            assert ckpt.name.startswith("checkpoint-") and digits.isascii() and digits.isdigit()
            assert (root / ckpt.name).is_dir() and ckpt.step == int(digits)
        assert [c.step for c in found] == sorted(c.step for c in found)


VALUE_FLAGS = [f for f in FLAGS if f.kind in ("int", "float", "choice", "steps", "str")
               and f.name not in ("sft-root", "repo-root", "eval-script", "test-data-path", "index-path")]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(VALUE_FLAGS), st.text(max_size=12))
def test_fuzzed_flag_values_give_one_line_errors_or_a_config(flag, value):
    args = {"repo_root": "/r", "sft_root": "/r/s/m", flag.dest: value}
    try:
        config = build_config(args, {}, Path("/"), check_paths=False)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message.replace(repr(value), "") and (f"--{flag.name}" in message)
        return
    assert config.identity.key  # a value accepted as-is is usable


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(["--num-beams", "--poll-interval-seconds", "--max-attempts", "--order", "--wandb-mode",
                        "--eval-timeout-seconds"]), st.text(st.characters(blacklist_characters="\0",
                                                                            blacklist_categories=("Cs",)), max_size=8))
def test_fuzzed_flags_through_the_command_line_exit_2_with_one_line_or_run(flag, value):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "saves" / "m").mkdir(parents=True)
        (root / "t.json").write_text("[]")
        (root / "eval.sh").write_text("exit 1\n")
        args = ["--repo-root", str(root), "--sft-root", "saves/m", "--eval-script", "eval.sh", "--test-data-path",
                "t.json", "--index-path", "t.json", "--disable-wandb", "--once", f"{flag}={value}"]
        result = subprocess.run([sys.executable, str(ENTRY), *args], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "HOME": tmp})
        if result.returncode == 0:
            return
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 or repr(value).count("\\n") > 0, result.stderr
        assert not (root / "state").exists()
