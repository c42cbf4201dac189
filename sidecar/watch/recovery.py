"""Recovery: adopt the state a previous sidecar (or the original tool) left, before the first tick.

Three things are settled here: the state's identity and parameters (`adopt_state`), the evals
that were in flight when it stopped (`triage_in_flight`: stopped and evaluated again, or followed
again when they outlive their sidecar), and the W&B segments a crash left open
(`reconcile_reporting`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..config import Config
from ..errors import ConfigError
from ..reporters.base import run_key
from .plan import reset_failures
from .reporting import reconcile_state, retarget
from .state import State

log = logging.getLogger(__name__)


def adopt_state(state: State | None, config: Config, store_path) -> State:
    """The loaded state (or a new one) under this configuration's identity and parameters."""
    identity = config.identity
    if state is None:
        state = State(identity.key, config.wandb_run_id or identity.default_run_id,
                      config.wandb_run_name or identity.default_run_name)
    else:
        if state.upgraded_from is not None:
            log.info("state file %s is version %s; upgrading it in place (nothing is dropped)", store_path,
                     state.upgraded_from)
        state.model_config_key = identity.key
        state.run_id = config.wandb_run_id or state.run_id or identity.default_run_id
        state.run_name = config.wandb_run_name or state.run_name or identity.default_run_name
    params = config.eval_params()
    if state.eval_params and state.eval_params != params:
        changed = ", ".join(f"{k} {state.eval_params.get(k)!r} -> {v!r}" for k, v in params.items()
                            if state.eval_params.get(k) != v)
        log.warning("decoding parameters changed since the last start (%s); new rows record them in eval_params",
                    changed)
    state.eval_params = params
    state.max_attempts = config.max_attempts  # status judges "given up" by what the sidecar uses
    state.settings = settings_of(config)
    if config.retry_failed and state.failed:
        log.info("--retry-failed: %d failed checkpoint(s) get a fresh attempt budget", reset_failures(state))
    if state.upgraded_from == 1 and state.rows and not state.segments:
        # The original tool reported its rows as it went: never log them a second time.
        state.segments.append({"dir": "", "mode": "original tool", "closed": True, "steps": sorted(state.rows)})
    return state


def settings_of(config: Config) -> dict:
    """The settings `status` explains a state with (`State.settings`)."""
    return {
        "summary_metrics": [f"{m}:min" if m in config.summary_lower_better else m for m in config.summary_metrics],
        "wandb_mode": config.wandb_mode if config.reporting else "disabled",
        "ready_marker": config.ready_marker,
        "checkpoint_ready_seconds": config.checkpoint_ready_seconds,
        "retry_backoff_seconds": config.retry_backoff_seconds,
        "keep_best": config.keep_best,
        "keep_best_metric": f"{config.keep_best_metric}:{'min' if config.keep_best_lower_better else 'max'}",
        "gpu_free_memory_mb": config.gpu_free_memory_mb,
        "wandb_segment_minutes": config.wandb_segment_minutes,
        "gpu_slots": list(config.gpu_slots) if config.executor == "local" else [],
        "identity": dict(config.identity.payload),  # what the key is a hash of: tells one configuration from another
    }


@dataclass
class Triage:
    interrupted: set[int] = field(default_factory=set)  # stopped with their sidecar: evaluated again
    follow: dict[int, dict] = field(default_factory=dict)  # outlive their sidecar (Slurm jobs): followed again


def triage_in_flight(state: State, scheduler) -> Triage:
    """Sort the evals a previous sidecar left in flight by what their executor says of them; raises
    ConfigError (nothing changed) when the executor of some of them cannot work here."""
    triage = Triage()
    for step, entry in state.in_flight.items():
        entry.pop("interrupted", None)
        if scheduler.route(entry).recover(entry):  # a local eval's leftovers are stopped here
            triage.follow[step] = entry
            continue
        triage.interrupted.add(step)
        entry["interrupted"] = True
        log.warning("checkpoint-%s was being evaluated when the previous sidecar stopped; it will be evaluated again",
                    step)
    missing = scheduler.missing_commands(list(triage.follow.values()))
    if missing:
        jobs = ", ".join(f"checkpoint-{s}" for s in sorted(triage.follow))
        raise ConfigError(f"the state file has Slurm jobs in flight ({jobs}) but {', '.join(missing)} is not on "
                          f"PATH here; start this sidecar where Slurm's commands work")
    return triage


def reconcile_reporting(state: State, config: Config, reporter) -> bool:
    """Point the state at this W&B run, let the reporter read back segments a crash left open, and
    queue every row no segment holds. Returns whether the run's table and summary must be written
    again even with no new row (a killed online sidecar may have lost them)."""
    online = getattr(reporter, "mode", "") == "online"
    if online and config.wandb_resume == "never" and state.segments:
        raise ConfigError(f"--wandb-resume never: the run {state.run_id} already holds rows of this state "
                          f"({len(state.segments)} W&B segment(s)); wandb would refuse to continue it and "
                          f"nothing more would reach W&B (use --wandb-resume allow)")
    target = run_key(config.wandb_entity, config.wandb_project, state.run_id)
    previous = state.wandb_run
    if retarget(state, target):
        log.warning("the W&B run changed since rows were reported (%s -> %s): all %d row(s) are written to the "
                    "new run", previous or "an earlier run", target, len(state.rows))
    seal = online and any(
        s.get("mode") == "online" and not s.get("closed") for s in state.segments)
    queued = reconcile_state(state, reporter)
    if queued:
        log.info("%d row(s) in state are in no W&B segment yet; they will be reported", queued)
    return seal
