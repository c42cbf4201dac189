"""`status`: what the sidecar has done, from the state file alone (SPEC §5.1)."""

from __future__ import annotations

from ..reporters.rows import summary_from_rows
from .plan import Policy, is_given_up
from .state import State


def delivery(state: State, synced_elsewhere: frozenset[str] = frozenset()) -> dict:
    """Where the rows stand with the W&B server: not written anywhere yet (`unreported`), logged
    online but not confirmed by the server (`unconfirmed`), in offline folders not synced yet
    (`offline_unsynced`), and reported by the original tool in folders `sync` has not looked for
    (`original_tool_unchecked`)."""
    offline: set[int] = set()
    original: set[int] = set()
    for seg in state.segments:
        if seg.get("synced") or seg.get("dir") in synced_elsewhere:
            continue
        if seg.get("mode") == "offline" and seg.get("dir"):
            offline.update(seg.get("steps", []))
        elif seg.get("mode") == "original tool":
            original.update(seg.get("steps", []))
    return {
        "unreported": len(state.unreported),
        "unconfirmed": len([s for s in state.sent if s in state.rows]),
        "offline_unsynced": len((offline & set(state.rows)) - state.unreported),
        "original_tool_unchecked": len(original & set(state.rows)),
    }


def summarize(state: State, now_wall: float, max_attempts: int | None = None, mode: str = "",
              synced_elsewhere: frozenset[str] = frozenset()) -> dict:
    """A JSON-ready summary: counts, in-flight evals, last/best HR@10 and NDCG@10, last error.

    A failure is given up as the sidecar judges it (`plan.is_given_up`): against `max_attempts`
    when given (the --max-attempts of the flags `status` got), else against the --max-attempts
    the sidecar recorded when it last started; only when neither is known, by the record's flag."""
    summary = summary_from_rows(state.rows)
    limit = max_attempts if max_attempts is not None else state.max_attempts
    if limit is None:
        given_up = [s for s, f in state.failed.items() if f.get("given_up")]
    else:
        policy = Policy(max_attempts=limit)
        given_up = [s for s, f in state.failed.items() if is_given_up(f, policy)]
    retrying = [s for s in state.failed if s not in given_up]
    pending = [s for s in state.pending if s not in state.processed and s not in given_up]
    in_flight = []
    for step, entry in sorted(state.in_flight.items()):
        started = entry.get("started_at")
        in_flight.append({
            "step": step, "checkpoint": entry.get("checkpoint"), "pid": entry.get("pid"),
            "host": entry.get("host"), "interrupted": bool(entry.get("interrupted")), "gpus": entry.get("gpus"),
            "slurm_job_id": entry.get("job_id"), "slurm_state": entry.get("slurm_state"), "node": entry.get("node"),
            "elapsed_seconds": round(now_wall - float(started), 1) if started is not None else None,
        })
    last_error = None
    if state.failed:
        step, failure = max(state.failed.items(), key=lambda kv: str(kv[1].get("time", "")))
        last_error = {"step": step, "checkpoint": failure.get("checkpoint"), "error": failure.get("error"),
                      "time": failure.get("time"), "attempts": failure.get("attempts")}
    return {
        "run_id": state.run_id,
        "run_name": state.run_name,
        "wandb_mode": mode,
        "model_config_key": state.model_config_key,
        "processed": len(state.processed),
        "failed": len(state.failed),
        "failed_given_up": len(given_up),
        "failed_retrying": len(retrying),
        "vanished": len(state.vanished),
        "pending": len(pending),
        **delivery(state, synced_elsewhere),
        "in_flight": in_flight,
        "last_step": summary.get("last_step"),
        "last_hr@10": summary.get("last_hr@10"),
        "last_ndcg@10": summary.get("last_ndcg@10"),
        "best_hr@10": summary.get("best_hr@10"),
        "best_step_for_hr@10": summary.get("best_step_for_hr@10"),
        "best_ndcg@10": summary.get("best_ndcg@10"),
        "best_step_for_ndcg@10": summary.get("best_step_for_ndcg@10"),
        "last_seen_step": state.last_seen_step,
        "last_update_time": state.last_update_time,
        "last_error": last_error,
        "vanished_steps": sorted(state.vanished),
        "pins": _pins(state.pins_dir),
        "wandb_segments": [{"dir": s.get("dir"), "mode": s.get("mode"), "started": s.get("started"),
                            "rows": len(set(s.get("steps", []))), "closed": bool(s.get("closed"))}
                           for s in state.segments if s.get("dir")],
    }


