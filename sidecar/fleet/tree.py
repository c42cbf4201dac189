"""A fleet's tree as a reader sees it (`status`, `plan`): each model folder with its profile and
configuration, or the reason it has none. Nothing is locked or written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config, build_config, check_model_paths
from ..errors import SidecarError
from .models import ModelFinder, ModelFolder
from .profiles import load_profiles


def model_config(args: dict, environ: dict[str, str], cwd: Path, folder: ModelFolder, values: dict,
                 check: bool = True) -> Config:
    """Exactly the configuration of a single-model sidecar started with the fleet's flags (`args`),
    the profile's `values` and `--sft-root` this folder; with `check`, ConfigError if its files
    are missing."""
    args = {**{k: v for k, v in args.items() if k != "sft_root"}, **values, "sft_root": str(folder.path)}
    config = build_config(args, environ, cwd, check_paths=False, member=True)
    if check:
        check_model_paths(config)
    return config


def output_folders(config: Config) -> tuple[Path, Path]:
    """Where a model's evals write: results/<folder name>/ and the log folder. Two model folders
    of one name under two roots would share them."""
    return config.results_root / config.sft_root.name, config.log_dir / config.identity.safe_model


def clash_text(path: Path, config: Config, other: Path) -> str:
    results, logs = output_folders(config)
    return (f"{path} would share {results} and {logs} with the model at {other} (the same folder name under two "
            f"roots): its evals would overwrite each other's results; rename one of the folders")


@dataclass(frozen=True)
class TreeModel:
    folder: ModelFolder
    config: Config | None  # None: no profile, or its configuration is unusable (`problem`)
    problem: str = ""  # "no profile: ..." / "error: ..."
    source: str = ""


def resolve_tree(config: Config, args: dict, environ: dict[str, str], cwd: Path, check: bool = True) -> list[TreeModel]:
    """Every model folder under the fleet's roots, sorted by name, with its configuration (with
    `check`, only if its eval files exist)."""
    profiles = load_profiles(config.profiles, config.profiles_data_root) if config.profiles else None
    finder = ModelFinder(config.models_root, config.model_filter)
    out = []
    taken: dict[Path, Path] = {}  # output folder -> the model folder placed first (by path, as the fleet does)
    for path, folder in sorted(finder.scan().items()):
        values, source = {}, "the command line"
        if profiles is not None:
            resolved = profiles.resolve(folder.name)
            if resolved.values is None:
                out.append(TreeModel(folder, None, f"no profile: {resolved.reason}"))
                continue
            values, source = resolved.values, resolved.source
        try:
            config = model_config(args, environ, cwd, folder, values, check)
        except SidecarError as exc:
            out.append(TreeModel(folder, None, f"error: profile from {source}: {exc}", source))
            continue
        other = next((taken[f] for f in output_folders(config) if f in taken), None)
        if other is not None:
            out.append(TreeModel(folder, None, f"error: {clash_text(path, config, other)}", source))
            continue
        taken.update((f, path) for f in output_folders(config))
        out.append(TreeModel(folder, config, source=source))
    return sorted(out, key=lambda m: (m.folder.name, str(m.folder.path)))
