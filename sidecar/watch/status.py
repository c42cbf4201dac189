"""`status`: what the sidecar has done, from the state file alone (SPEC §5.1)."""

from __future__ import annotations

import math
import os
import re
import shlex
import time
from pathlib import Path

from ..errors import SidecarError
from ..reporters.rows import metric_names, summary_from_rows
from .plan import Policy, is_given_up
from .sparkline import MAX_CELLS, metric_points, sparkline, to_ascii
from .state import State


def delivery(state: State, synced_elsewhere: frozenset[str] = frozenset()) -> dict:
    """Where the rows stand with the W&B server: not written anywhere yet (`unreported`), logged
    online but not confirmed by the server (`unconfirmed`), in offline folders not synced yet
    (`offline_unsynced`), and reported by the original tool in folders `sync` has not looked for
    (`original_tool_unchecked`). The original tool's own state file (version 1), not adopted by a
    sidecar yet, holds only such rows: the adoption records them so (`recovery.adopt_state`)."""
    offline: set[int] = set()
    original: set[int] = set()
    if state.upgraded_from == 1 and state.rows and not state.segments:
        original.update(state.rows)
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


DEFAULT_METRICS: tuple[tuple[str, ...], frozenset[str]] = (("HR@10", "NDCG@10"), frozenset())


def summary_metrics_of(state: State | None, given: tuple | None = None,
                       fallback: tuple[tuple[str, ...], frozenset[str]] = DEFAULT_METRICS
                       ) -> tuple[tuple[str, ...], frozenset[str]]:
    """The summary metrics and those where lower is better: `given` (--summary-metrics given to
    `status`: names, lower, and optionally the names given with an explicit `:min`/`:max`), else
    those the sidecar that wrote the state had, else `fallback`. A given name without a direction
    takes the one the state recorded for it (`acc,loss:min` recorded: `loss` is lower-better)."""
    recorded = _recorded_metrics(state)
    if given is not None:
        names, lower = given[0], given[1]
        explicit = given[2] if len(given) > 2 else None
        if recorded is not None and explicit is not None:
            lower = frozenset(m for m in names if m in lower or (m not in explicit and m in recorded[1]))
        return tuple(names), frozenset(lower)
    return recorded if recorded is not None else fallback


def given_summary_metrics(text: str) -> tuple[tuple[str, ...], frozenset[str], frozenset[str]]:
    """`--summary-metrics` given to status: (names, lower-better, names given with a direction).
    Raises ConfigError as the watch's flag does."""
    from ..config import parse_summary_metrics

    names, lower = parse_summary_metrics(text)
    explicit = {part.strip().rpartition(":")[0].strip() for part in str(text).split(",")
                if part.strip().lower().endswith((":min", ":max"))}
    return names, lower, frozenset(explicit)


def _recorded_metrics(state: State | None) -> tuple[tuple[str, ...], frozenset[str]] | None:
    """The summary metrics (and the lower-better ones) the sidecar that wrote the state had."""
    recorded = state.settings.get("summary_metrics") if state is not None else None
    if isinstance(recorded, list) and recorded and all(isinstance(m, str) and m for m in recorded):
        from ..config import parse_summary_metrics

        try:
            return parse_summary_metrics(",".join(recorded))
        except SidecarError:
            pass
    return None


def mode_of(state: State | None, fallback: str) -> str:
    """The W&B mode the state was written with (its settings), else `fallback`."""
    recorded = state.settings.get("wandb_mode") if state is not None else None
    return recorded if isinstance(recorded, str) and recorded else fallback


def metric_summary(flat: dict, metrics: tuple[str, ...], lower_better: frozenset[str]) -> dict:
    """{metric: {best, best_step, last, goal}} of the summary metrics found in some row, from
    `summary_from_rows` over them (`last` is None when the last row lacks it)."""
    out = {}
    for metric in metrics:
        key = metric.lower()
        if f"best_{key}" in flat:
            out[metric] = {"best": flat[f"best_{key}"], "best_step": flat[f"best_step_for_{key}"],
                           "last": flat.get(f"last_{key}"), "goal": "min" if metric in lower_better else "max"}
    return out


