#!/usr/bin/env bash
# Everything a GPU session should run, in one go (e.g. one call of the device tool):
# build the extension against the installed torch, info + check, the test suite,
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
step "tests (the whole suite, kernels on the GPU; one config per kernel instead of autotuning)"
AIGC_KERNELS_AUTOTUNE=0 $PY -m pytest -q -p no:cacheprovider --maxfail=25 ${PYTEST_ARGS:-} > "$OUT/tests.log" 2>&1
echo "pytest exit $?"; grep -E "passed|failed|error" "$OUT/tests.log" | tail -15
if [ -z "${SKIP_SANITIZER:-}" ]; then
    step "compute-sanitizer memcheck + racecheck"
    OUT="$OUT" bash scripts/sanitize.sh ${SANITIZE_ARGS:-}; echo "sanitize exit $?"
fi
step bench
$PY -m aigc_kernels.cli bench ${BENCH_ARGS:-} --json "$OUT/bench.json" --plots "$OUT/plots" > "$OUT/bench.txt" 2>&1
echo "bench exit $?"; tail -5 "$OUT/bench.txt"
