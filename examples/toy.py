"""A toy generative recommender, small enough to train and evaluate in a blink.

Items are `i0..i{N-1}`; each user's sequence mostly follows a hidden transition
(`next = (7 * prev + 3) % N`) with some noise. The "model" is a table of transition counts
learned from the training pairs seen so far, so later checkpoints score better: a real
learning curve for the demo, computed with real HR@K / NDCG@K.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

N_ITEMS = 60
KS = (1, 3, 5, 10, 20, 50)


def make_pairs(n: int, seed: int) -> list[dict]:
    """`n` (history, target) pairs."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        item = rng.randrange(N_ITEMS)
        history = [f"i{item}"]
        for _ in range(3):
            item = (7 * item + 3) % N_ITEMS if rng.random() < 0.7 else rng.randrange(N_ITEMS)
            history.append(f"i{item}")
        pairs.append({"history": history[:-1], "target": history[-1]})
    return pairs


def write_dataset(folder: Path) -> None:
    """`<folder>/sft/{train,test}.json` and `<folder>/id2sid.json` (the layout the sidecar expects)."""
    (folder / "sft").mkdir(parents=True, exist_ok=True)
    (folder / "sft" / "train.json").write_text(json.dumps(make_pairs(4000, 1)))
    (folder / "sft" / "test.json").write_text(json.dumps(make_pairs(300, 2)))
    sids = {f"i{i}": f"<a_{i // 8}><b_{i % 8}>" for i in range(N_ITEMS)}
    (folder / "id2sid.json").write_text(json.dumps(sids, indent=1))


def train_counts(pairs: list[dict]) -> dict[str, dict[str, int]]:
    """Transition counts from the last history item to the target."""
    counts: dict[str, dict[str, int]] = {}
    for pair in pairs:
        row = counts.setdefault(pair["history"][-1], {})
        row[pair["target"]] = row.get(pair["target"], 0) + 1
    return counts


def rank(counts: dict[str, dict[str, int]], history: list[str], items: list[str], beams: int) -> list[str]:
    """Top `beams` items for a history: by count, ties broken by item name."""
    row = counts.get(history[-1], {})
    return sorted(items, key=lambda it: (-row.get(it, 0), it))[:beams]


def hr_ndcg(ranked_lists: list[list[str]], targets: list[str], ks: list[int]) -> dict[str, float]:
    """HR@K and NDCG@K (one relevant item per query), rounded to 4 decimals."""
    out: dict[str, float] = {}
    for k in ks:
        hits = 0
        gain = 0.0
        for ranked, target in zip(ranked_lists, targets):
            top = ranked[:k]
            if target in top:
                hits += 1
                gain += 1.0 / math.log2(top.index(target) + 2)
        out[f"HR@{k}"] = round(hits / len(targets), 4)
        out[f"NDCG@{k}"] = round(gain / len(targets), 4)
    return {key: out[key] for k in ks for key in (f"HR@{k}", f"NDCG@{k}")}
