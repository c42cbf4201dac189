"""Align's upload phase: each framework's new points into its SwanLab experiment.

With one job the frameworks go one after another in this process; with more, each goes in a
process of its own (spawned: the SwanLab SDK has no batch call, each step is a `log` call of about
1 ms, one process is one core), at most `jobs` at a time. Either way:

- progress per framework: a bar on a terminal, else a log line every `every` seconds, and one
  summary line per framework when it ends;
- the upload record is kept as the upload goes: an offline or local upload's run folder is noted
  in it before the first step (a restart after a kill -9 reads back what that folder holds); a
  cloud upload is cut into SwanLab runs of CLOUD_SEGMENT_ROWS rows and each finished run's rows
  (on the server then) are recorded;
- an error in one framework is one line naming it, the others go on; the run then fails (exit 1);
- Ctrl-C or SIGTERM stops every upload at a step boundary; what SwanLab took is recorded, and align
  exits 130 (Ctrl-C) or 143 (SIGTERM).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from . import events as upload_events
from ..errors import SidecarError
from ..progress import Progress, eta_text

log = logging.getLogger(__name__)

LOCAL_MODES = ("offline", "local")  # modes whose run folder is what SwanLab holds
CLOUD_SEGMENT_ROWS = 20_000  # a cloud upload finishes its SwanLab run (flushed to the server) this often
GRACE_SECONDS = 60.0  # a stopped upload process's time to finish its SwanLab run, then it is killed


class AlignFailed(SidecarError):
    """One or more frameworks' uploads failed (each was named on its own line)."""


class AlignStopped(SidecarError):
    """Ctrl-C or SIGTERM stopped the upload; what SwanLab took is recorded."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Status(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    NOT_STARTED = "not started"


# ----- messages from an upload process to align (and the one answer back) ----------------------------
@dataclass
class Opened:
    run_dir: str


@dataclass
class Advanced:
    rows: int


@dataclass
class Durable:
    rows: int
    run_dir: str


@dataclass
class Output:
    """A line SwanLab printed."""
    text: str


@dataclass
class LogLine:
    level: int
    name: str
    text: str


@dataclass
class Finished:
    stopped: bool  # it stopped at a stop request before the end (what it took was sent as Durable)


@dataclass
class Failed:
    error: str
    detail: str


@dataclass
class Job:
    """One framework's upload, as its process gets it."""
    uploader: object
    fw: object
    cfg: object
    frame: object
    mode: str
    segment_rows: int | None
    log_level: int


