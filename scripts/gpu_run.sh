#!/usr/bin/env bash
# Everything a GPU session should run, in one go (e.g. one call of the device tool):
# build the extension against the installed torch, info + check, the GPU tests,
# compute-sanitizer memcheck/racecheck over the CUDA-op tests, and the benchmarks.
# Writes under $OUT (default ./gpu-out): logs, bench.json, check.json, plots/.
#
#   OUT=/some/dir BENCH_ARGS="--quick" bash scripts/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export AIGC_KERNELS_CUDA_ARCHS=${AIGC_KERNELS_CUDA_ARCHS:-9.0a}
export MAX_JOBS=${MAX_JOBS:-16}
PY=${PYTHON:-python3}
step() { echo; echo "=== $* ($(date +%T))"; }

step build
AIGC_KERNELS_FORCE_CUDA_BUILD=1 $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
    || { tail -50 "$OUT/build.log"; exit 1; }
step info
$PY -m aigc_kernels.cli info 2>&1 | tee "$OUT/info.txt"
step check
$PY -m aigc_kernels.cli check --json "$OUT/check.json" > "$OUT/check.txt" 2>&1; echo "check exit $?"; tail -3 "$OUT/check.txt"
step "GPU tests"
$PY -m pytest -m gpu -q -p no:cacheprovider ${PYTEST_ARGS:-} > "$OUT/gpu-tests.log" 2>&1; echo "pytest exit $?"
grep -E "passed|failed|error" "$OUT/gpu-tests.log" | tail -15
if [ -z "${SKIP_SANITIZER:-}" ]; then
    step "compute-sanitizer memcheck + racecheck"
    OUT="$OUT" bash scripts/sanitize.sh ${SANITIZE_ARGS:-}; echo "sanitize exit $?"
fi
step bench
$PY -m aigc_kernels.cli bench ${BENCH_ARGS:-} --json "$OUT/bench.json" --plots "$OUT/plots" > "$OUT/bench.txt" 2>&1
echo "bench exit $?"; tail -5 "$OUT/bench.txt"
