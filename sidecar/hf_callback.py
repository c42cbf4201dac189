"""Hugging Face Trainer callback: mark each checkpoint ready for the sidecar (SPEC §2.9).

    from .hf_callback import SidecarReadyCallback
    trainer = Trainer(..., callbacks=[SidecarReadyCallback()])

Then run the sidecar with `--ready-marker .sidecar_ready`: a checkpoint is evaluated as soon as
the marker appears, with no quiet period. transformers is imported only here and is not a
requirement of the sidecar itself.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

try:  # the callback base class; without transformers the class still works with duck-typed args
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - exercised where transformers is not installed
    TrainerCallback = object  # type: ignore[assignment,misc]

MARKER = ".sidecar_ready"
log = logging.getLogger(__name__)


def write_ready_marker(checkpoint: Path, step: int | None = None, marker: str = MARKER) -> bool:
    """Write `<checkpoint>/<marker>` atomically once `trainer_state.json` is there; True if written.

    The marker is written last, after everything the Trainer saved, so its presence means the
    checkpoint is complete.
    """
    if not (checkpoint / "trainer_state.json").is_file():
        log.warning("not marking %s ready: trainer_state.json is missing", checkpoint)
        return False
    tmp = checkpoint / f".{marker}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"global_step": step, "time": time.time()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, checkpoint / marker)
    except OSError as exc:  # never break the training run over a marker
        log.warning("could not mark %s ready (%s); the sidecar will fall back to its quiet period", checkpoint, exc)
        try:
            tmp.unlink()
        except OSError:
            pass
        return False
    return True


class SidecarReadyCallback(TrainerCallback):
    """`on_save` writes the ready marker into the checkpoint just saved, on the main process only."""

    def __init__(self, marker: str = MARKER) -> None:
        self.marker = marker

    def on_save(self, args, state, control, **kwargs):
        if not getattr(state, "is_world_process_zero", True):
            return control
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            write_ready_marker(checkpoint, state.global_step, self.marker)
        else:
            log.warning("not marking checkpoint-%s ready: %s is not a folder", state.global_step, checkpoint)
        return control