# ----- align's side of one framework's upload --------------------------------------------------------
@dataclass
class FrameworkUpload:
    """One framework's upload as align follows it: its plan (run.py's _Plan), its progress, how many
    of its rows are in SwanLab for good (recorded), and its state."""
    plan: object
    out: object
    every: float
    bar: bool | None
    status: Status = Status.QUEUED
    rows: int = 0  # rows of plan.send recorded as sent
    error: str | None = None
    progress: object = None  # _Bar or Progress
    open_notes: list = field(default_factory=list)  # the record's unfinished uploads: {dir, pid, host}
    pid: int | None = None
    started: float = 0.0
    position: int = 0  # of its bar: a free line among the uploads running

    @property
    def name(self) -> str:
        return self.plan.fw.name

    @property
    def total(self) -> int:
        return len(self.plan.send)

    def start(self, rebuild: bool, position: int = 0) -> None:
        self.status, self.position = Status.RUNNING, position
        self.open_notes = self.plan.record.open_notes(self.plan.key)
        self.started = time.monotonic()
        if rebuild:  # recorded first: a re-run after an interrupted rebuild completes the new experiment
            self._save(None)

    def _save(self, sent, open_notes=None) -> bool:
        plan = self.plan
        try:
            plan.record.save(plan.base, plan.fw.experiment_version, plan.key, sent, open_notes)
        except OSError as exc:
            self.fail(f"the upload record {plan.record.path} cannot be written ({exc})")
            return False
        return True

    def opened(self, run_dir: str) -> bool:
        if self.status is not Status.RUNNING:
            return False
        if self.progress is None:  # from here: the ETA leaves out starting a process and SwanLab
            self.progress = _progress(f"{self.name} upload", self.total, self.every, self.bar, self.position)
        if self.plan.mode in LOCAL_MODES:
            import socket

            notes = [*self.open_notes, {"dir": run_dir, "pid": self.pid or os.getpid(), "host": socket.gethostname()}]
            if not self._save(None, notes):
                return False
            self.open_notes = notes
        return True

    def advanced(self, rows: int) -> None:
        if self.progress is not None and rows > self.progress.done:
            self.progress.advance(min(rows, self.total) - self.progress.done)

    def durable(self, rows: int, run_dir: str | None) -> None:
        """The first `rows` rows of plan.send are in SwanLab for good: record them, and `run_dir` (a
        finished SwanLab run) is no longer an unfinished folder."""
        from .record import add_points

        rows = min(rows, self.total)
        notes = [n for n in self.open_notes if n["dir"] != run_dir]
        if rows <= self.rows and notes == self.open_notes:
            return
        sent = self.plan.sent
        if rows > self.rows:
            part = self.plan.send.iloc[self.rows:rows]
            sent = add_points(sent, {c: part.loc[part[c].notna(), "step"].to_numpy(dtype="int64")
                                     for c in part.columns[1:]})
        if self._save(sent, notes):
            self.plan.sent, self.rows, self.open_notes = sent, rows, notes

    def finish(self, stopped: bool, stop_requested: bool = True) -> None:
        """The uploader returned: all its rows are in SwanLab, or, `stopped` before the end, those it
        reported durable. A stop align did not ask for (a SIGTERM sent to the upload process alone)
        is a failure."""
        if self.status is not Status.RUNNING:
            return
        if stopped and not stop_requested and self.rows < self.total:
            self.fail("its process was stopped by a signal before the end")
            return
        if not stopped:
            self.durable(self.total, None)
            if self.status is not Status.RUNNING:
                return
        self.status = Status.STOPPED if stopped and self.rows < self.total else Status.DONE
        self._close()

    def fail(self, error: str) -> None:
        if self.status is not Status.RUNNING:
            return
        self.status, self.error = Status.FAILED, error
        self._close()

    def _close(self) -> None:
        took = f" in {eta_text(time.monotonic() - self.started)}"
        if self.progress is not None:
            self.progress.close()
        plan = self.plan
        where = f"{plan.cfg.project}/{plan.fw.target_exp_name}"
        if self.status is Status.FAILED:
            self.out(f"{self.name}: upload failed: {self.error}; {self.rows} of {self.total} step(s) recorded as "
                     f"sent; {self._rest()}")
        elif self.status is Status.STOPPED:
            self.out(f"{self.name}: stopped after {self.rows} of {self.total} step(s) to {where}{took}; they are "
                     f"recorded as sent, {self._rest()}")
        elif plan.old_id:
            self.out(f"{self.name}: uploaded {self.rows} step(s) into a fresh SwanLab experiment {plan.exp_id} "
                     f"({where}){took}; re-runs add to it; experiment {plan.old_id} is left as it was (delete it "
                     f"in SwanLab if you no longer want it)")
        else:
            self.out(f"{self.name}: uploaded {self.rows} step(s) with new values to {where}{took}")
        if plan.blocked and self.status is Status.DONE:
            from .run import blocked_line

            self.out(blocked_line(plan, sent_now=True))

    def _rest(self) -> str:
        if self.open_notes:
            return f"the next run reads back what SwanLab wrote in {self.open_notes[-1]['dir']} and sends the rest"
        return "the next run sends the rest"


class _Bar:
    """A terminal's progress bar for one upload. Unlike Progress's bar it is not left on the screen
    when it closes (the summary line replaces it): bars left behind at their positions while other
    uploads still draw theirs below garble the terminal."""

    def __init__(self, label: str, total: int, position: int) -> None:
        from tqdm import tqdm

        self.done = 0
        self._bar = tqdm(total=total, desc=label, unit="step", file=sys.stderr, position=position,
                         dynamic_ncols=True, mininterval=0.5, leave=False)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def _progress(label: str, total: int, every: float, bar: bool | None, position: int):
    """A bar on a terminal (or if `bar`), else Progress's periodic log line."""
    if bar if bar is not None else _on_terminal():
        return _Bar(label, total, position)
    return Progress(label, total, log, every=every, bar=False, unit="step")


