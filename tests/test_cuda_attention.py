"""The CUDA C++ flash attention (csrc/attention): ops, fake impls and limits on any machine with
the extension built; every feature against the float64 reference on a GPU (marked gpu)."""

from __future__ import annotations

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R
from aigc_kernels.contracts import limits
from aigc_kernels.testing import assert_close_to_reference, fwd_bwd
from aigc_kernels.testing import check_fwd_bwd as check
from aigc_kernels.validation import make_call

HAS_GPU = torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------
# any machine: schemas, fake impls (opcheck on meta tensors), autograd wiring, limits
# ----------------------------------------------------------------------------------------------
FAKE_TESTS = ("test_schema", "test_faketensor")


def meta(*shape, dtype=torch.bfloat16, requires_grad=False):
    return torch.empty(*shape, device="meta", dtype=dtype, requires_grad=requires_grad)


def test_flash_ops_registered(cuda_ops):
    for name in ("flash_fwd", "flash_bwd", "flash_decode"):
        assert hasattr(torch.ops.aigc_kernels, name)
    schema = str(torch.ops.aigc_kernels.flash_fwd.default._schema)
    assert "Tensor? cu_seqlens_q" in schema and "int window_left" in schema


@pytest.mark.parametrize("packed", [False, True])
def test_flash_fwd_bwd_fake_path(cuda_ops, packed):
    ops = torch.ops.aigc_kernels
    if packed:
        q, k, v = meta(30, 8, 64), meta(41, 2, 64), meta(41, 2, 64)
        cu = torch.empty(4, device="meta", dtype=torch.int32)
        args = (q, k, v, cu, cu, 13, 17, 0.125, True, -1, -1)
        lse_shape = (8, 30)
    else:
        q, k, v = meta(2, 8, 37, 64), meta(2, 2, 45, 64), meta(2, 2, 45, 64)
        args = (q, k, v, None, None, 37, 45, 0.125, True, 3, -1)
        lse_shape = (2, 8, 37)
    torch.library.opcheck(ops.flash_fwd.default, args, test_utils=FAKE_TESTS)
    out, lse = ops.flash_fwd(*args)
    assert out.shape == q.shape and out.is_contiguous()
    assert lse.shape == lse_shape and lse.dtype == torch.float32
    bwd_args = (torch.empty_like(out), q, k, v, out, lse, *args[3:])
    torch.library.opcheck(ops.flash_bwd.default, bwd_args, test_utils=FAKE_TESTS)
    dq, dk, dv = ops.flash_bwd(*bwd_args)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape


def test_flash_decode_fake_path(cuda_ops):
    q, kc, vc = meta(3, 8, 1, 128), meta(3, 2, 64, 128), meta(3, 2, 64, 128)
    lens = torch.empty(3, device="meta", dtype=torch.int32)
    torch.library.opcheck(torch.ops.aigc_kernels.flash_decode.default, (q, kc, vc, lens, 1, True, 0.1, 0),
                          test_utils=FAKE_TESTS)
    assert torch.ops.aigc_kernels.flash_decode(q, kc, vc, lens, 1, True, 0.1, 0).shape == q.shape


def test_autograd_reaches_flash_bwd(cuda_ops):
    q = meta(2, 4, 19, 64, requires_grad=True)
    k, v = meta(2, 2, 23, 64, requires_grad=True), meta(2, 2, 23, 64, requires_grad=True)
    cuda_ops.attention(q, k, v, causal=True).sum().backward()  # the sum's gradient is expanded: copied for the kernel
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


def test_compile_fullgraph_traces_the_cuda_entry_point(cuda_ops):
    def f(q, k, v):
        return cuda_ops.attention(q, k, v, causal=True)

    q, k, v = meta(1, 2, 17, 32), meta(1, 2, 17, 32), meta(1, 2, 17, 32)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        gm = torch.fx.experimental.proxy_tensor.make_fx(f, tracing_mode="fake")(q, k, v)
    assert any("flash_fwd" in str(n.target) for n in gm.graph.nodes)


