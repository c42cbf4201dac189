"""The upload record, `<output_file>.uploaded.json`: which points of a framework went into which
SwanLab experiment, so a re-run sends only the rest.

    {"targets":  {"project/experiment id/mode": {metric: [[first, last], ...]}},
     "versions": {"project/first experiment id/mode": 2},
     "open":     {"project/experiment id/mode": [{"dir": "/path/to/swanlog/run-...-<id>", "pid": 123,
                                                  "host": "node1"}]}}

`targets` holds runs of the steps sent (100,000 steps x 30 metrics is a few hundred bytes, not
millions of pairs; the first format, a list of [step, metric] pairs, is still read). `versions`
maps the first experiment's target to the experiment version re-runs add to (absent: 1; `--rebuild`
moves to the next). `open` names the run folders of offline and local uploads that started and did
not finish, and the process that wrote each: what such a folder holds was written, so the next run
reads it back instead of sending it again (after a kill -9 the record cannot know how far SwanLab
got; its own file does).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError


def _bad_record(path: Path, why) -> ConfigError:
    return ConfigError(f"upload record {path} is not in the expected form ({why}); remove it to upload every "
                       f"point again")


class UploadRecord:
    """One framework's upload record; read when made (a malformed file is a ConfigError), written
    by `save`, which keeps the other targets as the file holds them then."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            data = {"targets": {}}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"upload record {path} cannot be read ({exc}); remove it to upload every point "
                              f"again") from exc
        if not isinstance(data, dict):
            raise _bad_record(path, "the file must hold a JSON object")
        if not isinstance(data.get("targets", {}), dict):
            raise _bad_record(path, "'targets' must be an object")
        versions = data.get("versions", {})
        if not isinstance(versions, dict) or not all(type(v) is int and v >= 1 for v in versions.values()):
            raise _bad_record(path, "'versions' must map targets to whole numbers from 1")
        opened = data.get("open", {})
        if not isinstance(opened, dict) or not all(isinstance(v, list) and all(_is_note(n) for n in v)
                                                   for v in opened.values()):
            raise _bad_record(path, "'open' must map targets to lists of {dir, pid, host}")
        self.data = data

    def version(self, base: str) -> int:
        return self.data.get("versions", {}).get(base, 1)

    def open_notes(self, key: str) -> list[dict]:
        """Uploads to this target that started and did not finish: {dir, pid, host} each."""
        return [dict(n) for n in self.data.get("open", {}).get(key, [])]

    def sent(self, key: str) -> dict:
        """metric -> sorted steps (a numpy array) already sent to this target."""
        import numpy as np

        entry = self.data.get("targets", {}).get(key)
        try:
            if isinstance(entry, list):
                by_metric: dict[str, list[int]] = {}
                for step, metric in entry:
                    by_metric.setdefault(str(metric), []).append(int(step))
                return {m: np.unique(np.array(v, dtype=np.int64)) for m, v in by_metric.items()}
            if entry is None:
                return {}
            return {str(m): np.concatenate([np.arange(int(a), int(b) + 1, dtype=np.int64) for a, b in runs])
                    for m, runs in entry.items() if runs}
        except (TypeError, ValueError, AttributeError) as exc:
            raise _bad_record(self.path, exc) from exc

    def save(self, base: str, version: int, key: str, sent: dict | None, open_notes: list[dict] | None = None) -> None:
        """Write this target's version, and (if given) its sent steps and its unfinished uploads;
        other targets are kept as the file holds them now. Raises OSError (the file is then as it was)."""
        from ..files import write_atomic

        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        for part in ("targets", "versions", "open"):
            if not isinstance(data.get(part), dict):
                data[part] = {}
        if version > 1 or base in data["versions"]:
            data["versions"][base] = version
        if sent is not None:
            data["targets"][key] = {m: runs_of(v) for m, v in sorted(sent.items())}
        if open_notes is not None:
            data["open"][key] = list(open_notes)
            if not open_notes:
                del data["open"][key]
        for part in ("versions", "open"):
            if not data[part]:
                del data[part]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data))
        self.data = data


def _is_note(note) -> bool:
    return (isinstance(note, dict) and isinstance(note.get("dir"), str) and type(note.get("pid")) is int
            and isinstance(note.get("host"), str))


def runs_of(steps) -> list[list[int]]:
    """Sorted unique steps -> [[first, last], ...] runs of consecutive steps."""
    import numpy as np

    if not len(steps):
        return []
    breaks = np.flatnonzero(np.diff(steps) != 1)
    firsts = np.concatenate(([steps[0]], steps[breaks + 1]))
    lasts = np.concatenate((steps[breaks], [steps[-1]]))
    return [[int(a), int(b)] for a, b in zip(firsts, lasts)]


def add_points(sent: dict, more: dict) -> dict:
    """`sent` with `more` ({metric: steps}) added: a new dict of sorted unique numpy arrays."""
    import numpy as np

    out = dict(sent)
    for metric, steps in more.items():
        steps = np.asarray(steps, dtype=np.int64)
        out[metric] = np.union1d(out[metric], steps) if metric in out else np.unique(steps)
    return out
