"""Configuration: one frozen `Config`, built in one place with one precedence order.

command line > environment variables the original honoured > `--config FILE.yaml` > defaults.
Every bad value raises `ConfigError` naming the flag and the value, before anything is written.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .identity import Identity, derive_identity
from .executors.slurm import check_sbatch_args

WANDB_MODES = ("online", "offline", "disabled")
WANDB_RESUMES = ("allow", "must", "never", "auto")
ORDERS = ("oldest-first", "newest-first", "model-then-step")
LOCK_MODES = ("auto", "flock", "soft")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DO_SAMPLE = ("true", "false", "1", "0", "yes", "no")
EXECUTORS = ("local", "slurm")
OPTION_VALUED = ("--slurm-args",)  # flags whose value is a list of options
FLEET_ONLY = ("model_filter", "profiles", "profiles_data_root", "max_parallel_per_model")
FLEET_KEYS = ("models_root", *FLEET_ONLY)
NOT_IN_FLEET = ("wandb_run_id", "wandb_run_name", "force_eval_steps")  # one value cannot fit every model


@dataclass(frozen=True)
class Flag:
    name: str  # without the leading dashes
    kind: str  # str | path | int | float | bool | choice | steps | args | paths | strs (the last two repeatable)
    default: Any = None
    env: str | None = None
    help: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


FLAGS: tuple[Flag, ...] = (
    Flag("repo-root", "path", ".", help="folder the eval script runs in; default: the folder of eval_wandb_sidecar.py "
         "when it holds the eval script, else the current folder"),
    Flag("sft-root", "path", None, help="folder holding checkpoint-<N> folders (required), or one checkpoint"),
    Flag("eval-script", "path", "evaluate_sft_3b.sh", help="eval script, run as `bash SCRIPT SFT_ROOT`"),
    Flag("category", "str", "Industrial_and_Scientific", "CATEGORY"),
    Flag("test-data-path", "path", "data/Industrial_and_Scientific/sft/test.json", "TEST_DATA_PATH"),
    Flag("index-path", "path", "data/Industrial_and_Scientific/id2sid.json", "INDEX_PATH"),
    Flag("cuda-list", "str", "0", "CUDA_LIST", help="GPU ids for the eval, space-separated"),
    Flag("python-bin", "str", "python", "PYTHON_BIN"),
    Flag("batch-size", "int", 8, "BATCH_SIZE", minimum=1),
    Flag("max-new-tokens", "int", 256, "MAX_NEW_TOKENS", minimum=1),
    Flag("num-beams", "int", 50, "NUM_BEAMS", minimum=1),
    Flag("temperature", "float", 1.0, "TEMPERATURE", minimum=0),
    Flag("do-sample", "choice", "False", "DO_SAMPLE", choices=DO_SAMPLE),
    Flag("length-penalty", "float", 0.0, "LENGTH_PENALTY"),
    Flag("sid-levels", "int", -1, "SID_LEVELS"),
    Flag("seed", "int", 42),
    Flag("dataset", "str", ""),
    Flag("cb-setting", "str", ""),
    Flag("eval-split", "str", ""),
    Flag("poll-interval-seconds", "float", 60.0, minimum=0.01, maximum=30 * 86400, help="seconds between scans"),
    Flag("checkpoint-ready-seconds", "float", 120.0, minimum=0, maximum=30 * 86400, help="quiet period before a checkpoint is ready"),
    Flag("once", "bool", False, help="evaluate until nothing ready is left, then exit"),
    Flag("force-eval", "bool", False, help="run the eval script even when metrics.json exists"),
    Flag("max-pending-per-cycle", "int", 0, minimum=0, help="cap per tick (0 = unlimited)"),
    Flag("state-dir", "path", "state/wandb_eval_sidecar"),
    Flag("disable-wandb", "bool", False),
    Flag("wandb-project", "str", "MIMIGenRec-Eval", "WANDB_PROJECT"),
    Flag("wandb-entity", "str", None, "WANDB_ENTITY"),
    Flag("wandb-run-id", "str", "", "WANDB_RUN_ID"),
    Flag("wandb-run-name", "str", "", "WANDB_RUN_NAME"),
    Flag("wandb-mode", "choice", "offline", "WANDB_MODE", choices=WANDB_MODES),
    Flag("wandb-resume", "choice", "allow", "WANDB_RESUME", choices=WANDB_RESUMES),
    Flag("wandb-job-type", "str", "eval", "WANDB_JOB_TYPE"),
    Flag("log-level", "choice", "INFO", choices=LOG_LEVELS),
    # beyond the original
    Flag("results-root", "path", None, help="where metrics.json files are read (default REPO_ROOT/results)"),
    Flag("ready-marker", "str", None, help="a file whose presence makes a checkpoint ready at once"),
    Flag("eval-timeout-seconds", "float", 0.0, minimum=0, maximum=30 * 86400, help="stop an eval after this long (0 = never)"),
    Flag("max-attempts", "int", 3, minimum=1, maximum=1000, help="attempts per checkpoint before giving up"),
    Flag("retry-backoff-seconds", "float", 300.0, minimum=0, maximum=30 * 86400, help="first retry delay; doubles each time"),
    Flag("retry-failed", "bool", False, help="give failed checkpoints a fresh attempt budget"),
    Flag("force-eval-steps", "steps", frozenset(), help="re-evaluate these processed steps once, e.g. 500,1000"),
    Flag("order", "choice", "oldest-first", choices=ORDERS,
         help="inside a model; fleet mode serves models in turn (model-then-step: one model's steps before the next's)"),
    Flag("lock-mode", "choice", "auto", choices=LOCK_MODES),
    Flag("log-dir", "path", "log/eval_sidecar", help="per-checkpoint eval logs go to LOG_DIR/<model>/"),
    Flag("gpu-slots", "str", None, help='run up to one eval per slot at once, e.g. "0,1;2,3" (default: one slot, --cuda-list)'),
    Flag("pin-checkpoints", "bool", False, help="hard-link each ready checkpoint into STATE_DIR/pins so rotation cannot delete it"),
    Flag("watch-mode", "choice", "auto", choices=("auto", "events", "poll"),
         help="events: filesystem events wake the loop; poll: scan every poll interval; auto: both"),
    Flag("eval-kill-grace-seconds", "float", 10.0, minimum=0, maximum=3600,
         help="after SIGTERM to an eval's process group, SIGKILL follows after this long"),
    Flag("wandb-init-timeout", "float", 30.0, minimum=1, maximum=30 * 86400, help="seconds one W&B init attempt may take"),
    Flag("wandb-fallback", "choice", "none", choices=("none", "offline"),
         help="offline: write an offline segment when the online run cannot start"),
    Flag("wandb-system-stats", "bool", False, help="let W&B sample system stats (off: cheaper)"),
    Flag("wandb-table-minutes", "float", 5.0, minimum=0, maximum=30 * 24 * 60,
         help="log the W&B table at most once per this many minutes while rows come, and at exit (0 = every pass)"),
    Flag("summary-metrics", "str", "HR@10,NDCG@10",
         help="metrics with best/last summary keys; NAME:min for a metric where lower is better, e.g. acc,loss:min"),
    Flag("executor", "choice", "local", choices=EXECUTORS, help="local: evals run here; slurm: each eval is a Slurm job"),
    Flag("slurm-args", "args", "", help='sbatch options for each eval job, e.g. "--partition=gpu --gres=gpu:1 --time=2:00:00"'),
    Flag("max-parallel", "int", 1, minimum=1, maximum=10000, help="Slurm jobs in flight at once (--executor slurm)"),
    Flag("slurm-cancel-on-exit", "bool", False, help="cancel this sidecar's Slurm jobs when it stops (default: leave them, re-attach on restart)"),
    Flag("slurm-poll-seconds", "float", 10.0, minimum=0.1, maximum=3600, help="seconds between two questions to Slurm about a job"),
    # fleet mode: one sidecar for a tree of models
    Flag("models-root", "paths", (), help="fleet mode: every subfolder holding checkpoint-<N> folders is a model (repeatable)"),
    Flag("model-filter", "strs", (), help="fleet mode: watch only model folders matching this glob (repeatable)"),
    Flag("profiles", "path", None, help="fleet mode: eval profiles (rules YAML, or the eval_profile_manifest.json format)"),
    Flag("profiles-data-root", "path", None, help="fleet mode: relative paths of a manifest start here (default: its folder)"),
    Flag("max-parallel-per-model", "int", 0, minimum=0, maximum=10000, help="fleet mode: evals of one model at once (0 = no cap)"),
    # keeping the best checkpoints, telling the user, sharing GPUs, uploading offline runs as they go
    Flag("keep-best", "int", 0, minimum=0, maximum=1000,
         help="keep the N best evaluated checkpoints as hard links in STATE_DIR/best/<sft-root name>/ (0 = off)"),
    Flag("keep-best-metric", "str", None,
         help="the metric that ranks them, NAME[:max|:min] (default: the first --summary-metrics)"),
    Flag("notify-command", "args", "",
         help='run this command (never through a shell) on new_best, eval_failed, given_up, vanished, outage and '
              'outage_over, the event in SIDECAR_* variables, e.g. "bash notify.sh"'),
    Flag("notify-timeout-seconds", "float", 30.0, minimum=1, maximum=3600, help="stop a notify command after this long"),
    Flag("notify-outage-minutes", "float", 10.0, minimum=0, maximum=30 * 24 * 60,
         help="W&B unreachable this long is an outage event"),
    Flag("wandb-alerts", "bool", False, help="also send new_best and given_up as W&B alerts (online runs)"),
    Flag("training-context", "bool", False,
         help="add the epoch, global step, loss and learning rate of each checkpoint's trainer_state.json to its "
              "row (train/epoch, ...; in W&B, the table and status --rows)"),
    Flag("wandb-segment-minutes", "float", 0.0, minimum=0, maximum=30 * 24 * 60,
         help="offline: close the segment this many minutes after it opened (the next rows open the next one) so "
              "`sync` can upload it while the watch goes on (0 = one segment per run)"),
    Flag("gpu-free-memory-mb", "int", 0, minimum=0, maximum=10 ** 7,
         help="start an eval on a slot only when each of its GPUs has this much free memory (nvidia-smi; 0 = do not ask)"),
    Flag("gpu-free-check-seconds", "float", 30.0, minimum=0.1, maximum=3600,
         help="how often a slot without enough free GPU memory is asked again"),
)
_BY_DEST = {f.dest: f for f in FLAGS}
_BY_FLAG = {f.name: f for f in FLAGS}

# The help's sections, in order; a subcommand's help shows only the sections it uses.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("identity (which state file, W&B run and results a configuration has)",
     ("sft-root", "category", "test-data-path", "index-path", "seed", "num-beams", "sid-levels", "dataset",
      "cb-setting", "eval-split")),
    ("evaluation", ("repo-root", "eval-script", "cuda-list", "python-bin", "batch-size", "max-new-tokens",
                    "temperature", "do-sample", "length-penalty", "results-root", "force-eval", "force-eval-steps",
                    "eval-timeout-seconds", "max-attempts", "retry-backoff-seconds", "retry-failed", "gpu-slots",
                    "pin-checkpoints", "eval-kill-grace-seconds", "gpu-free-memory-mb", "gpu-free-check-seconds",
                    "training-context")),
    ("watching", ("once", "poll-interval-seconds", "checkpoint-ready-seconds", "ready-marker", "watch-mode",
                  "order", "max-pending-per-cycle")),
    ("state and logs", ("state-dir", "lock-mode", "log-dir", "log-level")),
    ("Weights & Biases", ("disable-wandb", "wandb-mode", "wandb-project", "wandb-entity", "wandb-run-id",
                          "wandb-run-name", "wandb-resume", "wandb-job-type", "wandb-fallback", "wandb-init-timeout",
                          "wandb-system-stats", "wandb-table-minutes", "wandb-segment-minutes", "summary-metrics")),
    ("best checkpoints and notifications", ("keep-best", "keep-best-metric", "notify-command", "notify-timeout-seconds",
                                            "notify-outage-minutes", "wandb-alerts")),
    ("Slurm", ("executor", "slurm-args", "max-parallel", "slurm-cancel-on-exit", "slurm-poll-seconds")),
    ("fleet mode (one sidecar for a tree of models)",
     ("models-root", "model-filter", "profiles", "profiles-data-root", "max-parallel-per-model")),
)
# The groups each reading subcommand shows (it accepts every flag, so a watch's command line can be
# reused as it is; the others do not change what it reads).
STATUS_GROUPS = ("identity", "state and logs", "fleet mode", "--repo-root", "--summary-metrics", "--ready-marker",
                 "--checkpoint-ready-seconds", "--max-attempts", "--wandb-mode", "--keep-best", "--keep-best-metric",
                 "--gpu-free-memory-mb")
SYNC_GROUPS = ("identity", "state and logs", "Weights & Biases", "--repo-root")


@dataclass(frozen=True)
class Config:
    """Every setting, resolved: paths absolute, numbers typed. Built only by `build_config`."""

    repo_root: Path
    sft_root: Path
    eval_script: Path
    category: str
    test_data_path: Path
    index_path: Path
    cuda_list: str
    python_bin: str
    batch_size: int
    max_new_tokens: int
    num_beams: int
    temperature: float
    do_sample: str
    length_penalty: float
    sid_levels: int
    seed: int
    dataset: str
    cb_setting: str
    eval_split: str
    poll_interval_seconds: float
    checkpoint_ready_seconds: float
    once: bool
    force_eval: bool
    max_pending_per_cycle: int
    state_dir: Path
    disable_wandb: bool
    wandb_project: str
    wandb_entity: str | None
    wandb_run_id: str
    wandb_run_name: str
    wandb_mode: str
    wandb_resume: str
    wandb_job_type: str
    log_level: str
    results_root: Path
    ready_marker: str | None
    eval_timeout_seconds: float
    max_attempts: int
    retry_backoff_seconds: float
    retry_failed: bool
    force_eval_steps: frozenset[int]
    order: str
    lock_mode: str
    log_dir: Path
    gpu_slots: tuple[str, ...]
    pin_checkpoints: bool
    watch_mode: str
    eval_kill_grace_seconds: float
    wandb_init_timeout: float
    wandb_fallback: str
    wandb_system_stats: bool
    wandb_table_minutes: float
    summary_metrics: tuple[str, ...]
    executor: str
    slurm_args: tuple[str, ...]
    max_parallel: int
    slurm_cancel_on_exit: bool
    slurm_poll_seconds: float
    models_root: tuple[Path, ...]
    model_filter: tuple[str, ...]
    profiles: Path | None
    profiles_data_root: Path | None
    max_parallel_per_model: int
    keep_best: int
    keep_best_metric: str  # resolved: the --summary-metrics' first when not given
    notify_command: tuple[str, ...]
    notify_timeout_seconds: float
    notify_outage_minutes: float
    wandb_alerts: bool
    training_context: bool
    wandb_segment_minutes: float
    gpu_free_memory_mb: int
    gpu_free_check_seconds: float
    summary_lower_better: frozenset[str]  # the --summary-metrics given as NAME:min
    keep_best_lower_better: bool  # --keep-best-metric NAME:min
    identity: Identity = field(compare=False)
    config_file: Path | None = None

    @property
    def reporting(self) -> bool:
        """Whether W&B reporting is on (not `--disable-wandb`, mode not disabled)."""
        return not self.disable_wandb and self.wandb_mode != "disabled"

    @property
    def state_file(self) -> Path:
        return self.identity.state_file(self.state_dir)

    @property
    def lock_file(self) -> Path:
        return self.identity.lock_file(self.state_dir)

    def eval_params(self) -> dict:
        """Decoding parameters: not part of the identity, but recorded with each row."""
        return {
            "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature, "do_sample": self.do_sample,
            "length_penalty": self.length_penalty,
        }

    def eval_env(self, checkpoint_path: Path, cuda_list: str | None = None) -> dict[str, str]:
        """Exactly the variables injected into the eval script's environment (SPEC §2.4)."""
        return {
            "CATEGORY": self.category,
            "CUDA_LIST": self.cuda_list if cuda_list is None else cuda_list,
            "PYTHON_BIN": self.python_bin,
            "TEST_DATA_PATH": str(self.test_data_path),
            "INDEX_PATH": str(self.index_path),
            "BATCH_SIZE": str(self.batch_size),
            "MAX_NEW_TOKENS": str(self.max_new_tokens),
            "NUM_BEAMS": str(self.num_beams),
            "TEMPERATURE": str(self.temperature),
            "DO_SAMPLE": self.do_sample,
            "LENGTH_PENALTY": str(self.length_penalty),
            "SID_LEVELS": str(self.sid_levels),
            "CKPT_LIST": str(checkpoint_path),
        }


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """`--slurm-args --partition=gpu` works as written: a value that is itself an option is
        glued to its flag, which argparse would otherwise take for a flag of its own."""
        argv = list(args) if args is not None else []
        glued: list[str] = []
        i = 0
        while i < len(argv):
            if argv[i] in OPTION_VALUED and i + 1 < len(argv):
                glued.append(f"{argv[i]}={argv[i + 1]}")
                i += 2
            else:
                glued.append(argv[i])
                i += 1
        return super().parse_args(glued, namespace)