def row_metric_names(rows: dict[int, dict], limit: int = 10) -> list[str]:
    """Up to `limit` metric names the rows hold, by name (to say what there is instead)."""
    names = {k for row in rows.values() for k in metric_names(row)}
    return sorted(names)[:limit]


def curve(rows: dict[int, dict], metric: str, cells: int = MAX_CELLS) -> dict | None:
    """The sparkline of `metric` against step (block characters) with its range; None without values."""
    points = metric_points(rows, metric)
    line = sparkline(points, cells)
    if not line:
        return None
    values = [v for _, v in points if v is not None]
    return {"metric": metric, "line": line, "first_step": points[0][0], "last_step": points[-1][0],
            "min": min(values), "max": max(values)}


def charts_of(state: State, mode: str, environ: dict[str, str]) -> dict:
    """Where every eval/* curve can be seen: `wandb leet FOLDER` for the latest offline run folder
    that is still on disk, else the online run's page (wandb leet shows that too)."""
    for seg in reversed(state.segments):
        folder = seg.get("dir")
        if seg.get("mode") == "offline" and folder and Path(folder).is_dir():
            return {"folder": folder, "url": None, "command": f"wandb leet {shlex.quote(folder)}"}
        if seg.get("mode") == "online" and seg.get("run"):
            url = run_url(str(seg["run"]), environ)
            if url:
                return {"folder": folder or None, "url": url, "command": f"wandb leet {url}"}
        if seg.get("mode") == "online" and folder and Path(folder).is_dir():
            return {"folder": folder, "url": None, "command": f"wandb leet {shlex.quote(folder)}"}
    return {"folder": None, "url": None, "command": None}


def run_url(run: str, environ: dict[str, str]) -> str | None:
    """The web page of `entity/project/run_id` on the W&B server of WANDB_BASE_URL (wandb.ai by default)."""
    entity, _, rest = run.partition("/")
    project, _, run_id = rest.partition("/")
    if not (entity and project and run_id):
        return None
    base = (environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").rstrip("/")
    if base in ("https://api.wandb.ai", "http://api.wandb.ai"):
        base = "https://wandb.ai"
    return f"{base}/{entity}/{project}/runs/{run_id}"


def summarize(state: State, now_wall: float, max_attempts: int | None = None, mode: str = "",
              synced_elsewhere: frozenset[str] = frozenset(), metrics: tuple[str, ...] = DEFAULT_METRICS[0],
              lower_better: frozenset[str] = frozenset(), waiting: list[dict] | None = None) -> dict:
    """A JSON-ready summary: counts, in-flight evals, last/best of the summary metrics (and the
    original's HR@10 / NDCG@10 keys), last error; with `waiting` (each checkpoint without a result
    and why, `preview.Wait.to_json`), the pending count is of those still wanted.

    A failure is given up as the sidecar judges it (`plan.is_given_up`): against `max_attempts`
    when given (the --max-attempts of the flags `status` got), else against the --max-attempts
    the sidecar recorded when it last started; only when neither is known, by the record's flag."""
    # the summary metrics and the original's HR@10 / NDCG@10 keys, as W&B's summary has them
    summary = summary_from_rows(state.rows, tuple(dict.fromkeys([*metrics, "HR@10", "NDCG@10"])), lower_better)
    limit = max_attempts if max_attempts is not None else state.max_attempts
    if limit is None:
        given_up = [s for s, f in state.failed.items() if f.get("given_up")]
    else:
        policy = Policy(max_attempts=limit)
        given_up = [s for s, f in state.failed.items() if is_given_up(f, policy)]
    retrying = [s for s in state.failed if s not in given_up]
    pending = [s for s in state.pending if s not in state.processed and s not in given_up]
    if waiting is not None:
        pending = [w["step"] for w in waiting if w["reason"] not in ("given_up", "vanished")]
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
    first = metrics[0] if metrics else "HR@10"
    per_metric = metric_summary(summary, metrics, lower_better)
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
        "summary_metrics": [f"{m}:min" if m in lower_better else m for m in metrics],
        "summary": per_metric,
        "summary_missing": [m for m in metrics if m not in per_metric],
        "curve": curve(state.rows, first),
        "last_seen_step": state.last_seen_step,
        "last_update_time": state.last_update_time,
        "last_error": last_error,
        "waiting": waiting if waiting is not None else [],
        "vanished_steps": sorted(state.vanished),
        "pins": _pins(state.pins_dir),
        "wandb_segments": [{"dir": s.get("dir"), "mode": s.get("mode"), "started": s.get("started"),
                            "rows": len(set(s.get("steps", []))), "closed": bool(s.get("closed"))}
                           for s in state.segments if s.get("dir")],
    }


