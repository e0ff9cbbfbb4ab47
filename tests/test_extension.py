"""The compiled extension aigc_kernels._C on a machine without a GPU.

The chain schema (C++) -> kernel (CPU here; CUDA on a GPU) -> fake impl (Python) -> opcheck is
proven here with the one small op the foundation ships, kvcache_append.

CI sets AIGC_KERNELS_REQUIRE_EXT=1: there a missing extension is a failure, not a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import aigc_kernels as ak
from aigc_kernels import _ext
from aigc_kernels import reference as R

BUILT, WHY = _ext.status()
if not BUILT:
    if os.environ.get("AIGC_KERNELS_REQUIRE_EXT") == "1":
        raise RuntimeError(f"AIGC_KERNELS_REQUIRE_EXT=1 but {WHY}")
    pytest.skip(WHY, allow_module_level=True)
import aigc_kernels.cuda  # noqa: E402, F401  (the fake impls and autograd of the C++ ops)


def make(device="cpu", dtype=torch.float32, b=2, h=3, lmax=16, lnew=2, d=8):
    g = torch.Generator().manual_seed(0)
    kc = torch.randn(b, h, lmax, d, generator=g).to(device, dtype)
    vc = torch.randn(b, h, lmax, d, generator=g).to(device, dtype)
    kn = torch.randn(b, h, lnew, d, generator=g).to(device, dtype)
    vn = torch.randn(b, h, lnew, d, generator=g).to(device, dtype)
    lens = torch.tensor([3, lmax - lnew][:b] + [0] * max(0, b - 2), dtype=torch.int32, device=device)
    return kc, vc, kn, vn, lens


def test_import_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-c", "import aigc_kernels._C as c; print(c.__name__)"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "aigc_kernels._C"


def test_import_aigc_kernels_loads_neither_C_nor_triton():
    code = "import sys, aigc_kernels; print('aigc_kernels._C' in sys.modules, 'triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_build_info_recorded():
    info = _ext.build_info()
    assert info["archs"] and info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]


def test_schema_registered():
    schema = str(torch.ops.aigc_kernels.kvcache_append.default._schema)
    assert "Tensor(a!) k_cache" in schema and "Tensor(b!) v_cache" in schema and "-> ()" in schema
    assert torch._C._dispatch_has_kernel_for_dispatch_key("aigc_kernels::kvcache_append", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("aigc_kernels::kvcache_append", "CPU")


def test_cpu_kernel_matches_reference():
    kc, vc, kn, vn, lens = make()
    kr, vr = kc.clone(), vc.clone()
    torch.ops.aigc_kernels.kvcache_append(kc, vc, kn, vn, lens)
    R.kvcache_append(kr, vr, kn, vn, lens)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)


def test_cpu_kernel_strided_inputs():
    kc, vc, kn, vn, lens = make(d=8)
    kn_t = kn.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous view, same values
    kr, vr = kc.clone(), vc.clone()
    torch.ops.aigc_kernels.kvcache_append(kc, vc, kn_t, vn, lens)
    R.kvcache_append(kr, vr, kn, vn, lens)
    assert torch.equal(kc, kr)


def test_cpp_checks_name_expected_and_given():
    kc, vc, kn, vn, lens = make()
    with pytest.raises(RuntimeError, match=r"expected cache_seqlens of dtype int32, got Long"):
        torch.ops.aigc_kernels.kvcache_append(kc, vc, kn, vn, lens.long())
    with pytest.raises(RuntimeError, match=r"expected every tensor in dtype Float \(k_cache's\), got Half"):
        torch.ops.aigc_kernels.kvcache_append(kc, vc, kn.half(), vn, lens)
    with pytest.raises(RuntimeError, match=r"needs 0 <= cache_seqlens <= 14"):
        torch.ops.aigc_kernels.kvcache_append(kc, vc, kn, vn, lens + 1)
    with pytest.raises(RuntimeError, match=r"expected k_new of shape \(2, 3, Lnew, 8\)"):
        torch.ops.aigc_kernels.kvcache_append(kc, vc, kn[:, :2], vn[:, :2], lens)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_opcheck(device):
    kc, vc, kn, vn, lens = make()
    args = [t.to(device) for t in (kc, vc, kn, vn, lens)]
    if device == "meta":
        tests = ("test_schema", "test_faketensor")  # a meta tensor has no data to run a kernel on
    else:
        tests = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.aigc_kernels.kvcache_append.default, args, test_utils=tests)


def test_fake_tensor_mode_and_meta():
    kc, vc, kn, vn, lens = make()
    with FakeTensorMode() as mode:
        fk = [mode.from_tensor(t) for t in (kc, vc, kn, vn, lens)]
        assert torch.ops.aigc_kernels.kvcache_append(*fk) is None
    meta = [t.to("meta") for t in (kc, vc, kn, vn, lens)]
    torch.ops.aigc_kernels.kvcache_append(*meta)


def test_compile_fullgraph_through_the_op():
    kc, vc, kn, vn, lens = make()
    kr, vr = kc.clone(), vc.clone()

    def step(kc, vc, kn, vn, lens):
        torch.ops.aigc_kernels.kvcache_append(kc, vc, kn, vn, lens)
        return kc.sum() + vc.sum()

    out = torch.compile(step, fullgraph=True, backend="aot_eager")(kc, vc, kn, vn, lens)
    R.kvcache_append(kr, vr, kn, vn, lens)
    assert torch.equal(kc, kr)
    torch.testing.assert_close(out, kr.sum() + vr.sum())


def test_public_api_on_cpu_does_not_reach_the_cuda_kernel():
    kc, vc, kn, vn, lens = make()
    with pytest.raises(ak.BackendError, match="needs CUDA tensors"):
        ak.kvcache_append(kc, vc, kn, vn, lens, backend="cuda")
