#!/usr/bin/env bash
# Manager for eval_wandb_sidecar.py: run it in the background, stop it, see it.
#
#   bash eval_wandb_sidecar.sh start  [--instance NAME] [sidecar flags...]   detached watch
#   bash eval_wandb_sidecar.sh stop   [--instance NAME]
#   bash eval_wandb_sidecar.sh status [--instance NAME]    exit 0 running, 1 stopped, 3 stale pid file
#   bash eval_wandb_sidecar.sh tail   [--instance NAME]
#   bash eval_wandb_sidecar.sh run|once [--instance NAME] [sidecar flags...]  foreground
#   bash eval_wandb_sidecar.sh sync|align [sidecar subcommand flags...]
#
# Environment: PYTHON_BIN (default python), SIDECAR_PY (default: eval_wandb_sidecar.py beside this
# script), MANAGER_DIR (default: log/eval_sidecar beside this script), INSTANCE (default "default"),
# STOP_TIMEOUT (seconds, default 30), START_CHECK_SECONDS (default 2).
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
PYTHON_BIN="${PYTHON_BIN:-python}"
SIDECAR_PY="${SIDECAR_PY:-$here/eval_wandb_sidecar.py}"
MANAGER_DIR="${MANAGER_DIR:-$here/log/eval_sidecar}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"
START_CHECK_SECONDS="${START_CHECK_SECONDS:-2}"
me="eval_wandb_sidecar.sh"

usage() {
  sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

if [[ $# -lt 1 ]]; then usage >&2; exit 2; fi
command="$1"; shift
INSTANCE="${INSTANCE:-default}"
forward=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --instance) [[ $# -ge 2 ]] || { echo "$me: --instance needs a value" >&2; exit 2; }
                INSTANCE="$2"; shift 2 ;;
    --instance=*) INSTANCE="${1#*=}"; shift ;;
    *) forward+=("$1"); shift ;;
  esac
done

# Instance names become file names: anything outside [A-Za-z0-9_.-] becomes '_'.
safe="$(printf '%s' "$INSTANCE" | LC_ALL=C tr -c 'A-Za-z0-9_.-' '_')"
safe="${safe#.}"; [[ -n "$safe" ]] || safe="default"
pid_file="$MANAGER_DIR/$safe.pid"
log_file="$MANAGER_DIR/$safe.log"
args_file="$MANAGER_DIR/$safe.args"

require_sidecar() {
  if [[ ! -f "$SIDECAR_PY" ]]; then echo "$me: sidecar script not found: $SIDECAR_PY" >&2; exit 2; fi
}

# proc_state: prints "running PID", "stale PID <why>" or "stopped"
proc_state() {
  [[ -f "$pid_file" ]] || { echo stopped; return; }
  local pid
  pid="$(head -n 1 -- "$pid_file" 2>/dev/null || true)"
  if ! [[ "$pid" =~ ^[0-9]+$ ]]; then echo "stale ? (unreadable pid file)"; return; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "stale $pid (process is gone)"; return; fi
  # A reused pid belongs to another program: its command line does not name our sidecar.
  if ! tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$SIDECAR_PY"; then
    echo "stale $pid (pid now belongs to another program)"; return
  fi
  echo "running $pid"
}

saved_args() {  # the folder and flags the instance was started with, for `status`
  saved=(); saved_cwd="$PWD"
  if [[ -f "$args_file" ]]; then
    local first=1
    while IFS= read -r -d '' a; do
      if [[ $first == 1 ]]; then saved_cwd="$a"; first=0; else saved+=("$a"); fi
    done < "$args_file"
  fi
}

case "$command" in
  start)
    require_sidecar
    mkdir -p -- "$MANAGER_DIR"
    # One start at a time per instance: concurrent starts must not lose track of the sidecar.
    exec 9>>"$MANAGER_DIR/$safe.start.lock"
    flock 9
    read -r state pid why <<<"$(proc_state)" || true
    if [[ "$state" == running ]]; then
      echo "$me: instance '$INSTANCE' is already running (pid $pid); log: $log_file"
      exit 0
    fi
    if [[ "$state" == stale ]]; then
      echo "$me: removing stale pid file $pid_file (pid $pid: $why)"
      rm -f -- "$pid_file"
    fi
    printf '%s\0' "$PWD" ${forward[@]+"${forward[@]}"} > "$args_file"
    echo "===== $(date '+%Y-%m-%d %H:%M:%S') start: $SIDECAR_PY ${forward[*]+${forward[*]}}" >> "$log_file"
    setsid nohup "$PYTHON_BIN" "$SIDECAR_PY" ${forward[@]+"${forward[@]}"} >> "$log_file" 2>&1 < /dev/null 9>&- &
    pid=$!
    echo "$pid" > "$pid_file"
    sleep "$START_CHECK_SECONDS"
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$me: instance '$INSTANCE' exited at once; last lines of $log_file:" >&2
      tail -n 5 -- "$log_file" >&2
      [[ "$(head -n 1 -- "$pid_file" 2>/dev/null)" == "$pid" ]] && rm -f -- "$pid_file"
      exit 1
    fi
    echo "$me: started instance '$INSTANCE' (pid $pid); log: $log_file"
    ;;

  stop)
    read -r state pid why <<<"$(proc_state)" || true
    if [[ "$state" != running ]]; then
      [[ "$state" == stale ]] && echo "$me: stale pid file $pid_file (pid $pid: $why) removed; nothing signalled"
      rm -f -- "$pid_file"
      echo "$me: instance '$INSTANCE' is not running"
      exit 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$me: still running after ${STOP_TIMEOUT}s; sending SIGKILL to process group $pid"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f -- "$pid_file"
    echo "$me: stopped instance '$INSTANCE'"
    ;;

  status)
    read -r state pid why <<<"$(proc_state)" || true
    case "$state" in
      running) echo "$me: instance '$INSTANCE' is running (pid $pid); log: $log_file"; code=0 ;;
      stale) echo "$me: instance '$INSTANCE' is not running: stale pid file $pid_file (pid $pid: $why)"; code=3 ;;
      *) echo "$me: instance '$INSTANCE' is not running"; code=1 ;;
    esac
    saved_args
    if [[ ${#saved[@]} -gt 0 || ${#forward[@]} -gt 0 ]] && [[ -f "$SIDECAR_PY" ]]; then
      # relative flags mean what they meant where the instance was started
      (cd -- "$saved_cwd" 2>/dev/null || true
       "$PYTHON_BIN" "$SIDECAR_PY" status ${saved[@]+"${saved[@]}"} ${forward[@]+"${forward[@]}"}) || true
    fi
    exit "$code"
    ;;

  tail)
    mkdir -p -- "$MANAGER_DIR"
    touch -- "$log_file"
    echo "$me: following $log_file (Ctrl-C to leave)"
    exec tail -n 100 -F -- "$log_file"
    ;;

  run) require_sidecar; exec "$PYTHON_BIN" "$SIDECAR_PY" ${forward[@]+"${forward[@]}"} ;;
  once) require_sidecar; exec "$PYTHON_BIN" "$SIDECAR_PY" --once ${forward[@]+"${forward[@]}"} ;;
  sync|align) require_sidecar; exec "$PYTHON_BIN" "$SIDECAR_PY" "$command" ${forward[@]+"${forward[@]}"} ;;
  -h|--help|help) usage ;;
  *) echo "$me: unknown command '$command'" >&2; usage >&2; exit 2 ;;
esac