def _default_text(flag: Flag) -> str:
    if flag.dest == "repo_root" or flag.default is None or flag.default is False or flag.default in ("", (), frozenset()):
        return ""
    return f" (default: {flag.default:g})" if isinstance(flag.default, float) else f" (default: {flag.default})"


class _Help(argparse.RawDescriptionHelpFormatter):
    """Help text wrapped at spaces only (argparse also breaks at hyphens: `--state- dir`)."""

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def _metavar(flag: Flag) -> str:
    if flag.kind == "float":
        return "SECONDS" if flag.name.endswith("-seconds") else "MINUTES" if flag.name.endswith("-minutes") else "X"
    return {"path": "PATH", "int": "N", "steps": "STEPS", "args": "ARGS"}.get(flag.kind, "TEXT")


def build_parser(prog: str = "eval_wandb_sidecar.py", extra: tuple[tuple[str, dict], ...] = (),
                 groups: tuple[str, ...] | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """The command line: every flag as a string (typed later, so errors name flag and value).

    `groups`: the help shows only the flag sections whose titles start with these, and the flags
    named `--NAME` among them (every flag is accepted all the same); `extra`: the subcommand's own
    flags, shown first."""
    parser = _Parser(prog=prog, argument_default=argparse.SUPPRESS, allow_abbrev=False, usage="%(prog)s [flags]",
                     formatter_class=_Help,
                     description=description or "Evaluate every new checkpoint once and report it to one W&B run.")
    own = parser.add_argument_group("options of this command")
    own.add_argument("--config", metavar="FILE.yaml", help="YAML file supplying any flag")
    for name, kwargs in extra:
        own.add_argument(name, **kwargs)
    for title, names in GROUPS:
        shown_group = groups is None or any(title.startswith(g) for g in groups)
        group = parser.add_argument_group(title) if shown_group else own
        for name in names:
            flag = _BY_FLAG[name]
            shown = shown_group or f"--{name}" in groups
            env = f" [env {flag.env}]" if flag.env else ""
            text = f"{flag.help}{_default_text(flag)}{env}".strip() if shown else argparse.SUPPRESS
            if flag.kind == "bool":
                group.add_argument(f"--{flag.name}", action="store_true", help=text)
            elif flag.kind in ("paths", "strs"):
                group.add_argument(f"--{flag.name}", action="append", help=text,
                                   metavar="DIR" if flag.kind == "paths" else "GLOB")
            else:
                metavar = "{" + ",".join(flag.choices) + "}" if flag.kind == "choice" else _metavar(flag)
                group.add_argument(f"--{flag.name}", metavar=metavar, help=text)
    return parser


def _convert(flag: Flag, raw: Any, source: str) -> Any:
    where = f"--{flag.name}" if source == "command line" else source
    text = str(raw).strip() if not isinstance(raw, bool) else raw
    try:
        if flag.kind == "bool":
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off", ""):
                return False
            raise ValueError
        if flag.kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            value: Any = int(text)
        elif flag.kind == "float":
            if isinstance(raw, bool):
                raise ValueError
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
        elif flag.kind == "choice":
            text = str(raw).strip()  # a YAML true/false is a choice's text here (do-sample: true)
            canon = {c.lower(): c for c in flag.choices}
            if text.lower() not in canon:
                raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(flag.choices)}")
            value = text if flag.dest == "do_sample" else canon[text.lower()]
        elif flag.kind == "args" and isinstance(raw, (list, tuple)):  # a YAML list: one item per argument
            if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in raw):
                raise ConfigError(f"{where}: list items must be strings, got {raw!r}")
            value = tuple(str(x) for x in raw)
        elif flag.kind in ("paths", "strs"):  # repeatable: a list (command line, YAML) or one value
            items = raw if isinstance(raw, (list, tuple)) else [raw]
            if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in items):
                raise ConfigError(f"{where}: expected a value or a list of values, got {raw!r}")
            value = tuple(str(x).strip() for x in items if str(x).strip())
            if any("\0" in x for x in value):
                raise ConfigError(f"{where}: a value contains a NUL byte")
        elif flag.kind == "steps":
            if isinstance(raw, (list, tuple)):  # a YAML list: [500, 1000]
                if any(isinstance(x, bool) or not isinstance(x, (int, str)) for x in raw):
                    raise ValueError
                text = ",".join(str(x) for x in raw)
            value = frozenset(int(p) for p in text.replace(" ", ",").split(",") if p.strip())
            if any(v < 0 for v in value):
                raise ValueError
        else:
            value = None if raw is None else str(raw)
            if value is not None and "\0" in value:
                raise ConfigError(f"{where}: the value contains a NUL byte")
    except ConfigError:
        raise
    except (ValueError, TypeError):
        expected = {"int": "an integer", "float": "a finite number", "bool": "true or false",
                    "steps": "comma-separated checkpoint steps (non-negative integers)"}[flag.kind]
        raise ConfigError(f"{where}: expected {expected}, got {raw!r}") from None
    if flag.minimum is not None and value < flag.minimum:
        raise ConfigError(f"{where}: must be at least {flag.minimum:g}, got {raw!r}")
    if flag.maximum is not None and value > flag.maximum:
        raise ConfigError(f"{where}: must be at most {flag.maximum:g}, got {raw!r}")
    return value


