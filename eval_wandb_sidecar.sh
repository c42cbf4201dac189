#!/usr/bin/env bash
# Manager for eval_wandb_sidecar.py.
#   bash eval_wandb_sidecar.sh run  [--instance NAME] [sidecar flags...]   foreground watch
#   bash eval_wandb_sidecar.sh once [--instance NAME] [sidecar flags...]   one --once pass
# Environment: PYTHON_BIN (default python), SIDECAR_PY (default: the eval_wandb_sidecar.py beside
# this script), MANAGER_DIR, INSTANCE. start|stop|status|tail arrive with the watch-service issue.
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
PYTHON_BIN="${PYTHON_BIN:-python}"
SIDECAR_PY="${SIDECAR_PY:-$here/eval_wandb_sidecar.py}"

usage() {
  cat <<'USAGE'
usage: bash eval_wandb_sidecar.sh <run|once> [--instance NAME] [sidecar flags...]
  run    watch in the foreground (Ctrl-C or SIGTERM stops it cleanly)
  once   evaluate everything ready, then exit (for cron)
Flags after the command go to eval_wandb_sidecar.py unchanged (see README.md).
USAGE
}

if [[ $# -lt 1 ]]; then usage >&2; exit 2; fi
command="$1"; shift
INSTANCE="${INSTANCE:-default}"
forward=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --instance) [[ $# -ge 2 ]] || { echo "eval_wandb_sidecar.sh: --instance needs a value" >&2; exit 2; }
                INSTANCE="$2"; shift 2 ;;
    --instance=*) INSTANCE="${1#*=}"; shift ;;
    *) forward+=("$1"); shift ;;
  esac
done

if [[ ! -f "$SIDECAR_PY" ]]; then
  echo "eval_wandb_sidecar.sh: sidecar script not found: $SIDECAR_PY" >&2
  exit 2
fi

case "$command" in
  run) exec "$PYTHON_BIN" "$SIDECAR_PY" ${forward[@]+"${forward[@]}"} ;;
  once) exec "$PYTHON_BIN" "$SIDECAR_PY" --once ${forward[@]+"${forward[@]}"} ;;
  status) exec "$PYTHON_BIN" "$SIDECAR_PY" status ${forward[@]+"${forward[@]}"} ;;
  -h|--help|help) usage ;;
  start|stop|tail)
    echo "eval_wandb_sidecar.sh: '$command' is not built yet; use 'run' (foreground) or 'once'" >&2
    exit 2 ;;
  *) echo "eval_wandb_sidecar.sh: unknown command '$command'" >&2; usage >&2; exit 2 ;;
esac
