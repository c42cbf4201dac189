"""State file and process lock (SPEC §3.2–§3.4). The state file is the source of truth.

The file keeps every field of the original (version 1) format and adds new ones; unknown
fields are preserved. Writes go to a temp file in the same folder, are flushed and fsynced,
and replace the state atomically; the previous good version stays as `<state>.bak`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError, LockHeld, LockLost, LockUnavailable, StateCorrupt, StateTooNew, StateWriteError
from ..files import write_atomic

log = logging.getLogger(__name__)

VERSION = 2
_KNOWN = {
    "version", "model_config_key", "run_id", "run_name", "processed_steps", "failed_steps",
    "table_rows", "last_seen_step", "last_update_time", "vanished_steps", "in_flight",
    "unreported_steps", "pending_steps", "eval_params", "wandb_segments", "pins_dir", "wandb_sent", "wandb_run",
    "max_attempts", "sidecar_settings",
}


def utc_iso(wall: float) -> str:
    """UTC ISO-8601 with seconds, like the original (`2026-01-02T03:04:05+00:00`)."""
    return datetime.fromtimestamp(wall, timezone.utc).replace(microsecond=0).isoformat()


# Bounds of the numbers a state file may hold: JSON integers other tools read as int64, process ids
# as the kernel's pid_t, wall times up to 2106 (a wait until then still fits threading's timeout).
MAX_INT = 2 ** 63 - 1
MAX_PID = 2 ** 31 - 1
MAX_TIME = 2.0 ** 32


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _bad(where: str, name: str, value: object, what: str) -> ValueError:
    """`failed_steps['200'] has a bad attempts value 1.5 (it must be a whole number, 0 or more)`."""
    field = f" {name}" if name else ""
    return ValueError(f"{where} has a bad{field} value {_show(value)} (it must be {what})")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_name(value: object) -> bool:
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\0" not in value


# Each shape: (test, what the message says it must be).
_SHAPES = {
    "text": (lambda v: isinstance(v, str), "text"),
    "path": (lambda v: isinstance(v, str) and "\0" not in v, "a path (text without NUL characters)"),
    "name": (_is_name, "a checkpoint folder name"),
    "flag": (lambda v: isinstance(v, bool), "true or false"),
    "text-or-flag": (lambda v: isinstance(v, (str, bool)), "text, true or false"),
    "step": (lambda v: _is_whole(v, 0, MAX_INT), "a checkpoint step: a whole number, 0 or more"),
    "count": (lambda v: _is_whole(v, 0, MAX_INT), "a whole number, 0 or more"),
    "line": (lambda v: _is_whole(v, 0, MAX_INT), "a W&B history line: a whole number, 0 or more"),
    "version": (lambda v: _is_whole(v, 1, MAX_INT), "a whole number, 1 or more"),
    "attempts": (lambda v: _is_whole(v, 1, MAX_INT), "a number of attempts: a whole number, 1 or more"),
    "pid": (lambda v: _is_whole(v, 1, MAX_PID), f"a process id: a whole number from 1 to {MAX_PID}"),
    "time": (lambda v: _is_number(v) and 0 <= v <= MAX_TIME, "a time in seconds since 1970"),  # NaN fails too
    "number": (_is_number, "a number"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "steps": (lambda v: isinstance(v, list), "a list of checkpoint steps"),
    "texts": (lambda v: isinstance(v, list), "a list of texts"),
}


def _checked(value: object, kind: str, where: str, name: str = "") -> object:
    """`value` if it has the shape `kind`, else ValueError naming `where` (and the field `name`).
    A kind ending in `?` also takes null; elsewhere null is refused, since code reading
    `entry.get(name, default)` would get None, not its default."""
    if kind.endswith("?"):
        if value is None:
            return value
        kind = kind[:-1]
    test, what = _SHAPES[kind]
    if not test(value):
        raise _bad(where, name, value, what)
    inner = {"steps": "step", "texts": "text"}.get(kind)
    if inner:
        label = f"{where}.{name}" if name else where
        for i, item in enumerate(value):
            _checked(item, inner, f"{label}[{i}]")
    return value


def _steps(value: object, field: str) -> list[int]:
    return list(_checked(value, "steps", field))


def _step_key(key: str, where: str) -> int:
    if not (key.isascii() and key.isdigit() and len(key) <= 19) or int(key) > MAX_INT:
        raise ValueError(f"{where} has the key {_show(key)}, not a checkpoint step")
    return int(key)


def _check_entry(entry: dict, where: str, fields: dict[str, str]) -> None:
    for name, kind in fields.items():
        if name in entry:
            _checked(entry[name], kind, where, name)


# The fields the sidecar reads in each kind of entry, with their shapes; other fields are kept as they are.
FAILED_FIELDS = {"checkpoint": "text", "error": "text", "time": "text", "attempts": "count", "retry_after": "time",
                 "given_up": "flag", "previous_errors": "texts"}
VANISHED_FIELDS = {"checkpoint": "text", "reason": "text", "time": "text"}
IN_FLIGHT_FIELDS = {"checkpoint": "name", "path": "path", "started": "text", "started_at": "time", "host": "text",
                    "pid": "pid", "pid_start": "text", "interrupted": "flag", "gpus": "text", "job_id": "text",
                    "slurm_tag": "text", "slurm_state": "text", "node": "text", "metrics_before": "number?",
                    "attempt": "text"}
# a table row's bookkeeping fields (reporters.rows.ROW_FIELDS; checkpoint_step is read first), all else: "number?"
ROW_SHAPES = {"checkpoint_name": "text", "metrics_path": "text", "eval_params": "object"}
SEGMENT_FIELDS = {"dir": "path", "mode": "text", "run_id": "text", "started": "text", "pid": "pid",
                  "pid_start": "text", "host": "text", "steps": "steps", "closed": "flag", "run": "text",
                  "core_pid": "pid", "core_start": "text", "synced": "text-or-flag", "reconciled": "text",
                  "origin": "text"}


def _by_step(value: object, field: str, fields: dict[str, str]) -> dict[int, dict]:
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be an object (got {_show(value)})")
    out: dict[int, dict] = {}
    for key, entry in value.items():
        where = f"{field}[{key!r}]"
        step = _step_key(key, field)
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object (got {_show(entry)})")
        _check_entry(entry, where, fields)
        out[step] = dict(entry)
    return out


def _row(row: object, where: str) -> tuple[int, dict]:
    if not isinstance(row, dict) or "checkpoint_step" not in row:
        raise ValueError(f"{where} must be an object with checkpoint_step (got {_show(row)})")
    step = _checked(row["checkpoint_step"], "step", where, "checkpoint_step")
    for name, value in row.items():
        if name != "checkpoint_step":
            _checked(value, ROW_SHAPES.get(name, "number?"), where, repr(name))
    return step, dict(row)


class State:
    """In-memory state of one model configuration; `to_dict` gives the file's JSON object."""

    def __init__(self, model_config_key: str, run_id: str, run_name: str) -> None:
        self.model_config_key = model_config_key
        self.run_id = run_id
        self.run_name = run_name
        self.processed: set[int] = set()
        self.rows: dict[int, dict] = {}
        self.failed: dict[int, dict] = {}
        self.vanished: dict[int, dict] = {}
        self.in_flight: dict[int, dict] = {}
        self.unreported: set[int] = set()
        self.pending: list[int] = []
        self.last_seen_step: int | None = None
        self.last_update_time: str | None = None
        self.eval_params: dict | None = None
        self.segments: list[dict] = []  # W&B run segments: {dir, mode, started, pid, host, steps, closed}
        self.sent: dict[int, int] = {}  # rows logged online, not yet confirmed by the server: step -> history line
        self.sent_run = ""  # entity/project/run_id those lines belong to
        self.wandb_run = ""  # entity/project/run_id of the run the rows are reported to (entity may be empty)
        self.pins_dir: str | None = None  # where --pin-checkpoints keeps this model's pins
        self.max_attempts: int | None = None  # --max-attempts of the sidecar that last started (None: not known)
        # what `status` explains with, as the sidecar that last started had it: summary_metrics
        # (["acc", "loss:min"]), wandb_mode (online / offline / disabled), ready_marker,
        # checkpoint_ready_seconds, retry_backoff_seconds, identity (the payload the key hashes)
        self.settings: dict = {}
        self.extra: dict = {}
        self.upgraded_from: int | None = None
        # in memory only: how often each step's row was replaced in this process (what tells a
        # re-evaluated row from the one reported before; object ids are reused)
        self.revisions: dict[int, int] = {}

    @classmethod
    def from_dict(cls, data: dict) -> "State":
        """Adopt a state object of version 1 (the original) or 2; raises ValueError naming the first
        field of a wrong shape (every field the sidecar reads is checked here, so nothing later
        meets a wrong type)."""
        if not isinstance(data, dict):
            raise ValueError("the root is not a JSON object")
        for name in ("model_config_key", "run_id", "run_name", "last_update_time", "wandb_run"):
            _checked(data.get(name), "text?", "the state", name)
        state = cls(data.get("model_config_key") or "", data.get("run_id") or "", data.get("run_name") or "")
        version = _checked(data.get("version", 1), "version", "the state", "version")
        state.processed = set(_steps(data.get("processed_steps", []), "processed_steps"))
        rows = data.get("table_rows", [])
        if not isinstance(rows, list):
            raise ValueError(f"table_rows must be a list (got {_show(rows)})")
        for i, row in enumerate(rows):
            step, row = _row(row, f"table_rows[{i}]")
            state.rows[step] = row
        state.failed = _by_step(data.get("failed_steps") or {}, "failed_steps", FAILED_FIELDS)
        for entry in state.failed.values():
            entry["attempts"] = entry.get("attempts", 1)  # the original's records: one attempt each
            if "retry_after" in entry:
                entry["retry_after"] = float(entry["retry_after"])
        state.vanished = _by_step(data.get("vanished_steps") or {}, "vanished_steps", VANISHED_FIELDS)
        state.in_flight = _by_step(data.get("in_flight") or {}, "in_flight", IN_FLIGHT_FIELDS)
        state.unreported = set(_steps(data.get("unreported_steps", []), "unreported_steps"))
        state.pending = _steps(data.get("pending_steps", []), "pending_steps")
        last_seen = data.get("last_seen_step")
        state.last_seen_step = _checked(last_seen, "step?", "the state", "last_seen_step")
        state.last_update_time = data.get("last_update_time")
        _checked(data.get("eval_params"), "object?", "the state", "eval_params")
        state.eval_params = data.get("eval_params")
        _checked(data.get("pins_dir"), "path?", "the state", "pins_dir")
        state.pins_dir = data.get("pins_dir") or None
        state.max_attempts = _checked(data.get("max_attempts"), "attempts?", "the state", "max_attempts")
        settings = data.get("sidecar_settings") or {}
        state.settings = settings if isinstance(settings, dict) else {}  # informative only: never fatal
        segments = data.get("wandb_segments") or []
        if not isinstance(segments, list):
            raise ValueError(f"wandb_segments must be a list (got {_show(segments)})")
        for i, seg in enumerate(segments):
            where = f"wandb_segments[{i}]"
            if not isinstance(seg, dict) or not isinstance(seg.get("dir"), str):
                raise ValueError(f"{where} must be an object with dir (got {_show(seg)})")
            _check_entry(seg, where, SEGMENT_FIELDS)
            seg = dict(seg)
            seg["steps"] = list(seg.get("steps") or [])
            state.segments.append(seg)
        sent = data.get("wandb_sent") or {}
        if not isinstance(sent, dict) or not isinstance(sent.get("lines", {}), dict):
            raise ValueError(f"wandb_sent must be an object with lines (got {_show(sent)})")
        _checked(sent.get("run"), "text?", "wandb_sent", "run")
        state.sent = {_step_key(k, "wandb_sent.lines"): _checked(v, "line", f"wandb_sent.lines[{k!r}]")
                      for k, v in sent.get("lines", {}).items()}
        state.sent_run = sent.get("run") or ""
        state.wandb_run = data.get("wandb_run") or ""
        state.extra = {k: v for k, v in data.items() if k not in _KNOWN}
        if version < VERSION:
            state.upgraded_from = version
        return state

    def to_dict(self) -> dict:
        """The JSON object written to disk: the original's fields first, then the new ones."""
        data = {
            "version": VERSION,
            "model_config_key": self.model_config_key,
            "run_id": self.run_id,
            "run_name": self.run_name,
            "processed_steps": sorted(self.processed),
            "failed_steps": {str(s): self.failed[s] for s in sorted(self.failed)},
            "table_rows": [self.rows[s] for s in sorted(self.rows)],
            "last_seen_step": self.last_seen_step,
            "last_update_time": self.last_update_time,
            "vanished_steps": {str(s): self.vanished[s] for s in sorted(self.vanished)},
            "in_flight": {str(s): self.in_flight[s] for s in sorted(self.in_flight)},
            "unreported_steps": sorted(self.unreported),
            "pending_steps": sorted(self.pending),
            "eval_params": self.eval_params,
            "wandb_segments": self.segments,
        }
        if self.wandb_run:
            data["wandb_run"] = self.wandb_run
        if self.sent:
            data["wandb_sent"] = {"run": self.sent_run, "lines": {str(s): self.sent[s] for s in sorted(self.sent)}}
        if self.pins_dir:
            data["pins_dir"] = self.pins_dir
        if self.max_attempts is not None:
            data["max_attempts"] = self.max_attempts
        if self.settings:
            data["sidecar_settings"] = self.settings
        data.update(self.extra)
        return data