def parse_gpu_slots(spec: str | None, cuda_list: str) -> tuple[str, ...]:
    """`"0,1;2,3"` -> `("0 1", "2 3")` (each slot's CUDA_LIST, ids joined by spaces).

    No spec: one slot, `--cuda-list` as given. Rejects an empty slot, a non-integer id and an id
    in two slots."""
    if spec is None:
        return (cuda_list,)
    slots: list[str] = []
    seen: set[int] = set()
    for i, part in enumerate(spec.split(";")):
        ids = [x for x in part.replace(",", " ").split() if x]
        if not ids:
            raise ConfigError(f"--gpu-slots: slot {i + 1} is empty in {spec!r}")
        for x in ids:
            if not (x.isascii() and x.isdigit()):
                raise ConfigError(f"--gpu-slots: {x!r} is not a GPU id (a non-negative integer) in {spec!r}")
            if int(x) in seen:
                raise ConfigError(f"--gpu-slots: GPU {x} is in two slots in {spec!r}")
            seen.add(int(x))
        slots.append(" ".join(ids))
    return tuple(slots)


def _check_executor(values: dict) -> None:
    """Slurm chooses the GPUs of its jobs; local evals are bounded by their GPU slots."""
    if values["executor"] == "slurm" and values["gpu_slots"] is not None:
        raise ConfigError(f"--gpu-slots {values['gpu_slots']!r}: GPU slots do not apply to --executor slurm "
                          f"(Slurm chooses the GPUs); bound the jobs with --max-parallel")
    if values["executor"] == "slurm" and values["gpu_free_memory_mb"]:
        raise ConfigError(f"--gpu-free-memory-mb {values['gpu_free_memory_mb']}: does not apply to --executor slurm "
                          f"(Slurm chooses the GPUs; ask for what a job needs in --slurm-args, e.g. --gres)")
    if values["executor"] == "local" and values["max_parallel"] != 1:
        raise ConfigError(f"--max-parallel {values['max_parallel']}: applies to --executor slurm; local evals run "
                          f"one per GPU slot (--gpu-slots)")


