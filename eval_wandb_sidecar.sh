#!/usr/bin/env bash
# Manager for eval_wandb_sidecar.py; usage() below is its help, README "In the background: the
# manager script" the full description.
#
# `start` runs this script again, detached, as `_supervise` (the supervisor of one instance): it
# starts the sidecar, waits for it, starts it again after a non-zero exit when asked to
# (--restart-on-failure), and pipes everything it and the sidecar print through the log writer
# (LOG_WRITER, run by SIDECAR_PYTHON), which appends to NAME.log and rotates it. `stop` makes
# NAME.stopping (the supervisor then starts nothing more) and signals the sidecar, never the
# supervisor (see wait_child).
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
me="eval_wandb_sidecar.sh"
SIDECAR_PY="${SIDECAR_PY:-$here/eval_wandb_sidecar.py}"
MANAGER_DIR="${MANAGER_DIR:-$here/log/eval_sidecar}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"
START_CHECK_SECONDS="${START_CHECK_SECONDS:-2}"
# The sidecar's own interpreter. PYTHON_BIN is not read here: it reaches the eval script through
# the sidecar (its --python-bin), as it always did.
if [[ -z "${SIDECAR_PYTHON:-}" && -x "$here/.venv/bin/python" ]]; then SIDECAR_PYTHON="$here/.venv/bin/python"; fi
SIDECAR_PYTHON="${SIDECAR_PYTHON:-python3}"
SIDECAR_LOG_MAX_MB="${SIDECAR_LOG_MAX_MB:-50}"
SIDECAR_LOG_KEEP="${SIDECAR_LOG_KEEP:-3}"
SIDECAR_RESTART_BACKOFF_SECONDS="${SIDECAR_RESTART_BACKOFF_SECONDS:-10}"
SIDECAR_RESTART_BACKOFF_MAX_SECONDS="${SIDECAR_RESTART_BACKOFF_MAX_SECONDS:-600}"
SIDECAR_RESTART_RESET_SECONDS="${SIDECAR_RESTART_RESET_SECONDS:-3600}"

usage() {
  cat <<'EOF'
Usage: bash eval_wandb_sidecar.sh COMMAND [--instance NAME] [flags...]

Runs eval_wandb_sidecar.py in the background and keeps track of it: one instance per NAME
(default "default"), with its files MANAGER_DIR/NAME.pid, NAME.log and NAME.args.

Commands:
  start [--restart-on-failure] [sidecar flags...]
                 start the sidecar detached, its output to NAME.log (rotated);
                 --restart-on-failure: start it again, after a backoff, when it exits non-zero
  stop           SIGTERM, SIGKILL after STOP_TIMEOUT seconds, then the evals it left running
  status         exit 0 running (or waiting to restart), 1 stopped, 3 stale pid file;
                 then the sidecar's status summary
  tail           follow the log, also across rotations (exit 2 for an unknown instance)
  list           every instance in MANAGER_DIR: state, pid, log, what it watches
  run [sidecar flags...]    the sidecar in the foreground
  once [sidecar flags...]   one pass in the foreground (the sidecar's --once), e.g. for cron
  sync|align [flags...]     the sidecar's sync or align subcommand
  help           this text

Environment:
  SIDECAR_PYTHON       the sidecar's interpreter (default: .venv/bin/python beside this script
                       if it exists, else python3)
  PYTHON_BIN           the eval script's interpreter (the sidecar's --python-bin), passed on as is
  SIDECAR_PY           the sidecar (default: eval_wandb_sidecar.py beside this script)
  MANAGER_DIR          the instances' files (default: log/eval_sidecar beside this script)
  INSTANCE             NAME when --instance is not given (default: default)
  STOP_TIMEOUT         seconds stop waits before SIGKILL (default: 30)
  START_CHECK_SECONDS  seconds start watches the new sidecar before it reports (default: 2)
  SIDECAR_LOG_MAX_MB   a log that reaches this many MiB becomes NAME.log.1 (.1 becomes .2, ...)
                       and a new one is begun (default: 50; 0: never)
  SIDECAR_LOG_KEEP     rotated logs kept (default: 3)
  SIDECAR_RESTART_BACKOFF_SECONDS      wait before the first restart (default: 10), doubled for
  SIDECAR_RESTART_BACKOFF_MAX_SECONDS  each next one up to this (default: 600), and back to the
  SIDECAR_RESTART_RESET_SECONDS        first after a run this long (default: 3600)
EOF
}

