#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser and decoder (fuzz/targets.py, atheris).
#
#   scripts/fuzz.sh [SECONDS] [RUNS] [TARGET...]
#
# Each target runs until SECONDS (default 60) or RUNS executions (default: no
# limit) are used up, whichever comes first. The seed corpus of each target is
# built from the test fixtures into build/fuzz/corpus/TARGET (inputs the fuzzer
# found are kept there and reused by the next run); crashes and hangs are written
# to build/fuzz/artifacts/TARGET/ and logs to build/fuzz/logs/TARGET.log.
# Prints one line per target: executions, crashes, hangs. Exit status: 0 when
# no target crashed or hung, 1 otherwise, 2 when fuzzing cannot run here.
# FUZZ_TIMEOUT (default 30) is the seconds one input may take before it counts
# as a hang; FUZZ_JOBS (default 1) how many targets run at once.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-60}"
RUNS="${2:-0}"
shift $(( $# < 2 ? $# : 2 ))
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
TIMEOUT="${FUZZ_TIMEOUT:-30}"
JOBS="${FUZZ_JOBS:-1}"
OUT=build/fuzz

if ! "$PY" -c "import atheris" 2>/dev/null; then
  echo "fuzz.sh: atheris is not installed (bash scripts/install.sh --test)" >&2
  exit 2
fi
if [ $# -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <("$PY" -m fuzz list | cut -f1)
fi

run_one() {
  local t=$1
  local corpus=$OUT/corpus/$t art=$OUT/artifacts/$t/ log=$OUT/logs/$t.log
  mkdir -p "$corpus" "$art" "$OUT/logs"
  "$PY" -m fuzz seeds "$t" "$corpus" >/dev/null || { echo "$t: seeds failed" >&2; return 1; }
  local args=(-max_total_time="$SECONDS_EACH" -timeout="$TIMEOUT" -print_final_stats=1
              -artifact_prefix="$art" -rss_limit_mb=4096)
  [ "$RUNS" -gt 0 ] && args+=(-runs="$RUNS")
  "$PY" -m fuzz run "$t" "$corpus" "${args[@]}" >"$log" 2>&1
  local rc=$?
  local execs crashes hangs
  execs=$(grep -o 'number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  crashes=0; hangs=0
  if grep -q 'libFuzzer: timeout' "$log"; then
    hangs=1
  elif [ $rc -ne 0 ]; then
    crashes=1
  fi
  printf '%-14s executions %10s  crashes %d  hangs %d  (exit %d; %s)\n' \
    "$t" "${execs:-0}" "$crashes" "$hangs" "$rc" "$log"
  [ $rc -eq 0 ]
}

fail=0
running=0
for t in "${TARGETS[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || fail=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || fail=1
  running=$((running - 1))
done
if [ $fail -ne 0 ]; then
  echo "fuzz.sh: crashes or hangs: inputs in $OUT/artifacts/ (replay: $PY -m fuzz repro TARGET FILE)"
fi
exit $fail
