"""W&B reporting (SPEC §4): one run per model configuration, fed from the state file.

The run lives on a worker thread so evaluation never waits for W&B (an unreachable server costs
the worker an init timeout, not the evaluator). The service hands the worker snapshots of state
(`report`) and collects what it wrote and learnt (`collect`). This is the only module that
imports wandb.

Delivery is judged by the server (SPEC §4.4). wandb-core sends history lines in the order they
were logged and does not flush when its parent is killed, so a row logged online is only *sent*:
it waits in state with the history line it got (`wandb_sent`) until the server holds that many
lines. The worker asks the server for the run's history line count a few seconds after each write
(and backs off while lines are missing); a clean `finish()` confirms every line; and a resumed run
starts at the server's line count (wandb reads it with `RunResumeStatus`), so a restarted sidecar
writes again exactly the rows whose lines never arrived. Offline, each process writes its own
segment folder, or one per `--wandb-segment-minutes` (each closed one can be synced while the
watch goes on); crashed segments are read back at start-up (`reconcile`).

Many reporters may share one process (fleet mode, `WandbOptions.shared`), each with its run open.
wandb has one setup and one service (wandb-core) per process for all of them: runs are opened one
at a time (`_INIT_LOCK`), with `reinit="create_new"` (wandb 0.31's default in a script,
"return_previous", hands a second init the first reporter's run), and what acts on the whole
process (`wandb.teardown()`, stopping wandb-core) is done only by a reporter that no other
reporter's open run depends on (`_OPEN`), the last one out.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import queue
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from .. import labels
from ..crash import crash_point
from ..executors.processes import child_processes, kill_orphan, process_start_time, run_command
from ..files import clean_name
from .base import Delivery, Reconciled, ReportBatch, run_key, same_run
from .rows import (BASE_METRICS, MAX_WANDB_METRICS, TRAIN_FIELDS, metric_names, same_row, summary_from_rows,
                   table_columns, wandb_metrics)

log = logging.getLogger(__name__)

BACKOFF_FIRST = 30.0
BACKOFF_MAX = 900.0
# wandb-core sends history to the server every 15 s by default and loses what it holds when the
# sidecar is killed: 1 s keeps that window short (whole seconds: wandb-core truncates the value).
TRANSMIT_SECONDS = 1
RETRY_WAIT_MAX_SECONDS = 10  # wandb-core's longest wait between retries after an outage (default 60)
CONFIRM_FIRST = 2.5  # seconds after a write before the server is asked whether it holds the lines
CONFIRM_MAX = 15.0  # longest wait between two such questions while lines are missing
TABLE_GROWTH = 0.1  # with an interval, a table is logged again only once the rows grew by a tenth (or one)
STALL_SECONDS = 120.0  # the server answers but takes no line for this long: open the run again
QUERY_TIMEOUT = 10.0
RELEASE_TIMEOUT = 10.0  # seconds wandb-core gets to end the stream a failed init left (shared mode)
_CLOSE = object()
# W&B drops a second alert of one title within this many seconds: the notifier already paces its
# notices (one a kind a minute, the folded latest at the minute's end), so W&B must not drop that one
# (0 would mean wandb's default, a minute)
ALERT_WAIT_SECONDS = 1
MAX_PENDING_ALERTS = 20  # alerts kept while the online run is not open; older ones go first
# a rotated offline segment lives at least this long: wandb names offline folders by the second
# their run started, so two segments of one run id opened within a second would share a folder
MIN_SEGMENT_SECONDS = 1.0


@dataclass(frozen=True)
class _Alert:
    title: str
    text: str
    level: str  # INFO | WARN | ERROR

# Held while a run opens, and while wandb is torn down or its wandb-core stopped: wandb's setup is
# not meant for concurrent inits, and a teardown during another reporter's init would break it.
_INIT_LOCK = threading.Lock()
_OPEN_LOCK = threading.Lock()
_OPEN: set = set()  # reporters of this process with a run open (added only under _INIT_LOCK)


@dataclass(frozen=True)
class WandbOptions:
    project: str
    entity: str | None
    run_id: str
    run_name: str
    resume: str
    job_type: str
    mode: str  # online | offline
    config: dict
    init_timeout: float = 30.0
    system_stats: bool = False
    fallback: str = "none"  # or "offline"
    summary_metrics: tuple[str, ...] = ("HR@10", "NDCG@10")
    summary_lower_better: frozenset[str] = frozenset()  # the summary metrics whose best is the minimum
    flush_interval: float = 1.0  # seconds between wandb-core writes of the .wandb file
    one_shot: bool = False  # `sync`: no evaluation goes on behind it, no retry later
    table_seconds: float = 300.0  # at most one table per this long while rows come (0: every pass); always at exit
    shared: bool = False  # other reporters of this process have runs open at the same time (fleet mode)
    segment_seconds: float = 0.0  # offline: close the segment this long after it opened (0: one per process)
    seal_table: bool = True  # a seal without rows writes the table too (False: the summary alone; `sync`)


def wandb_text(value):
    """`value`, with a str made valid UTF-8 (W&B cannot send a lone surrogate: a folder name with a
    byte that is not UTF-8 reaches Python as one); the bad character is kept as its escape."""
    return clean_name(value) if isinstance(value, str) else value


def options_for(settings, wandb_config: dict, mode: str | None = None) -> WandbOptions:
    """W&B options from a Config (or any object with its wandb_* attributes); the run id and
    name come from the state file (`bind`)."""
    return WandbOptions(
        project=settings.wandb_project, entity=settings.wandb_entity, run_id="", run_name="",
        resume=settings.wandb_resume, job_type=settings.wandb_job_type, mode=mode or settings.wandb_mode,
        config={k: wandb_text(v) for k, v in wandb_config.items()}, init_timeout=settings.wandb_init_timeout, system_stats=settings.wandb_system_stats,
        fallback=settings.wandb_fallback, summary_metrics=settings.summary_metrics,
        summary_lower_better=getattr(settings, "summary_lower_better", frozenset()),
        table_seconds=60.0 * settings.wandb_table_minutes,
        segment_seconds=60.0 * getattr(settings, "wandb_segment_minutes", 0.0),
    )


def history_row(row: dict, first: tuple[str, ...] = ()) -> dict:
    """The history record of one checkpoint (SPEC §4.2); never logged with `step=`. At most
    MAX_WANDB_METRICS metrics (HR@K, NDCG@K and the summary metrics `first`, then by name)."""
    item = {"checkpoint_step": int(row["checkpoint_step"])}
    item.update((k, row[k]) for k in TRAIN_FIELDS if k in row)  # the training context: train/epoch, ...
    for name in wandb_metrics(row, first)[0]:
        item[f"eval/{name}"] = row[name]
    item["eval/checkpoint_name"] = wandb_text(row.get("checkpoint_name", f"checkpoint-{row['checkpoint_step']}"))
    item["eval/metrics_path"] = wandb_text(row.get("metrics_path", ""))
    return item


def table_data(rows: dict[int, dict], first: tuple[str, ...] = ()) -> tuple[list[str], list[list], int]:
    """Columns and one row per checkpoint, sorted by step; and how many metric columns were left
    out (beyond MAX_WANDB_METRICS)."""
    ordered = [rows[s] for s in sorted(rows)]
    columns = table_columns(ordered, first)
    shown, left = len(columns) - 3 - sum(c in TRAIN_FIELDS for c in columns), 0  # metric columns only
    if shown >= MAX_WANDB_METRICS:
        names = set(BASE_METRICS)
        for row in ordered:
            names.update(metric_names(row))
        left = len(names) - shown
    return columns, [[wandb_text(row.get(c)) for c in columns] for row in ordered], left


def _utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _redact(text: str) -> str:
    key = os.environ.get("WANDB_API_KEY")
    text = text.replace(key, "***") if key else text
    return " ".join(text.split())[:300]


class Outage(Exception):
    """W&B cannot be reached or refused the run."""


class QueryUnsupported(Exception):
    """The server (or the credentials in use) does not answer the history line count query."""


@dataclass(frozen=True)
class ServerRef:
    """Where a run lives on its server, and the key the run was opened with (never printed)."""

    base_url: str
    api_key: str = field(repr=False)
    entity: str = ""
    project: str = ""
    run_id: str = ""

    @property
    def run(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"


_LINE_COUNT_QUERY = """query RunHistoryLineCount($project: String, $entity: String, $name: String!) {
  model(name: $project, entityName: $entity) { bucket(name: $name, missingOk: true) { historyLineCount } }
}"""


def history_line_count(ref: ServerRef, timeout: float = QUERY_TIMEOUT) -> int:
    """How many history lines the server holds for the run (0 if it has no such run).

    The same fields wandb's own `RunResumeStatus` reads. Raises Outage when the server cannot be
    reached or fails (5xx), QueryUnsupported when it refuses the question (4xx, bad answer)."""
    answer = _graphql(ref.base_url, ref.api_key, {
        "query": _LINE_COUNT_QUERY, "operationName": "RunHistoryLineCount",
        "variables": {"project": ref.project, "entity": ref.entity, "name": ref.run_id}}, timeout)
    try:
        bucket = answer["data"]["model"]["bucket"]
        return 0 if bucket is None else int(bucket["historyLineCount"])
    except (KeyError, TypeError, ValueError) as exc:
        raise QueryUnsupported(f"unexpected answer {str(answer)[:200]}") from exc


_VIEWER_QUERY = "query Viewer { viewer { entity } }"


def _api_key(base_url: str) -> str | None:
    """The API key wandb would use for `base_url`: WANDB_API_KEY, else the netrc entry of its host
    (where `wandb login` writes it)."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    import netrc

    try:
        entry = netrc.netrc(os.environ.get("NETRC") or None).authenticators(urlparse(base_url).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def _graphql(base_url: str, api_key: str, body: dict, timeout: float) -> dict:
    """One GraphQL request; raises Outage (unreachable, 5xx) or QueryUnsupported (4xx, garbled)."""
    auth = base64.b64encode(f"api:{api_key}".encode()).decode()
    request = urllib.request.Request(f"{base_url.rstrip('/')}/graphql", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}",
                                              "User-Agent": "eval-sidecar"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise Outage(f"the server answered HTTP {exc.code}") from exc
        raise QueryUnsupported(f"the server answered HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:  # refused, unresolvable, reset
        reason = getattr(exc.reason, "strerror", None) or exc.reason
        raise Outage(f"cannot reach {urlparse(base_url).netloc}: {reason}") from exc
    except (OSError, ValueError) as exc:  # timeouts, a connection cut mid-answer, a garbled answer
        raise Outage(f"{type(exc).__name__}: {exc}") from exc


def server_ref(project: str, entity: str | None, run_id: str, timeout: float = QUERY_TIMEOUT) -> ServerRef | None:
    """Where a run lives, without opening it (`sync` counts the server's history lines around each
    upload before it opens the run, if ever): WANDB_BASE_URL (or W&B's cloud), the API key wandb
    would use, and `entity` or, when it is left to the server, the viewer's default entity. None
    when no API key is found or the server does not say. Raises Outage when it cannot be reached."""
    base_url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    api_key = _api_key(base_url)
    if not api_key:
        return None
    if not entity:
        try:
            answer = _graphql(base_url, api_key, {"query": _VIEWER_QUERY, "operationName": "Viewer"}, timeout)
            entity = answer["data"]["viewer"]["entity"]
        except QueryUnsupported:
            return None
        except (KeyError, TypeError):
            return None
        if not isinstance(entity, str) or not entity:
            return None
    return ServerRef(base_url, api_key, entity, project, run_id)


def _leave(reporter) -> bool:
    """Take `reporter` off the open runs; whether another reporter of this process still has one."""
    with _OPEN_LOCK:
        _OPEN.discard(reporter)
        return bool(_OPEN)


@contextmanager
def _last_out(reporter):
    """Take `reporter` off the open runs and yield whether it was the last: then the caller may act
    on the whole process (tear wandb down, stop wandb-core), and no run opens until it is done."""
    with _INIT_LOCK:
        yield not _leave(reporter)


def _release_stream(run_id: str) -> bool:
    """End the stream wandb-core keeps for `run_id` after an init that failed (with the server
    answering but failing, or too slow): until then every init of that run in this process fails
    with "run ID ... is in use", and only `wandb.teardown()` ends it, which ends every other run of
    the process too. Whether it was ended.

    wandb 0.31 has no public call for it; this sends what `run.finish()` does: the exit record,
    then, once it is answered, the finish. Never the finish alone: wandb-core handles it on the
    connection all runs of the process share and waits there until the stream has closed, which
    one without an exit record never does; every run would hang."""
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.interface.interface_sock import InterfaceSock

        service = wandb_setup.singleton().assert_service()
        interface = InterfaceSock(service._asyncer, service._client, stream_id=run_id)
        interface.deliver_exit(1).wait_or(timeout=RELEASE_TIMEOUT)
        service.inform_finish(run_id=run_id)
    except Exception:  # noqa: BLE001 - best effort: the run is opened once no other run is open
        log.debug("could not end wandb-core's stream of run %s", run_id, exc_info=True)
        return False
    return True


def _stop_polling(run) -> None:
    """Stop the threads with which `run` polls wandb-core (what `finish()` does first; nothing is
    sent): a run left unfinished would poll until wandb is torn down, then fail with a traceback."""
    try:
        checker = run._run_status_checker  # wandb 0.31, private
        if checker is not None:
            checker.join()
    except Exception:  # noqa: BLE001 - only threads left polling
        log.debug("could not stop the status threads of a W&B run", exc_info=True)


def _stream_in_use(exc: Exception) -> bool:
    return type(exc).__name__ == "ServerResponseError" and "is in use" in str(exc)


class WandbReporter:
    """Reports state rows to one W&B run from a worker thread."""

    enabled = True

    def __init__(self, options: WandbOptions) -> None:
        self.options = options
        self._on_delivery = None
        self._queue: queue.Queue = queue.Queue()
        self._deliveries: list[Delivery] = []
        self._collected = 0  # deliveries handed to the service so far (they are numbered from 0 in order)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._opening = False
        self._abandoned = threading.Event()  # another sidecar took the lock: write nothing more
        self._in_outage = False
        self._server_down = False  # the last delivery question found the server unreachable
        self._unreachable_since: float | None = None  # time.time() when W&B became unreachable (cleared when back)
        self._run_url: str | None = None  # the online run's page, once it is open
        self._rotated = False  # an offline segment was closed for `sync` (the next ones open without wandb's lines)
        self.finished_cleanly = False
        self.server: ServerRef | None = None  # the online run last opened, for the server's own count
        self.mode = options.mode

    # ----- called by the service (main thread) ------------------------------------------------
    def bind(self, run_id: str, run_name: str, on_delivery=None) -> None:
        """Use the run id and name persisted in state; `on_delivery()` is called after each write."""
        self.options = replace(self.options, run_id=wandb_text(run_id), run_name=wandb_text(run_name))
        self._on_delivery = on_delivery

    def report(self, snapshot: ReportBatch) -> None:
        """Queue a snapshot; returns at once. The service applies what it collects before it builds
        the next snapshot, so the snapshot goes with the number of deliveries collected so far:
        the state knew of those when it was built."""
        if self._thread is None:
            self._thread = labels.thread(self._work, "wandb-reporter")  # its lines name the model in a fleet
            self._thread.start()
        with self._lock:
            seen = self._collected
        self._queue.put((snapshot, seen))

    def alert(self, title: str, text: str, level: str = "INFO") -> None:
        """Send a W&B alert (`run.alert`) from the worker when an online run is open; offline, or
        when the run never opens, it is dropped (with a DEBUG line). Returns at once."""
        if self.mode != "online":
            log.debug("W&B alert %r not sent: the run is %s", title, self.mode)
            return
        if self._thread is None:
            self._thread = labels.thread(self._work, "wandb-reporter")
            self._thread.start()
        self._queue.put(_Alert(wandb_text(title)[:63], wandb_text(text), level))

    def outage_since(self) -> float | None:
        """When (time.time()) W&B became unreachable for this run, or None while it is not."""
        return self._unreachable_since

    def run_url(self) -> str | None:
        """The online run's page, once it has been open."""
        return self._run_url

    def collect(self) -> list[Delivery]:
        """What the worker wrote and learnt since the last call, in order."""
        with self._lock:
            out, self._deliveries = self._deliveries, []
            self._collected += len(out)
        return out

    def abandon(self, timeout: float = 10.0) -> None:
        """Stop writing at once, finishing nothing: another sidecar holds this configuration's lock
        now and writes to the same run. This process's wandb-core is stopped, so no more lines of
        ours reach the run (rows it had not delivered are the new holder's to send). While other
        reporters of this process have runs open on it (fleet mode), it is not: the run is only
        left unfinished, and wandb-core still sends what it holds of it (lines logged within about
        a second, or during an outage)."""
        self._abandoned.set()
        if self._thread is None:
            return
        self._queue.put(_CLOSE)
        self._thread.join(timeout)

    def close(self, timeout: float | None = None, progress=None) -> None:
        """Finish the run (flushing the last rows and table); waits for the worker, calling
        `progress()` every 0.2 s meanwhile (on this thread)."""
        if self._thread is None:
            return
        self._queue.put(_CLOSE)
        if timeout is not None:
            limit = timeout
        elif (self._in_outage or self._server_down) and not self._opening:
            limit = 10.0  # rows stay unreported or unconfirmed in state for the next start
        else:  # an init attempt (wandb adds ~10 s to its timeout), then finishing uploads
            limit = self.options.init_timeout + 20 + _finish_timeout(self.options)
        deadline = time.monotonic() + limit
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(min(0.2, max(0.0, deadline - time.monotonic())))
            if progress is not None:
                progress()
        if self._thread.is_alive():
            log.warning("W&B did not finish within %.0f s; rows the server has not confirmed stay in state and are "
                        "sent again by the next start", limit)

    def reconcile(self, segments: list[dict], rows: dict[int, dict], unreported: set[int]) -> Reconciled:
        """Settle segments a killed sidecar left open.

        Offline ones are read back: their rows are what the folder holds. Online ones are judged by
        the server when the run is next opened (their rows wait in state as sent); a wandb-core
        such a sidecar left behind is stopped first, so it cannot add lines after the server was
        asked. An online segment of an earlier version kept no history lines: its local folder
        gives each row's `_step`, never below the line's index on the server, so a row it names
        wrongly is only ever sent again, never taken for delivered.
        """
        out = Reconciled()
        for seg in segments:
            if seg.get("closed"):
                continue
            claimed = set(seg.get("steps", []))
            if seg.get("mode") == "online":
                if seg.get("core_pid") and seg.get("host") == socket.gethostname() and not _writer_alive(seg):
                    if kill_orphan(int(seg["core_pid"]), str(seg.get("core_start", ""))):
                        log.info("stopped the wandb-core process %s a killed sidecar left behind", seg["core_pid"])
                if not seg.get("run"):
                    self._adopt_old_online(seg, claimed, rows, out, self.options.summary_metrics)
            else:
                held = read_segment(Path(seg["dir"]))
                first = self.options.summary_metrics
                holds = {s for s, items in held.items() if s in rows and any(_same(i, rows[s], first) for i in items)}
                out.lost |= {s for s in claimed if s not in holds}
                out.found |= {s for s in unreported if s in holds}
                seg["steps"] = sorted(holds)
                log.info("W&B segment %s was not closed cleanly: it holds %d row(s); %d row(s) will be written again",
                         seg["dir"], len(holds), len(claimed - holds))
            seg["closed"] = True
            seg["reconciled"] = _utc_now()
        out.found -= out.lost
        return out

    @staticmethod
    def _adopt_old_online(seg: dict, claimed: set[int], rows: dict[int, dict], out: Reconciled,
                          first: tuple[str, ...]) -> None:
        records = read_records(Path(seg["dir"])) or []
        run = next((r["run"] for r in records if r.get("type") == "run"), {})
        key = run_key(run.get("entity"), run.get("project", ""), run.get("run_id", seg.get("run_id", "")))
        for record in records:
            item = record.get("history", {}).get("item", {}) if record.get("type") == "history" else {}
            step = item.get("checkpoint_step")
            if step in claimed and "_step" in item and _same(item, rows.get(step, {"checkpoint_step": step}), first):
                out.sent[int(step)] = int(item["_step"])
        out.sent_run = key
        out.lost |= claimed - set(out.sent)
        log.info("W&B segment %s (an earlier version's, not closed cleanly): %d row(s) logged there are checked "
                 "against the server, %d are written again", seg["dir"], len(out.sent), len(claimed - set(out.sent)))

    # ----- the worker thread -----------------------------------------------------------------
    def _deliver(self, delivery: Delivery) -> int:
        """Hand a delivery to the service; returns its number."""
        with self._lock:
            self._deliveries.append(delivery)
            number = self._collected + len(self._deliveries) - 1
        if self._on_delivery is not None:
            self._on_delivery()
        return number

    def _work(self) -> None:
        w = _Worker()
        while True:
            latest, closing = self._next_items(w)
            if self._abandoned.is_set():
                self._drop(w, "abandoned", lambda: child_processes("wandb-core"))  # ours: nothing more of ours is sent
                return
            if latest is not None:
                w.take(*latest)
            if self._wants_run(w) and w.run is None and time.monotonic() >= w.next_attempt \
                    and not (closing and w.in_outage):
                self._start_run(w)
            todo = w.todo()
            if w.run is not None and (todo or w.seal_due()):
                try:
                    self._write(w, todo)
                except Exception as exc:  # noqa: BLE001 - any failure of the SDK is an outage
                    self._lose_run(w, exc)
            if w.run is not None and w.sent and w.ref is not None and time.monotonic() >= w.confirm_at \
                    and not closing:
                self._confirm(w)
            if w.run is not None and w.table_wait(self.options.table_seconds) == 0.0 and not closing:
                try:
                    self._log_table(w)
                except Exception as exc:  # noqa: BLE001
                    self._lose_run(w, exc)
            rotate_at = self._rotate_at(w)
            if rotate_at is not None and time.monotonic() >= rotate_at and not closing:
                self._rotate(w)
            self._in_outage = w.in_outage
            self._track_outage()
            self._send_alerts(w)
            if closing and w.run is None and w.todo() and not w.in_outage and time.monotonic() >= w.next_attempt:
                continue  # e.g. just switched to the offline fallback: write before finishing
            if closing:
                self._finish(w)
                return

    def _wants_run(self, w: "_Worker") -> bool:
        """Rows to write, a seal to write, or (online) sent rows only the server can settle."""
        return bool(w.todo()) or w.seal_due() or bool(w.sent and self.mode == "online")

    def _next_items(self, w: "_Worker"):
        """Block until a snapshot, a close, a retry or a delivery question is due; returns
        ((newest snapshot, deliveries the state had applied then) or None, whether closing)."""
        deadlines = []
        if w.run is None and self._wants_run(w):
            deadlines.append(w.next_attempt)
        if w.run is not None and w.sent and w.ref is not None:
            deadlines.append(w.confirm_at)
        if w.run is not None and w.table_wait(self.options.table_seconds) is not None:
            deadlines.append(time.monotonic() + w.table_wait(self.options.table_seconds))
        if self._rotate_at(w) is not None:
            deadlines.append(self._rotate_at(w))
        if w.closing:
            wait = 0.0
        elif deadlines:
            wait = max(0.0, min(deadlines) - time.monotonic())
        else:
            wait = None
        latest = None
        try:
            item = self._queue.get(timeout=wait) if wait != 0.0 else self._queue.get_nowait()
        except queue.Empty:
            item = None
        while item is not None:
            if item is _CLOSE:
                w.closing = True
            elif isinstance(item, _Alert):
                w.alerts = [*w.alerts, item][-MAX_PENDING_ALERTS:]
            else:
                latest = item
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None
        return latest, w.closing

    def _start_run(self, w: "_Worker") -> None:
        """Open (resume) the run; online, learn from the server which sent rows it holds."""
        try:
            self._opening = True
            w.run, w.segment, w.ref = self._open()
            self.server = w.ref
            count = self._lines_at_open(w) if self.mode == "online" else 0
        except Exception as exc:  # noqa: BLE001 - any failure of the SDK is an outage
            self._lose_run(w, exc)
            return
        finally:
            self._opening = False
        w.opened_at, w.segment_rows = time.monotonic(), set()
        if w.in_outage:
            log.info("W&B is reachable again: writing %d unreported row(s)", len(w.todo()))
        w.in_outage, self._failures = False, 0
        if self.mode != "online":
            self._deliver(Delivery(dict(w.segment)))
            return
        w.next_line = count
        key = w.segment["run"]
        lost = {s for s, (_, line) in w.sent.items() if not same_run(w.sent_run, key) or line >= count}
        if lost:
            log.info("the W&B server lacks %d row(s) logged before (a crash or an outage cut them off): "
                     "writing them again", len(lost))
        self._deliver(Delivery(dict(w.segment), run=key, confirmed=count, lost=frozenset(lost)))
        for step in lost:
            w.resend[step] = w.sent[step][0]
        w.sent, w.sent_run, w.server_count = {}, key, count

    def _rotate_at(self, w: "_Worker") -> float | None:
        """When (monotonic) the open offline segment is closed, so that `sync` can upload it while
        the watch goes on (`--wandb-segment-minutes`); None when segments are not rotated. The
        next rows open the next segment: a segment holds at least one pass's rows."""
        if w.run is None or self.mode != "offline" or self.options.segment_seconds <= 0 or self.options.one_shot:
            return None
        return w.opened_at + max(self.options.segment_seconds, MIN_SEGMENT_SECONDS)

    def _rotate(self, w: "_Worker") -> None:
        """Finish the offline run: its folder is a closed segment `sync` uploads. The table is not
        forced into it as at exit (each segment would then hold a full table, however few rows it
        added): the next segment logs it when due, and `sync` writes the table of the uploaded
        rows. A finish that fails leaves the segment open: the next start reads it back, as after
        a crash."""
        run, w.run = w.run, None
        try:
            run.finish()
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B offline segment %s could not be closed (%s); the next start reads it back",
                        w.segment.get("dir"), _redact(f"{type(exc).__name__}: {exc}"))
            self._teardown(None)
            return
        _leave(self)
        self._rotated = True
        age = time.monotonic() - w.opened_at
        log.info("W&B offline segment %s closed after %s (%d row(s)): `sync` can upload it now; the next rows open "
                 "a new one", w.segment.get("dir"), f"{age / 60:.1f} min" if age >= 60 else f"{age:.1f} s",
                 len(w.segment_rows))
        self._deliver(Delivery(dict(w.segment), closed=True))

    def _lines_at_open(self, w: "_Worker") -> int:
        """The server's history line count of the run just opened. wandb resumes at it
        (RunResumeStatus), but `starting_step` is the last `_step` + 1, which differs when an
        earlier writer logged with `step=`: ask the server, and use it only if it cannot answer."""
        if w.ref is not None:
            try:
                return history_line_count(w.ref)
            except QueryUnsupported as exc:
                self._no_query(w, exc)
        return int(w.run.starting_step or 0)

    def _write(self, w: "_Worker", todo: dict[int, dict]) -> None:
        run = w.run
        online = self.mode == "online"
        seal = w.seal_due()
        first = self.options.summary_metrics
        base = w.next_line  # `run.step` reads 0 in a resumed run until the first log (wandb 0.31)
        lines: dict[int, int] = {}
        for step in sorted(todo):
            lines[step] = base + len(lines)
            run.log(history_row(todo[step], first))
            self._warn_capped(w, step, todo[step])
        w.next_line = base + len(lines)
        w.segment_rows.update(todo)
        for step in todo:
            w.resend.pop(step, None)
        if online:
            w.sent.update({s: (todo[s], lines[s]) for s in todo})
            if todo and w.confirm_at == float("inf"):
                w.confirm_at, w.confirm_delay = time.monotonic() + CONFIRM_FIRST, CONFIRM_FIRST
                w.progress_at = time.monotonic()
        if todo:  # before the table: with the server down, logging a Table waits ~20 s on a W&B lookup
            number = self._deliver(Delivery(dict(w.segment), rows=dict(todo), lines=lines if online else {},
                                            run=w.sent_run if online else ""))
            w.written.update((s, (row, number)) for s, row in todo.items())
        crash_point("wandb-row")
        if todo or self.options.seal_table:
            w.table_due = True
            self._log_table(w, force=seal)  # with the summary
        if w.table_due or not (todo or self.options.seal_table):
            self._log_summary(w)  # the table waits for its interval (or the server), or is not asked for
        w.sealed = True

    def _warn_capped(self, w: "_Worker", step: int, row: dict) -> None:
        """One warning per row that has more metrics than W&B gets (MAX_WANDB_METRICS)."""
        if same_row(w.capped.get(step), row):
            return
        logged, left = wandb_metrics(row, self.options.summary_metrics)
        if left:
            log.warning("%s: metrics.json has %s metrics; W&B gets %s of them in its history, summary and table "
                        "(HR@K, NDCG@K and the summary metrics first, then by name): %s metric(s) left out of W&B "
                        "(the state file keeps all of them)", row.get("checkpoint_name", f"checkpoint-{step}"),
                        f"{len(logged) + left:,}", f"{len(logged):,}", f"{left:,}")
            w.table_capped = True  # this warning says it for the table too
        w.capped[step] = row

    def _log_summary(self, w: "_Worker") -> None:
        """The summary of all rows (cheap: written on every pass that adds rows)."""
        rows = w.latest.rows if w.latest is not None else {}
        if not rows:
            return
        summary = summary_from_rows(rows, self.options.summary_metrics, self.options.summary_lower_better)
        # W&B's automatic summary holds the last row *logged*; after a re-evaluation that is not
        # the last step, so the eval/* summary is set from the last step's row.
        summary.update(history_row(rows[max(rows)], self.options.summary_metrics))
        for name in self.options.summary_lower_better:  # W&B's own shape for a summary="min" metric
            best = summary.get(f"best_{name.lower()}")
            if best is not None:
                summary[f"eval/{wandb_text(name)}"] = {"min": best}
        w.run.summary.update(summary)

    def _log_table(self, w: "_Worker", force: bool = False) -> None:
        """The table of all rows, at most once per `table_seconds` unless `force`d (at exit, and
        when sealing): each log writes the whole table again, so logging it on every pass made
        W&B's files grow with the square of the rows. Online, only while the server answers:
        logging a Table then waits ~20 s on a W&B lookup; it is logged when the server is back (or
        at shutdown, or by the next start)."""
        import wandb

        rows = w.latest.rows if w.latest is not None else {}
        if not rows:
            w.table_due = False
        if not w.table_due:
            return
        if not force and (time.monotonic() < w.table_next or not w.table_grown(self.options.table_seconds)):
            return  # the worker wakes for it at table_next, or for the next rows
        if self.mode == "online" and not self._answers(w):
            w.table_held = True  # until the server answers again (`_confirm`), the next write or the finish
            return
        columns, data, left = table_data(rows, self.options.summary_metrics)
        if left and not w.table_capped:
            log.warning("the W&B table shows %s of the %s metric columns of the rows (at most %s; the state file "
                        "keeps every metric)", f"{len(columns) - 3:,}", f"{len(columns) - 3 + left:,}",
                        f"{MAX_WANDB_METRICS:,}")
            w.table_capped = True
        # A new Table each time: W&B silently writes a stale file for a mutated, re-logged one.
        w.run.log({"eval/checkpoint_table": wandb.Table(columns=columns, data=data)})
        w.next_line += 1  # a logged Table takes a history line too
        crash_point("table-log")
        self._log_summary(w)  # wandb adds the last checkpoint_step logged to the table's line, and so to the summary
        w.table_due, w.table_held = False, False
        w.table_next = time.monotonic() + self.options.table_seconds
        w.table_rows, w.tabled = len(rows), dict(rows)

    def _answers(self, w: "_Worker") -> bool:
        """Whether the server answers right now (asked its line count, else its port)."""
        if w.ref is not None:
            if self._ask(w) is not None:
                return True
            if w.ref is not None:  # an outage (a server refusing the question drops `ref`: its port says)
                return False
        try:
            self._check_reachable()
        except Outage:
            return False
        return True

    def _ask(self, w: "_Worker") -> int | None:
        """The server's history line count now, or None (an outage starts: one warning; a server
        that refuses the question is not asked again)."""
        try:
            count = history_line_count(w.ref)
        except Outage as exc:
            if not self._server_down:
                log.warning("W&B server unreachable (%s): %d row(s) sent but not confirmed yet; wandb keeps "
                            "sending them, and a restart sends again whatever never arrives", _redact(str(exc)),
                            len(w.sent))
            self._server_down = True
            self._track_outage()
            return None
        except QueryUnsupported as exc:
            self._no_query(w, exc)
            return None
        if self._server_down:
            log.info("W&B server reachable again")
            self._server_down = False
            self._track_outage()
            w.progress_at = time.monotonic()
        return count

    def _confirm(self, w: "_Worker") -> None:
        """Ask the server how many history lines it holds; sent rows below that count are on it."""
        count = self._ask(w)
        now = time.monotonic()
        if count is None:
            w.confirm_delay = min(w.confirm_delay * 2, CONFIRM_MAX)
            w.confirm_at = now + w.confirm_delay
            return
        w.table_held = False
        done = {s for s, (_, line) in w.sent.items() if line < count}
        if done:
            for step in done:
                del w.sent[step]
            self._deliver(Delivery(dict(w.segment), run=w.sent_run, confirmed=count))
        if count > w.server_count:
            w.progress_at, w.stalled = now, False
        w.server_count = max(w.server_count, count)
        try:
            self._log_table(w)  # one the outage held back
        except Exception as exc:  # noqa: BLE001 - any failure of the SDK is an outage
            self._lose_run(w, exc)
            return
        if not w.sent:
            w.confirm_at = float("inf")
            return
        if now - w.progress_at > STALL_SECONDS:
            (log.debug if w.stalled else log.warning)(
                "the W&B server has taken no history line for %.0f s (%d row(s) waiting); opening the run again",
                now - w.progress_at, len(w.sent))
            w.stalled = True
            self._teardown(w.run)
            w.run, w.next_attempt = None, now
            return
        w.confirm_delay = min(w.confirm_delay * 2, CONFIRM_MAX)
        w.confirm_at = now + w.confirm_delay

    def _track_outage(self) -> None:
        down = self._in_outage or self._server_down
        if down and self._unreachable_since is None:
            self._unreachable_since = time.time()
        elif not down:
            self._unreachable_since = None

    def _send_alerts(self, w: "_Worker") -> None:
        """Alerts queued by `alert`, sent while the online run is open (kept while it is not)."""
        if not w.alerts or w.run is None or self.mode != "online":
            if w.alerts and self.mode != "online":
                log.debug("%d W&B alert(s) not sent: the run is %s", len(w.alerts), self.mode)
                w.alerts = []
            return
        alerts, w.alerts = w.alerts, []
        for item in alerts:
            try:
                w.run.alert(title=item.title, text=item.text, level=item.level, wait_duration=ALERT_WAIT_SECONDS)
            except Exception as exc:  # noqa: BLE001 - an alert never stops the reporting
                log.debug("W&B alert %r not sent (%s)", item.title, _redact(str(exc)))

    def _no_query(self, w: "_Worker", exc: Exception) -> None:
        log.info("cannot ask the W&B server which rows it holds (%s); rows are confirmed when the run finishes "
                 "or at the next start", _redact(str(exc)))
        w.ref = None

    def _finish(self, w: "_Worker") -> None:
        if w.run is None:
            return
        if self.mode == "online" and (w.sent or w.table_due):
            if not self._answers(w):
                # finish() would wait its whole timeout for a server that is not answering; the rows
                # stay sent in state and the next start asks the server which arrived
                log.warning("W&B server unreachable at shutdown: %d row(s) sent but not confirmed stay in state; "
                            "the next start sends again those the server lacks", len(w.sent))
                core = w.segment.get("core_pid")
                self._drop(w, "unreachable at shutdown",
                           lambda: [(int(core), str(w.segment.get("core_start", "")))] if core else [])
                return
        try:
            self._log_table(w, force=True)  # the rows since the last table (not logged on every pass)
        except Exception as exc:  # noqa: BLE001 - the rows are logged; finish them
            log.warning("W&B table could not be logged at exit (%s); the next start that adds a row logs it",
                        _redact(f"{type(exc).__name__}: {exc}"))
        end = w.next_line
        try:
            w.run.finish()
        except Exception as exc:  # noqa: BLE001
            # left unconfirmed: the next start asks the server; an offline folder is read back
            log.warning("W&B run did not finish cleanly (%s); rows the server has not confirmed are sent again by "
                        "the next start", _redact(f"{type(exc).__name__}: {exc}"))
            self._teardown(None)
            return
        _leave(self)
        if self.mode != "online":
            self.finished_cleanly = True
            self._deliver(Delivery(dict(w.segment), closed=True))
            return
        # A finish that returned is not proof: wandb-core drops history the server refused (4xx)
        # and still finishes. Ask; only when the server cannot be asked, the finish is all there is.
        count = self._ask(w) if w.ref is not None else end
        if count is not None:
            w.sent = {s: v for s, v in w.sent.items() if v[1] >= count}
        if count is not None and count < end:
            log.warning("the W&B server holds %d of the %d history lines this run logged; the %d row(s) it lacks "
                        "are sent again by the next start (or `eval_wandb_sidecar.py sync`)", count, end, len(w.sent))
        self.finished_cleanly = count is not None and count >= end
        self._deliver(Delivery(dict(w.segment), run=w.sent_run, confirmed=count, closed=True))

    def _drop(self, w: "_Worker", why: str, cores) -> None:
        """Stop using the run without finishing it. The last reporter out stops wandb-core
        (`cores()`: (pid, start time) of each), so that nothing more of the run is sent; while
        another reporter of this process has a run open on it, it goes on."""
        with _last_out(self) as last:
            if last:
                for pid, start in cores():
                    kill_orphan(pid, start)
                if self.options.shared:  # other models of the fleet may open runs later
                    self._reset_wandb()
            elif w.run is not None:
                log.debug("W&B run %s (%s) is left unfinished: other runs of this process share its wandb-core",
                          self.options.run_id, why)
                _stop_polling(w.run)
        w.run = None

    @staticmethod
    def _reset_wandb() -> None:
        """Make wandb forget the wandb-core just stopped (it would hand the next init of this
        process the dead one; the retry after that failure would come only after a backoff)."""
        try:
            import wandb

            wandb.teardown()
        except Exception:  # noqa: BLE001 - its wandb-core is gone: wandb only forgets it
            log.debug("wandb teardown after stopping wandb-core failed", exc_info=True)

    def _lose_run(self, w: "_Worker", exc: Exception) -> None:
        log.debug("W&B run lost", exc_info=exc)
        self._teardown(w.run)
        w.run = None
        w.next_attempt, w.in_outage = self._outage(exc, w.in_outage)

    def _open(self):
        import wandb

        opts = self.options
        if self.mode == "online":
            self._check_reachable()
        with _INIT_LOCK:
            run = self._init(wandb)
            with _OPEN_LOCK:
                _OPEN.add(self)
        run.define_metric("checkpoint_step")
        run.define_metric("eval/*", step_metric="checkpoint_step")
        # the training context of each row (a checkpoint's trainer_state.json): charted by step too,
        # and train/epoch, in the same history lines as eval/*, serves as their x-axis in a panel
        run.define_metric("train/*", step_metric="checkpoint_step")
        # W&B's own summary of eval/<m> agrees with best_<m>: a NAME:min metric is summarised by its
        # minimum (the sidecar sets it from all rows, so a re-evaluation counts); the others keep the
        # original's summary, the last step's value (best_<m> holds their maximum)
        for name in opts.summary_lower_better:
            run.define_metric(f"eval/{wandb_text(name)}", step_metric="checkpoint_step", summary="min")
        segment = {"dir": str(Path(run.dir).parent), "mode": self.mode, "run_id": opts.run_id,
                   "started": _utc_now(), "pid": os.getpid(), "pid_start": process_start_time(os.getpid()),
                   "host": socket.gethostname(), "steps": []}
        if self.mode == "offline" and opts.segment_seconds > 0 and not opts.one_shot:
            segment["close_after"] = max(opts.segment_seconds, MIN_SEGMENT_SECONDS)  # `sync` may wait for it
        ref = None
        if self.mode == "online":
            segment["run"] = f"{run.entity}/{run.project}/{run.id}"
            self._run_url = run.settings.run_url or None
            cores = child_processes("wandb-core")
            if cores:
                segment["core_pid"], segment["core_start"] = cores[-1]
            if run.settings.api_key and run.settings.base_url:
                ref = ServerRef(run.settings.base_url, run.settings.api_key, run.entity, run.project, run.id)
        log.info("W&B %s run %s writes to %s", self.mode, opts.run_id, segment["dir"])
        return run, segment, ref

    def _init(self, wandb):
        """`wandb.init` of the run; the caller holds _INIT_LOCK (the environment and sys.argv are
        the process's). Shared: a run beside the others; a run whose earlier init failed is opened
        once wandb-core has ended that init's stream."""
        opts = self.options
        if os.environ.get("WANDB_MODE") == "":
            os.environ.pop("WANDB_MODE")  # wandb rejects an empty value
        # wandb's error reporting probes the server for ~10 s at exit when it is unreachable
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        settings = wandb.Settings(
            console="off", x_disable_stats=not opts.system_stats, init_timeout=opts.init_timeout,
            x_transaction_log_flush_interval=opts.flush_interval, quiet=True, save_code=False,
            disable_git=True, x_save_requirements=False,
            silent=self._rotated and self.mode == "offline",  # wandb's 3 lines per segment, said at the first
            x_file_stream_transmit_interval=TRANSMIT_SECONDS,
            x_file_stream_retry_wait_max_seconds=RETRY_WAIT_MAX_SECONDS,
            finish_timeout=_finish_timeout(opts),  # an outage must not hang the exit
            finish_timeout_raises=True,  # ...and a finish that gave up uploading must not look clean
        )
        # wandb sends the command line with the run: an argument holding a path's non-UTF-8 byte
        # would make every init fail (the arguments were parsed long ago; only their text changes)
        sys.argv[:] = [wandb_text(a) for a in sys.argv]
        args = dict(project=opts.project, entity=opts.entity or None, id=opts.run_id, name=opts.run_name,
                    resume=effective_resume(opts.resume, self.mode), job_type=opts.job_type, mode=self.mode,
                    config=opts.config, settings=settings)
        if not opts.shared:
            return wandb.init(**args)
        try:
            return wandb.init(reinit="create_new", **args)
        except Exception as exc:
            with _OPEN_LOCK:  # never end the stream of a run another reporter has open
                mine = not any(r.options.run_id == opts.run_id for r in _OPEN if r is not self)
            if not (_stream_in_use(exc) and mine and _release_stream(opts.run_id)):
                raise
        log.debug("ended wandb-core's stream of an earlier failed init of run %s; opening it again", opts.run_id)
        return wandb.init(reinit="create_new", **args)

    def _check_reachable(self) -> None:
        """Fail fast when the server's port is closed (wandb would spend its whole timeout)."""
        if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
            return
        url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname or "", port), timeout=min(5.0, self.options.init_timeout)).close()
        except OSError as exc:
            raise Outage(f"cannot connect to {url.hostname}:{port} ({exc.strerror or exc})") from exc

    def _teardown(self, run) -> None:
        """Finish a lost `run` as failed and tear wandb down for a retry (best effort). The teardown
        ends every run of the process (it stops the wandb-core they share): while another reporter
        has a run open, only `run` is finished."""
        try:
            import wandb

            if run is not None:
                run.finish(exit_code=1)
        except Exception:  # noqa: BLE001 - best effort before a retry
            log.debug("wandb teardown failed", exc_info=True)
            _leave(self)
            return
        with _last_out(self) as last:
            if not last:
                log.debug("wandb is not torn down for run %s: other runs of this process are open",
                          self.options.run_id)
                return
            try:
                wandb.teardown()
            except Exception:  # noqa: BLE001
                log.debug("wandb teardown failed", exc_info=True)

    def _outage(self, exc: Exception, ongoing: bool) -> tuple[float, bool]:
        """Log once per outage, tear wandb down; returns (when to try again (monotonic), in outage)."""
        self._failures += 1
        self._teardown(None)
        reason = _redact(f"{type(exc).__name__}: {exc}")
        if type(exc).__name__ == "UsageError" and "api key" in str(exc).lower():
            reason = "no W&B API key: set WANDB_API_KEY or run `wandb login`"
        if self.mode == "online" and self.options.fallback == "offline":
            log.warning("W&B online run could not start (%s); --wandb-fallback offline: writing an offline "
                        "segment instead (upload it later with `eval_wandb_sidecar.py sync`)", reason)
            self.mode = "offline"
            return time.monotonic(), False
        delay = min(BACKOFF_FIRST * 2 ** (self._failures - 1), BACKOFF_MAX)
        if self.options.one_shot:
            log.warning("W&B %s run could not be written (%s)", self.mode, reason)
        elif not ongoing:
            log.warning("W&B %s run could not be written (%s); evaluation goes on, results stay in the state "
                        "file as unreported and are reported when W&B is back (next try in %.0f s)",
                        self.mode, reason, delay)
        else:
            log.debug("W&B still unavailable (%s); next try in %.0f s", reason, delay)
        return time.monotonic() + delay, True