def read_state(path: Path) -> State | None:
    """Read a state file without any lock (atomic replace makes that safe); None if absent.
    Raises StateCorrupt for a file that is not a valid state, StateTooNew for one a newer
    release wrote (version above VERSION)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateCorrupt(path, f"unreadable: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateCorrupt(path, f"not UTF-8 text: byte {raw[exc.start]:#04x} at offset {exc.start}") from exc
    try:
        data = json.loads(text)
        if not (isinstance(data, dict) and _is_whole(data.get("version"), VERSION + 1, MAX_INT)):
            return State.from_dict(data)
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        raise StateCorrupt(path, (str(exc).splitlines() or [type(exc).__name__])[0][:300]) from exc
    # a newer release's file: its fields may mean what this release cannot know, so nothing is read or rewritten
    raise StateTooNew(path, data["version"], tuple(range(1, VERSION + 1)))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def dump_state(data: dict) -> str:
    """JSON with one top-level field per line and compact values: C-encoder fast (a state of
    10,000 rows dumps in well under 0.1 s) and still readable with `head` or `jq`.

    The text always encodes as UTF-8, whatever the strings hold: readable text stays as it is,
    and a code point UTF-8 cannot hold (a lone surrogate: a path's undecodable byte as Python
    surrogate-escapes it, or `"\\ud800"` read from a metrics.json) is written as its JSON escape,
    which json.loads turns back into the very same string. (Only a high surrogate directly
    followed by a low one reads back as the one character JSON defines that pair to be; no path
    or parsed JSON holds such a pair.)"""
    body = ",\n".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False, separators=(',', ':'))}"
                      for k, v in data.items())
    text = "{\n" + body + "\n}\n"
    try:
        text.encode("utf-8")  # a C fast path; the regex below scans only text that needs it
    except UnicodeEncodeError:
        text = _SURROGATE.sub(_escape, text)  # outside strings the encoder writes only ASCII
    return text


class StateStore:
    """Loads and saves one state file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> State | None:
        """Read the state (None if there is none) and remove temp files a killed writer left.

        A state path that is a symlink is refused: the sidecar never reads or replaces a file
        somewhere else through it."""
        refuse_symlink(self.path, "state file")
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            try:
                leftover.unlink()
            except OSError:
                pass
        return read_state(self.path)

    def save(self, state: State, wall: float, guard=None) -> None:
        """Write the state atomically; raises StateWriteError (previous state intact) on failure.
        `guard()` runs right before the file is replaced (see `write_atomic`)."""
        state.last_update_time = utc_iso(wall)
        text = dump_state(state.to_dict())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, text, keep_backup=True, before_replace=guard)
        except OSError as exc:
            raise StateWriteError(self.path, exc.strerror or str(exc)) from exc


