#!/usr/bin/env bash
# Stand-in for evaluate_sft_3b.sh with the same contract: run as `bash evaluate_sft_3b.sh SFT_ROOT`
# in the repo root, the checkpoint to evaluate in CKPT_LIST, settings in CATEGORY CUDA_LIST
# PYTHON_BIN TEST_DATA_PATH INDEX_PATH BATCH_SIZE MAX_NEW_TOKENS NUM_BEAMS TEMPERATURE DO_SAMPLE
# LENGTH_PENALTY SID_LEVELS; writes results/<model_parent>/<checkpoint>/metrics.json.
set -euo pipefail
here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
: "${CKPT_LIST:?CKPT_LIST must name the checkpoint to evaluate}"
echo "[eval] sft root: ${1:-} checkpoint: $CKPT_LIST on GPUs: ${CUDA_LIST:-} beams: ${NUM_BEAMS:-}"
exec "${PYTHON_BIN:-python3}" "$here/toy_eval.py"
