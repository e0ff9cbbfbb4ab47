#!/usr/bin/env bash
# Build an abi3 wheel of aigc-kernels with aigc_kernels._C compiled against a named torch version.
#
#   make wheel                                  # against the torch of .venv, archs 8.0;9.0a + compute_90 PTX
#   TORCH=2.11.0 make wheel                     # against torch 2.11.0 (a throwaway venv .venv-torch2.11.0)
#   AIGC_KERNELS_CUDA_ARCHS=9.0a OUTDIR=bundle bash scripts/build_wheel.sh
#
# The build runs in a copy of the working tree (tracked + untracked, not ignored files) under
# build/wheel-src-<torch>, so objects compiled against one torch never mix with another's. The wheel
# (dist/ by default) is tagged cp310-abi3 (any Python >= 3.10) and requires torch==X.Y.* of the torch it
# was built against; `aigc-kernels info` shows both.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUTDIR=$(mkdir -p "${OUTDIR:-dist}" && cd "${OUTDIR:-dist}" && pwd)
export AIGC_KERNELS_CUDA_ARCHS=${AIGC_KERNELS_CUDA_ARCHS:-8.0;9.0a;compute_90}
export MAX_JOBS=${MAX_JOBS:-2}
PY=${PYTHON:-$ROOT/.venv/bin/python}
installed=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo none)
if [ -n "${TORCH:-}" ] && [ "$installed" != "$TORCH" ]; then
    VENV=${WHEEL_VENV:-$ROOT/.venv-torch$TORCH}
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -c "import torch, setuptools, wheel, ninja" 2>/dev/null \
        || "$VENV/bin/python" -m pip install -q "torch==$TORCH" "setuptools>=64" wheel ninja
    PY=$VENV/bin/python
fi
version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
SRC=$ROOT/build/wheel-src-$version
mkdir -p "$SRC"
# the working tree as git sees it (committed or not), never build outputs
git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - | (cd "$SRC" && tar -xf -)
rm -f "$SRC"/aigc_kernels/_C*.so "$SRC"/aigc_kernels/_build_info.py
echo "build_wheel: torch $version, archs $AIGC_KERNELS_CUDA_ARCHS, in $SRC"
(cd "$SRC" && AIGC_KERNELS_FORCE_CUDA_BUILD=1 "$PY" -m pip wheel -q --no-build-isolation --no-deps . -w "$OUTDIR")
ls -la "$OUTDIR"/aigc_kernels-*.whl
