#!/usr/bin/env bash
# The whole suite N times in a row (default 3) while a CPU-heavy process runs beside it, as on a
# busy 2-core machine: a test that leans on a second or less of timing slack fails here.
# Usage: bash scripts/busy_suite.sh [RUNS] [pytest args...]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-3}"
shift || true
# One busy-looping process per core minus one: the suite and the hog compete for the CPU.
hogs=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
pids=()
for _ in $(seq 1 "$hogs"); do
    python3 -c "while True: pass" &
    pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
failed=0
for run in $(seq 1 "$runs"); do
    started=$(date +%s)
    if bash scripts/test.sh -q -p no:cacheprovider "$@"; then
        echo "busy run $run of $runs: passed in $(( $(date +%s) - started )) s"
    else
        echo "busy run $run of $runs: FAILED after $(( $(date +%s) - started )) s"
        failed=1
    fi
done
exit "$failed"