class _Worker:
    """What the reporter thread knows: its run, the newest snapshot, what it wrote and what the
    server has not confirmed yet."""

    def __init__(self) -> None:
        self.run = None
        self.segment: dict = {}
        self.ref: ServerRef | None = None
        self.latest: ReportBatch | None = None
        self.seen = 0  # deliveries the state had applied when `latest` was built
        # step -> (row written by this process (any segment), number of the delivery that says so)
        self.written: dict[int, tuple[dict, int]] = {}
        self.sent: dict[int, tuple[dict, int]] = {}  # online, unconfirmed: step -> (row, history line)
        self.resend: dict[int, dict] = {}  # sent rows the server turned out not to hold
        self.sent_run = ""
        self.adopted = False
        self.sealed = False
        self.closing = False
        self.in_outage = False
        self.next_attempt = 0.0
        self.confirm_at = float("inf")
        self.confirm_delay = CONFIRM_FIRST
        self.progress_at = 0.0
        self.server_count = 0
        self.next_line = 0  # index of the next history line on the server (online)
        self.table_due = False  # the newest rows are not in a logged table yet
        self.table_next = 0.0  # monotonic time from which a due table may be logged (the first at once)
        self.table_held = False  # a due table waits for the server to answer (online outage)
        self.table_rows = 0  # rows in the last table logged
        self.tabled: dict[int, dict] = {}  # the rows of the last table logged (to see re-evaluated ones)
        self.table_capped = False  # warned that metrics are left out of the table (or of a row)
        self.capped: dict[int, dict] = {}  # step -> row warned about (more metrics than W&B gets)
        self.stalled = False  # warned that the server takes no lines (until it takes one again)
        self.alerts: list[_Alert] = []  # W&B alerts waiting for the online run
        self.opened_at = 0.0  # monotonic time the open run (segment) was opened
        self.segment_rows: set[int] = set()  # steps written into the open segment

    def take(self, snapshot: ReportBatch, seen: int = 0) -> None:
        """A newer snapshot, built when the state had applied `seen` deliveries; the first one
        brings the rows earlier processes sent unconfirmed."""
        self.latest, self.seen = snapshot, seen
        if not self.adopted:
            self.adopted = True
            self.sent_run = snapshot.sent_run
            self.sent = {s: (snapshot.rows[s], line) for s, line in snapshot.sent.items() if s in snapshot.rows}
        for step in [s for s, (row, _) in self.sent.items() if not same_row(snapshot.rows.get(s), row)]:
            del self.sent[step]  # re-evaluated: only the new row matters
        for step in [s for s, row in self.resend.items() if not same_row(snapshot.rows.get(s), row)]:
            del self.resend[step]

    def todo(self) -> dict[int, dict]:
        """Rows to write now: unreported ones this process has not written, and lost ones."""
        if self.latest is None:
            return {}
        todo = dict(self.resend)
        todo.update((s, r) for s, r in self.latest.pending.items() if not self.awaits_state(s, r))
        return todo

    def awaits_state(self, step: int, row: dict) -> bool:
        """Whether `row` is pending only because the state had not applied the delivery of its
        write yet when the snapshot was built. Once it had, a row pending again was queued again
        (a re-evaluation, with the same values or not): it is written again."""
        written = self.written.get(step)
        return written is not None and written[1] >= self.seen and same_row(written[0], row)

    def seal_due(self) -> bool:
        return self.latest is not None and self.latest.seal and not self.sealed and bool(self.latest.rows)

    def table_grown(self, interval: float) -> bool:
        """Whether there are enough new rows for another table: with an interval, a tenth more than
        the last table held (at least one), so that however slowly checkpoints come, the tables
        logged add up to about 11 times the last one (bytes linear in the rows, not their square);
        the table lags by at most a tenth of its rows (a re-evaluated row by one interval), the
        history and the summary never. Without an interval (0), any new or changed row."""
        if interval <= 0 or self.latest is None:
            return True
        rows = self.latest.rows
        if len(rows) >= self.table_rows + max(1, math.ceil(TABLE_GROWTH * self.table_rows)):
            return True
        # a re-evaluated row (rare: --force-eval-steps) is shown at the next interval
        return any(not same_row(self.tabled.get(s, row), row) for s, row in rows.items())

    def table_wait(self, interval: float = 0.0) -> float | None:
        """Seconds until a due table may be logged (0.0: now); None when none is due, or it waits
        for the server or for more rows rather than for time."""
        if not self.table_due or self.table_held or not self.table_grown(interval):
            return None
        return max(0.0, self.table_next - time.monotonic())


