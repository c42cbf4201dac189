"""The order in which a fleet's ready checkpoints get free slots (pure).

`fair` (the default): models in turn, the one served longest ago first, each model's own order
inside it (oldest step first, or newest with `--order newest-first`), so a model with 100
pending checkpoints takes one slot per round like a model with one. `model-then-step`: models by
name, all of one model's checkpoints before the next model's.
"""

from __future__ import annotations

from typing import Iterator


def interleave(planned: dict[str, list], names: dict[str, str], served: dict[str, int],
               strict: bool = False) -> Iterator[tuple[str, object]]:
    """(model, checkpoint) pairs in dispatch order. `planned`: each model's checkpoints in its own
    order; `names`: what models are sorted by; `served`: when each model last got a slot (a
    counter; never served counts as 0)."""
    if strict:
        for model in sorted(planned, key=lambda m: (names.get(m, m), m)):
            for ckpt in planned[model]:
                yield model, ckpt
        return
    models = sorted(planned, key=lambda m: (served.get(m, 0), names.get(m, m), m))
    depth = max((len(v) for v in planned.values()), default=0)
    for i in range(depth):
        for model in models:
            if i < len(planned[model]):
                yield model, planned[model][i]