def _delivery_line(info: dict) -> str:
    parts = []
    if info["unreported"]:
        parts.append(f"{info['unreported']} unreported (not written to W&B yet)")
    if info["unconfirmed"]:
        parts.append(f"{info['unconfirmed']} sent, not yet confirmed by the server")
    if info["offline_unsynced"]:
        parts.append(f"{info['offline_unsynced']} in offline folders not yet synced (run `eval_wandb_sidecar.py sync`)")
    if info["original_tool_unchecked"]:
        parts.append(f"{info['original_tool_unchecked']} reported by the original tool: if it ran offline, "
                     f"`eval_wandb_sidecar.py sync` uploads its folders")
    if parts:
        return "; ".join(parts)
    return "every row is on the W&B server" if info["processed"] else "no rows yet"


def _pins(pins_dir: str | None) -> dict | None:
    if not pins_dir:
        return None
    from pathlib import Path

    from .pins import pin_disk_use

    count, own = pin_disk_use(Path(pins_dir))
    return {"dir": pins_dir, "count": count, "bytes_held_only_by_pins": own}


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_status(info: dict, state_file: str) -> str:
    """The human-readable status table."""
    lines = [
        f"state file    {state_file}",
        f"run           {info['run_id']} ({info['run_name']}), W&B mode {info['wandb_mode'] or '-'}",
        (f"checkpoints   processed {info['processed']}  pending {info['pending']}  "
         f"failed {info['failed']} ({info['failed_given_up']} given up)  vanished {info['vanished']}  "
         f"unreported {info['unreported']}{' (W&B disabled)' if info['wandb_mode'] == 'disabled' else ''}"),
    ]
    if info["wandb_mode"] != "disabled":
        lines.append(f"W&B delivery  {_delivery_line(info)}")
    if info["in_flight"]:
        for entry in info["in_flight"]:
            if entry.get("slurm_job_id"):
                elapsed = "-" if entry["elapsed_seconds"] is None else f"{entry['elapsed_seconds']:.0f} s"
                node = f" on {entry['node']}" if entry.get("node") else ""
                lines.append(f"in flight     {entry['checkpoint']}: slurm job {entry['slurm_job_id']} "
                             f"{entry['slurm_state'] or '?'}{node} (as last seen), submitted {elapsed} ago")
            elif entry["interrupted"]:
                lines.append(f"in flight     {entry['checkpoint']}: interrupted when the sidecar stopped; "
                             f"it will be evaluated again")
            else:
                elapsed = "-" if entry["elapsed_seconds"] is None else f"{entry['elapsed_seconds']:.0f} s"
                gpus = f" on GPUs {entry['gpus']}" if entry.get("gpus") else ""
                lines.append(f"in flight     {entry['checkpoint']}{gpus} for {elapsed} (pid {entry['pid']} on {entry['host']})")
    else:
        lines.append("in flight     none")
    if info["last_step"] is None:
        lines.append("results       none yet")
    else:
        lines.append(f"last step     {info['last_step']}  HR@10 {_num(info['last_hr@10'])}  "
                     f"NDCG@10 {_num(info['last_ndcg@10'])}")
        lines.append(f"best HR@10    {_num(info['best_hr@10'])} at step {info['best_step_for_hr@10']}")
        lines.append(f"best NDCG@10  {_num(info['best_ndcg@10'])} at step {info['best_step_for_ndcg@10']}")
    if info["last_error"]:
        err = info["last_error"]
        lines.append(f"last error    {err['checkpoint']} (attempt {err['attempts']}, {err['time']}): {err['error']}")
    if info["vanished_steps"]:
        shown = ", ".join(str(s) for s in info["vanished_steps"][:10])
        more = " ..." if len(info["vanished_steps"]) > 10 else ""
        lines.append(f"vanished      steps {shown}{more}")
    if info.get("pins"):
        pins = info["pins"]
        lines.append(f"pins          {pins['count']} in {pins['dir']} "
                     f"({pins['bytes_held_only_by_pins'] / 2**20:.1f} MB held only by pins)")
    segments = info["wandb_segments"]
    if segments:
        last = segments[-1]
        lines.append(f"W&B segments  {len(segments)}; latest {last['mode']} {last['dir']} ({last['rows']} rows)")
    lines.append(f"updated       {info['last_update_time'] or '-'}")
    return "\n".join(lines)


def format_rows(rows: dict[int, dict]) -> str:
    """One line per evaluated checkpoint: step, HR@K and NDCG@K for the K present."""
    if not rows:
        return "(no rows yet)"
    from ..reporters.rows import BASE_METRICS

    names = [m for m in BASE_METRICS if any(m in r for r in rows.values())]
    header = f"{'step':>8}  " + "  ".join(f"{m:>8}" for m in names)
    lines = [header]
    for step in sorted(rows):
        row = rows[step]
        cells = "  ".join(f"{row[m]:>8.4f}" if isinstance(row.get(m), (int, float)) else f"{'-':>8}" for m in names)
        lines.append(f"{step:>8}  {cells}")
    return "\n".join(lines)
