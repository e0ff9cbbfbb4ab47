"""The CUDA flash attention kernels, run on the CPU: their own source compiled by the host C++
compiler against csrc/attention/emulate.h (threads as fibers; ldmatrix, mma.sync, shuffles and
__syncthreads emulated per the PTX ISA) and compared with a float64 reference.

This checks the kernels' index arithmetic, GQA packing, masks, varlen offsets, split-K merge, the
two-kernel backward, and the wgmma forward's shared-memory layouts against its descriptors, on a
machine without a GPU. It does not check the hardware (timing,
real concurrency, the PTX semantics themselves): the gpu-marked tests in test_cuda_attention.py do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "emulation" / "flash_emulate.cpp"


def _cuda_include() -> Path | None:
    spec = importlib.util.spec_from_file_location("aigc_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    home = setup.find_cuda_home()
    if home and (Path(home) / "include" / "cuda_fp16.h").exists():
        return Path(home) / "include"
    return None


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    include = _cuda_include()
    if cxx is None or include is None:
        why = "needs a host C++ compiler and the CUDA toolkit headers"
        if os.environ.get("AIGC_KERNELS_REQUIRE_EXT") == "1":
            raise RuntimeError(why)
        pytest.skip(why)
    exe = tmp_path_factory.mktemp("emu") / "flash_emulate"
    cmd = [cxx, "-std=c++17", "-O2", "-DAIGC_FLASH_EMULATE", f"-I{ROOT / 'csrc'}", f"-I{include}",
           "-Wno-unknown-pragmas", str(SOURCE), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


# (mode, dtype, D, B, Hq, Hkv, Lq, Lk, causal, window_left, window_right, packed, splits)
CASES = [
    ("fwd", "f16", 64, 1, 2, 2, 37, 45, 0, -1, -1, 0, 1),
    ("fwd", "bf16", 128, 2, 4, 2, 37, 45, 1, -1, -1, 0, 1),  # GQA
    ("fwd", "f16", 256, 1, 2, 1, 40, 70, 1, -1, -1, 0, 1),  # MQA, d = 256 (forward only)
    ("fwd", "f16", 96, 1, 6, 2, 130, 20, 1, -1, -1, 0, 1),  # Lq > Lk causal: rows that see no key; 2 row blocks
    ("fwd", "bf16", 32, 2, 4, 4, 1, 150, 1, -1, -1, 0, 1),
    ("fwd", "f16", 64, 1, 8, 2, 100, 100, 0, 7, 3, 0, 1),  # sliding window; packed GQA rows span heads
    ("bwd", "f16", 64, 1, 2, 2, 37, 45, 0, -1, -1, 0, 1),
    ("bwd", "f16", 64, 2, 4, 2, 37, 45, 1, -1, -1, 0, 1),
    ("bwd", "bf16", 128, 1, 4, 1, 45, 37, 1, -1, -1, 0, 1),
    ("bwd", "f16", 32, 2, 2, 2, 70, 90, 0, 5, 3, 0, 1),
    ("bwd", "f16", 96, 1, 2, 2, 33, 33, 1, 4, -1, 0, 1),
    ("bwd", "bf16", 128, 1, 2, 2, 150, 130, 0, -1, -1, 0, 1),  # several key and query blocks
    ("bwd", "f16", 64, 3, 4, 2, 50, 60, 1, -1, -1, 1, 1),  # varlen (lengths drawn, some 0)
    ("fwd", "bf16", 128, 4, 4, 4, 70, 90, 0, -1, -1, 1, 1),
    ("decode", "f16", 128, 3, 8, 2, 1, 300, 1, -1, -1, 0, 3),
    ("decode", "bf16", 64, 2, 4, 4, 3, 500, 1, -1, -1, 0, 7),
    ("decode", "f16", 256, 2, 4, 1, 1, 200, 0, -1, -1, 0, 2),
    ("decode", "bf16", 128, 2, 32, 8, 1, 257, 1, -1, -1, 0, 1),
    # the sm_90a wgmma forward (descriptors over the no-swizzle core-matrix layouts)
    ("fwdw", "f16", 64, 1, 2, 2, 37, 45, 0, -1, -1, 0, 1),
    ("fwdw", "bf16", 128, 2, 8, 2, 150, 130, 1, -1, -1, 0, 1),
    ("fwdw", "f16", 128, 3, 4, 2, 50, 60, 1, -1, -1, 1, 1),
    ("fwdw", "bf16", 64, 1, 4, 4, 100, 100, 0, 7, 3, 0, 1),
    ("decodew", "f16", 128, 3, 8, 2, 1, 300, 1, -1, -1, 0, 3),
]
REL = {"f16": 2e-3, "bf16": 1.6e-2}  # ~2 ulps of the largest reference value (inputs are rounded too)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_flash_kernels_under_emulation(emulator, case):
    mode, dtype = case[0], case[1]
    args = [str(a) for a in case] + ["11"]
    res = subprocess.run([str(emulator), *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    errs = json.loads(res.stdout)
    names = ["out"] + (["lse"] if not mode.startswith("decode") else []) + (["dq", "dk", "dv"] if mode == "bwd" else [])
    for name in names:
        err, ref = errs[name]
        bound = REL[dtype] * max(ref, 1.0) + 1e-3
        assert err <= bound, f"{name}: max |kernel - float64| = {err:.3g} > {bound:.3g} (reference max {ref:.3g})"