def _delivery_line(info: dict, prog: str = "eval-sidecar") -> str:
    """Where the rows stand with the W&B server; `prog`: the program name the user ran (for `sync`)."""
    parts = []
    if info["unreported"]:
        parts.append(f"{info['unreported']} unreported (not written to W&B yet)")
    if info["unconfirmed"]:
        parts.append(f"{info['unconfirmed']} sent, not yet confirmed by the server")
    if info["offline_unsynced"]:
        parts.append(f"{info['offline_unsynced']} in offline folders not yet synced (run `{prog} sync`)")
    if info["original_tool_unchecked"]:
        parts.append(f"{info['original_tool_unchecked']} reported by the original tool: if it ran offline, "
                     f"`{prog} sync` uploads its folders")
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


def kept_best(state: State, state_file: Path, sft_root: Path | None) -> dict | None:
    """The kept best checkpoints (--keep-best) of this state: those in STATE_DIR/best/<sft-root
    name>/ by rank, each with its value and the bytes only it holds (what deleting it frees: its
    original deleted, or copied), those of the ranking with no kept copy, and where `best` points.
    None when the sidecar keeps none and the folder holds none. Reads only."""
    from .keep_best import LINK, OWNER, best_of, metric_value, parse_metric_setting, read_owner, values_of
    from .pins import checkpoint_folders, held_only_by

    if sft_root is None:
        return None
    root = state_file.parent / "best" / sft_root.name
    n = state.settings.get("keep_best")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0
    kept = checkpoint_folders(root)
    if not n and not kept:
        return None
    metric, lower = parse_metric_setting(state.settings.get("keep_best_metric")) or ("HR@10", False)
    info: dict = {"dir": str(root), "n": n, "metric": metric, "goal": "min" if lower else "max",
                  "other_configuration": None, "best": None, "checkpoints": [], "not_kept": [],
                  "bytes_held_only_by_kept": 0}
    try:
        owner = read_owner(root)
    except ValueError as exc:
        owner = {"model_config_key": None, "state_file": f"unreadable {root / OWNER}: {exc}"}
    if owner is not None and owner["model_config_key"] != state.model_config_key:
        info["other_configuration"] = str(owner.get("state_file"))
        return info
    top = best_of(values_of(state.rows, metric), n, lower) if n else []
    rank = {r.step: i + 1 for i, r in enumerate(top)}
    info["ranked"] = bool(top)  # some row has the metric: a copy out of the top N is removed
    for ckpt in sorted(kept, key=lambda c: (rank.get(c.step, n + 1), c.step)):
        row = state.rows.get(ckpt.step)
        info["checkpoints"].append({"rank": rank.get(ckpt.step), "step": ckpt.step, "checkpoint": ckpt.name,
                                    "value": metric_value(row, metric) if row else None, "path": str(ckpt.path),
                                    "has_result": row is not None, "bytes_held_only_here": held_only_by(ckpt.path)})
    steps = {c.step for c in kept}
    for i, ranked in enumerate(top):
        if ranked.step not in steps:
            name = str(state.rows[ranked.step].get("checkpoint_name") or f"checkpoint-{ranked.step}")
            info["not_kept"].append({"rank": i + 1, "step": ranked.step, "checkpoint": name, "value": ranked.value,
                                     "in_sft_root": (sft_root / name).is_dir()})
    link = root / LINK
    info["best"] = os.readlink(link) if os.path.islink(link) else None
    info["bytes_held_only_by_kept"] = sum(c["bytes_held_only_here"] for c in info["checkpoints"])
    return info