@pytest.mark.parametrize("kwargs,match", [
    (dict(attn_mask=torch.ones(5, 7, dtype=torch.bool)), "takes no attn_mask"),
    (dict(dropout_p=0.1), "has no dropout"),
])
def test_limits_turn_away_masks_and_dropout(kwargs, match):
    q, k = torch.randn(1, 2, 5, 64, dtype=torch.float16), torch.randn(1, 2, 7, 64, dtype=torch.float16)
    assert match in cuda_check(q, k, k, **kwargs)


def cuda_check(*args, **kwargs):
    """What the CUDA attention's check says of this call."""
    return limits.cuda_attention(make_call("attention", *args, **kwargs))


def test_limits_dtype_and_head_dims():
    k = torch.randn(1, 2, 7, 64, dtype=torch.float16)
    assert "float16 or bfloat16, got float32" in cuda_check(k.float(), k.float(), k.float())
    q48 = torch.randn(1, 2, 5, 48, dtype=torch.bfloat16)
    assert "head dims 32, 64, 96, 128, 256, got 48" in cuda_check(q48, q48, q48)
    for d in limits.CUDA_HEAD_DIMS:
        q = torch.randn(1, 2, 5, d, dtype=torch.bfloat16)
        assert cuda_check(q, q, q, causal=True, window_size=(3, 0)) is None
    q256 = torch.randn(1, 2, 5, 256, dtype=torch.bfloat16, requires_grad=True)
    assert "backward supports head dims up to 128, got 256" in cuda_check(q256, q256, q256)
    with torch.no_grad():
        assert cuda_check(q256, q256, q256) is None  # inference at d = 256 is fine


def test_limits_kvcache_needs_caches_it_can_read_in_place():
    q = torch.randn(2, 4, 1, 64, dtype=torch.float16)
    cache = torch.randn(2, 32, 2, 64, dtype=torch.float16).transpose(1, 2)  # row stride 128: fine
    lens = torch.zeros(2, dtype=torch.int32)

    def check(k, v):
        return limits.cuda_attention_with_kvcache(make_call("attention_with_kvcache", q, k, v, lens))

    assert check(cache, cache) is None
    odd = torch.randn(2, 2, 32, 65, dtype=torch.float16)[..., :64]  # row stride 65
    assert "multiples of 8" in check(odd, odd)


# ----------------------------------------------------------------------------------------------
# GPU: every feature against the float64 reference (FlashAttention error rule)
# ----------------------------------------------------------------------------------------------
gpu = pytest.mark.gpu
DTYPES = [torch.float16, torch.bfloat16]


def rand(*shape, dtype=torch.bfloat16, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to("cuda", dtype)


def attn(**kw):
    return (lambda q, k, v: ak.attention(q, k, v, backend="cuda", **kw),
            lambda q, k, v: R.attention(q, k, v, **kw))


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq,lk,causal", [(37, 45, False), (37, 45, True), (45, 37, True), (1, 33, True),
                                          (128, 128, True), (17, 1, False), (200, 333, False), (333, 200, True)])
def test_gpu_lengths_and_causal(dtype, lq, lk, causal):
    q, k, v = rand(2, 4, lq, 64, dtype=dtype), rand(2, 4, lk, 64, dtype=dtype, seed=1), \
        rand(2, 4, lk, 64, dtype=dtype, seed=2)
    check(*attn(causal=causal), [q, k, v], dtype)


@gpu
@pytest.mark.parametrize("hq,hkv,lq", [(8, 2, 19), (6, 1, 19), (32, 8, 1), (12, 4, 100)])  # GQA, MQA, packed rows
def test_gpu_gqa_mqa(hq, hkv, lq):
    q, k, v = rand(2, hq, lq, 128), rand(2, hkv, 70, 128, seed=1), rand(2, hkv, 70, 128, seed=2)
    check(*attn(causal=True), [q, k, v], torch.bfloat16)