def _finish_timeout(opts: WandbOptions) -> float:
    return max(15.0, 2 * opts.init_timeout)


def effective_resume(resume: str, mode: str) -> str:
    """The resume mode wandb gets. Offline segments of one run are joined by `wandb sync` only when
    written with allow or must (with auto or never their `_step` collide): auto becomes allow
    there; never is refused when the configuration is built."""
    if mode == "offline" and resume != "must":
        return "allow"
    return resume


def same_value(stored, wanted) -> bool:
    """Whether `stored`, a value read back from a run folder, is `wanted` as W&B stores it.

    wandb-core writes numbers as JSON in the shortest form that reads back as the same float64, so
    what comes back is a number of another type or spelling: 2.830516740245975e19 comes back as the
    int 28305167402459750000 (not the float's exact value), 1.0 as 1, -0.0 as 0. Numbers are equal
    when they are the same float64, or within a relative 1e-12 of each other (a float that went
    through text once more); an int and a float count as numbers, a bool does not."""
    if stored == wanted and type(stored) is type(wanted):
        return True
    numbers = [v for v in (stored, wanted) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != 2:
        return stored == wanted and isinstance(stored, bool) == isinstance(wanted, bool)
    try:
        a, b = float(stored), float(wanted)
    except OverflowError:  # an int beyond any float: only the same int is itself
        return stored == wanted
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def _same(item: dict, row: dict, first: tuple[str, ...] = ()) -> bool:
    """A history item read back from a segment carries this state row's values, as W&B stores them."""
    return all(k in item and same_value(item[k], v) for k, v in history_row(row, first).items())


def read_records(folder: Path) -> list[dict] | None:
    """Every record of a run folder, in order, read with `wandb leet inspect --json` (wandb's own
    offline reader); [] for a folder without a .wandb file, None if it cannot be read."""
    if not any(folder.glob("*.wandb")):
        return []
    code, out, err = run_command([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)],
                                 timeout=120)
    if code != 0:
        log.warning("could not read W&B segment %s (%s)", folder, _redact(err))
        return None
    records = []
    for line in out.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def read_history(folder: Path) -> list[dict] | None:
    """Every history item of a run folder, in order (None if it cannot be read)."""
    records = read_records(folder)
    if records is None:
        return None
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def read_segment(folder: Path) -> dict[int, list[dict]]:
    """History items of a segment folder by checkpoint_step (a folder that cannot be read holds
    nothing: its rows are written again)."""
    held: dict[int, list[dict]] = {}
    for raw in read_history(folder) or []:
        item = {k: v for k, v in raw.items() if not k.startswith("_")}
        if "checkpoint_step" in item and "eval/checkpoint_name" in item:  # not the table's record
            held.setdefault(int(item["checkpoint_step"]), []).append(item)
    return held


