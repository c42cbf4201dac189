"""Which model a log line is about (fleet mode): a context variable the fleet sets around each
model's work. Threads started for that work (`thread`) run in a copy of the context, so an eval's
or a W&B run's lines name their model too. A single-model sidecar sets none: its lines are as
they always were."""

from __future__ import annotations

import contextvars
import logging
import threading
from contextlib import contextmanager

MODEL: contextvars.ContextVar[str] = contextvars.ContextVar("sidecar_model", default="")


@contextmanager
def about(name: str):
    token = MODEL.set(name)
    try:
        yield
    finally:
        MODEL.reset(token)


def thread(target, name: str, args: tuple = ()) -> threading.Thread:
    """A daemon thread running `target(*args)` in a copy of the current context."""
    context = contextvars.copy_context()
    return threading.Thread(target=context.run, args=(target, *args), name=name, daemon=True)


class ModelField(logging.Filter):
    """Gives every record a `model` field: `NAME: ` inside `about(NAME)`, else empty."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "model"):
            label = MODEL.get()
            record.model = f"model {label}: " if label else ""
        return True
