"""The fleet's pure parts and its folder listings: the turn order, model folders found under the
roots, and a root listed again only when its folder changed (real folders in tmp_path)."""

from __future__ import annotations

import os
import time

from sidecar.fleet.models import ModelFinder
from sidecar.fleet.order import interleave
from sidecar.watch import discover
from sidecar.watch.discover import Discoverer


def test_models_take_turns_the_one_served_longest_ago_first():
    planned = {"a": [1, 2, 3], "b": [10], "c": [20, 21]}
    names = {"a": "Alpha", "b": "Beta", "c": "Gamma"}
    assert list(interleave(planned, names, {})) == [("a", 1), ("b", 10), ("c", 20), ("a", 2), ("c", 21), ("a", 3)]
    # Alpha got the last slot: the others come first now
    assert [m for m, _ in interleave(planned, names, {"a": 5, "b": 3})][:3] == ["c", "b", "a"]


def test_model_then_step_runs_one_model_out_before_the_next():
    planned = {"k2": [5, 6], "k1": [7]}
    names = {"k2": "Beta", "k1": "Alpha"}
    assert list(interleave(planned, names, {"k1": 99}, strict=True)) == [("k1", 7), ("k2", 5), ("k2", 6)]


def _old(path):
    old = time.time() - 3600
    os.utime(path, (old, old))


def hidden_entry(tmp_path):
    """A root listed while trusted, then given checkpoint-2 without its mtime moving:
    (root, its discoverer, that mtime)."""
    root = tmp_path / "run"
    (root / "checkpoint-1").mkdir(parents=True)
    _old(root)
    disc = Discoverer(root)
    disc.scan()
    stamp = os.stat(root).st_mtime_ns
    (root / "checkpoint-2").mkdir()
    os.utime(root, ns=(stamp, stamp))
    return root, disc, stamp


def test_a_root_is_listed_again_only_when_its_folder_changed(tmp_path, monkeypatch):
    root = tmp_path / "run"
    (root / "checkpoint-1").mkdir(parents=True)
    _old(root)
    disc = Discoverer(root)
    assert [c.step for c in disc.scan()] == [1] and not disc.unchanged
    listed = []
    real = os.scandir
    monkeypatch.setattr(discover.os, "scandir", lambda p: listed.append(p) or real(p))
    assert [c.step for c in disc.scan()] == [1] and disc.unchanged and listed == []  # trusted: not listed
    (root / "checkpoint-2").mkdir()  # the folder's mtime moves on
    assert [c.step for c in disc.scan()] == [1, 2] and listed == [root]


def test_a_listing_of_a_folder_changed_just_now_is_not_trusted(tmp_path, monkeypatch):
    """On a filesystem with coarse timestamps an entry made in the same second after the listing
    leaves the mtime as it was: such a listing is repeated until the mtime is old enough."""
    root = tmp_path / "run"
    (root / "checkpoint-1").mkdir(parents=True)
    disc = Discoverer(root)
    disc.scan()
    stamp = os.stat(root).st_mtime_ns
    (root / "checkpoint-2").mkdir()
    os.utime(root, ns=(stamp, stamp))  # as a coarse clock would leave it
    assert [c.step for c in disc.scan()] == [1, 2]


def test_every_root_is_listed_again_after_the_relist_interval(tmp_path, monkeypatch):
    """A new entry that left the folder's mtime as it was (a server clock far behind ours) is
    found by the relisting every RELIST_SECONDS at the latest."""
    root, disc, stamp = hidden_entry(tmp_path)
    assert [c.step for c in disc.scan()] == [1]  # trusted and unchanged: not listed
    later = time.monotonic() + discover.RELIST_SECONDS + 1
    monkeypatch.setattr(discover.time, "monotonic", lambda: later)
    assert [c.step for c in disc.scan()] == [1, 2]


def test_model_folders_are_the_subfolders_holding_checkpoints(tmp_path, caplog):
    saves, rl = tmp_path / "saves", tmp_path / "rl"
    (saves / "a" / "checkpoint-1").mkdir(parents=True)
    (saves / "empty-yet").mkdir()
    (saves / ".hidden" / "checkpoint-1").mkdir(parents=True)
    (rl / "b" / "checkpoint-5").mkdir(parents=True)
    (rl / "checkpoint-9").mkdir()  # the root is itself a model folder: warned about
    finder = ModelFinder((saves, rl, tmp_path / "gone"))
    found = finder.scan()
    assert sorted(f.name for f in found.values()) == ["a", "b"]
    assert finder.missing == {tmp_path / "gone"}
    assert "holds checkpoint folders itself" in caplog.text
    (saves / "empty-yet" / "checkpoint-2").mkdir()  # a model now
    assert sorted(f.name for f in finder.scan().values()) == ["a", "b", "empty-yet"]
    assert sorted(f.name for f in ModelFinder((saves,), ("e*",)).scan().values()) == ["empty-yet"]


def test_a_folder_whose_mtime_does_not_follow_its_entries_is_listed_on_every_pass_after_once(tmp_path, monkeypatch,
                                                                                               caplog):
    """As on an object-store FUSE mount: found by the relisting, said once, never trusted again."""
    root, disc, stamp = hidden_entry(tmp_path)
    later = time.monotonic() + discover.RELIST_SECONDS + 1
    monkeypatch.setattr(discover.time, "monotonic", lambda: later)
    assert [c.step for c in disc.scan()] == [1, 2]
    assert "entries changed but the folder's modification time did not" in caplog.text
    (root / "checkpoint-3").mkdir()
    os.utime(root, ns=(stamp, stamp))
    monkeypatch.setattr(discover.time, "monotonic", lambda: later + 1)  # well before the next relisting
    assert [c.step for c in disc.scan()] == [1, 2, 3]


def test_fuse_filesystems_are_never_trusted(monkeypatch, tmp_path):
    root = tmp_path / "run"
    (root / "checkpoint-1").mkdir(parents=True)
    _old(root)
    monkeypatch.setitem(discover._MTIME_RELIABLE, os.stat(root).st_dev, False)  # stands in for a fuse.gcsfuse mount
    disc = Discoverer(root)
    disc.scan()
    assert not disc._stamps.unchanged(root, os.stat(root))
