"""Pure parts: metrics parsing, planning, backoff, summary, pacing, readiness with a fake clock."""

import json
import os
import time

import pytest

from sidecar.checkpoints import Checkpoint, parse_step
from sidecar.watch.metrics import parse_metrics, read_metrics
from sidecar.watch.plan import Policy, backoff_delay, next_wake, plan, record_failure
from sidecar.watch.readiness import ReadinessTracker
from sidecar.reporters.rows import summary_from_rows, table_columns
from sidecar.watch.state import State


def test_parse_step_accepts_only_exact_checkpoint_names():
    assert parse_step("checkpoint-500") == 500
    for name in ("checkpoint-final", "checkpoint-12a", "tmp-checkpoint-5", ".checkpoint-5", "checkpoint-", "checkpoint-5 "):
        assert parse_step(name) is None


def test_metrics_flatten_nested_and_drop_non_finite(caplog):
    metrics, dropped = parse_metrics('{"HR@10": 0.1, "flag": true, "name": "x", "Instruments": {"HR@10": 0.2},'
                                     ' "bad": NaN, "big": Infinity, "n": 3}')
    assert metrics == {"HR@10": 0.1, "Instruments/HR@10": 0.2, "n": 3.0}
    assert sorted(dropped) == ["bad", "big"]


@pytest.mark.parametrize("text, reason", [
    ('{"HR@10": 0.1,', "invalid JSON"),
    ("[1, 2]", "root must be a JSON object"),
    ('{"HR@10": "n/a", "ok": false}', "no numeric metric"),
    ('{"HR@10": NaN}', "non-finite values dropped: HR@10"),
])
def test_metrics_errors_say_why(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_metrics(text)


def test_half_written_metrics_are_read_again_once(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"HR@10": 0.')

    def finish_writing(_seconds):
        path.write_text('{"HR@10": 0.5}')

    assert read_metrics(path, reread_after=0.01, sleep=finish_writing) == {"HR@10": 0.5}


def ckpts(*steps):
    return [Checkpoint(s, f"checkpoint-{s}", __import__("pathlib").Path("/x")) for s in steps]


def test_plan_orders_caps_and_skips_processed_and_backed_off():
    state = State("k", "r", "n")
    state.processed = {100}
    policy = Policy(backoff_seconds=10, max_attempts=3)
    record_failure(state, ckpts(200)[0], "boom", now_wall=1000.0, policy=policy)
    ready = ckpts(100, 200, 300, 400)
    assert [c.step for c in plan(ready, state, 1005.0, policy)] == [300, 400]
    assert [c.step for c in plan(ready, state, 1010.0, policy)] == [200, 300, 400]
    newest = Policy(order="newest-first", max_per_tick=2, backoff_seconds=10)
    assert [c.step for c in plan(ready, state, 1010.0, newest)] == [400, 300]
    forced = Policy(force_steps=frozenset({100}), backoff_seconds=10)
    assert [c.step for c in plan(ready, state, 1010.0, forced)][0] == 100


def test_backoff_doubles_and_budget_ends():
    assert [backoff_delay(n, 300) for n in (1, 2, 3)] == [300, 600, 1200]
    state = State("k", "r", "n")
    policy = Policy(backoff_seconds=300, max_attempts=2)
    first = record_failure(state, ckpts(5)[0], "e1", 0.0, policy)
    assert first["attempts"] == 1 and first["retry_after"] == 300
    second = record_failure(state, ckpts(5)[0], "e2", 400.0, policy)
    assert second["attempts"] == 2 and second["given_up"] is True
    assert plan(ckpts(5), state, 10_000.0, policy) == []


def test_summary_best_last_and_table_columns():
    rows = {
        100: {"checkpoint_step": 100, "checkpoint_name": "checkpoint-100", "HR@10": 0.2, "NDCG@10": 0.1, "metrics_path": "a"},
        200: {"checkpoint_step": 200, "checkpoint_name": "checkpoint-200", "HR@10": 0.3, "NDCG@10": 0.05,
              "X/HR@10": 1.0, "metrics_path": "b"},
        300: {"checkpoint_step": 300, "checkpoint_name": "checkpoint-300", "HR@10": 0.3, "NDCG@10": 0.07, "metrics_path": "c"},
    }
    assert summary_from_rows(rows) == {
        "last_step": 300, "last_hr@10": 0.3, "best_hr@10": 0.3, "best_step_for_hr@10": 200,
        "last_ndcg@10": 0.07, "best_ndcg@10": 0.1, "best_step_for_ndcg@10": 100,
    }
    cols = table_columns(rows.values())
    assert cols[:2] == ["checkpoint_step", "checkpoint_name"] and cols[-1] == "metrics_path"
    assert cols.index("X/HR@10") > cols.index("NDCG@10")


def test_next_wake_takes_the_soonest_deadline():
    assert next_wake(10.0, 70.0, []) == 60.0
    assert next_wake(10.0, 70.0, [12.5, 40.0]) == 2.5
    assert next_wake(10.0, 70.0, [5.0]) == 0.0
    assert next_wake(10.0, None, []) is None


def test_quiet_period_uses_own_clock_and_a_changing_subfolder_resets_it(tmp_path):
    folder = tmp_path / "checkpoint-5"
    (folder / "global_step5").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    wall = time.time()
    tracker = ReadinessTracker(quiet_seconds=120, marker=None)
    ok, reason, wake = tracker.check(5, folder, 1000.0, wall)
    assert not ok and wake == 1120.0
    (folder / "global_step5" / "optim_states.pt").write_bytes(b"y" * 10)  # DeepSpeed writes a sub-folder
    ok, reason, wake = tracker.check(5, folder, 1100.0, wall)
    assert not ok and reason == "still being written" and wake == 1220.0
    assert not tracker.check(5, folder, 1219.0, wall)[0]
    assert tracker.check(5, folder, 1220.0, wall)[0]


def test_a_growing_file_keeps_it_waiting(tmp_path):
    folder = tmp_path / "checkpoint-7"
    folder.mkdir()
    tracker = ReadinessTracker(quiet_seconds=10, marker=None)
    with open(folder / "optimizer.pt", "wb") as fh:
        for i in range(5):
            fh.write(b"z" * 100)
            fh.flush()
            assert not tracker.check(7, folder, 100.0 + i * 9, time.time())[0]
    assert not tracker.check(7, folder, 140.0, time.time())[0]
    assert tracker.check(7, folder, 146.0, time.time())[0]


def test_marker_makes_it_ready_at_once_and_a_missing_shard_keeps_it_waiting(tmp_path):
    folder = tmp_path / "checkpoint-9"
    folder.mkdir()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"1")
    (folder / "trainer_state.json").write_text("{}")
    tracker = ReadinessTracker(quiet_seconds=120, marker="trainer_state.json")
    ok, reason, _ = tracker.check(9, folder, 0.0, time.time())
    assert not ok and "model-00002-of-00002.safetensors" in reason
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"2")
    assert tracker.check(9, folder, 0.0, time.time()) == (True, "marker", None)
    empty = tmp_path / "checkpoint-10"
    empty.mkdir()
    assert tracker.check(10, empty, 0.0, time.time())[1] == "empty"


