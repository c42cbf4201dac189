"""SwanLab: the upload side of align mode, and the read API factory. The only module importing swanlab.

Every init turns off the hardware monitor (it corrupts offline run files — measured with 0.10),
terminal capture and the environment probes.
"""

from __future__ import annotations

import hashlib
import logging

log = logging.getLogger(__name__)


def experiment_id(project: str, framework: str, platform: str, source: str) -> str:
    """A stable 21-character id per (project, framework, source): re-runs resume the same experiment."""
    return hashlib.sha1(f"{project}\0{framework}\0{platform}\0{source}".encode()).hexdigest()[:21]


def make_api(api_key: str | None):
    """A factory for `swanlab.Api` (only called when a SwanLab source is fetched)."""
    def build():
        import swanlab

        return swanlab.Api(api_key=api_key) if api_key else swanlab.Api()
    return build


def upload(fw, cfg, frame, mode: str) -> None:
    """Log the frame's rows (already one row per integer step) into the framework's experiment."""
    import swanlab

    if cfg.swanlab_api_key and mode in ("online", "cloud"):
        swanlab.login(api_key=cfg.swanlab_api_key)
    S = swanlab.Settings
    settings = S(probe=S.Probe(hardware=False, runtime=False, requirements=False, conda=False, git=False,
                               monitor=False),
                 terminal=S.Terminal(proxy_type="none"))
    exp_id = experiment_id(cfg.project, fw.name, fw.platform, fw.source)
    kwargs = {"log_dir": str(cfg.logdir)} if cfg.logdir else {}
    run = swanlab.init(project=cfg.project, workspace=cfg.workspace, name=fw.target_exp_name, id=exp_id,
                       resume="allow", mode="online" if mode == "cloud" else mode, reinit=True,
                       config={"source": fw.source, "platform": fw.platform, "rows": int(len(frame)),
                               "aligned_metrics": len(cfg.aligned_metrics)},
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
