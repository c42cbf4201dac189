"""Model identity, compatible with the original sidecar: names, key, run id, file names.

Everything here is a pure function of paths and flag values (SPEC §3.1, §3.2).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import parse_step

_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")
_CB = re.compile(r"cb\d+(?:-\d+)*")

# A file name holds at most 255 bytes. The longest name made from a state file's is its backup's
# temp copy, `.<model>_<key>.json.<16 hex>.bak.tmp`: 52 bytes besides `<model>`. Up to this many
# characters (sanitised names are ASCII) the model part is the original tool's name, unchanged.
FILE_MODEL_MAX = 200


def sanitize(value: str, fallback: str = "unknown") -> str:
    """Replace each run of characters outside [a-zA-Z0-9_.-] by '-', strip '-_.' at both ends."""
    cleaned = _UNSAFE.sub("-", value).strip("-_.")
    return cleaned or fallback


def model_name_for(sft_root: Path) -> str:
    """Basename of the SFT root, or of its parent when the root is itself a checkpoint folder."""
    if parse_step(sft_root.name) is not None:
        return sft_root.parent.name
    return sft_root.name


def dataset_for(test_data_path: Path, category: str) -> str:
    """The folder above `sft/` in the test data path, else its parent folder name, else the category."""
    parent = test_data_path.parent
    if parent.name == "sft" and parent.parent.name:
        return parent.parent.name
    return parent.name or category


def eval_split_for(test_data_path: Path) -> str:
    """The stem of the test data file (`test` for `.../test.json`)."""
    return test_data_path.stem or "test"


def cb_setting_for(candidates: list[str]) -> str:
    """The first `cb<digits>(-<digits>)*` found in the candidates, else `unknown`."""
    for value in candidates:
        match = _CB.search(value)
        if match:
            return match.group(0)
    return "unknown"


def config_key(payload: dict) -> str:
    """First 20 hex characters of the sha1 of the canonical JSON of the payload."""
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha1(raw.encode("utf-8")).hexdigest()[:20]


@dataclass(frozen=True)
class Identity:
    """Who this sidecar reports for: the names and files derived from one model configuration."""

    model_name: str
    dataset: str
    cb_setting: str
    eval_split: str
    payload: dict
    key: str

    @property
    def safe_model(self) -> str:
        return sanitize(self.model_name)

    @property
    def file_model(self) -> str:
        """The model part of the state and lock file names: `safe_model`, or its first
        FILE_MODEL_MAX characters when longer. The key after it is a hash of the whole
        configuration, the full name included, so a shortened name still names one configuration."""
        name = self.safe_model
        return name if len(name) <= FILE_MODEL_MAX else name[:FILE_MODEL_MAX].rstrip("-_.")

    @property
    def default_run_id(self) -> str:
        return f"eval-{self.key}"

    @property
    def default_run_name(self) -> str:
        return f"{self.safe_model}-eval"

    def state_file(self, state_dir: Path) -> Path:
        return state_dir / f"{self.file_model}_{self.key}.json"

    def lock_file(self, state_dir: Path) -> Path:
        return state_dir / f"{self.file_model}_{self.key}.lock"

    def wandb_config(self) -> dict:
        """The W&B run config (the original's filter fields)."""
        keys = ("model_name", "dataset", "cb_setting", "seed", "num_beams", "sid_levels", "eval_split")
        return {k: self.payload[k] for k in keys}


def derive_identity(
    *,
    sft_root: Path,
    test_data_path: Path,
    index_path: Path,
    category: str,
    seed: int,
    num_beams: int,
    sid_levels: int,
    dataset: str = "",
    cb_setting: str = "",
    eval_split: str = "",
) -> Identity:
    """Derive the identity exactly as the original did; paths must already be absolute and resolved."""
    model_name = model_name_for(sft_root)
    dataset = dataset or dataset_for(test_data_path, category)
    eval_split = eval_split or eval_split_for(test_data_path)
    cb_setting = cb_setting or cb_setting_for(
        [str(sft_root), str(test_data_path), str(index_path), model_name, dataset]
    )
    payload = {
        "model_name": model_name,
        "dataset": dataset,
        "cb_setting": cb_setting,
        "seed": int(seed),
        "num_beams": int(num_beams),
        "sid_levels": int(sid_levels),
        "eval_split": eval_split,
        "sft_root": str(sft_root),
        "test_data_path": str(test_data_path),
        "index_path": str(index_path),
    }
    return Identity(model_name, dataset, cb_setting, eval_split, payload, config_key(payload))