@gpu
@pytest.mark.parametrize("d", limits.CUDA_HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_head_dims(d, dtype):
    q, k, v = rand(2, 3, 77, d, dtype=dtype), rand(2, 3, 90, d, dtype=dtype, seed=1), \
        rand(2, 3, 90, d, dtype=dtype, seed=2)
    check(*attn(causal=True), [q, k, v], dtype, grads=d <= limits.CUDA_BWD_MAX_HEAD_DIM)


@gpu
@pytest.mark.parametrize("window,causal", [((4, 0), True), ((3, 2), False), ((-1, 1), False), ((70, -1), False),
                                           ((2, 5), True)])
def test_gpu_sliding_window(window, causal):
    q, k, v = rand(1, 2, 150, 64), rand(1, 2, 170, 64, seed=1), rand(1, 2, 170, 64, seed=2)
    check(*attn(causal=causal, window_size=window), [q, k, v], torch.bfloat16)


@gpu
def test_gpu_rows_that_see_no_key_are_zero_with_finite_grads():
    q, k, v = rand(1, 2, 140, 64), rand(1, 2, 5, 64, seed=1), rand(1, 2, 5, 64, seed=2)
    out, dq, dk, dv = fwd_bwd(lambda q, k, v: ak.attention(q, k, v, causal=True, backend="cuda"), [q, k, v])
    assert torch.equal(out[:, :, :135], torch.zeros_like(out[:, :, :135]))
    assert torch.equal(dq[:, :, :135], torch.zeros_like(dq[:, :, :135]))
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))
    none = ak.attention(q, k[:, :, :0], v[:, :, :0], backend="cuda")
    assert torch.equal(none, torch.zeros_like(none))


@gpu
def test_gpu_large_scores_do_not_overflow():
    q, k, v = rand(1, 2, 64, 64, scale=30.0), rand(1, 2, 64, 64, seed=1, scale=30.0), rand(1, 2, 64, 64, seed=2)
    check(*attn(causal=True), [q, k, v], torch.bfloat16)


@gpu
def test_gpu_strided_inputs():
    qkv = rand(2, 53, 3, 4, 64)  # (B, L, 3, H, D) as a fused projection writes it
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    check(*attn(causal=True), [q, k, v], torch.bfloat16)


@gpu
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, (3, 0))])
def test_gpu_varlen(causal, window):
    cu_q = torch.tensor([0, 5, 5, 118, 119, 300], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 7, 9, 122, 130, 290], dtype=torch.int32, device="cuda")
    q, k, v = rand(300, 4, 64), rand(290, 2, 64, seed=1), rand(290, 2, 64, seed=2)

    def kernel(q, k, v):
        return ak.attention_varlen(q, k, v, cu_q, cu_k, 181, 160, causal=causal, window_size=window, backend="cuda")

    def ref(q, k, v):
        return R.attention_varlen(q, k, v, cu_q, cu_k, 181, 160, causal=causal, window_size=window)

    check(kernel, ref, [q, k, v], torch.bfloat16)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq,causal,hq,hkv,lmax", [(1, True, 4, 2, 64), (3, True, 8, 2, 300), (2, False, 4, 4, 64),
                                                   (1, True, 32, 8, 5000), (40, True, 4, 2, 200)])
def test_gpu_kvcache_decode(dtype, lq, causal, hq, hkv, lmax):
    lens = torch.tensor([5, lmax - lq, 0], dtype=torch.int32, device="cuda")
    q = rand(3, hq, lq, 128, dtype=dtype)
    kc, vc = rand(3, hkv, lmax, 128, dtype=dtype, seed=1), rand(3, hkv, lmax, 128, dtype=dtype, seed=2)
    kn, vn = rand(3, hkv, lq, 128, dtype=dtype, seed=3), rand(3, hkv, lq, 128, dtype=dtype, seed=4)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    out = ak.attention_with_kvcache(q, kc, vc, lens, k_new=kn, v_new=vn, causal=causal, backend="cuda")
    ref64 = R.attention_with_kvcache(q.double(), kc_ref.double(), vc_ref.double(), lens, k_new=kn.double(),
                                     v_new=vn.double(), causal=causal)
    lowp = R.attention_with_kvcache(q, kc_ref, vc_ref, lens, k_new=kn, v_new=vn, causal=causal)
    assert_close_to_reference(out, ref64, lowp, dtype=dtype)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


