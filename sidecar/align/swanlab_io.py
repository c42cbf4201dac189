"""SwanLab: the upload side of align mode, what an interrupted upload left in its run folder, and
the read API factory. The only module importing swanlab.

Every init turns off the hardware monitor (it corrupts offline run files — measured with 0.10),
terminal capture and the environment probes.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import signal
import threading
from pathlib import Path

from . import events as upload_events

log = logging.getLogger(__name__)

# Rows logged ahead of what SwanLab has taken, at most. `run.log` only queues a step (the queue holds
# 100,000); SwanLab's writer thread is slower than the logging, so unchecked the queue grows to tens
# of thousands of steps: memory, a progress bar at 100 % long before the end, and a Ctrl-C that
# waits minutes for the queue to drain.
AHEAD = 1000
CHECK_EVERY = 256  # rows between two looks at progress and at a stop request


def experiment_id(project: str, framework: str, platform: str, source: str, version: int = 1) -> str:
    """A stable 21-character id per (project, framework, source) and experiment version: re-runs
    resume the same experiment; `align --rebuild` moves to the next version, a fresh experiment
    (version 1 is the id every earlier release used)."""
    raw = f"{project}\0{framework}\0{platform}\0{source}" + (f"\0v{version}" if version != 1 else "")
    return hashlib.sha1(raw.encode()).hexdigest()[:21]


def make_api(api_key: str | None):
    """A factory for `swanlab.Api` (only called when a SwanLab source is fetched)."""
    def build():
        import swanlab

        return swanlab.Api(api_key=api_key) if api_key else swanlab.Api()
    return build


class _Taken:
    """How many of the frame's rows SwanLab has taken (its writer thread flushed their points),
    from SwanLab's `on_scalar_flush` callback; `wait_until` holds the logging back."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = steps
        self.rows = 0
        self._target = None  # the rows a waiting logger waits for: woken once, not at every flush
        self._changed = threading.Condition()

    def callback(self):
        import swanlab

        taken = self

        class Flushed(swanlab.Callback):
            @property
            def name(self) -> str:
                return "eval-sidecar-align-progress"

            def on_scalar_flush(self, scalar_records, *args, **kwargs) -> None:
                if scalar_records:
                    taken.flushed(scalar_records[-1].step)  # flushed in log order

        return Flushed()

    def flushed(self, step: int) -> None:
        self.rows = max(self.rows, bisect.bisect_right(self.steps, step))
        if self._target is not None and self.rows >= self._target:
            with self._changed:
                self._changed.notify_all()

    def wait_until(self, rows: int, stopping) -> None:
        with self._changed:
            self._target = rows
            while self.rows < rows and not stopping():
                self._changed.wait(0.5)
            self._target = None


def _init(fw, cfg, rows: int, mode: str, callbacks):
    import swanlab

    S = swanlab.Settings
    settings = S(probe=S.Probe(hardware=False, runtime=False, requirements=False, conda=False, git=False,
                               monitor=False),
                 terminal=S.Terminal(proxy_type="none"))
    version = fw.experiment_version
    exp_id = experiment_id(cfg.project, fw.name, fw.platform, fw.source, version)
    kwargs = {"log_dir": str(cfg.logdir)} if cfg.logdir else {}
    ours = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    run = swanlab.init(project=cfg.project, workspace=cfg.workspace, name=fw.target_exp_name, id=exp_id,
                       resume="allow", mode="online" if mode == "cloud" else mode, reinit=True,
                       config={"source": fw.source, "platform": fw.platform, "rows": int(rows),
                               "aligned_metrics": len(cfg.aligned_metrics), "experiment_version": version},
                       settings=settings, callbacks=callbacks, **kwargs)
    if ours is not None:
        # SwanLab's own Ctrl-C handler finishes the run inside the handler, possibly in the middle of
        # a log call; align stops at a step boundary and finishes the run itself
        signal.signal(signal.SIGINT, ours)
    return run, exp_id


def upload(fw, cfg, frame, mode: str) -> None:
    """Log the frame's rows (already one row per integer step) into the framework's experiment
    (the version `fw.experiment_version` names), telling align's events (events.py) how far SwanLab
    got; stops at a step boundary when they say so. After a resume SwanLab adds a metric's points
    only after its last step: align sends only such points, or rebuilds."""
    import swanlab

    events = upload_events.current()
    if cfg.swanlab_api_key and mode in ("online", "cloud"):
        swanlab.login(api_key=cfg.swanlab_api_key)
    columns = [c for c in frame.columns if c != "step"]
    steps = [int(s) for s in frame["step"].tolist()]  # python ints: SwanLab drops a whole row with a numpy step
    # a row's python floats are made when it is logged: all of them at once is 100 MB at 100,000 x 30
    values = frame[columns].to_numpy(dtype="float64", na_value=float("nan"))
    per_run = events.segment_rows or len(steps) or 1
    start, exp_id = 0, None
    while start < len(steps):
        end = min(len(steps), start + per_run)
        taken = _Taken(steps)
        taken.rows = start
        run, exp_id = _init(fw, cfg, len(frame), mode, [taken.callback()])
        run_dir = Path(run.dir)
        if not events.opened(run_dir):
            swanlab.finish(state="aborted")
            return
        logged = start
        for i in range(start, end):
            if not (i - start) % CHECK_EVERY:
                if events.stopping():
                    break
                if i - taken.rows > AHEAD:  # let SwanLab catch up half way: few waits, each a long run after
                    taken.wait_until(i - AHEAD // 2, events.stopping)
                events.advanced(taken.rows)
            point = {c: v for c, v in zip(columns, values[i].tolist()) if v == v}  # v == v: not NaN
            if point:
                run.log(point, step=steps[i])
            logged = i + 1
        stopped = logged < end
        swanlab.finish(state="aborted" if stopped else "success")
        events.advanced(logged)
        events.durable(logged, run_dir)
        log.debug("%s: logged rows %d..%d to SwanLab experiment %s (%s)", fw.name, start, logged, exp_id, mode)
        if stopped:
            return
        start = end
    log.info("%s: logged %d step(s) to SwanLab experiment %s (%s)", fw.name, len(steps), exp_id, mode)


def logged_points(run_dir: Path) -> dict | None:
    """metric -> sorted steps (numpy) of every scalar point the run file in `run_dir` holds: what an
    upload that did not finish had written (after a kill -9, up to its last complete record).
    None when the folder or its run file is gone."""
    import numpy as np
    from swanlab.proto.swanlab.record.v1 import record_pb2
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    files = sorted(Path(run_dir).glob("run-*.swanlab"))
    if not files:
        return None
    by_metric: dict[str, list[int]] = {}
    reader = DataStoreReader()
    try:
        reader.open(str(files[0]))
    except Exception:  # killed before the header reached the disk (0 bytes): nothing was written
        log.debug("%s: no readable header", files[0], exc_info=True)
        return {}
    record = record_pb2.Record()
    try:
        while True:
            try:
                data = reader.scan()
            except Exception:  # a torn last record (the process was killed mid-write): the rest is not there
                log.debug("%s: stopped at a damaged record", files[0], exc_info=True)
                break
            if data is None:
                break
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "scalar":
                by_metric.setdefault(record.scalar.key, []).append(record.scalar.step)
    finally:
        reader.close()
    return {m: np.unique(np.array(v, dtype=np.int64)) for m, v in by_metric.items()}