# ----- the events an uploader sees ------------------------------------------------------------------
class _Stop:
    """Ctrl-C / SIGTERM while the uploads run: noted here (the handler only sets attributes). In
    this process (`at_once_second`) a second one raises KeyboardInterrupt: a SwanLab run that cannot
    finish (a cloud upload with the network gone) must not hold align for ever."""

    def __init__(self, at_once_second: bool = False) -> None:
        self.signum: int | None = None
        self.count = 0
        self.at_once_second = at_once_second
        self._previous: dict = {}

    def __call__(self, signum, _frame) -> None:
        self.signum = self.signum or signum
        self.count += 1
        if self.count == 1:
            log.info("stopping the upload at the next step (%s again to %s)", signal.Signals(signum).name,
                     "stop at once" if self.at_once_second else "kill the upload processes")
        elif self.at_once_second:
            raise KeyboardInterrupt

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class _InProcess(upload_events.UploadEvents):
    def __init__(self, upload: FrameworkUpload, stop: _Stop, segment_rows: int | None) -> None:
        self.upload, self.stop, self.segment_rows = upload, stop, segment_rows

    def opened(self, run_dir: Path) -> bool:
        return self.upload.opened(str(run_dir))

    def advanced(self, rows: int) -> None:
        self.upload.advanced(rows)

    def durable(self, rows: int, run_dir: Path) -> None:
        self.upload.durable(rows, str(run_dir))

    def stopping(self) -> bool:
        return self.stop.requested or self.upload.status is not Status.RUNNING


def _segment_rows(mode: str, segment_rows: int | None) -> int | None:
    if segment_rows is not None:
        return segment_rows
    return None if mode in LOCAL_MODES else CLOUD_SEGMENT_ROWS


def upload_all(uploads: list[FrameworkUpload], uploader, jobs: int, rebuild: bool,
               segment_rows: int | None = None) -> None:
    """Run every upload (plan.send non-empty), `jobs` at a time; each ends DONE, FAILED, STOPPED or
    NOT_STARTED. Raises AlignStopped after a Ctrl-C / SIGTERM, else AlignFailed if any failed."""
    sequential = jobs <= 1 or len(uploads) <= 1
    stop = _Stop(at_once_second=sequential)
    redirect = None
    if any(u.bar if u.bar is not None else _on_terminal() for u in uploads):
        # one redirection around all bars: each bar's own would be undone out of order as they close
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm()
        redirect.__enter__()
    main_thread = _in_main_thread()
    if main_thread:
        stop.install()
    try:
        if sequential:
            _sequential(uploads, uploader, stop, rebuild, segment_rows)
        else:
            _parallel(uploads, uploader, stop, rebuild, segment_rows, jobs)
    finally:
        if main_thread:
            stop.restore()
        if redirect is not None:
            redirect.__exit__(None, None, None)
    if stop.requested:
        for u in uploads:
            if u.status is Status.QUEUED:
                u.status = Status.NOT_STARTED
        name = signal.Signals(stop.signum).name
        parts = [f"{u.name} {u.rows} of {u.total}" + (" (not started)" if u.status is Status.NOT_STARTED else "")
                 for u in uploads if u.status is not Status.DONE]
        raise AlignStopped(stop.signum, f"align stopped by {name}: steps recorded as sent: {', '.join(parts)}; "
                                        f"run align again to send the rest")
    failed = [u.name for u in uploads if u.status is Status.FAILED]
    if failed:
        others = len(uploads) - len(failed)
        raise AlignFailed(f"the upload of {', '.join(failed)} failed (see {'its line' if len(failed) == 1 else 'their lines'} "
                          f"above); {others} other framework(s) completed; run align again to send the rest")