@gpu
@pytest.mark.parametrize("splits", [1, 2, 7, 64])
def test_gpu_decode_splits_agree(splits):
    q = rand(2, 8, 1, 64)
    kc, vc = rand(2, 2, 3000, 64, seed=1), rand(2, 2, 3000, 64, seed=2)
    lens = torch.tensor([2999, 1234], dtype=torch.int32, device="cuda")
    out = torch.ops.aigc_kernels.flash_decode(q, kc, vc, lens, 0, True, 0.125, splits)
    ref64 = R.attention_with_kvcache(q.double(), kc.double(), vc.double(), lens, causal=True, scale=0.125)
    lowp = R.attention_with_kvcache(q, kc, vc, lens, causal=True, scale=0.125)
    assert_close_to_reference(out, ref64, lowp, dtype=torch.bfloat16)


@gpu
def test_gpu_backward_is_bitwise_deterministic():
    q, k, v = rand(2, 8, 300, 128), rand(2, 2, 300, 128, seed=1), rand(2, 2, 300, 128, seed=2)
    fn = lambda q, k, v: ak.attention(q, k, v, causal=True, backend="cuda")  # noqa: E731
    a, b = fwd_bwd(fn, [q, k, v]), fwd_bwd(fn, [q, k, v])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@gpu
def test_gpu_cpp_checks_name_expected_and_given():
    ops = torch.ops.aigc_kernels
    q = rand(1, 2, 8, 64)
    with pytest.raises(RuntimeError, match="expected a head dim of 32, 64, 96, 128 or 256, got 48"):
        ops.flash_fwd(rand(1, 2, 8, 48), rand(1, 2, 8, 48), rand(1, 2, 8, 48), None, None, 8, 8, 1.0, False, -1, -1)
    with pytest.raises(RuntimeError, match="expected q of dtype Half or BFloat16, got Float"):
        ops.flash_fwd(q.float(), q.float(), q.float(), None, None, 8, 8, 1.0, False, -1, -1)
    with pytest.raises(RuntimeError, match=r"expected the query heads \(2\) to be a multiple"):
        ops.flash_fwd(q, rand(1, 3, 8, 64), rand(1, 3, 8, 64), None, None, 8, 8, 1.0, False, -1, -1)
    with pytest.raises(RuntimeError, match="expected k of dtype BFloat16"):
        ops.flash_fwd(q, q.half(), q, None, None, 8, 8, 1.0, False, -1, -1)
    with pytest.raises(RuntimeError, match="unit stride along the head dim"):
        ops.flash_fwd(q, rand(1, 2, 64, 8).transpose(2, 3), q, None, None, 8, 8, 1.0, False, -1, -1)


@gpu
def test_gpu_opcheck():
    ops = torch.ops.aigc_kernels
    q, k, v = rand(1, 4, 37, 64), rand(1, 2, 45, 64, seed=1), rand(1, 2, 45, 64, seed=2)
    args = (q, k, v, None, None, 37, 45, 0.125, True, -1, -1)
    torch.library.opcheck(ops.flash_fwd.default, args)
    out, lse = ops.flash_fwd(*args)
    torch.library.opcheck(ops.flash_bwd.default, (torch.randn_like(out), q, k, v, out, lse, *args[3:]))
    lens = torch.tensor([30], dtype=torch.int32, device="cuda")
    torch.library.opcheck(ops.flash_decode.default, (q[:, :, :1], k, v, lens, 0, True, 0.125, 0))


@gpu
def test_gpu_cuda_graph_capture_fwd_bwd():
    q, k, v = (rand(2, 4, 128, 64, seed=s).requires_grad_() for s in range(3))
    dout = rand(2, 4, 128, 64, seed=3)

    def step():
        out = ak.attention(q, k, v, causal=True, backend="cuda")
        return (out, *torch.autograd.grad(out, (q, k, v), dout))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        eager = step()  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(eager, captured, strict=True))