def _writer_alive(segment: dict) -> bool:
    """Whether the sidecar that opened a segment still runs (on another host: assume it does).

    A pid names that process only together with its start time (pids are reused): the segment
    records it (`pid_start`), and both must match. A segment of an earlier version recorded no
    start time: its pid counts only if the process started before the segment was opened."""
    if segment.get("host") != socket.gethostname():
        return True
    pid = segment.get("pid")
    ticks = process_start_time(pid) if isinstance(pid, int) and pid > 0 else ""
    if not ticks:
        return False  # no such process
    if segment.get("pid_start"):
        return ticks == segment["pid_start"]
    try:
        opened = datetime.fromisoformat(segment["started"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return True  # nothing to compare with: the pid alone, as before
    return _started_at(ticks) <= opened + 2.0  # "started" is cut to the second, the boot time too


def _started_at(ticks: str) -> float:
    """The wall time a process started, from its start time in clock ticks after boot (0.0, long
    ago, when the boot time cannot be read: the pid alone then decides, as before)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            boot = next(float(line.split()[1]) for line in fh if line.startswith("btime "))
        return boot + int(ticks) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return 0.0


def make_wandb_api():
    """A factory for `wandb.Api` (align mode reads runs with it; called only when needed)."""
    def build():
        import wandb

        return wandb.Api(timeout=60)
    return build