def legacy_synced(state_file: Path) -> set[str]:
    """Folders recorded as synced in `<state>.synced.json`: by a sync while the sidecar ran (it
    never writes the state file then), or by an earlier version; a sync with the sidecar stopped
    moves them into the state file."""
    try:
        return set(json.loads(Path(f"{state_file}.synced.json").read_text()).get("synced", []))
    except (OSError, ValueError, AttributeError):
        return set()


def refuse_symlink(path: Path, what: str) -> None:
    """ConfigError if `path` is a symlink (state and lock files are never followed)."""
    if path.is_symlink():
        raise ConfigError(f"refusing to use the {what} {path}: it is a symlink (to {os.readlink(path)}); "
                          f"remove it or choose another --state-dir")


def _holder(path: Path) -> str:
    """`pid P on host H` from a lock file. The holder writes it just after taking the lock, so a
    contender that lost the race may read it empty: it reads again for up to a second."""
    lines: list[str] = []
    for _ in range(20):
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").split("\n")]
        except OSError:
            lines = []
        if len(lines) > 1 and lines[0].isdigit() and lines[1]:
            return f"pid {lines[0]} on host {lines[1]}"
        time.sleep(0.05)
    pid = lines[0] if lines and lines[0] else "?"
    host = lines[1] if len(lines) > 1 and lines[1] else "?"
    return f"pid {pid} on host {host}"