def _kept_lines(info: dict) -> list[str]:
    """`kept best`: the header (how many, by what, the bytes only they hold, where `best` points),
    the folder, then one line per kept or ranked checkpoint, by rank."""
    kept = info.get("kept_best")
    if not kept:
        return []
    label, pad = f"{'kept best':<13}", " " * 13
    if kept["other_configuration"]:
        return [f"{label} {kept['dir']} keeps another configuration's best checkpoints "
                f"({kept['other_configuration']}); this one keeps none"]
    goal = "lowest" if kept["goal"] == "min" else "highest"
    wanted = f"of {kept['n']} " if kept["n"] else "(--keep-best is off now) "
    link = f"; best -> {kept['best']}" if kept["best"] else ""
    lines = [f"{label} {len(kept['checkpoints'])} {wanted}by {kept['metric']} ({goal}), "
             f"{_mb(kept['bytes_held_only_by_kept'])} held only by them{link}", f"{pad} in {kept['dir']}"]
    entries = sorted([*kept["checkpoints"], *kept["not_kept"]],
                     key=lambda e: (e["rank"] is None, e["rank"] or 0, e["step"]))
    width = max((len(e["checkpoint"]) for e in entries), default=0)
    sizes = max((len(_mb(e["bytes_held_only_here"])) for e in kept["checkpoints"]), default=0)
    for entry in entries:
        place = f"{entry['rank']}." if entry["rank"] else "-"
        head = f"{pad} {place:<3} {entry['checkpoint']:<{width}}"
        value = f"{kept['metric']} {number_text(entry['value'])}"
        if "path" not in entry:
            why = ("not kept yet (its checkpoint is still in --sft-root; the sidecar's log says why)"
                   if entry["in_sft_root"] else "not kept (its checkpoint was deleted before it could be kept)")
        elif not entry["has_result"]:
            value, why = "", "no result in the state yet (ranked once evaluated)"
        elif entry["rank"] is None:
            if not kept["n"]:
                why = "kept earlier (--keep-best is off now: nothing removes it)"
            elif not kept.get("ranked"):
                why = f"kept earlier (no row has {kept['metric']}: nothing is ranked, nothing removed)"
            else:
                why = f"not in the best {kept['n']} now (removed at the sidecar's next result or start)"
        else:
            why = f"{_mb(entry['bytes_held_only_here']):>{sizes}} only here"
        lines.append("  ".join(part for part in (head, value, why) if part))
    return lines


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def number_text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a count stays a count
    size = abs(value)
    return f"{value:.4f}" if size == 0 or 1e-3 <= size < 1e5 else f"{value:.4g}"


def _curve_text(info: dict, ascii: bool) -> str:
    c = info["curve"]
    return (f"{to_ascii(c['line']) if ascii else c['line']}  steps {c['first_step']}-{c['last_step']}, "
            f"min {number_text(c['min'])}, max {number_text(c['max'])}")


def _charts_text(info: dict) -> str:
    charts = info.get("charts") or {}
    if charts.get("command"):
        return charts["command"]
    if info["wandb_mode"] == "disabled":
        return "none: W&B is disabled for this configuration (status --rows prints every row)"
    return "no W&B run folder is recorded yet (then: wandb leet FOLDER)"


WAITING_SHOWN = 10  # the human status lists this many waiting checkpoints (--rows and --json: all)