@gpu
@pytest.mark.slow
@pytest.mark.parametrize("seq", [4096, 16384])
def test_gpu_long_sequences_in_chunks(seq):
    q, k, v = rand(1, 2, seq, 128), rand(1, 2, seq, 128, seed=1), rand(1, 2, seq, 128, seed=2)
    out = ak.attention(q, k, v, causal=True, backend="cuda")
    for start in range(0, seq, seq // 4):
        rows, keys = slice(start, start + 256), slice(0, start + 256)
        ref64 = R.attention(q[:, :, rows].double(), k[:, :, keys].double(), v[:, :, keys].double(), causal=True)
        lowp = R.attention(q[:, :, rows], k[:, :, keys], v[:, :, keys], causal=True)
        assert_close_to_reference(out[:, :, rows], ref64, lowp, dtype=torch.bfloat16)


def test_gpu_tests_are_marked():
    # every GPU test above carries the gpu marker (so CPU runs skip them rather than error)
    import inspect
    import sys

    mod = sys.modules[__name__]
    for name, fn in inspect.getmembers(mod, inspect.isfunction):
        if name.startswith("test_gpu_") and name != "test_gpu_tests_are_marked":
            marks = [m.name for m in getattr(fn, "pytestmark", [])]
            assert "gpu" in marks, name


# ----------------------------------------------------------------------------------------------
# GPU, sm_90: the wgmma forward (AIGC_KERNELS_CUDA_WGMMA=1; off by default until verified here)
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def wgmma(monkeypatch):
    if not HAS_GPU or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma forward runs on compute capability 9.0")
    from aigc_kernels import _build_info

    if "9.0a" not in getattr(_build_info, "archs", ""):
        pytest.skip("the extension was built without 9.0a")
    monkeypatch.setenv("AIGC_KERNELS_CUDA_WGMMA", "1")


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("lq,lk,causal,hq,hkv", [(37, 45, False, 4, 4), (200, 333, True, 8, 2), (333, 200, True, 4, 1),
                                                 (1, 129, False, 32, 8)])
def test_gpu_wgmma_forward(wgmma, dtype, d, lq, lk, causal, hq, hkv):
    q, k, v = rand(2, hq, lq, d, dtype=dtype), rand(2, hkv, lk, d, dtype=dtype, seed=1), \
        rand(2, hkv, lk, d, dtype=dtype, seed=2)
    check(*attn(causal=causal), [q, k, v], dtype)  # the backward (mma.sync) reuses the wgmma forward's lse


@gpu
def test_gpu_wgmma_matches_mma_sync(wgmma, monkeypatch):
    q, k, v = rand(2, 8, 500, 128), rand(2, 2, 700, 128, seed=1), rand(2, 2, 700, 128, seed=2)
    with torch.no_grad():
        a = ak.attention(q, k, v, causal=True, backend="cuda")
        monkeypatch.setenv("AIGC_KERNELS_CUDA_WGMMA", "0")
        b = ak.attention(q, k, v, causal=True, backend="cuda")
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@gpu
def test_gpu_wgmma_varlen_and_decode(wgmma):
    cu_q = torch.tensor([0, 5, 5, 118, 119, 300], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 7, 9, 122, 130, 290], dtype=torch.int32, device="cuda")
    q, k, v = rand(300, 4, 64), rand(290, 2, 64, seed=1), rand(290, 2, 64, seed=2)
    check(lambda q, k, v: ak.attention_varlen(q, k, v, cu_q, cu_k, 181, 160, causal=True, backend="cuda"),
          lambda q, k, v: R.attention_varlen(q, k, v, cu_q, cu_k, 181, 160, causal=True), [q, k, v], torch.bfloat16)
    qd = rand(3, 32, 1, 128)
    kc, vc = rand(3, 8, 3000, 128, seed=1), rand(3, 8, 3000, 128, seed=2)
    lens = torch.tensor([5, 2999, 0], dtype=torch.int32, device="cuda")
    out = ak.attention_with_kvcache(qd, kc, vc, lens, backend="cuda")
    ref64 = R.attention_with_kvcache(qd.double(), kc.double(), vc.double(), lens)
    assert_close_to_reference(out, ref64, R.attention_with_kvcache(qd, kc, vc, lens), dtype=torch.bfloat16)
