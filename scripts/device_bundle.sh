#!/usr/bin/env bash
# Build, on this CPU machine, everything a GPU window needs that can be built ahead, into bundle/
# (git-ignored; sent along with the source, under 64 MiB together):
#   - aigc_kernels-*-cp310-abi3-*.whl with _C compiled for the GPU image's torch (2.11.0+cu130) and sm_90a,
#     checked here by loading it beside that torch and running the C++ ops' fake-tensor opchecks;
#   - the wheels of anchors the image lacks: liger-kernel (pure Python, no dependencies pulled).
#
#   make device-bundle                         # TORCH=2.11.0 TRITON=3.6.0 ARCHS=9.0a
#   BUNDLE_VENV=/path/to/venv make device-bundle   # reuse a venv that has that torch
#
# On the GPU, scripts/gpu_run.sh unpacks _C from the wheel into the working tree and falls back to
# building it with nvcc only if it does not load.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TORCH=${TORCH:-2.11.0}
TRITON=${TRITON:-3.6.0}
BUNDLE=$ROOT/bundle
VENV=${BUNDLE_VENV:-$ROOT/.venv-torch$TORCH}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import torch, triton, setuptools, wheel, ninja, numpy, rich" 2>/dev/null \
    || "$VENV/bin/python" -m pip install -q "torch==$TORCH" "triton==$TRITON" "setuptools>=64" wheel ninja numpy rich
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
WHEEL_VENV=$VENV TORCH=$TORCH PYTHON=$VENV/bin/python OUTDIR=$BUNDLE AIGC_KERNELS_CUDA_ARCHS=${ARCHS:-9.0a} \
    bash scripts/build_wheel.sh
"$VENV/bin/python" -m pip download -q --no-deps -d "$BUNDLE" liger-kernel \
    || echo "device_bundle: liger-kernel could not be downloaded (no package index?): the bench skips it"
echo "device_bundle: checking the wheel beside torch $TORCH (no nvcc needed)"
CHECK=$(mktemp -d)
"$VENV/bin/python" -m zipfile -e "$BUNDLE"/aigc_kernels-*.whl "$CHECK"
(cd "$CHECK" && PATH=/usr/bin:/bin PYTHONPATH="$CHECK" "$VENV/bin/python" "$ROOT/scripts/check_extension.py")
rm -rf "$CHECK"
du -sh "$BUNDLE"
size=$(du -sm "$BUNDLE" | cut -f1)
[ "$size" -lt 48 ] || { echo "device_bundle: $size MiB is too large to send along"; exit 1; }
echo "device_bundle: ready ($(ls "$BUNDLE" | tr '\n' ' '))"
