#!/usr/bin/env bash
# Manager for eval_wandb_sidecar.py: run it in the background, stop it, see it.
#
#   bash eval_wandb_sidecar.sh start  [--instance NAME] [sidecar flags...]   detached watch
#   bash eval_wandb_sidecar.sh stop   [--instance NAME]    SIGTERM; SIGKILL after STOP_TIMEOUT; its evals too
#   bash eval_wandb_sidecar.sh status [--instance NAME]    exit 0 running, 1 stopped, 3 stale pid file
#   bash eval_wandb_sidecar.sh tail   [--instance NAME]    follow its log (exit 2 for an unknown instance)
#   bash eval_wandb_sidecar.sh list                        every instance in MANAGER_DIR: state, pid, log, roots
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

usage() {  # the comment block at the top: line 2 up to the first line that is not a comment
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
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

# sanitise NAME: the instance's file name stem; anything outside [A-Za-z0-9_.-] becomes '_'
sanitise() {
  local s
  s="$(printf '%s' "$1" | LC_ALL=C tr -c 'A-Za-z0-9_.-' '_')"
  s="${s#.}"; [[ -n "$s" ]] || s="default"
  printf '%s' "$s"
}

# instance_files SAFE: sets safe, pid_file, log_file and args_file, the names every function below
# reads, to those of instance SAFE (a sanitised name)
instance_files() {
  safe="$1"
  pid_file="$MANAGER_DIR/$safe.pid"
  log_file="$MANAGER_DIR/$safe.log"
  args_file="$MANAGER_DIR/$safe.args"
}
instance_files "$(sanitise "$INSTANCE")"

require_sidecar() {
  if [[ ! -f "$SIDECAR_PY" ]]; then echo "$me: sidecar script not found: $SIDECAR_PY" >&2; exit 2; fi
}

# start_ticks PID: when the process started (field 22 of /proc/PID/stat, clock ticks after boot).
# A pid and its start time name one process until the machine restarts; a reused pid starts later.
start_ticks() {
  local stat
  stat="$(cat -- "/proc/$1/stat" 2>/dev/null)" || return 0
  local -a f
  read -r -a f <<<"${stat##*) }"   # fields from 3 on: the name in field 2 may hold spaces and ')'
  [[ "${f[0]:-}" != Z ]] || return 0   # a zombie has exited
  printf '%s' "${f[19]:-}"
}
boot_id() { cat /proc/sys/kernel/random/boot_id 2>/dev/null || true; }

# same_process PID TICKS: PID is still the process that started at TICKS
same_process() { [[ -n "$2" && "$(start_ticks "$1")" == "$2" ]]; }

# whose PID: what a pid that is not ours belongs to, for the stale message
whose() {
  local other
  other="$(tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | sed -n 's/^EVAL_SIDECAR_INSTANCE=//p' | head -n 1)"
  if [[ -n "$other" && "$other" != "$safe" ]]; then echo "instance '$other'"
  elif [[ -n "$other" ]] || tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "$SIDECAR_PY"; then
    echo "another eval_wandb_sidecar.py process"
  else echo "another program"; fi
}

# started_here PID: for a pid file of an older manager (the pid alone): PID runs this sidecar with
# the flags, in the folder, this instance was started with (its .args file)
started_here() {
  [[ -f "$args_file" ]] || return 1
  local -a cmd=()
  local a i cwd
  while IFS= read -r -d '' a; do cmd+=("$a"); done 2>/dev/null < "/proc/$1/cmdline" || return 1
  cwd="$(readlink -- "/proc/$1/cwd" 2>/dev/null)" || return 1
  saved_args
  [[ ${#cmd[@]} -ge 2 && "${cmd[1]}" == "$SIDECAR_PY" && "$cwd" == "$saved_cwd" ]] || return 1
  (( ${#cmd[@]} - 2 == ${#saved[@]} )) || return 1
  for ((i = 0; i < ${#saved[@]}; i++)); do [[ "${cmd[i + 2]}" == "${saved[i]}" ]] || return 1; done
}

# proc_state: prints "running PID TICKS", "stale PID <why>" or "stopped". The pid file's first line
# is the pid, its second "start=TICKS boot=BOOT_ID" as read when it was started: a pid whose
# process started at another time, or on another boot, is another process (pid reuse).
proc_state() {
  [[ -f "$pid_file" ]] || { echo stopped; return; }
  local pid="" record="" ticks="" rec_ticks="" rec_boot=""
  { IFS= read -r pid; IFS= read -r record; } 2>/dev/null < "$pid_file" || true
  if ! [[ "$pid" =~ ^[0-9]+$ ]]; then echo "stale ? unreadable pid file"; return; fi
  ticks="$(start_ticks "$pid")"
  if [[ -z "$ticks" ]]; then echo "stale $pid process is gone"; return; fi
  if [[ -n "$record" ]]; then
    [[ "$record" =~ (^|\ )start=([0-9]+) ]] && rec_ticks="${BASH_REMATCH[2]}"
    [[ "$record" =~ (^|\ )boot=([^ ]*) ]] && rec_boot="${BASH_REMATCH[2]}"
    if [[ -z "$rec_ticks" ]]; then echo "stale $pid unreadable start record in the pid file"; return; fi
    if [[ "$rec_boot" != "$(boot_id)" ]]; then
      echo "stale $pid written before the machine restarted; now belongs to $(whose "$pid")"; return
    fi
    if [[ "$ticks" != "$rec_ticks" ]]; then
      echo "stale $pid now belongs to $(whose "$pid"), started after this pid file"; return
    fi
    echo "running $pid $ticks"; return
  fi
  # the pid alone (an older manager wrote it): the command line and folder must be this instance's
  if ! started_here "$pid"; then echo "stale $pid now belongs to $(whose "$pid")"; return; fi
  echo "running $pid $ticks"
}

# owned_evals PID TICKS: "PID TICKS" of each process whose environment names the sidecar that
# started at TICKS as PID as its owner: every local eval of that sidecar and their children, also
# those in sessions of their own. The sidecar puts an attempt tag ending in -PID-TICKS in each
# eval's environment (EVAL_SIDECAR_ATTEMPT). One grep reads every environment.
owned_evals() {
  local f p t
  while IFS= read -r f; do
    p="${f#/proc/}"; p="${p%/environ}"
    [[ "$p" =~ ^[0-9]+$ && "$p" != "$$" ]] || continue
    t="$(start_ticks "$p")"
    [[ -z "$t" ]] || echo "$p $t"
  done < <(grep -lzxE -- "EVAL_SIDECAR_ATTEMPT=[0-9]+-[0-9a-f]+-$1-$2" /proc/[0-9]*/environ \
             2>/dev/null || true)
}

# stop_evals PID TICKS: SIGTERM each process owned_evals finds (once each, also those that appear
# meanwhile), up to STOP_TIMEOUT seconds for them to end, then SIGKILL to what is left
stop_evals() {
  local found p t deadline
  local -A termed=()
  found="$(owned_evals "$1" "$2")"
  [[ -n "$found" ]] || return 0
  echo "$me: stopping the eval processes the sidecar left running (pids $(cut -d ' ' -f 1 <<<"$found" | paste -sd ' '))"
  deadline=$((SECONDS + STOP_TIMEOUT))
  while [[ -n "$found" ]] && (( SECONDS < deadline )); do
    while read -r p t; do
      [[ -z "${termed[$p:$t]:-}" ]] || continue
      termed[$p:$t]=1
      same_process "$p" "$t" && kill -TERM "$p" 2>/dev/null || true
    done <<<"$found"
    sleep 0.2
    found="$(owned_evals "$1" "$2")"
  done
  for _ in 1 2 3; do  # again while a dying process still starts children
    [[ -n "$found" ]] || return 0
    echo "$me: eval processes still running after ${STOP_TIMEOUT}s; sending SIGKILL to pids" \
         "$(cut -d ' ' -f 1 <<<"$found" | paste -sd ' ')"
    while read -r p t; do same_process "$p" "$t" && kill -KILL "$p" 2>/dev/null || true; done <<<"$found"
    sleep 0.2
    found="$(owned_evals "$1" "$2")"
  done
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

# known_instances: the name of each instance with a .pid, .args or .log file in MANAGER_DIR, one a
# line, sorted bytewise. A file whose stem the manager would not write (sanitise changes it) names
# no instance: `--instance` could not reach it.
known_instances() {
  local f n
  local -a names=()
  for f in "$MANAGER_DIR"/*.pid "$MANAGER_DIR"/*.args "$MANAGER_DIR"/*.log; do
    [[ -f "$f" ]] || continue  # also an unmatched pattern, left as it is
    n="${f##*/}"; n="${n%.*}"
    [[ "$(sanitise "$n")" == "$n" ]] && names+=("$n")
  done
  [[ ${#names[@]} -eq 0 ]] || printf '%s\n' "${names[@]}" | LC_ALL=C sort -u
}

# watch_summary: what the saved flags (saved_args) point the sidecar at: its --sft-root, or each
# --models-root of a fleet, as given (relative to the folder it was started in); else its --config
# file; "-" when the flags name none of them
watch_summary() {
  local -a roots=() config=()
  local i a
  for ((i = 0; i < ${#saved[@]}; i++)); do
    a="${saved[i]}"
    case "$a" in
      --sft-root|--models-root|--config)
        if (( i + 1 < ${#saved[@]} )); then
          if [[ "$a" == --config ]]; then config+=("$a ${saved[i + 1]}"); else roots+=("$a ${saved[i + 1]}"); fi
          i=$((i + 1))
        fi ;;
      --config=*) config+=("--config ${a#*=}") ;;
      --sft-root=*|--models-root=*) roots+=("${a%%=*} ${a#*=}") ;;
    esac
  done
  [[ ${#roots[@]} -gt 0 ]] || roots=(${config[@]+"${config[@]}"})
  [[ ${#roots[@]} -gt 0 ]] || roots=(-)
  printf '%s' "${roots[*]}"
}

# pad TEXT WIDTH: TEXT and spaces up to WIDTH characters (printf's widths count bytes)
pad() { printf '%s%*s' "$1" $(( $2 - ${#1} )) ''; }

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
    EVAL_SIDECAR_INSTANCE="$safe" setsid nohup "$PYTHON_BIN" "$SIDECAR_PY" ${forward[@]+"${forward[@]}"} \
      >> "$log_file" 2>&1 < /dev/null 9>&- &
    pid=$!
    ticks="$(start_ticks "$pid")"  # read at once: the pid is this process until it exits
    printf '%s\nstart=%s boot=%s\n' "$pid" "$ticks" "$(boot_id)" > "$pid_file.new.$$"
    mv -f -- "$pid_file.new.$$" "$pid_file"
    sleep "$START_CHECK_SECONDS"
    if ! same_process "$pid" "$ticks"; then
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
      if [[ "$state" == stale ]]; then
        echo "$me: instance '$INSTANCE' is not running: stale pid file $pid_file (pid $pid: $why)" \
             "removed; nothing signalled"
      else
        echo "$me: instance '$INSTANCE' is not running"
      fi
      rm -f -- "$pid_file"
      exit 0
    fi
    ticks="$why"  # proc_state's third word for a running instance: its start time
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while same_process "$pid" "$ticks" && (( SECONDS < deadline )); do sleep 0.2; done
    if same_process "$pid" "$ticks"; then
      echo "$me: still running after ${STOP_TIMEOUT}s; sending SIGKILL to process group $pid"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    # Local evals run in sessions of their own, beyond the group: a killed sidecar leaves them
    # holding the GPUs, and even a clean stop may leave a child that slipped away. Each carries
    # its sidecar's pid and start time in its environment; Slurm jobs do not, so the jobs a Slurm
    # sidecar leaves running on purpose are never touched.
    stop_evals "$pid" "$ticks"
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
    if [[ ! -e "$pid_file" && ! -e "$log_file" && ! -e "$args_file" ]]; then
      echo "$me: no instance '$INSTANCE' in MANAGER_DIR $MANAGER_DIR (no $safe.pid, $safe.log or $safe.args); see: bash $me list" >&2
      exit 2
    fi
    mkdir -p -- "$MANAGER_DIR"
    touch -- "$log_file"
    echo "$me: following $log_file (Ctrl-C to leave)"
    exec tail -n 100 -F -- "$log_file"
    ;;

  list)
    if [[ ${#forward[@]} -gt 0 ]]; then echo "$me: list takes no flags (got '${forward[0]}')" >&2; exit 2; fi
    names=()
    while IFS= read -r n; do names+=("$n"); done < <(known_instances)
    if [[ ${#names[@]} -eq 0 ]]; then echo "$me: no instances are known in MANAGER_DIR $MANAGER_DIR"; exit 0; fi
    cols=(INSTANCE STATE PID LOG WATCHES)
    rows=()  # cols[0..3] of each row, then its last column
    for n in "${names[@]}"; do
      instance_files "$n"
      read -r state pid why <<<"$(proc_state)" || true  # judged as status judges it
      [[ "$state" != stopped && "$pid" != "?" ]] || pid=-
      log=-; [[ ! -e "$log_file" ]] || log="$log_file"
      if [[ "$state" == stale ]]; then watches="(stale pid file: $why)"
      elif [[ -f "$args_file" ]] && saved_args 2>/dev/null; then watches="$(watch_summary)"
      else watches=-; fi
      rows+=("$n" "$state" "$pid" "$log" "$watches")
    done
    widths=(0 0 0 0)
    for ((r = 0; r < ${#rows[@]}; r += 5)); do
      for c in 0 1 2 3; do
        cell="${rows[r + c]}"; (( ${#cell} <= widths[c] )) || widths[c]=${#cell}
      done
    done
    for c in 0 1 2 3; do (( ${#cols[c]} <= widths[c] )) || widths[c]=${#cols[c]}; done
    for ((r = -5; r < ${#rows[@]}; r += 5)); do
      if (( r < 0 )); then line=("${cols[@]}"); else line=("${rows[@]:r:5}"); fi
      for c in 0 1 2 3; do pad "${line[c]}" "${widths[c]}"; printf '  '; done
      printf '%s\n' "${line[4]}"
    done
    ;;

  run) require_sidecar; exec "$PYTHON_BIN" "$SIDECAR_PY" ${forward[@]+"${forward[@]}"} ;;
  once) require_sidecar; exec "$PYTHON_BIN" "$SIDECAR_PY" --once ${forward[@]+"${forward[@]}"} ;;
  sync|align) require_sidecar; exec "$PYTHON_BIN" "$SIDECAR_PY" "$command" ${forward[@]+"${forward[@]}"} ;;
  -h|--help|help) usage ;;
  *) echo "$me: unknown command '$command'" >&2; usage >&2; exit 2 ;;
esac
