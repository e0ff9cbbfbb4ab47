#!/usr/bin/env bash
# Create .venv and install aigc-kernels with its dev extras, compiling the CUDA extension when a
# CUDA toolkit is present (a GPU is not needed). Idempotent: skips work that is already done.
#
# torch goes in first, and the package is then built with --no-build-isolation, so the
# extension is compiled against the torch it will run with (see setup.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch, setuptools, wheel, ninja" 2>/dev/null; then
    echo "setup: installing torch and the build tools (the CUDA build of torch is several GB)"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "torch>=2.6" "setuptools>=64" wheel ninja
fi

# Reinstall only when what the install depends on changed (sources of _C, build files, archs).
stamp="$VENV/.aigc-kernels-installed"
digest=$( { cat setup.py pyproject.toml; find csrc -type f | sort | xargs cat;
            echo "${AIGC_KERNELS_CUDA_ARCHS:-}${AIGC_KERNELS_SKIP_CUDA_BUILD:-}"; } | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && "$PY" -c "import aigc_kernels" 2>/dev/null \
        && { [ -n "${AIGC_KERNELS_SKIP_CUDA_BUILD:-}" ] || ls aigc_kernels/_C*.so >/dev/null 2>&1 \
             || ! command -v nvcc >/dev/null; }; then
    echo "setup: up to date ($VENV)"
    exit 0
fi
echo "setup: installing aigc-kernels[dev] (compiling aigc_kernels._C when nvcc is present; ~1-2 min on 2 cores)"
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --no-build-isolation -e ".[dev]"
echo "$digest" > "$stamp"
