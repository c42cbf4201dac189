"""The training context of a checkpoint: what a Hugging Face `trainer_state.json` in it says of
the training at that step (epoch, global step, the last logged loss and learning rate)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..reporters.rows import TRAIN_FIELDS, metric_value

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
MAX_BYTES = 256 * 1024 * 1024  # a longer file is not read (log_history of a very long run is a few MB)


def training_context(checkpoint: Path, step: int) -> dict:
    """`train/epoch`, `train/global_step`, and from `log_history` the last `loss` and
    `learning_rate` logged at or before `step` (each only when the file has it); {} without a
    trainer_state.json. A file that cannot be read or parsed is one warning and {}."""
    path = checkpoint / TRAINER_STATE
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES // 2 ** 20} MiB")
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
        log.warning("%s: cannot read the training context (%s); the row goes without it", path, why)
        return {}
    context: dict = {}
    if metric_value(data, "epoch") is not None:
        context["train/epoch"] = metric_value(data, "epoch")
    if metric_value(data, "global_step") is not None:
        context["train/global_step"] = int(data["global_step"])
    history = data.get("log_history")
    for entry in history if isinstance(history, list) else ():
        if not isinstance(entry, dict) or metric_value(entry, "step") is None or entry["step"] > step:
            continue
        for key in ("loss", "learning_rate"):
            if metric_value(entry, key) is not None:
                context[f"train/{key}"] = metric_value(entry, key)
    return {k: context[k] for k in TRAIN_FIELDS if k in context}