if [[ $# -lt 1 ]]; then usage >&2; exit 2; fi
command="$1"; shift
INSTANCE="${INSTANCE:-default}"
restart=no
forward=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --instance) [[ $# -ge 2 ]] || { echo "$me: --instance needs a value" >&2; exit 2; }
                INSTANCE="$2"; shift 2 ;;
    --instance=*) INSTANCE="${1#*=}"; shift ;;
    --restart-on-failure)
      if [[ "$command" != start && "$command" != _supervise ]]; then
        echo "$me: --restart-on-failure is a flag of start, not of $command" >&2; exit 2
      fi
      restart=on-failure; shift ;;
    --) if [[ "$command" == _supervise ]]; then shift; forward+=("$@"); break; fi
        forward+=("$1"); shift ;;
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

# instance_files SAFE: sets safe, pid_file, log_file, args_file, sup_file and stop_file, the names
# every function below reads, to those of instance SAFE (a sanitised name)
instance_files() {
  safe="$1"
  pid_file="$MANAGER_DIR/$safe.pid"
  log_file="$MANAGER_DIR/$safe.log"
  args_file="$MANAGER_DIR/$safe.args"
  sup_file="$MANAGER_DIR/$safe.supervisor"
  stop_file="$MANAGER_DIR/$safe.stopping"  # made by stop: the supervisor starts nothing more
}
instance_files "$(sanitise "$INSTANCE")"

require_sidecar() {
  if [[ ! -f "$SIDECAR_PY" ]]; then echo "$me: sidecar script not found: $SIDECAR_PY" >&2; exit 2; fi
}

# The packages each command needs in SIDECAR_PYTHON, as module:distribution. They are looked up
# (importlib.util.find_spec), not imported: 0.03 s instead of 0.25 s for each command; a package
# that is installed but broken fails at its import in the sidecar, with the error naming it. wandb
# is not checked for a watch: whether W&B is on is decided by flags, environment and --config,
# which the sidecar reads and checks itself.
deps_watch=(yaml:PyYAML filelock:filelock watchdog:watchdog tqdm:tqdm)
deps_sync=(yaml:PyYAML filelock:filelock tqdm:tqdm wandb:wandb)
deps_align=(yaml:PyYAML tqdm:tqdm pandas:pandas numpy:numpy swanlab:swanlab)
DEP_CHECK='
import importlib.util, sys
for spec in sys.argv[1:]:
    name, dist = spec.split(":")
    try:
        found = importlib.util.find_spec(name) is not None
    except Exception:
        found = False
    if not found:
        print("missing", name, dist)
print("checked")
'

