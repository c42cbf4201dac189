#!/usr/bin/env bash
# Fleet mode, live: ONE sidecar watches two model roots (saves/ for SFT, rl_outputs/ for RL)
# while three toy trainers write checkpoints into three model folders at once; a fourth folder has
# no profile and is only listed. Each model gets its eval flags from a profiles file and its own
# state file and run, exactly as a single-model sidecar would. Then `status --all` and `plan`.
# Nothing to edit; runs from any folder. Output goes to DEMO_DIR (default: demo_fleet_run/).
source "$(dirname -- "${BASH_SOURCE[0]}")/demo_setup.sh" demo_fleet_run

cat > profiles.yaml <<'YAML'
# the model folder's name chooses its data: Toy-grec-... -> data/Toy_grec, Beauty-grec-... -> data/Beauty_grec
rules:
  - match: "scratch-*"
    skip: true
  - regex: '^(?P<domain>[A-Z][a-z]+)-grec-'
    category: "{domain}_grec"
    test-data-path: "data/{domain}_grec/sft/test.json"
    index-path: "data/{domain}_grec/id2sid.json"
YAML
fleet_args=(
  --repo-root "$work" --models-root saves --models-root rl_outputs --profiles profiles.yaml
  --eval-script "$repo/examples/evaluate_sft_3b.sh" --num-beams 20 --python-bin "$py" --disable-wandb
  --gpu-slots "0;1" --ready-marker .sidecar_ready
)
echo "== 1. two toy data sets, a profiles file, and one sidecar watching saves/ and rl_outputs/ (2 GPU slots)"
"$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); import toy; from pathlib import Path
for d in ("Toy_grec", "Beauty_grec"): toy.write_dataset(Path("data") / d)' "$repo/examples"
mkdir -p saves rl_outputs saves/Other-notes/checkpoint-1
"$py" "$repo/eval_wandb_sidecar.py" "${fleet_args[@]}" --watch-mode events --poll-interval-seconds 3600 \
  2> sidecar.log &
sidecar_pid=$!
trap 'kill -TERM "$sidecar_pid" 2>/dev/null || true' EXIT
sleep 1

echo "== 2. three trainers at once: two SFT runs in saves/, one RL run in rl_outputs/ (3 checkpoints each)"
pids=()
for out in saves/Toy-grec-sft-cb16 saves/Beauty-grec-sft-cb64 rl_outputs/Toy-grec-rl-cb16; do
  data="data/Toy_grec"; [[ "$out" == *Beauty* ]] && data="data/Beauty_grec"
  "$py" "$repo/examples/demo_trainer.py" --data "$data" --output-dir "$out" --max-steps 300 --save-steps 100 \
    --seconds-per-step 0.02 --ready-marker .sidecar_ready > /dev/null &
  pids+=("$!")
done
wait "${pids[@]}"

processed() {
  "$py" "$repo/eval_wandb_sidecar.py" status --all --json "${fleet_args[@]}" 2>/dev/null \
    | "$py" -c 'import json, sys; print(sum(m.get("processed", 0) for m in json.load(sys.stdin)["models"]))' \
    2>/dev/null || echo 0
}
stop_after 9
echo
echo "== 3. what the sidecar logged (each line about one model names it)"
grep -E "watching|no profile|evaluated" sidecar.log | sed -e 's/^\[[^]]*\] //' -e 's/ (profile from.*//'

echo
echo "== 4. one line per model (eval_wandb_sidecar.py status --all)"
"$py" "$repo/eval_wandb_sidecar.py" status --all "${fleet_args[@]}"

echo
echo "== 5. what would run next (eval_wandb_sidecar.py plan): nothing, every checkpoint is evaluated"
"$py" "$repo/eval_wandb_sidecar.py" plan "${fleet_args[@]}"
echo
echo "Sidecar log: $work/sidecar.log   state files: $work/state/wandb_eval_sidecar/   eval logs: $work/log/eval_sidecar/"