def test_old_mtimes_never_decide_alone(tmp_path):
    """A folder there at start-up whose files are older than the quiet period is ready after one
    unchanged confirmation interval (2 s here); one that appears later, or changes while being
    confirmed, waits the whole quiet period (its old mtimes may come from a clock behind ours)."""
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "w").write_bytes(b"x")
    old = time.time() - 500
    os.utime(folder / "w", (old, old))
    at_start = ReadinessTracker(120, None)
    assert at_start.check(3, folder, 0.0, time.time(), at_startup=True) == (False, "confirming", 2.0)
    assert not at_start.check(3, folder, 1.9, time.time())[0]
    assert at_start.check(3, folder, 2.0, time.time())[0]
    later = ReadinessTracker(120, None)
    assert later.check(3, folder, 0.0, time.time()) == (False, "settling", 120.0)
    changing = ReadinessTracker(120, None)
    assert changing.check(3, folder, 0.0, time.time(), at_startup=True)[1] == "confirming"
    (folder / "w2").write_bytes(b"y")
    os.utime(folder / "w2", (old, old))
    assert changing.check(3, folder, 2.0, time.time()) == (False, "still being written", 122.0)
    assert not changing.check(3, folder, 121.0, time.time())[0]
    assert changing.check(3, folder, 122.0, time.time())[0]


def test_discovery_sees_entries_change_type_under_the_same_names(tmp_path):
    """The scan keeps its last result only while the listing of folders is the same: a folder
    replaced by a file or by a symlink leaving the root, or a file replaced by a folder, counts."""
    from sidecar.watch.discover import Discoverer

    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    for step in (1, 2, 3):
        (root / f"checkpoint-{step}").mkdir(parents=True)
    (root / "checkpoint-7").write_text("a file")
    disc = Discoverer(root)
    names = lambda: [c.name for c in disc.scan()]  # noqa: E731
    assert names() == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    (root / "checkpoint-2").rmdir()
    (root / "checkpoint-2").write_text("x")  # folder -> file, same listing
    (root / "checkpoint-3").rmdir()
    (root / "checkpoint-3").symlink_to(outside)  # folder -> symlink out of the root
    (root / "checkpoint-7").unlink()
    (root / "checkpoint-7").mkdir()  # file -> folder
    assert names() == ["checkpoint-1", "checkpoint-7"]
    result = disc.scan()
    result.clear()  # a caller changing its list does not change the next scan
    assert names() == ["checkpoint-1", "checkpoint-7"]