def parse_slurm_args(text: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """`"--partition=gpu --gres=gpu:1"` -> separate sbatch arguments (split like a shell would,
    but never run through one; a YAML list is taken item by item). Options the sidecar sets
    itself, and words sbatch would take for the batch script, are refused."""
    if isinstance(text, tuple):
        args = text
    else:
        try:
            args = tuple(shlex.split(text or ""))
        except ValueError as exc:
            raise ConfigError(f"--slurm-args: cannot split {text!r} ({exc})") from None
    problem = check_sbatch_args(args)
    if problem:
        raise ConfigError(f"--slurm-args: {problem}; in {text!r}")
    return args


def read_yaml(path: Path):
    """The YAML document in `path`; ConfigError (one line, naming the file) if unreadable or invalid."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML ({str(exc).splitlines()[0]})") from exc


def _load_yaml(path: Path) -> dict:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of flag names to values")
    out = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in _BY_DEST:
            raise ConfigError(f"--config: {path}: unknown key {key!r}")
        out[dest] = value
    return out


def _resolve(raw: str, base: Path, flag: str = "") -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = base / path
    try:
        return Path(os.path.abspath(path)).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop, an unreadable component
        raise ConfigError(f"{flag or 'path'}: cannot resolve {raw!r} ({exc})") from exc


# Set by `python eval_wandb_sidecar.py` (the original's entry): the folder of that script, the
# default --repo-root when it holds the eval script (its users keep both files in their repository
# and run them from anywhere). The installed `eval-sidecar` command has none: the current folder.
ENTRY_DIRS: tuple[Path, ...] = ()  # the folder as called (a symlinked entry: its link's folder first), then resolved


def flag_values(args: dict, environ: dict[str, str], cwd: Path,
                sources: dict[str, str] | None = None) -> tuple[dict[str, Any], Path | None]:
    """Every flag's value by the one precedence order (command line > environment > config file >
    defaults), converted and range-checked but not cross-checked; and the config file read.
    `sources`, when given, gets where each value came from (`--print-config`)."""
    config_file = None
    file_values: dict = {}
    if args.get("config"):
        config_file = _resolve(args["config"], cwd, "--config")
        file_values = _load_yaml(config_file)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for flag in FLAGS:
        dest = flag.dest
        if dest in args:
            values[dest], origin[dest] = _convert(flag, args[dest], "command line"), "command line"
        elif flag.env and environ.get(flag.env, "") != "":
            values[dest] = _convert(flag, environ[flag.env], f"{flag.env} (environment)")
            origin[dest] = f"environment {flag.env}"
        elif dest in file_values:
            values[dest] = _convert(flag, file_values[dest], f"{config_file}: {flag.name}")
            origin[dest] = f"config file {config_file}"
        else:
            values[dest], origin[dest] = flag.default, "default"
    if origin["repo_root"] == "default":
        values["repo_root"], origin["repo_root"] = default_repo_root(values["eval_script"], cwd)
    if sources is not None:
        sources.update(origin)
    return values, config_file


def default_repo_root(eval_script: str, cwd: Path) -> tuple[str, str]:
    """--repo-root when none is given: the folder of eval_wandb_sidecar.py when the eval script is
    there (the original tool's default), else the current folder; and why (for --print-config)."""
    script = Path(str(eval_script)).expanduser()
    for folder in ENTRY_DIRS:
        if script.is_absolute():
            holds = script.is_file() and Path(os.path.abspath(script)).is_relative_to(folder)
        else:
            holds = (folder / script).is_file()
        if holds:
            return str(folder), f"default: the folder of eval_wandb_sidecar.py (it holds {eval_script})"
    return str(cwd), "default: the current folder"


def parse_summary_metrics(text: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """`"acc,loss:min"` -> the metric names and those where lower is better (`:max`, the default,
    for higher)."""
    names: list[str] = []
    lower: set[str] = set()
    for part in str(text).split(","):
        name, colon, goal = part.strip().rpartition(":") if part.strip().lower().endswith((":min", ":max")) \
            else (part.strip(), "", "max")
        goal = goal.lower()
        name = name.strip()
        if not name:
            continue
        if name in names:
            raise ConfigError(f"--summary-metrics: {name!r} is named twice in {text!r}")
        names.append(name)
        if goal == "min":
            lower.add(name)
    if not names:
        raise ConfigError(f"--summary-metrics: expected metric names like HR@10,NDCG@10 or acc,loss:min, got {text!r}")
    return tuple(names), frozenset(lower)


def keep_best_metric(text: str | None, summary: tuple[str, ...], lower: frozenset[str]) -> tuple[str, bool]:
    """`--keep-best-metric NAME[:max|:min]` -> (name, lower is better); not given: the first summary
    metric, with its direction."""
    if text is None or not str(text).strip():
        return summary[0], summary[0] in lower
    name, colon, goal = str(text).strip().rpartition(":")
    if not colon or goal.lower() not in ("min", "max"):
        name, goal = str(text).strip(), "max"
    if not name.strip() or "," in name or ":" in name:
        raise ConfigError(f"--keep-best-metric: expected one metric like HR@10 or loss:min, got {text!r}")
    return name.strip(), goal.lower() == "min"


def parse_command(text: str | tuple[str, ...] | None, flag: str) -> tuple[str, ...]:
    """A command line split like a shell would (a YAML list item by item), never run through one."""
    if isinstance(text, tuple):
        return text
    try:
        return tuple(shlex.split(text or ""))
    except ValueError as exc:
        raise ConfigError(f"{flag}: cannot split {text!r} ({exc})") from None


def build_config(args: dict, environ: dict[str, str], cwd: Path, check_paths: bool = True,
                 member: bool = False) -> Config:
    """Merge command line (`args`, only flags given), environment and config file over the defaults.

    With `check_paths`, the files and folders the watch needs must exist (start-up validation).
    `member`: one model of a fleet (`args` name its `sft_root`); the fleet's own flags are left
    out, so the config is exactly a single-model sidecar's with these flags.
    """
    values, config_file = flag_values(args, environ, cwd)
    if member:
        values.update((dest, _BY_DEST[dest].default) for dest in FLEET_KEYS)
    _check_executor(values)
    _check_resume(values)
    values["gpu_slots"] = parse_gpu_slots(values["gpu_slots"], values["cuda_list"])
    values["slurm_args"] = parse_slurm_args(values["slurm_args"])
    values["summary_metrics"], values["summary_lower_better"] = parse_summary_metrics(values["summary_metrics"])
    values["keep_best_metric"], values["keep_best_lower_better"] = keep_best_metric(
        values["keep_best_metric"], values["summary_metrics"], values["summary_lower_better"])
    values["notify_command"] = parse_command(values["notify_command"], "--notify-command")
    _check_fleet(values)
    if values["models_root"] and not values["sft_root"]:
        values["sft_root"] = values["models_root"][0]  # fleet mode: each model's config names its own
    if not values["sft_root"]:
        raise ConfigError("--sft-root is required (the folder holding checkpoint-<N> folders)")
    if values["ready_marker"] is not None:
        marker = values["ready_marker"]
        if not marker or marker in (".", "..") or "/" in marker:
            raise ConfigError(f"--ready-marker: expected a file name inside the checkpoint, got {marker!r}")
    repo_root = _resolve(values["repo_root"], cwd, "--repo-root")
    for dest in ("sft_root", "eval_script", "test_data_path", "index_path", "state_dir", "log_dir"):
        values[dest] = _resolve(values[dest], repo_root, f"--{dest.replace('_', '-')}")
    values["repo_root"] = repo_root
    values["models_root"] = tuple(_resolve(r, repo_root, "--models-root") for r in values["models_root"])
    for dest in ("profiles", "profiles_data_root"):
        if values[dest] is not None:
            values[dest] = _resolve(values[dest], repo_root, f"--{dest.replace('_', '-')}")
    values["results_root"] = _resolve(values["results_root"] or "results", repo_root, "--results-root")
    identity = derive_identity(
        sft_root=values["sft_root"], test_data_path=values["test_data_path"],
        index_path=values["index_path"], category=values["category"], seed=values["seed"],
        num_beams=values["num_beams"], sid_levels=values["sid_levels"], dataset=values["dataset"],
        cb_setting=values["cb_setting"], eval_split=values["eval_split"],
    )
    config = Config(**values, identity=identity, config_file=config_file)
    if check_paths:
        check_start_paths(config)
    return config


def _check_fleet(values: dict) -> None:
    """Fleet mode (`--models-root`) replaces `--sft-root`; its own flags need it, and flags naming
    one run or one model's steps have no meaning across a tree of models."""
    if values["models_root"] and values["sft_root"]:
        raise ConfigError(f"--sft-root {values['sft_root']!r} and --models-root {values['models_root'][0]!r}: give "
                          f"one (--sft-root watches one model, --models-root a tree of them)")
    if not values["models_root"]:
        given = [d for d in FLEET_ONLY if values[d] not in (None, (), 0)]
        if given:
            name = given[0].replace("_", "-")
            raise ConfigError(f"--{name} {values[given[0]]!r}: applies to fleet mode only (--models-root DIR)")
        return
    for dest in NOT_IN_FLEET:
        if values[dest]:
            shown = ",".join(map(str, sorted(values[dest]))) if dest == "force_eval_steps" else values[dest]
            raise ConfigError(f"--{dest.replace('_', '-')} {shown!r}: not in fleet mode (it would apply to every "
                              f"model); use a single-model sidecar (--sft-root) for that model")


def _check_resume(values: dict) -> None:
    """`never` cannot hold for offline segments: `wandb sync` joins the segments of one run only
    when they were written with resume allow or must (with never their `_step` collide)."""
    reporting = not values["disable_wandb"] and values["wandb_mode"] != "disabled"
    offline = values["wandb_mode"] == "offline" or values["wandb_fallback"] == "offline"
    if reporting and offline and values["wandb_resume"] == "never":
        raise ConfigError("--wandb-resume never: offline segments of one run are uploaded as one run only with "
                          "resume allow (the default) or must; with never their _step values collide "
                          "(use --wandb-resume allow, or --wandb-mode online without --wandb-fallback offline)")


def check_start_paths(config: Config) -> None:
    """Start-up validation: the files and folders the watch needs exist."""
    check_common_paths(config)
    check_model_paths(config)


def check_model_paths(config: Config) -> None:
    """The files and folders of one model's evaluation (fleet mode checks them per model)."""
    if not config.sft_root.is_dir():
        raise ConfigError(f"--sft-root: not a folder: {config.sft_root}")
    if not os.access(config.sft_root, os.R_OK | os.X_OK):
        raise ConfigError(f"--sft-root: not readable: {config.sft_root}")
    if not config.eval_script.is_file():
        raise ConfigError(f"--eval-script: not a file: {config.eval_script}")
    if not config.test_data_path.is_file():
        raise ConfigError(f"--test-data-path: not a file: {config.test_data_path}")
    if not config.index_path.is_file():
        raise ConfigError(f"--index-path: not a file: {config.index_path}")


def check_common_paths(config: Config) -> None:
    """What every model of a sidecar shares: the repository, Slurm's commands, the state and log folders."""
    if not config.repo_root.is_dir():
        raise ConfigError(f"--repo-root: not a folder: {config.repo_root}")
    for root in config.models_root:
        if not root.is_dir():
            raise ConfigError(f"--models-root: not a folder: {root}")
    if config.executor == "slurm":
        missing = [b for b in ("sbatch", "scontrol", "scancel", "squeue") if shutil.which(b) is None]
        if missing:
            raise ConfigError(f"--executor slurm: {', '.join(missing)} not found on PATH")
    for flag, folder in (("--state-dir", config.state_dir), ("--log-dir", config.log_dir)):
        existing = folder
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag}: cannot create or write {folder}")
