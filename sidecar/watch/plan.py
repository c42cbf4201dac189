"""Pure core: what to evaluate next, and how an outcome changes the state (SPEC §2.3, §2.6–§2.8).

No I/O here: `plan` chooses, the `record_*` transitions mutate the in-memory state in place
(copying 10,000 rows per checkpoint would make a backfill quadratic) and return what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..checkpoints import Checkpoint
from ..reporters.rows import RESERVED
from .state import State, utc_iso


@dataclass(frozen=True)
class Policy:
    order: str = "oldest-first"  # or "newest-first"
    max_per_tick: int = 0  # 0 = unlimited
    max_attempts: int = 3
    backoff_seconds: float = 300.0
    force_steps: frozenset[int] = field(default_factory=frozenset)  # processed steps to re-evaluate


def backoff_delay(attempts: int, base: float) -> float:
    """Exponential backoff: base, 2*base, 4*base, ... after the 1st, 2nd, 3rd failure (at most 30 days)."""
    return min(base * (2.0 ** min(max(attempts - 1, 0), 64)), 30 * 86400.0)


def is_given_up(failure: dict, policy: Policy) -> bool:
    return int(failure.get("attempts", 1)) >= policy.max_attempts


def still_wanted(step: int, state: State, policy: Policy) -> bool:
    """Whether `step` still needs an outcome: not processed (or asked to be re-evaluated) and
    not given up. The one place that says so (readiness walks, vanished checks and `plan` ask it)."""
    if step in state.processed and step not in policy.force_steps:
        return False
    failure = state.failed.get(step)
    return failure is None or not is_given_up(failure, policy)


def wants(step: int, state: State, now_wall: float, policy: Policy) -> bool:
    """Whether a ready checkpoint at `step` should be evaluated now (wanted, and its retry is due)."""
    if not still_wanted(step, state, policy):
        return False
    failure = state.failed.get(step)
    return failure is None or now_wall >= float(failure.get("retry_after", 0.0))


def plan(ready: list[Checkpoint], state: State, now_wall: float, policy: Policy) -> list[Checkpoint]:
    """The checkpoints to evaluate this tick, in order, capped by `max_per_tick`."""
    chosen = [c for c in ready if wants(c.step, state, now_wall, policy)]
    chosen.sort(key=lambda c: c.step, reverse=policy.order == "newest-first")
    if policy.max_per_tick > 0:
        chosen = chosen[: policy.max_per_tick]
    return chosen


def next_retry(state: State, policy: Policy, after: float) -> float | None:
    """Wall time of the earliest retry due later than `after` (for the loop's wake-up), or None.

    Retries already due are left out: if they could not run this tick (checkpoint not ready, root
    gone) waking for them again at once would spin."""
    times = [float(f.get("retry_after", 0.0)) for f in state.failed.values() if not is_given_up(f, policy)]
    later = [t for t in times if t > after]
    return min(later) if later else None


def build_row(ckpt: Checkpoint, metrics: dict[str, float], metrics_path: str, eval_params: dict | None,
              context: dict | None = None) -> dict:
    """A table row: step, name, every metric, the training context (`train/epoch`, ... from the
    checkpoint's trainer_state.json), metrics_path (and the decoding parameters used).

    Metrics named like a bookkeeping field (`checkpoint_step`, ...) or a training context field
    are left out: the row's own step, name and context always win."""
    row: dict = {"checkpoint_step": ckpt.step, "checkpoint_name": ckpt.name}
    row.update((k, v) for k, v in metrics.items() if k not in RESERVED)
    row.update(context or {})
    row["metrics_path"] = metrics_path
    if eval_params is not None:
        row["eval_params"] = dict(eval_params)
    return row


def record_success(state: State, row: dict) -> None:
    """The step is processed with this row (replacing an older row); failures and flight cleared.

    The row is unreported until a W&B segment holds it (with W&B disabled it waits for the next
    run that has W&B on)."""
    step = int(row["checkpoint_step"])
    state.processed.add(step)
    state.rows[step] = row
    state.revisions[step] = state.revisions.get(step, 0) + 1
    state.failed.pop(step, None)
    state.vanished.pop(step, None)
    state.in_flight.pop(step, None)
    state.unreported.add(step)
    state.sent.pop(step, None)  # whether the server got the replaced row no longer matters


def record_failure(state: State, ckpt: Checkpoint, error: str, now_wall: float, policy: Policy,
                   consume_attempt: bool = True) -> dict:
    """Count one failed attempt (history kept) and schedule the retry; returns the failure record."""
    previous = state.failed.get(ckpt.step, {})
    attempts = int(previous.get("attempts", 0)) + (1 if consume_attempt else 0)
    record = dict(previous)
    if previous.get("error"):
        # keep a short history: the original's failure records must not lose their story
        history = list(previous.get("previous_errors", []))
        history.append(f"{previous.get('time', '?')}: {previous['error']}")
        record["previous_errors"] = history[-5:]
    record.update({
        "checkpoint": ckpt.name,
        "error": error,
        "time": utc_iso(now_wall),
        "attempts": attempts,
        "retry_after": now_wall + backoff_delay(attempts, policy.backoff_seconds),
    })
    if attempts >= policy.max_attempts:
        record["given_up"] = True
        record.pop("retry_after", None)
    else:
        record.pop("given_up", None)
    state.failed[ckpt.step] = record
    state.in_flight.pop(ckpt.step, None)
    return record


def record_vanished(state: State, step: int, name: str, reason: str, now_wall: float) -> None:
    """The checkpoint was deleted (rotation) before or during its eval: recorded, never retried."""
    state.vanished[step] = {"checkpoint": name, "reason": reason, "time": utc_iso(now_wall)}
    state.pending = [s for s in state.pending if s != step]
    state.failed.pop(step, None)
    state.in_flight.pop(step, None)


def reset_failures(state: State) -> int:
    """`--retry-failed`: every failure gets a fresh budget; returns how many were reset."""
    for failure in state.failed.values():
        failure["attempts"] = 0
        failure.pop("given_up", None)
        failure.pop("retry_after", None)
    return len(state.failed)


def next_wake(now: float, poll_deadline: float | None, quiet_deadlines: list[float]) -> float | None:
    """Seconds to wait before the next tick: until the poll deadline or the earliest end of a
    quiet period, whichever is sooner; None = wait for an event only."""
    candidates = [d for d in [poll_deadline, *quiet_deadlines] if d is not None]
    if not candidates:
        return None
    return max(0.0, min(candidates) - now)