# check_python DEP...: SIDECAR_PYTHON runs and has each DEP (one interpreter start); else one line
# saying which interpreter lacks what and how to fix it, and exit 2. Sets py to its path.
check_python() {
  local out="" rc=0 line kind name dist hint=""
  local -a missing=()
  py="$(command -v -- "$SIDECAR_PYTHON" 2>/dev/null)" || py=""
  if [[ -z "$py" ]]; then
    echo "$me: SIDECAR_PYTHON '$SIDECAR_PYTHON' is not found: set SIDECAR_PYTHON to a Python interpreter" \
         "that has the packages of $here/requirements.txt" >&2
    exit 2
  fi
  out="$("$py" -c "$DEP_CHECK" "$@" 2>&1 < /dev/null)" || rc=$?
  if [[ $rc -ne 0 || "${out##*$'\n'}" != checked ]]; then
    local said="no output"; [[ -z "$out" ]] || said="$(head -n 1 <<<"$out")"
    echo "$me: SIDECAR_PYTHON $py did not run (exit $rc: $said): set SIDECAR_PYTHON to a" \
         "Python interpreter that has the packages of $here/requirements.txt" >&2
    exit 2
  fi
  while IFS= read -r line; do
    read -r kind name dist <<<"$line"
    [[ "$kind" != missing ]] || missing+=("'$name' ($dist)")
  done <<<"$out"
  if [[ -n "${PYTHON_BIN:-}" ]]; then hint=" (PYTHON_BIN is only the eval script's interpreter)"; fi
  if [[ ${#missing[@]} -gt 0 ]]; then
    local what="the Python package ${missing[0]}" them=it
    if [[ ${#missing[@]} -gt 1 ]]; then
      what="the Python packages $(printf '%s, ' "${missing[@]:0:${#missing[@]}-1}")"
      what="${what%, } and ${missing[-1]}"; them=them
    fi
    echo "$me: $py lacks $what: run $py -m pip install -r $here/requirements.txt," \
         "or set SIDECAR_PYTHON to the interpreter of a venv that has $them$hint" >&2
    exit 2
  fi
}

# to_ms NAME VALUE: VALUE (seconds, decimals allowed) in milliseconds; else one line naming NAME, exit 2
to_ms() {
  if ! [[ "$2" =~ ^([0-9]+)(\.([0-9]*))?$ ]]; then
    echo "$me: $1 must be a number of seconds, got '$2'" >&2; exit 2
  fi
  local frac="${BASH_REMATCH[3]}000"
  printf '%s' $(( 10#${BASH_REMATCH[1]} * 1000 + 10#${frac:0:3} ))
}
# secs MS [DIGITS]: milliseconds as seconds for a person, DIGITS (default 3) decimals at most and no
# trailing zeros: 10, 0.25, 2.5
secs() {
  local t
  t="$(printf '%d.%03d' $(( $1 / 1000 )) $(( $1 % 1000 )))"
  t="${t:0:${#t}-3+${2:-3}}"
  t="${t%"${t##*[!0]}"}"; t="${t%.}"
  printf '%s' "$t"
}
ms_text() { printf '%d.%03d' $(( $1 / 1000 )) $(( $1 % 1000 )); }  # milliseconds as seconds, for sleep
# now_ms: the wall clock in milliseconds
now_ms() {
  if (( BASH_VERSINFO[0] >= 5 )); then local t="${EPOCHREALTIME/[.,]/}"; printf '%s' $(( 10#$t / 1000 ))
  else date +%s%3N; fi
}

# check_settings: the log and restart settings are valid (else one line naming the variable, exit 2)
check_settings() {
  if ! [[ "$SIDECAR_LOG_MAX_MB" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    echo "$me: SIDECAR_LOG_MAX_MB must be a number of MiB (0: never rotate), got '$SIDECAR_LOG_MAX_MB'" >&2; exit 2
  fi
  if ! [[ "$SIDECAR_LOG_KEEP" =~ ^[0-9]+$ ]] || (( 10#$SIDECAR_LOG_KEEP > 1000 )); then
    echo "$me: SIDECAR_LOG_KEEP must be a whole number from 0 to 1000, got '$SIDECAR_LOG_KEEP'" >&2; exit 2
  fi
  to_ms START_CHECK_SECONDS "$START_CHECK_SECONDS" > /dev/null || exit 2
  local name ms
  for name in SIDECAR_RESTART_BACKOFF_SECONDS SIDECAR_RESTART_BACKOFF_MAX_SECONDS; do
    ms="$(to_ms "$name" "${!name}")" || exit 2
    if (( ms == 0 )); then echo "$me: $name must be more than 0 seconds, got '${!name}'" >&2; exit 2; fi
  done
  if ! [[ "$SIDECAR_RESTART_RESET_SECONDS" =~ ^[0-9]+$ ]]; then
    echo "$me: SIDECAR_RESTART_RESET_SECONDS must be a whole number of seconds, got" \
         "'$SIDECAR_RESTART_RESET_SECONDS'" >&2
    exit 2
  fi
}

# ticks_of PID: sets ticks to when the process started (field 22 of /proc/PID/stat, clock ticks
# after boot), empty when it has exited. A pid and its start time name one process until the
# machine restarts; a reused pid starts later. Builtins only, no subshell: the supervisor's signal
# trap uses it, and a trap that forks while it interrupts a `wait` can leave bash waiting for ever
# for a child whose exit it has already taken.
ticks_of() {
  local stat=""
  ticks=""
  IFS= read -r -d '' stat 2>/dev/null < "/proc/$1/stat" || true
  [[ -n "$stat" ]] || return 0
  local -a f
  read -r -a f <<<"${stat##*) }"   # fields from 3 on: the name in field 2 may hold spaces and ')'
  [[ "${f[0]:-}" != Z ]] || return 0   # a zombie has exited
  ticks="${f[19]:-}"
}
start_ticks() { local ticks; ticks_of "$1"; printf '%s' "$ticks"; }  # ticks_of, printed
boot_id() { cat /proc/sys/kernel/random/boot_id 2>/dev/null || true; }

# same_process PID TICKS: PID is still the process that started at TICKS
same_process() { local ticks; [[ -n "$1" && -n "$2" ]] && ticks_of "$1" && [[ "$ticks" == "$2" ]]; }

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

# read_record FILE: sets rec_pid, rec_ticks, rec_boot and rec_info from a pid or supervisor file:
# the pid, then "start=TICKS boot=BOOT_ID" as read when that process started, then (supervisor
# file) its key=value line. Returns 1 without a file, 2 when its pid is unreadable.
read_record() {
  rec_pid="" rec_ticks="" rec_boot="" rec_info=""
  [[ -f "$1" ]] || return 1
  local record=""
  { IFS= read -r rec_pid; IFS= read -r record; IFS= read -r rec_info; } 2>/dev/null < "$1" || true
  [[ "$rec_pid" =~ ^[0-9]+$ ]] || return 2
  [[ "$record" =~ (^|\ )start=([0-9]+) ]] && rec_ticks="${BASH_REMATCH[2]}"
  [[ "$record" =~ (^|\ )boot=([^ ]*) ]] && rec_boot="${BASH_REMATCH[2]}"
  return 0
}

# sup_read: this instance's supervisor file. Sets sup_pid and sup_ticks (empty without one),
# sup_alive (1 while that supervisor runs), and from its record sup_restart (on-failure or no),
# sup_restarts (how many restarts), sup_state (running, waiting or exited), about the sidecar's
# last exit sup_ended (its pid), sup_code (its exit status) and sup_at (when, epoch seconds), and
# sup_next (epoch seconds of the restart it waits for)
sup_read() {
  sup_pid="" sup_ticks="" sup_alive=0 sup_restart=no sup_restarts=0 sup_state="" sup_ended="" sup_code=""
  sup_at="" sup_next=""
  read_record "$sup_file" || return 0
  sup_pid="$rec_pid" sup_ticks="$rec_ticks"
  if [[ "$rec_boot" == "$(boot_id)" ]] && same_process "$rec_pid" "$rec_ticks"; then sup_alive=1; fi
  local kv
  local -a kvs=()
  read -r -a kvs <<<"$rec_info"
  for kv in ${kvs[@]+"${kvs[@]}"}; do
    case "$kv" in
      restart=*) sup_restart="${kv#*=}" ;;
      restarts=*) sup_restarts="${kv#*=}" ;;
      state=*) sup_state="${kv#*=}" ;;
      ended=*) sup_ended="${kv#*=}" ;;
      code=*) sup_code="${kv#*=}" ;;
      at=*) sup_at="${kv#*=}" ;;
      next=*) sup_next="${kv#*=}" ;;
    esac
  done
}

when() { printf '%(%Y-%m-%d %H:%M:%S)T' "$1"; }  # epoch seconds as local time

# exit_text CODE: how a process with exit status CODE ended (bash's 128+N for signal N)
exit_text() {
  if (( $1 > 128 )); then echo "was killed by signal $(( $1 - 128 )) (SIG$(kill -l $(( $1 - 128 )) 2>/dev/null || echo '?'))"
  else echo "exited with code $1"; fi
}

# sidecar_state: the pid file's verdict: "running PID TICKS", "stale PID <why>" or "stopped". The
# pid file's first line is the pid, its second "start=TICKS boot=BOOT_ID" as read when it was
# started: a pid whose process started at another time, or on another boot, is another process
# (pid reuse).
sidecar_state() {
  local rc=0 ticks=""
  read_record "$pid_file" || rc=$?
  if (( rc == 1 )); then echo stopped; return; fi
  if (( rc == 2 )); then echo "stale ? unreadable pid file"; return; fi
  local pid="$rec_pid"
  ticks="$(start_ticks "$pid")"
  if [[ -z "$ticks" ]]; then echo "stale $pid process is gone"; return; fi
  if [[ -n "$rec_ticks$rec_boot" ]]; then
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

# proc_state: sidecar_state, and "restarting SUPERVISOR_PID" when the sidecar is not running but its
# supervisor is (it waits to restart it). A stale reason says how the sidecar ended, when its
# supervisor saw it.
proc_state() {
  local s
  s="$(sidecar_state)"
  case "$s" in running\ *) echo "$s"; return ;; esac
  sup_read
  if (( sup_alive )) && [[ "$sup_state" != exited ]]; then echo "restarting $sup_pid"; return; fi
  local -a w
  read -r -a w <<<"$s"
  if [[ "${w[0]}" == stale && -n "$sup_code" && "$sup_ended" == "${w[1]}" ]]; then
    echo "$s; it $(exit_text "$sup_code") at $(when "$sup_at")"; return
  fi
  echo "$s"
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
  [[ -n "$1" && -n "$2" ]] || return 0
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

# The log writer (run by SIDECAR_PYTHON, the program on stdin, the output on fd 3). Standard
# library only.
LOG_WRITER='
import os, signal, sys

# Appends what arrives on fd 3 to the log. Once the log has reached the cap, at the end of a line,
# it is renamed .1 (.1 to .2, ... up to keep) and a new one begun: a rename loses nothing, and
# `tail -F` follows the name. Signals are ignored: it ends when the last writer of the pipe (the
# sidecar, its supervisor) has closed it, so even the last lines of a killed sidecar are kept.
for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, signal.SIG_IGN)
path, cap, keep = sys.argv[1], int(float(sys.argv[2]) * 1048576), int(sys.argv[3])

def open_log():
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    st = os.fstat(fd)
    if st.st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a line cut short (a writer killed): ours start on a new one
                os.write(fd, b"\n")
    return fd, st, os.fstat(fd).st_size

def rotate():
    if keep < 1:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    for i in range(keep, 0, -1):
        try:
            os.replace(path if i == 1 else "%s.%d" % (path, i - 1), "%s.%d" % (path, i))
        except FileNotFoundError:
            pass

def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

fd, st, size = open_log()
ends_line, lost, error = True, 0, ""
while True:
    data = os.read(3, 1 << 16)
    if not data:
        break
    try:
        try:
            now = os.stat(path)
            moved = (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)
        except FileNotFoundError:
            moved = True
        if moved:  # renamed or removed by someone else: a new log under the name
            os.close(fd)
            fd, st, size = open_log()
            ends_line = True
        if lost:
            note = "===== %d bytes of output were lost: the log could not be written (%s)\n" % (lost, error)
            write_all(fd, note.encode())
            size, lost = size + len(note), 0
        while data:
            if cap and size >= cap and ends_line:
                os.close(fd)
                rotate()
                fd, st, size = open_log()
            nl = -1
            if cap and size >= cap:  # the line that reached the cap ends first
                nl = data.find(b"\n")
            elif cap and size + len(data) > cap:
                nl = data.find(b"\n", cap - size - 1)
            chunk = data[:nl + 1] if nl >= 0 else data
            write_all(fd, chunk)
            size += len(chunk)
            ends_line = chunk.endswith(b"\n")
            data = data[len(chunk):]
    except OSError as exc:  # a full disk: count what is dropped, say so once it can be written
        lost, error = lost + len(data), exc.strerror or str(exc)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            pass
'

# log_line TEXT: a line of the manager's own in the log, among the sidecar's
log_line() { printf '===== %(%Y-%m-%d %H:%M:%S)T %s\n' -1 "$*"; }

# sup_write STATE: the supervisor's record (supervisor file), replaced atomically: readers see the
# old record or the new one
sup_write() {
  printf '%s\nstart=%s boot=%s\nrestart=%s restarts=%s state=%s ended=%s code=%s at=%s next=%s\n' \
    "$$" "$my_ticks" "$my_boot" "$restart" "$restarts" "$1" "$ended" "$code" "$ended_at" "$next_at" \
    > "$sup_file.new.$$" && mv -f -- "$sup_file.new.$$" "$sup_file"
}

# wait_child: sets code to how the sidecar ($child) ended. The supervisor has no signal traps: a
# trapped signal that interrupts a `wait` just as the child exits can make bash 5.2 lose that exit
# and wait for ever; `stop` tells the supervisor by its stop file instead, and signals the sidecar.
wait_child() {
  code=0
  { wait "$child" || code=$?; } 2>/dev/null  # without bash's "Killed" notice in the log
}

# pause MS: sleep MS milliseconds, in steps, until then or until `stop` makes the stop file
pause() {
  local left=$1 step
  while (( left > 0 )) && [[ ! -e "$stop_file" ]]; do
    step=$(( left < 200 ? left : 200 ))
    sleep "$(ms_text "$step")"
    left=$(( left - step ))
  done
}

# supervise: the detached supervisor of one instance (see the top of this file); `start` runs it
# with the forwarded flags, in a session of its own, its output appended to the log
supervise() {
  set +e  # it must outlive any failing command
  child="" child_ticks="" ended="" code="" ended_at="" next_at="" restarts=0
  my_ticks="$(start_ticks "$$")"; my_boot="$(boot_id)"
  local writer first_ms delay_ms max_ms reset_ms check_ms started ran how
  exec > >(exec "$SIDECAR_PYTHON" - "$log_file" "$SIDECAR_LOG_MAX_MB" "$SIDECAR_LOG_KEEP" 3<&0 <<<"$LOG_WRITER" \
             > /dev/null 2>> "$log_file") 2>&1
  writer=$!
  first_ms="$(to_ms x "$SIDECAR_RESTART_BACKOFF_SECONDS")"
  max_ms="$(to_ms x "$SIDECAR_RESTART_BACKOFF_MAX_SECONDS")"
  (( first_ms <= max_ms )) || first_ms=$max_ms
  delay_ms=$first_ms
  reset_ms=$(( 10#$SIDECAR_RESTART_RESET_SECONDS * 1000 ))
  check_ms="$(to_ms x "$START_CHECK_SECONDS")"
  while :; do
    if (( restarts == 0 )); then log_line "start: $SIDECAR_PY${forward[*]+ ${forward[*]}}"
    else log_line "restart $restarts: $SIDECAR_PY${forward[*]+ ${forward[*]}}"; fi
    setsid "$SIDECAR_PYTHON" "$SIDECAR_PY" ${forward[@]+"${forward[@]}"} < /dev/null &
    child=$!
    child_ticks="$(start_ticks "$child")"  # read at once: the pid is this process until it exits
    printf '%s\nstart=%s boot=%s\n' "$child" "$child_ticks" "$my_boot" > "$pid_file.new.$$" \
      && mv -f -- "$pid_file.new.$$" "$pid_file"
    # a stop that read the pid file before it named this sidecar signals the one before
    if [[ -e "$stop_file" ]]; then kill -TERM "$child" 2>/dev/null; fi
    next_at=""
    sup_write running
    started="$(now_ms)"
    wait_child
    ran=$(( $(now_ms) - started ))
    ended="$child"
    printf -v ended_at '%(%s)T' -1
    how="the sidecar (pid $child) $(exit_text "$code") after $(secs "$ran" 1) s"
    if [[ -e "$stop_file" ]]; then log_line "$how: stopped"; break; fi
    if (( code == 0 )) || [[ "$restart" != on-failure ]]; then log_line "$how"; break; fi
    if (( restarts == 0 && ran < check_ms )); then  # start reports it: a bad command line, not bad luck
      log_line "$how, within START_CHECK_SECONDS of its start: not restarted"; break
    fi
    if (( ran >= reset_ms )); then delay_ms=$first_ms; fi  # it ran long enough: a new failure, not the same
    restarts=$(( restarts + 1 ))
    next_at=$(( ended_at + (delay_ms + 999) / 1000 ))
    log_line "$how; restart $restarts in $(secs "$delay_ms") s"
    sup_write waiting
    pause "$delay_ms"
    if [[ -e "$stop_file" ]]; then log_line "stopped before restart $restarts"; break; fi
    delay_ms=$(( delay_ms * 2 < max_ms ? delay_ms * 2 : max_ms ))
    (( delay_ms > 0 )) || delay_ms=1
  done
  # a clean end leaves no pid file: status then says "not running", not "stale"
  if [[ "$code" == 0 && "$(head -n 1 -- "$pid_file" 2>/dev/null)" == "$child" ]]; then rm -f -- "$pid_file"; fi
  next_at=""
  sup_write exited
  exec >&- 2>&-  # the writer ends when the sidecar's copies of the pipe are closed too
  for _ in $(seq 100); do [[ -n "$(start_ticks "$writer")" ]] || break; sleep 0.05; done
  exit 0
}

# tail_since_start: the log's last lines, from the last start on (restarts included), at most 10
tail_since_start() {
  tail -n 10 -- "$log_file" 2>/dev/null | awk '/^===== [0-9-]+ [0-9:]+ start: /{n=0} {l[n++]=$0} END{for(i=0;i<n;i++)print l[i]}'
}

case "$command" in
  start)
    require_sidecar
    check_settings
    check_python "${deps_watch[@]}"
    mkdir -p -- "$MANAGER_DIR"
    # One start (or stop) at a time per instance: concurrent starts must not lose track of the sidecar.
    exec 9>>"$MANAGER_DIR/$safe.start.lock"
    flock 9
    read -r state pid why <<<"$(proc_state)" || true
    if [[ "$state" == running ]]; then
      echo "$me: instance '$INSTANCE' is already running (pid $pid); log: $log_file"
      exit 0
    fi
    if [[ "$state" == restarting ]]; then
      echo "$me: instance '$INSTANCE' is already running: its supervisor (pid $pid) waits to restart it; log: $log_file"
      exit 0
    fi
    if [[ "$state" == stale ]]; then
      echo "$me: removing stale pid file $pid_file (pid $pid: $why)"
    fi
    rm -f -- "$pid_file" "$sup_file" "$stop_file"
    printf '%s\0' "$PWD" ${forward[@]+"${forward[@]}"} > "$args_file"
    sup_flags=(); [[ "$restart" != on-failure ]] || sup_flags=(--restart-on-failure)
    SIDECAR_PYTHON="$py" EVAL_SIDECAR_INSTANCE="$safe" \
      SIDECAR_PY="$SIDECAR_PY" MANAGER_DIR="$MANAGER_DIR" SIDECAR_LOG_MAX_MB="$SIDECAR_LOG_MAX_MB" \
      SIDECAR_LOG_KEEP="$SIDECAR_LOG_KEEP" SIDECAR_RESTART_BACKOFF_SECONDS="$SIDECAR_RESTART_BACKOFF_SECONDS" \
      SIDECAR_RESTART_BACKOFF_MAX_SECONDS="$SIDECAR_RESTART_BACKOFF_MAX_SECONDS" \
      SIDECAR_RESTART_RESET_SECONDS="$SIDECAR_RESTART_RESET_SECONDS" \
      setsid nohup bash "${BASH_SOURCE[0]}" _supervise --instance "$safe" \
        ${sup_flags[@]+"${sup_flags[@]}"} -- ${forward[@]+"${forward[@]}"} \
        >> "$log_file" 2>&1 < /dev/null 9>&- &
    sup=$!
    sup_ticks="$(start_ticks "$sup")"
    deadline=$((SECONDS + 30))  # the supervisor writes the pid file as soon as the sidecar runs
    until [[ -f "$pid_file" ]] || ! same_process "$sup" "$sup_ticks" || (( SECONDS >= deadline )); do sleep 0.05; done
    pid=""; ticks=""
    if read_record "$pid_file"; then pid="$rec_pid"; ticks="$rec_ticks"; fi
    sleep "$START_CHECK_SECONDS"
    if ! same_process "$pid" "$ticks"; then
      : > "$stop_file"  # no restart of this one: what start reports is a failure to start
      termed=""
      for _ in $(seq 200); do  # the supervisor ends at once, after its log writer
        same_process "$sup" "$sup_ticks" || break
        if read_record "$pid_file" && [[ "$rec_pid" != "$pid" && "$rec_pid" != "$termed" ]] \
           && same_process "$rec_pid" "$rec_ticks"; then
          kill -TERM "$rec_pid" 2>/dev/null || true; termed="$rec_pid"  # a restart begun meanwhile
        fi
        sleep 0.05
      done
      if same_process "$sup" "$sup_ticks"; then kill -KILL "$sup" 2>/dev/null || true; fi
      rm -f -- "$stop_file" "$pid_file"
      sup_read
      if [[ "$sup_code" == 0 && "$sup_ended" == "$pid" ]]; then
        echo "$me: instance '$INSTANCE' finished at once: the sidecar (pid $pid) exited with code 0; log: $log_file"
        exit 0
      fi
      how="exited at once"
      if [[ -n "$sup_code" && "$sup_ended" == "$pid" ]]; then how="exited at once: the sidecar $(exit_text "$sup_code")"; fi
      echo "$me: instance '$INSTANCE' $how; last lines of $log_file:" >&2
      tail_since_start >&2
      exit 1
    fi
    if [[ "$restart" == on-failure ]]; then
      echo "$me: started instance '$INSTANCE' (pid $pid; restarted on failure by supervisor pid $sup); log: $log_file"
    else
      echo "$me: started instance '$INSTANCE' (pid $pid); log: $log_file"
    fi
    ;;

  _supervise)  # internal: what `start` runs detached
    supervise
    ;;

  stop)
    # not while a start of this instance is under way (every start made the lock file)
    if [[ -f "$MANAGER_DIR/$safe.start.lock" ]]; then exec 9>>"$MANAGER_DIR/$safe.start.lock"; flock 9; fi
    read -r state pid why <<<"$(proc_state)" || true
    if [[ "$state" != running && "$state" != restarting ]]; then
      if [[ "$state" == stale ]]; then
        echo "$me: instance '$INSTANCE' is not running: stale pid file $pid_file (pid $pid: $why)" \
             "removed; nothing signalled"
      else
        echo "$me: instance '$INSTANCE' is not running"
      fi
      rm -f -- "$pid_file" "$sup_file" "$stop_file"
      exit 0
    fi
    sup_read
    first_pid=""; first_ticks=""
    if [[ "$state" == running ]]; then first_pid="$pid"; first_ticks="$why"; fi  # why: its start time
    # The supervisor is not signalled (see wait_child): the stop file tells it to start nothing
    # more, and each sidecar the pid file names from now on gets SIGTERM (once).
    if (( sup_alive )); then : > "$stop_file"; fi
    # current_sidecar: the sidecar the pid file names now (the supervisor may have started another)
    current_sidecar() { cur_pid=""; cur_ticks=""; if read_record "$pid_file"; then cur_pid="$rec_pid"; cur_ticks="$rec_ticks"; fi; }
    termed=""
    term_new() {
      current_sidecar
      if [[ -n "$cur_pid" && " $termed " != *" $cur_pid "* ]] && same_process "$cur_pid" "$cur_ticks"; then
        kill -TERM "$cur_pid" 2>/dev/null || true; termed+=" $cur_pid"
      fi
    }
    alive() {
      same_process "$cur_pid" "$cur_ticks" || same_process "$first_pid" "$first_ticks" \
        || { (( sup_alive )) && same_process "$sup_pid" "$sup_ticks"; }
    }
    if [[ -n "$first_pid" ]]; then kill -TERM "$first_pid" 2>/dev/null || true; termed=" $first_pid"; fi
    deadline=$((SECONDS + STOP_TIMEOUT))
    term_new
    while alive && (( SECONDS < deadline )); do sleep 0.1; term_new; done
    if alive; then
      for p in "$cur_pid:$cur_ticks" "$first_pid:$first_ticks"; do
        if same_process "${p%%:*}" "${p#*:}"; then
          echo "$me: still running after ${STOP_TIMEOUT}s; sending SIGKILL to process group ${p%%:*}"
          kill -KILL -- "-${p%%:*}" 2>/dev/null || kill -KILL "${p%%:*}" 2>/dev/null || true
        fi
      done
      for _ in $(seq 50); do (( sup_alive )) && same_process "$sup_pid" "$sup_ticks" || break; sleep 0.1; done
      if (( sup_alive )) && same_process "$sup_pid" "$sup_ticks"; then kill -KILL "$sup_pid" 2>/dev/null || true; fi
    fi
    # Local evals run in sessions of their own, beyond the group: a killed sidecar leaves them
    # holding the GPUs, and even a clean stop may leave a child that slipped away. Each carries
    # its sidecar's pid and start time in its environment; Slurm jobs do not, so the jobs a Slurm
    # sidecar leaves running on purpose are never touched.
    stop_evals "$first_pid" "$first_ticks"
    current_sidecar
    [[ "$cur_pid" == "$first_pid" ]] || stop_evals "$cur_pid" "$cur_ticks"
    rm -f -- "$pid_file" "$sup_file" "$stop_file"
    echo "$me: stopped instance '$INSTANCE'"
    ;;

  status)
    read -r state pid why <<<"$(proc_state)" || true
    sup_read
    case "$state" in
      running) echo "$me: instance '$INSTANCE' is running (pid $pid); log: $log_file"; code=0 ;;
      restarting)
        line="$me: instance '$INSTANCE' is waiting to restart the sidecar (supervisor pid $sup_pid)"
        if [[ -n "$sup_code" ]]; then line+=": it $(exit_text "$sup_code") at $(when "$sup_at")"; fi
        if [[ -n "$sup_next" ]]; then line+="; restart $sup_restarts at $(when "$sup_next")"; fi
        echo "$line; log: $log_file"; code=0 ;;
      stale) echo "$me: instance '$INSTANCE' is not running: stale pid file $pid_file (pid $pid: $why)"; code=3 ;;
      *) line="$me: instance '$INSTANCE' is not running"
         if [[ "$sup_state" == exited && -n "$sup_code" ]]; then
           line+=" (the sidecar, pid $sup_ended, $(exit_text "$sup_code") at $(when "$sup_at"))"
         fi
         echo "$line"; code=1 ;;
    esac
    if [[ "$sup_restart" == on-failure && "$state" == running ]]; then
      if (( sup_alive )); then
        line="$me: restarted on failure by supervisor pid $sup_pid: $sup_restarts restart$( (( sup_restarts == 1 )) || echo s)"
        if [[ -n "$sup_code" ]]; then line+=", the last after the sidecar $(exit_text "$sup_code") at $(when "$sup_at")"; fi
        echo "$line"
      else
        echo "$me: not restarted on failure any more: its supervisor (pid $sup_pid) is gone"
      fi
    fi
    saved_args
    if [[ ${#saved[@]} -gt 0 || ${#forward[@]} -gt 0 ]] && [[ -f "$SIDECAR_PY" ]]; then
      ( check_python "${deps_watch[@]}"
        # relative flags mean what they meant where the instance was started
        cd -- "$saved_cwd" 2>/dev/null || true
        "$py" "$SIDECAR_PY" status ${saved[@]+"${saved[@]}"} ${forward[@]+"${forward[@]}"} ) || true
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

  run) require_sidecar; check_python "${deps_watch[@]}"; exec "$py" "$SIDECAR_PY" ${forward[@]+"${forward[@]}"} ;;
  once) require_sidecar; check_python "${deps_watch[@]}"; exec "$py" "$SIDECAR_PY" --once ${forward[@]+"${forward[@]}"} ;;
  sync) require_sidecar; check_python "${deps_sync[@]}"; exec "$py" "$SIDECAR_PY" sync ${forward[@]+"${forward[@]}"} ;;
  align) require_sidecar; check_python "${deps_align[@]}"; exec "$py" "$SIDECAR_PY" align ${forward[@]+"${forward[@]}"} ;;
  -h|--help|help) usage ;;
  *) echo "$me: unknown command '$command'" >&2; usage >&2; exit 2 ;;
esac