def _state_with(*steps):
    from sidecar.watch.plan import record_success

    state = State("k", "eval-k", "m-eval")
    for step in steps:
        record_success(state, {"checkpoint_step": step, "checkpoint_name": f"checkpoint-{step}", "HR@10": step / 1000})
    return state


def test_a_row_is_sent_when_logged_online_and_reported_only_when_the_server_holds_its_line():
    from sidecar.reporters.base import Delivery
    from sidecar.watch.reporting import apply_delivery

    state = _state_with(100, 200)
    seg = {"dir": "/w/run-1", "mode": "online"}
    rows = dict(state.rows)
    apply_delivery(state, Delivery(seg, rows=rows, lines={100: 4, 200: 5}, run="e/p/eval-k"))
    assert state.unreported == set() and state.sent == {100: 4, 200: 5}
    apply_delivery(state, Delivery(seg, run="e/p/eval-k", confirmed=5))  # the server holds lines 0..4
    assert state.sent == {200: 5}
    apply_delivery(state, Delivery(seg, run="other/p/eval-k", confirmed=99))  # another run's count proves nothing
    assert state.sent == {200: 5}
    apply_delivery(state, Delivery(seg, run="e/p/eval-k", confirmed=5, lost=frozenset({200})))
    assert state.sent == {} and state.unreported == {200}  # not on the server: written again
    assert state.segments[0]["steps"] == [100, 200] and state.segments[0]["run"] == "e/p/eval-k"


def test_a_row_replaced_by_a_re_evaluation_is_neither_reported_nor_sent_by_the_old_delivery():
    from sidecar.watch.plan import record_success
    from sidecar.reporters.base import Delivery
    from sidecar.watch.reporting import apply_delivery

    state = _state_with(100)
    old = dict(state.rows)
    record_success(state, {"checkpoint_step": 100, "checkpoint_name": "checkpoint-100", "HR@10": 0.5})
    apply_delivery(state, Delivery({"dir": "/w/run-1", "mode": "online"}, rows=old, lines={100: 0}, run="e/p/r"))
    assert state.unreported == {100} and state.sent == {}


def test_sent_lines_survive_the_state_file_and_an_original_state_has_none(tmp_path):
    from sidecar.watch.state import StateStore, read_state

    state = _state_with(100)
    state.sent, state.sent_run = {100: 7}, "e/p/eval-k"
    store = StateStore(tmp_path / "s.json")
    store.save(state, 0.0)
    again = read_state(tmp_path / "s.json")
    assert again.sent == {100: 7} and again.sent_run == "e/p/eval-k"
    (tmp_path / "v1.json").write_text(json.dumps({"version": 1, "processed_steps": [], "table_rows": []}))
    assert read_state(tmp_path / "v1.json").sent == {}


def test_delivery_status_separates_unreported_sent_and_offline_unsynced():
    from sidecar.watch.status import delivery

    state = _state_with(100, 200, 300, 400)
    state.unreported = {400}
    state.sent = {300: 9}
    state.segments = [{"dir": "/w/offline-run-1", "mode": "offline", "steps": [100]},
                      {"dir": "/w/offline-run-2", "mode": "offline", "steps": [200], "synced": "t"},
                      {"dir": "", "mode": "original tool", "steps": [100, 200]}]
    assert delivery(state) == {"unreported": 1, "unconfirmed": 1, "offline_unsynced": 1, "original_tool_unchecked": 2}
    assert delivery(state, frozenset({"/w/offline-run-1"}))["offline_unsynced"] == 0


def test_offline_segments_are_written_with_a_resume_mode_wandb_sync_can_join():
    from sidecar.reporters.wandb import effective_resume

    assert [effective_resume(r, "offline") for r in ("allow", "auto", "must")] == ["allow", "allow", "must"]
    assert [effective_resume(r, "online") for r in ("allow", "auto", "never")] == ["allow", "auto", "never"]


def test_eval_flags_that_differ_from_their_defaults_are_named(tmp_path):
    from sidecar.watch.attribution import non_default_eval_flags
    from sidecar.config import FLAGS, build_config, build_parser

    def changed(*argv):
        args = vars(build_parser().parse_args(["--sft-root", str(tmp_path / "sft"), "--repo-root", str(tmp_path), *argv]))
        return non_default_eval_flags(build_config(args, {}, tmp_path, check_paths=False), FLAGS)

    assert changed() == []
    assert changed("--num-beams", "10", "--seed", "1") == ["--num-beams 10", "--seed 1"]
    assert changed("--test-data-path", "data/x/sft/test.json") == ["--test-data-path " + str(tmp_path / "data/x/sft/test.json")]
