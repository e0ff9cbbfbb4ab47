#!/usr/bin/env bash
# Run the GPU test suite under compute-sanitizer memcheck and racecheck; both must be clean.
#
#   bash scripts/sanitize.sh [pytest args...]      e.g.  bash scripts/sanitize.sh -k "norm or kvcache"
#
# Exit status: non-zero if either tool reports an error or a test fails. Logs: sanitizer-*.log
# (in $OUT when set). Triton kernels are JIT-compiled: the first run of each is slow under the tools.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
PY=${PYTHON:-python3}
command -v compute-sanitizer >/dev/null 2>&1 || { echo "sanitize: compute-sanitizer is not on PATH"; exit 2; }
status=0
for tool in memcheck racecheck; do
    log="$OUT/sanitizer-$tool.log"
    echo "=== compute-sanitizer --tool $tool"
    AIGC_KERNELS_AUTOTUNE=0 compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 20 \
        "$PY" -m pytest -q -p no:cacheprovider -m "gpu and not slow" "$@" > "$log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY|passed|failed" "$log" | tail -3
    echo "compute-sanitizer $tool exit $rc"
    [ $rc -eq 0 ] || status=1
done
exit $status
