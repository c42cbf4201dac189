#!/usr/bin/env bash
# The README's demo, live: the sidecar watches (filesystem events) while a toy trainer writes a
# checkpoint every ~2 s in the Hugging Face layout; each checkpoint is evaluated once, as soon as
# its ready marker appears, with the stand-in eval script. Then it prints what was recorded.
# Nothing to edit; runs from any folder. Output goes to DEMO_DIR (default: demo_run/, git-ignored).
source "$(dirname -- "${BASH_SOURCE[0]}")/demo_setup.sh" demo_run

sidecar_args=(
  --repo-root "$work" --sft-root saves/toy-grec-sft-cb16
  --eval-script "$repo/examples/evaluate_sft_3b.sh"
  --test-data-path data/Toy_grec/sft/test.json --index-path data/Toy_grec/id2sid.json
  --num-beams 20 --python-bin "$py" --disable-wandb
)
echo "== 1. a toy data set, and the sidecar watching saves/toy-grec-sft-cb16 (events, marker .sidecar_ready)"
"$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); import toy; from pathlib import Path; toy.write_dataset(Path("data/Toy_grec"))' "$repo/examples"
mkdir -p saves/toy-grec-sft-cb16
"$py" "$repo/eval_wandb_sidecar.py" "${sidecar_args[@]}" --watch-mode events \
  --ready-marker .sidecar_ready --poll-interval-seconds 3600 2> sidecar.log &
sidecar_pid=$!
trap 'kill -TERM "$sidecar_pid" 2>/dev/null || true' EXIT

echo "== 2. the trainer saves checkpoint-100 ... checkpoint-500, one every ~2 s"
"$py" "$repo/examples/demo_trainer.py" --data data/Toy_grec --output-dir saves/toy-grec-sft-cb16 \
  --max-steps 500 --save-steps 100 --seconds-per-step 0.02 --ready-marker .sidecar_ready

processed() {
  "$py" "$repo/eval_wandb_sidecar.py" status "${sidecar_args[@]}" --json 2>/dev/null \
    | "$py" -c 'import json, sys; print(json.load(sys.stdin)["processed"])' 2>/dev/null || echo 0
}
stop_after 5
echo
echo "== 3. what the sidecar logged while watching"
grep -E "evaluated|watching" sidecar.log | sed -e 's/^\[[^]]*\] //'

echo
echo "== 4. a --once pass afterwards finds nothing new: each checkpoint is evaluated exactly once"
"$py" "$repo/eval_wandb_sidecar.py" "${sidecar_args[@]}" --once --ready-marker .sidecar_ready 2>&1 | tail -n 1

echo
echo "== 5. what the sidecar recorded (eval_wandb_sidecar.py status --rows)"
"$py" "$repo/eval_wandb_sidecar.py" status "${sidecar_args[@]}" --rows
echo
echo "Sidecar log: $work/sidecar.log   eval logs: $work/log/eval_sidecar/   metrics.json files: $work/results/"
