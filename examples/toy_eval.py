#!/usr/bin/env python3
"""Evaluate one toy checkpoint (CKPT_LIST) and write results/<model_parent>/<checkpoint>/metrics.json.

Reads the same environment as evaluate_sft_3b.sh: CKPT_LIST, TEST_DATA_PATH, INDEX_PATH,
NUM_BEAMS (and ignores the GPU and decoding ones, which a toy does not need).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy  # noqa: E402


def main() -> int:
    ckpt = Path(os.environ["CKPT_LIST"])
    beams = int(os.environ.get("NUM_BEAMS", "50"))
    tests = json.loads(Path(os.environ["TEST_DATA_PATH"]).read_text())
    items = sorted(json.loads(Path(os.environ["INDEX_PATH"]).read_text()))
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    counts: dict = {}
    for shard in sorted(set(index["weight_map"].values())):
        counts.update(json.loads((ckpt / shard).read_text()))
    ranked = [toy.rank(counts, t["history"], items, beams) for t in tests]
    metrics = toy.hr_ndcg(ranked, [t["target"] for t in tests], [k for k in toy.KS if k <= beams])
    out = Path("results") / ckpt.parent.name / ckpt.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics))  # not atomic, like the real script
    print(f"[eval] {ckpt.name}: HR@10={metrics.get('HR@10')} NDCG@10={metrics.get('NDCG@10')} -> {out}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