def _on_terminal() -> bool:
    from ..progress import on_terminal

    return on_terminal()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _sequential(uploads, uploader, stop: _Stop, rebuild: bool, segment_rows) -> None:
    for u in uploads:
        if stop.requested:
            u.status = Status.NOT_STARTED
            continue
        u.start(rebuild)
        if u.status is not Status.RUNNING:
            continue
        token = upload_events.EVENTS.set(_InProcess(u, stop, _segment_rows(u.plan.mode, segment_rows)))
        try:
            uploader(u.plan.fw, u.plan.cfg, u.plan.send, u.plan.mode)
        except ModuleNotFoundError:
            raise  # a missing package: the command line's one line naming it, for every framework alike
        except Exception as exc:
            log.debug("%s: upload failed", u.name, exc_info=True)
            u.fail(f"{type(exc).__name__}: {exc}")
        else:
            u.finish(stopped=stop.requested)
        finally:
            upload_events.EVENTS.reset(token)


# ----- one process per framework ------------------------------------------------------------------
@dataclass
class _Child:
    upload: FrameworkUpload
    process: object
    conn: object
    terminated: bool = False
    exited: bool = False


def _parallel(uploads, uploader, stop: _Stop, rebuild: bool, segment_rows, jobs: int) -> None:
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    queued = list(uploads)
    running: list[_Child] = []
    stop_at = None
    level = logging.getLogger().getEffectiveLevel()
    try:
        while queued or running:
            while queued and len(running) < jobs and not stop.requested:
                u = queued.pop(0)
                u.start(rebuild, position=min(set(range(jobs)) - {c.upload.position for c in running}))
                if u.status is not Status.RUNNING:
                    continue
                job = Job(uploader, u.plan.fw, u.plan.cfg, u.plan.send, u.plan.mode,
                          _segment_rows(u.plan.mode, segment_rows), level)
                ours, theirs = ctx.Pipe()
                process = ctx.Process(target=child_main, args=(theirs,), name=f"align-upload-{u.name}",
                                      daemon=False)
                try:
                    data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
                    process.start()
                except Exception as exc:  # e.g. an uploader that cannot be pickled (a closure)
                    log.debug("%s: upload process did not start", u.name, exc_info=True)
                    u.fail(f"its upload process did not start ({type(exc).__name__}: {exc})")
                    ours.close()
                    theirs.close()
                    continue
                theirs.close()
                u.pid = process.pid
                log.info("%s: uploading %d step(s) in process %d", u.name, u.total, process.pid)
                # sent from a thread: the pipe takes the frame only as fast as the new process reads it,
                # which it does once its interpreter and pandas have started; the others start meanwhile
                threading.Thread(target=_send_job, args=(ours, data), name=f"align-job-{u.name}", daemon=True).start()
                running.append(_Child(u, process, ours))
            if not running:
                break
            wait([c.conn for c in running] + [c.process.sentinel for c in running], timeout=0.25)
            for child in list(running):
                _drain(child)
                if not child.process.is_alive():
                    child.process.join()
                    _drain(child)
                    child.conn.close()
                    _ended(child)
                    running.remove(child)
            if stop.requested:
                if stop_at is None:
                    stop_at = time.monotonic()
                    for child in running:
                        _terminate(child)
                if stop.count > 1 or time.monotonic() - stop_at > GRACE_SECONDS:
                    for child in running:
                        if child.process.is_alive():
                            child.process.kill()
    finally:
        for child in running:  # an error of align itself: no upload process outlives it
            if child.process.is_alive():
                child.process.kill()
            child.process.join()


def _send_job(conn, data: bytes) -> None:
    try:
        conn.send_bytes(data)
    except OSError:  # the process is gone already: its end is reported by the loop
        pass


def _terminate(child: _Child) -> None:
    if not child.terminated and child.process.is_alive():
        child.terminated = True
        child.process.terminate()