def _waiting_lines(info: dict) -> list[str]:
    waits = [w for w in info.get("waiting") or [] if w["reason"] != "in_flight"]
    if not waits:
        return []
    width = max(len(w["checkpoint"]) for w in waits[:WAITING_SHOWN])
    lines = []
    for i, wait in enumerate(waits[:WAITING_SHOWN]):
        lines.append(f"{'waiting' if i == 0 else '':<13} {wait['checkpoint']:<{width}}  {wait['text']}")
    if len(waits) > WAITING_SHOWN:
        rest = waits[WAITING_SHOWN:]
        kinds: dict[str, int] = {}
        for wait in rest:
            kinds[wait["reason"]] = kinds.get(wait["reason"], 0) + 1
        counts = ", ".join(f"{n} {REASON_WORDS.get(k, k)}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        lines.append(f"{'':<13} ... and {len(rest)} more ({counts}; status --rows lists each)")
    return lines


REASON_WORDS = {"ready": "ready", "marker": "waiting for the marker", "quiet": "in their quiet period",
                "shards": "missing shards", "empty": "empty", "retry": "waiting to retry", "given_up": "given up",
                "vanished": "vanished", "unknown": "not readable here", "gpu_memory": "waiting for free GPU memory"}


def _in_flight_lines(info: dict) -> list[str]:
    if not info["in_flight"]:
        return ["in flight     none"]
    lines = []
    orphan = "watched_by" in info and not info["watched_by"]
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
            gone = "; its sidecar is not running: evaluated again at the next start" if orphan else ""
            lines.append(f"in flight     {entry['checkpoint']}{gpus} for {elapsed} (pid {entry['pid']} on "
                         f"{entry['host']}){gone}")
    return lines


def _metric_lines(info: dict, ascii: bool) -> list[str]:
    if info["last_step"] is None:
        return ["results       none yet"]
    per_metric = info.get("summary")
    if per_metric is None:  # a summary made without the summary metrics: the original's two
        per_metric = {m: {"best": info[f"best_{m.lower()}"], "best_step": info[f"best_step_for_{m.lower()}"],
                          "last": info[f"last_{m.lower()}"], "goal": "max"}
                      for m in ("HR@10", "NDCG@10") if info.get(f"best_{m.lower()}") is not None}
    last = "".join(f"  {m} {number_text(v['last'])}" for m, v in per_metric.items() if v["last"] is not None)
    lines = [f"last step     {info['last_step']}{last}"]
    for metric, v in per_metric.items():
        goal = "lowest" if v["goal"] == "min" else "highest"
        lines.append(f"{'best ' + metric:<13} {number_text(v['best'])} at step {v['best_step']} ({goal})")
    if info.get("summary_missing"):
        have = ", ".join(info.get("row_metrics") or []) or "no metrics"
        lines.append(f"{'no values':<13} {', '.join(info['summary_missing'])} (in no row; the rows have {have})")
    if info.get("curve"):
        lines.append(f"{info['curve']['metric'] + ' curve':<13} {_curve_text(info, ascii)}")
    return lines


def format_status(info: dict, state_file: str, ascii: bool = False, prog: str = "eval-sidecar",
                  now_wall: float | None = None) -> str:
    """The human-readable status table (`ascii`: the curve without block characters; `prog`: the
    program name the user ran, in the commands it suggests). Times are local, with the date when
    not today (`now_wall`), as in the reasons; `--json` keeps the state's ISO times."""
    now_wall = time.time() if now_wall is None else now_wall
    lines = [
        f"state file    {state_file}",
        f"run           {info['run_id']} ({info['run_name']}), W&B mode {info['wandb_mode'] or '-'}",
        (f"checkpoints   processed {info['processed']}  pending {info['pending']}  "
         f"failed {info['failed']} ({info['failed_given_up']} given up)  vanished {info['vanished']}  "
         f"unreported {info['unreported']}{' (W&B disabled)' if info['wandb_mode'] == 'disabled' else ''}"),
    ]
    if info["wandb_mode"] != "disabled":
        lines.append(f"W&B delivery  {_delivery_line(info, prog)}")
    lines += _in_flight_lines(info)
    lines += _waiting_lines(info)
    if info.get("sft_root_problem"):
        lines.append(f"{'note':<13} {info['sft_root_problem']}")
    lines += _metric_lines(info, ascii)
    if "charts" in info:
        lines.append(f"full charts   {_charts_text(info)}")
    if info["last_error"]:
        err = info["last_error"]
        lines.append(f"last error    {err['checkpoint']} (attempt {err['attempts']}, "
                     f"{local_time(err['time'], now_wall)}): {err['error']}")
    if info["vanished_steps"]:
        shown = ", ".join(str(s) for s in info["vanished_steps"][:10])
        more = " ..." if len(info["vanished_steps"]) > 10 else ""
        lines.append(f"vanished      steps {shown}{more}")
    if info.get("pins"):
        pins = info["pins"]
        lines.append(f"pins          {pins['count']} in {pins['dir']} "
                     f"({pins['bytes_held_only_by_pins'] / 2**20:.1f} MB held only by pins)")
    lines += _kept_lines(info)
    segments = info["wandb_segments"]
    if segments:
        last = segments[-1]
        lines.append(f"W&B segments  {len(segments)}; latest {last['mode']} {last['dir']} ({last['rows']} rows)")
    lines.append(f"updated       {local_time(info['last_update_time'], now_wall) if info['last_update_time'] else '-'}")
    return "\n".join(lines)


def row_columns(rows: dict[int, dict], metrics: tuple[str, ...], width: int) -> list[str]:
    """The columns of `status --rows`: the training context some row has (--training-context:
    epoch, loss, learning rate), the summary metrics, then HR@K / NDCG@K, then other metrics by
    name while the line fits in `width` characters (those that are in some row)."""
    from ..reporters.rows import BASE_METRICS

    present: set[str] = set()
    for row in rows.values():
        present.update(k for k in metric_names(row)
                       if isinstance(row[k], (int, float)) and not isinstance(row[k], bool))
    context = [k for k in ROW_CONTEXT if any(k in row for row in rows.values())]
    head = [*context, *(m for m in dict.fromkeys([*metrics, *BASE_METRICS]) if m in present)]
    used = 8 + sum(2 + max(8, len(column_label(m))) for m in head)
    for name in sorted(present.difference(head)):
        if used + 2 + max(8, len(name)) > width:
            break
        head.append(name)
        used += 2 + max(8, len(name))
    return head


# The training context in `status --rows`, by its short header (train/global_step is the step).
ROW_CONTEXT = {"train/epoch": "epoch", "train/loss": "loss", "train/learning_rate": "lr"}


def column_label(name: str) -> str:
    return ROW_CONTEXT.get(name, name)


def format_rows(rows: dict[int, dict], waiting: list[dict] | None = None, metrics: tuple[str, ...] = (),
                width: int = 100) -> str:
    """One line per checkpoint by step: the metrics of each evaluated one (`row_columns`), and
    why each other one has no result yet. A metric whose every value is a whole number (a count,
    an epoch: metrics.json's integers are kept as floats) prints as integers."""
    waits = {w["step"]: w for w in waiting or []}
    if not rows and not waits:
        return "(no rows yet: no checkpoint has a result, and none waits for one)"
    names = row_columns(rows, metrics, width)
    whole = {m for m in names if all(_whole(row[m]) for row in rows.values() if _is_number(row.get(m)))}
    labels = [column_label(m) for m in names]
    cells = {step: [_cell(row.get(m), 0, m in whole) for m in names] for step, row in rows.items()}
    widths = [max([8, len(label), *(len(c[i]) for c in cells.values())]) for i, label in enumerate(labels)]
    header = f"{'step':>8}  " + "  ".join(f"{label:>{w}}" for label, w in zip(labels, widths))
    lines = [header.rstrip()]
    for step in sorted(set(rows) | set(waits)):
        if step not in rows:
            lines.append(f"{step:>8}  {waits[step]['text']}")
            continue
        lines.append(f"{step:>8}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells[step], widths)))
    return "\n".join(lines)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value) -> bool:
    return math.isfinite(value) and float(value).is_integer() and abs(value) < 1e15


def _cell(value, width: int, whole: bool = False) -> str:
    if _is_number(value):
        return f"{int(value) if whole else number_text(value):>{width}}"
    return f"{'-':>{width}}"


def other_configurations(state_dir: Path, file_model: str, payload: dict, own: Path) -> list[dict]:
    """The other state files of this model in `state_dir` (the same model part of the name): each
    with its counts and, when it recorded its identity, the identity values that differ from
    `payload` ((name, here, there) by name)."""
    from .state import read_state

    pattern = re.compile(re.escape(file_model) + r"_[0-9a-f]{20}\.json")
    try:
        names = sorted(n for n in os.listdir(state_dir) if pattern.fullmatch(n))
    except OSError:
        return []
    out = []
    for name in names:
        path = state_dir / name
        if path == own:
            continue
        item: dict = {"state_file": str(path), "processed": None, "updated": None, "differs": None, "error": None}
        try:
            state = read_state(path)
        except SidecarError as exc:
            out.append({**item, "error": str(exc)})
            continue
        if state is None:
            continue
        item.update(processed=len(state.processed), updated=state.last_update_time)
        theirs = state.settings.get("identity")
        if isinstance(theirs, dict):
            item["differs"] = [(k, payload.get(k), theirs.get(k)) for k in sorted(set(payload) | set(theirs))
                               if payload.get(k) != theirs.get(k)]
        out.append(item)
    return out


# the flag that sets each identity value (model_name comes from --sft-root's folder name)
IDENTITY_FLAGS = {"model_name": "--sft-root", "dataset": "--dataset", "cb_setting": "--cb-setting", "seed": "--seed",
                  "num_beams": "--num-beams", "sid_levels": "--sid-levels", "eval_split": "--eval-split",
                  "sft_root": "--sft-root", "test_data_path": "--test-data-path", "index_path": "--index-path"}


def format_others(others: list[dict], model: str, state_dir: Path) -> str:
    """What `status` says when the flags name no state file but the model has others."""
    lines = [f"other configurations of {model} have state files in {state_dir}:"]
    hint, beams = "", False
    for item in others:
        name = Path(item["state_file"]).name
        if item["error"]:
            lines.append(f"  {name}: {item['error']}")
            continue
        counts = f"{item['processed']} processed, updated {local_time(item['updated']) if item['updated'] else '-'}"
        if item["differs"] is None:
            lines.append(f"  {name} ({counts}): no identity recorded (written by an older sidecar)")
            continue
        differs = "; ".join(f"{k} {_shown(here)} here, {_shown(there)} there" for k, here, there in item["differs"])
        lines.append(f"  {name} ({counts}): {differs or 'the same identity values'}")
        beams = beams or any(k == "num_beams" for k, _, _ in item["differs"])
        if not hint and item["differs"]:
            derived = ("model_name", "dataset", "cb_setting", "eval_split")  # follow from the paths unless given
            flags = [f"{IDENTITY_FLAGS.get(k, k)} {shlex.quote(str(there))}" for k, _, there in item["differs"]
                     if k not in derived or len(item["differs"]) == 1]
            hint = " ".join(dict.fromkeys(flags))
    first = shlex.quote(others[0]["state_file"])
    if hint:
        lines.append(f"to read the first: the flags it was started with ({hint}), or --state-file {first}")
    else:
        lines.append(f"to read one: the flags it was started with, or --state-file {first}")
    if beams:
        lines.append("(a forgotten --num-beams is the usual cause: it is part of the identity, the decoding flags are not)")
    return "\n".join(lines)


def clock_text(wall: float, now_wall: float | None = None) -> str:
    """`HH:MM:SS` local time; with the date when it is not today (the day of `now_wall`)."""
    when = time.localtime(wall)
    if time.localtime(time.time() if now_wall is None else now_wall)[:3] != when[:3]:
        return time.strftime("%Y-%m-%d %H:%M:%S", when)
    return time.strftime("%H:%M:%S", when)


def local_time(iso, now_wall: float | None = None) -> str:
    """A time the state holds as ISO text, as `clock_text` shows it ("?" when missing, the text
    itself when it is not a time)."""
    from datetime import datetime

    if not isinstance(iso, str) or not iso:
        return "?"
    try:
        return clock_text(datetime.fromisoformat(iso).timestamp(), now_wall)
    except (ValueError, OverflowError, OSError):
        return iso


def _shown(value) -> str:
    return "-" if value is None else str(value)
