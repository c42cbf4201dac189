"""W&B reporting (SPEC §4): one run per model configuration, fed from the state file.

The run lives on a worker thread so evaluation never waits for W&B (an unreachable server costs
the worker an init timeout, not the evaluator). The service hands the worker snapshots of state
(`report`) and collects what was written (`collect`); the state records which rows each run
segment holds, so a restart writes exactly the rows that are missing. Offline, each process
writes its own segment folder; crashed segments are read back at start-up (`reconcile`) because
wandb-core flushes its file only every few seconds. This is the only module that imports wandb.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from .executor import crash_point, run_command
from .report import Delivery, Snapshot, metric_names, summary_from_rows, table_columns

log = logging.getLogger(__name__)

BACKOFF_FIRST = 30.0
BACKOFF_MAX = 900.0
_CLOSE = object()


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
    flush_interval: float = 1.0  # seconds between wandb-core writes of the .wandb file
    retry_in_close: bool = False  # --once: no new attempt at exit after an outage


def history_row(row: dict) -> dict:
    """The history record of one checkpoint (SPEC §4.2); never logged with `step=`."""
    item = {"checkpoint_step": int(row["checkpoint_step"])}
    for name in metric_names(row):
        if isinstance(row[name], (int, float)) and not isinstance(row[name], bool):
            item[f"eval/{name}"] = row[name]
    item["eval/checkpoint_name"] = row.get("checkpoint_name", f"checkpoint-{row['checkpoint_step']}")
    item["eval/metrics_path"] = row.get("metrics_path", "")
    return item


def table_data(rows: dict[int, dict]) -> tuple[list[str], list[list]]:
    """Columns and one row per checkpoint, sorted by step."""
    ordered = [rows[s] for s in sorted(rows)]
    columns = table_columns(ordered)
    return columns, [[row.get(c) for c in columns] for row in ordered]


def _utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _redact(text: str) -> str:
    key = os.environ.get("WANDB_API_KEY")
    text = text.replace(key, "***") if key else text
    return " ".join(text.split())[:300]


class Outage(Exception):
    """W&B cannot be reached or refused the run."""


class WandbReporter:
    """Reports state rows to one W&B run from a worker thread."""

    enabled = True

    def __init__(self, options: WandbOptions) -> None:
        self.options = options
        self._on_delivery = None
        self._queue: queue.Queue = queue.Queue()
        self._deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._run_open = False
        self._opening = False
        self._in_outage = False
        self.mode = options.mode

    # ----- called by the service (main thread) ------------------------------------------------
    def bind(self, run_id: str, run_name: str, on_delivery=None) -> None:
        """Use the run id and name persisted in state; `on_delivery()` is called after each write."""
        from dataclasses import replace

        self.options = replace(self.options, run_id=run_id, run_name=run_name)
        self._on_delivery = on_delivery

    def report(self, snapshot: Snapshot) -> None:
        """Queue a snapshot; returns at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="wandb-reporter", daemon=True)
            self._thread.start()
        self._queue.put(snapshot)

    def collect(self) -> list[Delivery]:
        """What the worker wrote since the last call."""
        with self._lock:
            out, self._deliveries = self._deliveries, []
        return out

    def close(self, timeout: float | None = None) -> None:
        """Finish the run (flushing the last rows and table); waits for the worker."""
        if self._thread is None:
            return
        self._queue.put(_CLOSE)
        if timeout is not None:
            limit = timeout
        elif self._in_outage and not self._opening:  # rows stay unreported in state for the next start
            limit = 10.0
        else:  # an init attempt (wandb adds ~10 s to its timeout), then finishing uploads
            limit = self.options.init_timeout + 20 + max(60.0, 2 * self.options.init_timeout)
        self._thread.join(limit)
        if self._thread.is_alive():
            log.warning("W&B did not finish within %.0f s; unreported rows stay in state for the next start", limit)

    def reconcile(self, segments: list[dict], rows: dict[int, dict], unreported: set[int]) -> tuple[set[int], set[int]]:
        """Read back segments that were not closed cleanly (the sidecar died).

        Returns (lost, found): steps a segment was believed to hold but does not, and unreported
        steps a segment does hold with identical values. Marks those segments closed.
        """
        lost: set[int] = set()
        found: set[int] = set()
        for seg in segments:
            if seg.get("closed"):
                continue
            held = read_segment(Path(seg["dir"]))
            claimed = set(seg.get("steps", []))
            holds = {s for s, items in held.items() if s in rows and any(_same(i, rows[s]) for i in items)}
            lost |= {s for s in claimed if s not in holds}
            found |= {s for s in unreported if s in holds}
            seg["steps"] = sorted(holds)
            seg["closed"] = True
            seg["reconciled"] = _utc_now()
            log.info("W&B segment %s was not closed cleanly: it holds %d row(s); %d row(s) will be written again",
                     seg["dir"], len(holds), len(claimed - holds))
        return lost, found - lost

    # ----- the worker thread -----------------------------------------------------------------
    def _deliver(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries.append(delivery)
        if self._on_delivery is not None:
            self._on_delivery()

    def _work(self) -> None:
        run = None
        segment: dict = {}
        logged: dict[int, dict] = {}  # step -> row object written by this process (any segment)
        latest: Snapshot | None = None
        next_attempt = 0.0
        in_outage = False
        closing = False
        while True:
            wait = None  # block until the next snapshot
            if closing:
                wait = 0.0
            elif latest is not None and run is None:
                wait = max(0.0, next_attempt - time.monotonic())
            try:
                item = self._queue.get(timeout=wait) if wait != 0.0 else self._queue.get_nowait()
            except queue.Empty:
                item = None
            while item is not None:
                if item is _CLOSE:
                    closing = True
                else:
                    latest = item
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            todo = {s: r for s, r in (latest.pending.items() if latest else ()) if logged.get(s) is not r}
            if todo and run is None and time.monotonic() >= next_attempt and not (closing and in_outage):
                try:
                    self._opening = True
                    run, segment = self._open()
                    self._run_open = True
                    if in_outage:
                        log.info("W&B is reachable again: writing %d unreported row(s)", len(todo))
                    in_outage, self._failures = False, 0
                    self._deliver(Delivery(dict(segment)))
                except Exception as exc:  # noqa: BLE001 - any failure of the SDK is an outage
                    next_attempt, in_outage = self._outage(exc, in_outage)
                finally:
                    self._opening = False
            if todo and run is not None:
                try:
                    self._write(run, todo, latest)
                    logged.update(todo)
                    self._deliver(Delivery(dict(segment), rows=dict(todo)))
                except Exception as exc:  # noqa: BLE001
                    self._teardown(run)
                    run = None
                    self._run_open = False
                    next_attempt, in_outage = self._outage(exc, in_outage)
            self._in_outage = in_outage
            if closing and run is None and todo and not in_outage and time.monotonic() >= next_attempt:
                continue  # e.g. just switched to the offline fallback: write before finishing
            if closing:
                if run is not None:
                    try:
                        run.finish()
                        self._deliver(Delivery(dict(segment), closed=True))
                    except Exception as exc:  # noqa: BLE001
                        # left unclosed: the next start reads it back, `sync` can upload it
                        log.warning("W&B run did not finish cleanly (%s); `eval_wandb_sidecar.py sync` can upload "
                                    "%s later", _redact(str(exc)), segment.get("dir"))
                        self._teardown(None)
                return

    def _write(self, run, todo: dict[int, dict], snapshot: Snapshot) -> None:
        import wandb

        for step in sorted(todo):
            run.log(history_row(todo[step]))
        crash_point("wandb-row")
        columns, data = table_data(snapshot.rows)
        # A new Table each time: W&B silently writes a stale file for a mutated, re-logged one.
        run.log({"eval/checkpoint_table": wandb.Table(columns=columns, data=data)})
        crash_point("table-log")
        summary = summary_from_rows(snapshot.rows, self.options.summary_metrics)
        # W&B's automatic summary holds the last row *logged*; after a re-evaluation that is not
        # the last step, so the eval/* summary is set from the last step's row.
        summary.update(history_row(snapshot.rows[max(snapshot.rows)]))
        run.summary.update(summary)

    def _open(self):
        import wandb

        opts = self.options
        if self.mode == "online":
            self._check_reachable()
        if os.environ.get("WANDB_MODE") == "":
            os.environ.pop("WANDB_MODE")  # wandb rejects an empty value
        # wandb's error reporting probes the server for ~10 s at exit when it is unreachable
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        settings = wandb.Settings(
            console="off", x_disable_stats=not opts.system_stats, init_timeout=opts.init_timeout,
            x_transaction_log_flush_interval=opts.flush_interval, quiet=True, save_code=False,
            disable_git=True, x_save_requirements=False,
            finish_timeout=max(60.0, 2 * opts.init_timeout),  # an outage must not hang the exit
            finish_timeout_raises=True,  # ...and a finish that gave up uploading must not look clean
        )
        run = wandb.init(project=opts.project, entity=opts.entity or None, id=opts.run_id, name=opts.run_name,
                         resume=opts.resume, job_type=opts.job_type, mode=self.mode, config=opts.config,
                         settings=settings)
        run.define_metric("checkpoint_step")
        run.define_metric("eval/*", step_metric="checkpoint_step")
        segment = {"dir": str(Path(run.dir).parent), "mode": self.mode, "run_id": opts.run_id,
                   "started": _utc_now(), "pid": os.getpid(), "host": socket.gethostname(), "steps": []}
        log.info("W&B %s run %s writes to %s", self.mode, opts.run_id, segment["dir"])
        return run, segment

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
        try:
            import wandb

            if run is not None:
                run.finish(exit_code=1)
            wandb.teardown()
        except Exception:  # noqa: BLE001 - best effort before a retry
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
        if not ongoing:
            log.warning("W&B %s run could not be written (%s); evaluation goes on, results stay in the state "
                        "file as unreported and are reported when W&B is back (next try in %.0f s)",
                        self.mode, reason, delay)
        else:
            log.debug("W&B still unavailable (%s); next try in %.0f s", reason, delay)
        return time.monotonic() + delay, True


def _same(item: dict, row: dict) -> bool:
    """A history item read back from a segment carries exactly this state row's values."""
    return all(item.get(k) == v for k, v in history_row(row).items())


def read_segment(folder: Path) -> dict[int, list[dict]]:
    """History items of a segment folder by checkpoint_step, read with `wandb leet inspect --json`
    (wandb's own offline reader). A folder without a readable .wandb file holds nothing."""
    if not any(folder.glob("*.wandb")):
        return {}
    code, out, err = run_command([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)],
                                 timeout=120)
    if code != 0:
        log.warning("could not read W&B segment %s (%s); its rows will be written again", folder, _redact(err))
        return {}
    held: dict[int, list[dict]] = {}
    for line in out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("type") != "history":
            continue
        item = {k: v for k, v in record["history"]["item"].items() if not k.startswith("_")}
        if "checkpoint_step" in item and "eval/checkpoint_name" in item:  # not the table's record
            held.setdefault(int(item["checkpoint_step"]), []).append(item)
    return held


