#!/usr/bin/env bash
# Stand-in for evaluate_sft_3b.sh used by the tests. Same contract as the real script (CKPT_LIST,
# cwd = repo root, writes results/<model_parent>/<checkpoint>/metrics.json). Its behaviour per
# checkpoint is read from $STANDIN_CONTROL/<checkpoint>.mode (default "ok"); every call is
# appended to $STANDIN_CONTROL/calls.log and its environment dumped to env-<checkpoint>.json.
set -u
ctl="${STANDIN_CONTROL:?}"
name="$(basename -- "$CKPT_LIST")"
parent="$(basename -- "$(dirname -- "$CKPT_LIST")")"
echo "$name" >> "$ctl/calls.log"
ls -A -- "$CKPT_LIST" > "$ctl/seen-$name" 2>/dev/null || true
printf '%s %s\n' "$(date +%s.%N)" "${CUDA_LIST:-}" >> "$ctl/starts-$name"
"$STANDIN_PY" -c 'import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], "w"))' "$ctl/env-$name.json"
mode=ok
[[ -f "$ctl/$name.mode" ]] && mode="$(cat -- "$ctl/$name.mode")"
out="results/$parent/$name"
mkdir -p -- "$out"
calls="$(grep -c -x -- "$name" "$ctl/calls.log")"
step="${name#checkpoint-}"
write_metrics() {
  date +%s.%N >> "$ctl/ends-$name"
  "$STANDIN_PY" - "$out/metrics.json" "$step" "$calls" <<'PY'
import json, sys
path, step, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
hr = round(step / 100000 + calls / 1000, 4)
json.dump({"HR@1": round(hr / 4, 4), "HR@10": hr, "NDCG@10": round(hr / 2, 4),
           "Instruments": {"HR@10": hr}, "calls": calls}, open(path, "w"))
PY
}
case "$mode" in
  ok) write_metrics ;;
  fail) echo "stand-in: failing on purpose" >&2; exit 3 ;;
  slow-fail) sleep "${STANDIN_SLOW:-1}"; date +%s.%N >> "$ctl/ends-$name"; exit 3 ;;
  slow-once) if [[ "$calls" -le 1 ]]; then echo started > "$ctl/started-$name"; sleep 600; fi; write_metrics ;;
  fail-once) if [[ "$calls" -le 1 ]]; then exit 4; fi; write_metrics ;;
  no-metrics) rm -f -- "$out/metrics.json"; exit 0 ;;
  keep) exit 0 ;;
  invalid-json) printf '{"HR@10": 0.1,' > "$out/metrics.json" ;;
  no-numbers) printf '{"HR@10": "n/a", "flag": true}' > "$out/metrics.json" ;;
  sleep) echo started > "$ctl/started-$name"; sleep 600 & echo "$!" > "$ctl/grandchild-$name"; wait ;;
  exec-sleep) echo "$$" > "$ctl/grandchild-$name"; echo started > "$ctl/started-$name"
              exec "$STANDIN_PY" -c 'import time; time.sleep(600)' ;;
  ignore-term) trap '' TERM; echo started > "$ctl/started-$name"; sleep 600 & echo "$!" > "$ctl/grandchild-$name"; wait ;;
  slow) sleep "${STANDIN_SLOW:-1}"; write_metrics ;;
  slow-bg) sleep 300 & echo "$!" > "$ctl/grandchild-$name"; echo started > "$ctl/started-$name"
           sleep "${STANDIN_SLOW:-1}"; write_metrics ;;
  setsid-bg) setsid sleep 300 & echo started > "$ctl/started-$name"; sleep "${STANDIN_SLOW:-1}"; write_metrics ;;
  delete-self) rm -rf -- "$CKPT_LIST"; exit 1 ;;
  *) echo "unknown mode $mode" >&2; exit 9 ;;
esac
