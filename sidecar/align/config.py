"""Align mode configuration (SPEC §6): the original alignment tool's `config.yaml`, validated.

Every error names the key path and the value (`frameworks.slime.mapping`); nothing is fetched or
uploaded before the whole file is valid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

PLATFORMS = {"wandb": "run_path", "swanlab": "exp_id", "sidecar": "state_file", "csv": "path"}
MODES = ("online", "cloud", "local", "offline", "disabled")
DEFAULT_STEP_GROUPS = {
    "train/step": ("train/",),
    "rollout/step": ("rollout/", "multi_turn/", "passrate/", "perf/"),
    "eval/step": ("eval/",),
}


@dataclass(frozen=True)
class Framework:
    name: str
    platform: str
    source: str  # run_path, exp_id, state_file or path
    mapping: dict | None  # {source_name: aligned_name}; None = identity on aligned names
    output_file: Path
    target_exp_name: str
    n_gpus: int | None = None
    step_groups: dict = field(default_factory=lambda: dict(DEFAULT_STEP_GROUPS))
    # which SwanLab experiment of this framework uploads go to: 1, the first; `align --rebuild`
    # moves to the next (kept in the upload record, set by align, not read from the file)
    experiment_version: int = 1


@dataclass(frozen=True)
class AlignConfig:
    aligned_metrics: tuple[str, ...]
    frameworks: tuple[Framework, ...]
    project: str
    workspace: str | None
    mode: str
    logdir: Path | None
    swanlab_api_key: str | None  # never logged


def _need(cond: bool, path: str, value, what: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {what}, got {value!r}")


def _str(data: dict, key: str, path: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    _need(isinstance(value, str) and value.strip() != "", f"{path}.{key}", value, "expected a non-empty string")
    return value.strip()


def _step_groups(value, path: str) -> dict:
    if value is None:
        return dict(DEFAULT_STEP_GROUPS)
    _need(isinstance(value, dict) and value, path, value, "expected a mapping of step key to prefixes")
    out = {}
    for key, prefixes in value.items():
        if isinstance(prefixes, str):
            prefixes = [prefixes]
        _need(isinstance(prefixes, list) and all(isinstance(p, str) and p for p in prefixes),
              f"{path}.{key}", prefixes, "expected a list of metric-name prefixes")
        out[str(key)] = tuple(prefixes)
    return out


def parse_align_config(data, base: Path, environ: dict[str, str]) -> AlignConfig:
    """Validate a loaded YAML document; relative paths are resolved against `base` (the cwd)."""
    _need(isinstance(data, dict), "config", type(data).__name__, "expected a mapping at the top level")
    aligned = data.get("aligned_metrics")
    _need(isinstance(aligned, list) and aligned and all(isinstance(m, str) and m for m in aligned),
          "aligned_metrics", aligned, "expected a non-empty list of metric names")
    aligned_set = set(aligned)
    auth = data.get("auth") or {}
    _need(isinstance(auth, dict), "auth", "(not shown)", "expected a mapping")  # never echo a secret
    key = auth.get("swanlab_api_key") or environ.get("SWANLAB_API_KEY") or None
    if key is not None and (not isinstance(key, str) or key.startswith("YOUR_")):
        key = None
    target = data.get("target")
    _need(isinstance(target, dict), "target", target, "expected a mapping with project")
    project = _str(target, "project", "target")
    workspace = _str(target, "workspace", "target", required=False)
    mode = target.get("mode", "offline")
    _need(isinstance(mode, str) and mode in MODES, "target.mode", mode, f"expected one of {', '.join(MODES)}")
    logdir = _str(target, "logdir", "target", required=False)
    global_groups = _step_groups(data.get("step_groups"), "step_groups")
    frameworks_raw = data.get("frameworks")
    _need(isinstance(frameworks_raw, dict) and frameworks_raw, "frameworks", frameworks_raw,
          "expected a mapping of framework names")
    frameworks = []
    for name, fw in frameworks_raw.items():
        path = f"frameworks.{name}"
        _need(isinstance(fw, dict), path, fw, "expected a mapping")
        enabled = fw.get("enabled", True)
        _need(isinstance(enabled, bool), f"{path}.enabled", enabled, "expected true or false")
        platform = fw.get("platform")
        _need(isinstance(platform, str) and platform in PLATFORMS, f"{path}.platform", platform, f"expected one of {', '.join(PLATFORMS)}")
        source = _str(fw, PLATFORMS[platform], path)
        if platform == "swanlab":
            _need(len(source.split("/")) == 3, f"{path}.exp_id", source, "expected user/project/run_id")
        if platform == "wandb":
            _need(len(source.split("/")) == 3, f"{path}.run_path", source, "expected entity/project/run_id")
        mapping = fw.get("mapping")
        if mapping is not None:
            _need(isinstance(mapping, dict), f"{path}.mapping", mapping, "expected a mapping source: aligned, or null")
            for src, dst in mapping.items():
                _need(isinstance(dst, str) and dst in aligned_set, f"{path}.mapping.{src}", dst,
                      "expected one of aligned_metrics")
            mapping = {str(k): v for k, v in mapping.items()}
        n_gpus = fw.get("n_gpus")
        if n_gpus is not None:
            _need(isinstance(n_gpus, int) and not isinstance(n_gpus, bool) and n_gpus > 0, f"{path}.n_gpus",
                  n_gpus, "expected a positive integer")
        output = fw.get("output_file", f"data/{name}.csv")
        _need(isinstance(output, str) and output, f"{path}.output_file", output, "expected a file path")
        exp_name = fw.get("target_exp_name", str(name))
        _need(isinstance(exp_name, str) and exp_name, f"{path}.target_exp_name", exp_name, "expected a name")
        groups = _step_groups(fw["step_groups"], f"{path}.step_groups") if "step_groups" in fw else global_groups
        if platform in ("sidecar", "csv"):
            source = str(_resolve(source, base))
        if not enabled:
            continue
        frameworks.append(Framework(str(name), platform, source, mapping, _resolve(output, base), exp_name,
                                    n_gpus, groups))
    return AlignConfig(tuple(aligned), tuple(frameworks), project, workspace, mode,
                       _resolve(logdir, base) if logdir else None, key)


def _resolve(raw: str, base: Path) -> Path:
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else base / path


def load_align_config(path: Path, environ: dict[str, str], base: Path) -> AlignConfig:
    from ..config import read_yaml

    return parse_align_config(read_yaml(path), base, environ)
