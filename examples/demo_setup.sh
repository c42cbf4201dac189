# Sourced by the demos: strict mode, the repository folder, the Python to use (PYTHON_BIN, else
# the repository's .venv, else python3) and a fresh work folder (DEMO_DIR, else $repo/$1), entered.
set -euo pipefail
repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON_BIN:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="python3"; fi
fi
work="${DEMO_DIR:-$repo/$1}"
rm -rf -- "$work"
mkdir -p -- "$work"
cd -- "$work"

# stop_after N: wait (up to 60 s) until `processed` (defined by the demo) prints N, then stop the
# sidecar ($sidecar_pid) and wait for it
stop_after() {
  for _ in $(seq 1 120); do
    [[ "$(processed)" == "$1" ]] && break
    sleep 0.5
  done
  kill -TERM "$sidecar_pid"
  wait "$sidecar_pid" || true
  trap - EXIT
}
