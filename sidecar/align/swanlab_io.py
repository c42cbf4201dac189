"""SwanLab: the upload side of align mode, and the read API factory. The only module importing swanlab.

Every init turns off the hardware monitor (it corrupts offline run files — measured with 0.10),
terminal capture and the environment probes.
"""

from __future__ import annotations

import hashlib
import logging

log = logging.getLogger(__name__)


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


def upload(fw, cfg, frame, mode: str) -> None:
    """Log the frame's rows (already one row per integer step) into the framework's experiment
    (the version `fw.experiment_version` names). After a resume SwanLab adds a metric's points only
    after its last step: align sends only such points, or rebuilds."""
    import swanlab

    if cfg.swanlab_api_key and mode in ("online", "cloud"):
        swanlab.login(api_key=cfg.swanlab_api_key)
    S = swanlab.Settings
    settings = S(probe=S.Probe(hardware=False, runtime=False, requirements=False, conda=False, git=False,
                               monitor=False),
                 terminal=S.Terminal(proxy_type="none"))
    version = fw.experiment_version
    exp_id = experiment_id(cfg.project, fw.name, fw.platform, fw.source, version)
    kwargs = {"log_dir": str(cfg.logdir)} if cfg.logdir else {}
    run = swanlab.init(project=cfg.project, workspace=cfg.workspace, name=fw.target_exp_name, id=exp_id,
                       resume="allow", mode="online" if mode == "cloud" else mode, reinit=True,
                       config={"source": fw.source, "platform": fw.platform, "rows": int(len(frame)),
                               "aligned_metrics": len(cfg.aligned_metrics), "experiment_version": version},
                       settings=settings, **kwargs)
    columns = [c for c in frame.columns if c != "step"]
    steps = frame["step"].tolist()  # python ints: SwanLab drops a whole row with a numpy step
    values = frame[columns].to_numpy(dtype="float64", na_value=float("nan")).tolist()
    for step, row in zip(steps, values):
        point = {c: v for c, v in zip(columns, row) if v == v}  # v == v: not NaN
        if point:
            run.log(point, step=int(step))
    swanlab.finish()
    log.info("%s: logged %d step(s) to SwanLab experiment %s (%s)", fw.name, len(steps), exp_id, mode)