class ProcessLock:
    """Held for the sidecar's lifetime: flock (records pid and host in the file) or a soft marker.

    `auto` uses flock and falls back to the soft marker where the filesystem has no flock.
    `soft` uses an exclusive-create marker holding pid+host; markers of dead local pids are broken.
    Lock files are never followed through symlinks. `check()` finds a lock file that was removed
    or replaced under the running sidecar (a flock on a deleted file excludes nobody).
    """

    def __init__(self, path: Path, mode: str = "auto") -> None:
        self.path = path
        self.mode = mode
        self._lock = None
        self._marker_fd: int | None = None
        self._held: tuple[int, int] | None = None  # (st_dev, st_ino) of the file this process holds
        self.kind = ""

    def acquire(self) -> None:
        """Take the lock now or raise LockHeld naming the holder (LockUnavailable when the file
        cannot be made or written at all)."""
        try:
            self._acquire()
        except OSError as exc:
            raise LockUnavailable(self.path, exc.strerror or str(exc)) from exc

    def _acquire(self) -> None:
        import filelock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        refuse_symlink(self.path, "lock file")
        if self.mode in ("auto", "flock"):
            lock = filelock.UnixFileLock(str(self.path), fallback_to_soft=False, on_acquired=self._record_owner)
            try:
                lock.acquire(blocking=False)
                self._lock, self.kind = lock, "flock"
                return
            except filelock.Timeout as exc:
                raise LockHeld(self.path, _holder(self.path)) from exc
            except OSError as exc:
                if self.mode == "flock" or exc.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
                    raise
                log.warning("flock is not supported for %s (%s); using a soft lock marker", self.path, exc.strerror)
        lock = filelock.SoftFileLock(str(self.path))
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout as exc:
            raise LockHeld(self.path, _holder(self.path)) from exc
        self._lock, self.kind = lock, "soft"
        self._flock_marker()

    def _flock_marker(self) -> None:
        """Also hold a flock on the soft marker where the filesystem has one, so a sidecar started
        with --lock-mode auto/flock on this host is excluded too (its flock attempt fails). The
        descriptor stays open either way: the marker's inode number cannot then be reused by a
        new file while this process holds it, which `check` relies on."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return
        stat = os.fstat(fd)
        self._held = (stat.st_dev, stat.st_ino)
        self._marker_fd = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass

    def _record_owner(self, fd: int) -> None:
        info = f"{os.getpid()}\n{socket.gethostname()}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        stat = os.fstat(fd)
        self._held = (stat.st_dev, stat.st_ino)

    def _names_us(self) -> bool:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
        except OSError:
            return False
        return len(lines) > 1 and lines[0].strip() == str(os.getpid()) and lines[1].strip() == socket.gethostname()

    def check(self) -> bool:
        """Whether the lock file is still the one this process holds (one lstat; for a soft marker
        also one read: it must name this process). If it was removed or replaced, take it again
        (one warning) and return True; if another process holds it now, raise LockLost naming it:
        two sidecars work on one configuration, and the one that holds the file goes on."""
        if self._lock is None or self._held is None:
            return False
        try:
            stat = os.lstat(self.path)
            now: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            now = None
        except OSError:
            return False  # cannot look (a folder without search permission): nothing is known to have changed
        if now == self._held and (self.kind != "soft" or self._names_us()):
            return False
        what = "removed" if now is None else "removed or replaced" if now != self._held else "rewritten"
        soft = self.kind == "soft"
        self._drop()
        try:
            if soft and now is not None and self._names_us():
                self.path.unlink()  # a marker naming this process is this process's claim (a restored copy)
            self.acquire()
        except LockHeld as exc:
            raise LockLost(self.path, what, exc.holder) from exc
        except (OSError, ConfigError, LockUnavailable) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LockLost(self.path, what, "", reason) from exc
        log.warning("the lock file %s was %s while this sidecar ran; it was re-created and taken again (a sidecar "
                    "of this configuration started in between would have found no lock)", self.path, what)
        return True

    def _drop(self) -> None:
        """Let go of the lock object of a file that is no longer at the path. Neither filelock
        class removes a path that is not its own file, so the new holder's file is left alone."""
        lock, self._lock, self._held = self._lock, None, None
        try:
            if lock is not None:
                lock.release()
        except OSError:
            pass
        finally:
            if self._marker_fd is not None:
                os.close(self._marker_fd)
                self._marker_fd = None

    def release(self) -> None:
        if self._lock is not None:
            try:
                self._lock.release()
            finally:
                self._lock = None
                self._held = None
                if self._marker_fd is not None:
                    os.close(self._marker_fd)
                    self._marker_fd = None