def _drain(child: _Child) -> None:
    u = child.upload
    while True:
        try:
            if not child.conn.poll():
                return
            msg = child.conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(msg, Opened):
            ok = u.opened(msg.run_dir)
            try:
                child.conn.send(ok)
            except OSError:
                pass
        elif isinstance(msg, Advanced):
            u.advanced(msg.rows)
        elif isinstance(msg, Durable):
            u.durable(msg.rows, msg.run_dir)
        elif isinstance(msg, Output):
            u.out(f"{u.name}: {_plain(msg.text)}")
        elif isinstance(msg, LogLine):
            logging.getLogger(msg.name).log(msg.level, "%s", msg.text)
        elif isinstance(msg, Finished):
            u.finish(stopped=msg.stopped, stop_requested=child.terminated)
        elif isinstance(msg, Failed):
            log.debug("%s: upload failed in process %s:\n%s", u.name, child.process.pid, msg.detail)
            u.fail(msg.error)


def _plain(text: str) -> str:
    """SwanLab's line without its emoji: their width differs between terminals, and a wrong width
    moves the cursor under the progress bars."""
    import unicodedata

    kept = "".join(ch for ch in text if unicodedata.category(ch) not in ("So", "Mn", "Cf", "Cs"))
    return " ".join(kept.split())


def _ended(child: _Child) -> None:
    """The upload process is gone; if it said neither Finished nor Failed, it died."""
    u = child.upload
    if u.status is not Status.RUNNING:
        return
    code = child.process.exitcode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    if child.terminated and code == -signal.SIGKILL:
        how += f" (it had not finished its SwanLab run within {GRACE_SECONDS:.0f} s of the stop)"
    u.fail(f"its process {child.process.pid} {how}")


# ----- inside the upload process ---------------------------------------------------------------------
class _Lines:
    """A text stream that sends each complete line (SwanLab prints to stdout) to align."""

    encoding = "utf-8"

    def __init__(self, send) -> None:
        self.send, self.buffer = send, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.strip():
                self.send(Output(line.rstrip()))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _ToAlign(logging.Handler):
    def __init__(self, send) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.send(LogLine(record.levelno, record.name, text))
        except Exception:  # align is gone: nothing to tell
            pass


class _InChild(upload_events.UploadEvents):
    """Events of an upload process: sent to align over the pipe. Stopping: SIGTERM (align's stop),
    or align gone (its pid no longer our parent, or the pipe broken)."""

    def __init__(self, conn, segment_rows: int | None) -> None:
        self.conn, self.segment_rows = conn, segment_rows
        self.parent = os.getppid()
        self.terminated = False
        self.orphan = False
        self.stopped = False  # stopping() said so once: the upload ended early

    def on_sigterm(self, _signum, _frame) -> None:
        self.terminated = True

    def send(self, msg) -> None:
        if self.orphan:
            return
        try:
            self.conn.send(msg)
        except OSError:
            self.orphan = True

    def opened(self, run_dir: Path) -> bool:
        self.send(Opened(str(run_dir)))
        try:
            return bool(self.conn.recv()) and not self.orphan
        except (EOFError, OSError):
            self.orphan = True
            return False

    def advanced(self, rows: int) -> None:
        self.send(Advanced(rows))

    def durable(self, rows: int, run_dir: Path) -> None:
        self.send(Durable(rows, str(run_dir)))

    def stopping(self) -> bool:
        if os.getppid() != self.parent:
            self.orphan = True
        self.stopped = self.stopped or self.terminated or self.orphan
        return self.stopped


def child_main(conn) -> None:
    """An upload process: one framework's upload (the Job align sends first), reporting to align
    over `conn`."""
    events = _InChild(conn, None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches align, which stops us
    signal.signal(signal.SIGTERM, events.on_sigterm)
    os.environ["COLUMNS"] = "1000"  # SwanLab's lines are relayed whole, not wrapped at 80 columns
    try:
        job = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    events.segment_rows = job.segment_rows
    root = logging.getLogger()
    root.handlers = [_ToAlign(events.send)]
    root.setLevel(job.log_level)
    sys.stdout = _Lines(events.send)
    upload_events.EVENTS.set(events)
    try:
        job.uploader(job.fw, job.cfg, job.frame, job.mode)
    except BaseException as exc:  # noqa: BLE001 - every way out is told to align
        import traceback

        events.send(Failed(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        sys.exit(1)
    events.send(Finished(stopped=events.stopped))
