#!/usr/bin/env bash
# The README's demo: a toy trainer writes checkpoints, the sidecar evaluates each one once with
# the stand-in eval script, then prints what it recorded. Nothing to edit; runs from any folder.
# Everything it writes goes to DEMO_DIR (default: demo_run/ in the repository, git-ignored).
set -euo pipefail
repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON_BIN:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="python3"; fi
fi
work="${DEMO_DIR:-$repo/demo_run}"
rm -rf -- "$work"
mkdir -p -- "$work"
cd -- "$work"

echo "== 1. toy data set and a trainer that saves checkpoint-100 ... checkpoint-500 (HF layout)"
"$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); import toy; from pathlib import Path; toy.write_dataset(Path("data/Toy_grec"))' "$repo/examples"
"$py" "$repo/examples/demo_trainer.py" --data data/Toy_grec --output-dir saves/toy-grec-sft-cb16 \
  --max-steps 500 --save-steps 100

sidecar_args=(
  --repo-root "$work" --sft-root saves/toy-grec-sft-cb16
  --eval-script "$repo/examples/evaluate_sft_3b.sh"
  --test-data-path data/Toy_grec/sft/test.json --index-path data/Toy_grec/id2sid.json
  --num-beams 20 --python-bin "$py" --disable-wandb
)
echo
echo "== 2. the sidecar evaluates every ready checkpoint once (--once), ready = trainer_state.json written"
"$py" "$repo/eval_wandb_sidecar.py" "${sidecar_args[@]}" --once --ready-marker trainer_state.json

echo
echo "== 3. a second pass finds nothing new: each checkpoint is evaluated exactly once"
"$py" "$repo/eval_wandb_sidecar.py" "${sidecar_args[@]}" --once --ready-marker trainer_state.json 2>&1 | tail -n 1

echo
echo "== 4. what the sidecar recorded (eval_wandb_sidecar.py status --rows)"
"$py" "$repo/eval_wandb_sidecar.py" status "${sidecar_args[@]}" --rows
echo
echo "Eval logs: $work/log/eval_sidecar/   metrics.json files: $work/results/"
