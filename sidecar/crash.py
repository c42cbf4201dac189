"""Crash points: a debug option that SIGKILLs the sidecar at a named phase (README "Debugging crashes")."""

from __future__ import annotations

import os
import signal

# A documented debug option (README "Debugging crashes"): EVAL_SIDECAR_CRASH_AT=PHASE[:N] makes the
# sidecar SIGKILL itself the N-th time (default 1st) it reaches PHASE, to prove that a kill -9 at
# that moment loses nothing. Read once at import; unset, every crash_point is a no-op.
_CRASH_AT = os.environ.get("EVAL_SIDECAR_CRASH_AT", "")
_crash_counts: dict[str, int] = {}
CRASH_PHASES = ("after-discovery", "eval-spawned", "eval-running", "eval-finished", "metrics-read", "state-write",
                "state-written", "wandb-row", "table-log", "shutdown", "slurm-submitted")


def crash_point(phase: str) -> None:
    """SIGKILL this process here if EVAL_SIDECAR_CRASH_AT names this phase (and this occurrence)."""
    if not _CRASH_AT:
        return
    name, _, nth = _CRASH_AT.partition(":")
    if name != phase:
        return
    _crash_counts[phase] = _crash_counts.get(phase, 0) + 1
    if _crash_counts[phase] == (int(nth) if nth.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