def _writer_alive(segment: dict) -> bool:
    """Whether the process that opened a segment still runs (on another host: assume it does)."""
    if segment.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(segment.get("pid", 0)), 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return int(segment.get("pid", 0)) > 0


def synced_file(state_file: Path) -> Path:
    return Path(f"{state_file}.synced.json")


def sync_segments(segments: list[dict], state_file: Path, dry_run: bool) -> int:
    """`wandb sync` the offline segments not synced yet, in start-time order; returns an exit code."""
    path = synced_file(state_file)
    try:
        done = set(json.loads(path.read_text()).get("synced", []))
    except (OSError, ValueError):
        done = set()
    # offline segments, and online ones whose process died or could not finish uploading; never a
    # folder a live sidecar still writes (it would be marked synced with rows still to come)
    todo, busy = [], []
    for seg in sorted(segments, key=lambda s: s.get("started", "")):
        if not seg.get("dir") or seg["dir"] in done:
            continue
        if seg.get("mode") != "offline" and seg.get("closed") and not seg.get("reconciled"):
            continue  # a cleanly finished online run: already uploaded
        if not seg.get("closed") and _writer_alive(seg):
            busy.append(seg)
            continue
        todo.append(seg["dir"])
    for seg in busy:
        print(f"skipping {seg['dir']}: still being written by pid {seg.get('pid')}; sync it after that sidecar stops")
    if not todo:
        print("nothing to sync: every offline segment of this run is already synced")
        return 0
    print(shlex.join(["wandb", "sync", *todo]))
    if dry_run:
        return 0
    missing = [d for d in todo if not Path(d).is_dir()]
    if missing:
        print(f"segment folder missing: {missing[0]}", file=sys.stderr)
        return 1
    code, _, _ = run_command([sys.executable, "-m", "wandb", "sync", *todo], timeout=24 * 3600, capture=False)
    if code != 0:
        print(f"wandb sync exited {code}; nothing recorded as synced", file=sys.stderr)
        return 1
    from .state import write_atomic

    write_atomic(path, json.dumps({"synced": sorted(done | set(todo))}, indent=2))
    print(f"synced {len(todo)} segment(s)")
    return 0


def make_wandb_api():
    """A factory for `wandb.Api` (align mode reads runs with it; called only when needed)."""
    def build():
        import wandb

        return wandb.Api(timeout=60)
    return build
