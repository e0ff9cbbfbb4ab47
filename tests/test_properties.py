"""Property tests (hypothesis) over random shapes, dtypes, masks and strides, for every op on every
kernel backend that runs here, against the float64 reference.

Profiles: "ci" (default; few examples, for the interpreter) and "gpu" (HYPOTHESIS_PROFILE=gpu;
many examples, larger shapes).
"""

from __future__ import annotations

import os

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R
from aigc_kernels.testing import assert_close_to_reference
from aigc_kernels.validation import make_call

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("gpu", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [b for b in ("triton", "cuda") if b in ak.available_backends()]
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
BIG = os.environ.get("HYPOTHESIS_PROFILE") == "gpu"
pytestmark = [pytest.mark.interpreter if DEVICE == "cpu" else pytest.mark.gpu,
              pytest.mark.skipif(not BACKENDS, reason="no kernel backend here")]


def tensor(shape, dtype, seed, *, transpose_last=False, scale=1.0):
    """A random tensor, optionally laid out with a non-unit last-dim stride."""
    g = torch.Generator().manual_seed(seed)
    if transpose_last and len(shape) >= 2:
        t = (torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g) * scale).transpose(-1, -2)
    else:
        t = torch.randn(*shape, generator=g) * scale
    return t.to(DEVICE, dtype)


def supported(op, backend, *args, **kwargs) -> bool:
    return backend in ak.backend.implementations(op)[op] and \
        ak.backend._REGISTRY[op][backend].why_not(make_call(op, *args, **kwargs)) is None


def compare(op_fn, ref_fn, tensors, dtype, grads=True):
    def run(fn, ts):
        leaves = [t.detach().clone().requires_grad_(grads and t.is_floating_point()) for t in ts]
        out = fn(*leaves)
        out = out[0] if isinstance(out, tuple) else out
        if not grads:
            return [out.detach()]
        g = torch.Generator().manual_seed(99)
        dout = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
        used = [t for t in leaves if t.requires_grad]
        return [out.detach(), *torch.autograd.grad(out, used, dout, allow_unused=True)]

    got = run(op_fn, tensors)
    ref64 = run(ref_fn, [t.double() if t.is_floating_point() else t for t in tensors])
    lowp = run(ref_fn, tensors)
    for i, (a, b, c) in enumerate(zip(got, ref64, lowp, strict=True)):
        if a is None:
            continue
        assert_close_to_reference(a, b, c, dtype=dtype, name=f"output #{i}")


@given(data=st.data())
def test_attention_properties(data):
    backend = data.draw(st.sampled_from(BACKENDS))
    dtype = data.draw(st.sampled_from(DTYPES))
    b = data.draw(st.integers(1, 2))
    hkv = data.draw(st.integers(1, 2))
    groups = data.draw(st.integers(1, 3))
    lq = data.draw(st.integers(1, 96 if BIG else 24))
    lk = data.draw(st.integers(1, 96 if BIG else 24))
    d = data.draw(st.sampled_from([16, 32, 48, 64, 128] if BIG else [16, 24, 32]))
    causal = data.draw(st.booleans())
    window = data.draw(st.sampled_from([None, (-1, -1), (4, 0), (2, 3), (0, -1)]))
    mask_kind = data.draw(st.sampled_from([None, "bool", "float"]))
    seed = data.draw(st.integers(0, 2**16))
    q = tensor((b, hkv * groups, lq, d), dtype, seed, transpose_last=data.draw(st.booleans()))
    k = tensor((b, hkv, lk, d), dtype, seed + 1)
    v = tensor((b, hkv, lk, d), dtype, seed + 2)
    mask = None
    if mask_kind == "bool":
        mask = (torch.rand(b, 1, lq, lk, generator=torch.Generator().manual_seed(seed)) > 0.3).to(DEVICE)
    elif mask_kind == "float":
        mask = tensor((lq, lk), torch.float32, seed + 3).to(dtype)
    kw = dict(causal=causal, window_size=window, attn_mask=mask)
    assume(supported("attention", backend, q, k, v, **kw))
    ref_kw = dict(kw, attn_mask=None if mask is None else (mask if mask.dtype == torch.bool else mask.double()))

    def ref(q, k, v):
        if q.dtype == torch.float64:
            return R.attention(q, k, v, **ref_kw)
        return R.attention(q, k, v, **kw)

    compare(lambda q, k, v: ak.attention(q, k, v, backend=backend, **kw), ref, [q, k, v], dtype)


@given(data=st.data())
def test_norm_properties(data):
    backend = data.draw(st.sampled_from(BACKENDS))
    dtype = data.draw(st.sampled_from(DTYPES))
    lead = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    n = data.draw(st.integers(1, 5000 if BIG else 300))
    rms = data.draw(st.booleans())
    affine = data.draw(st.booleans())
    residual = data.draw(st.booleans())
    seed = data.draw(st.integers(0, 2**16))
    x = tensor((*lead, n), dtype, seed, transpose_last=data.draw(st.booleans()), scale=3.0)
    w = tensor((n,), dtype, seed + 1) if affine else None
    r = tensor((*lead, n), dtype, seed + 2) if residual else None
    fn = ak.rms_norm if rms else ak.layer_norm
    ref = R.rms_norm if rms else R.layer_norm
    op = "rms_norm" if rms else "layer_norm"
    args = (x, w, 1e-5) if rms else (x, w, None, 1e-5)
    assume(supported(op, backend, *args, residual=r))
    tensors = [x] + ([w] if w is not None else []) + ([r] if r is not None else [])

    def call(f, **extra):
        def go(*ts):
            it = iter(ts)
            xx = next(it)
            ww = next(it) if w is not None else None
            rr = next(it) if r is not None else None
            return f(xx, ww, eps=1e-5, residual=rr, **extra)
        return go

    compare(call(fn, backend=backend), call(ref), tensors, dtype)


@given(data=st.data())
def test_linear_and_ffn_properties(data):
    backend = data.draw(st.sampled_from(BACKENDS))
    dtype = data.draw(st.sampled_from(DTYPES))
    m = data.draw(st.integers(1, 200 if BIG else 40))
    k = data.draw(st.integers(1, 256 if BIG else 48))
    n = data.draw(st.integers(1, 256 if BIG else 48))
    act = data.draw(st.sampled_from([None, "relu", "gelu", "gelu_tanh", "silu"]))
    seed = data.draw(st.integers(0, 2**16))
    x = tensor((m, k), dtype, seed, transpose_last=data.draw(st.booleans()))
    w = tensor((n, k), dtype, seed + 1, scale=k ** -0.5)
    bias = tensor((n,), dtype, seed + 2)
    assume(supported("linear", backend, x, w, bias, activation=act))
    compare(lambda x, w, b: ak.linear(x, w, b, activation=act, backend=backend),
            lambda x, w, b: R.linear(x, w, b, activation=act), [x, w, bias], dtype)
    gated = data.draw(st.booleans())
    w_out = tensor((k, n), dtype, seed + 3, scale=n ** -0.5)
    w_gate = tensor((n, k), dtype, seed + 4, scale=k ** -0.5)
    ffn_act = act or "gelu"
    recompute = data.draw(st.booleans())

    def ours(x, wi, wo, wg):
        return ak.ffn(x, wi, None, wo, None, activation=ffn_act, w_gate=wg if gated else None, recompute=recompute,
                      backend=backend)

    def ref(x, wi, wo, wg):
        return R.ffn(x, wi, None, wo, None, activation=ffn_act, w_gate=wg if gated else None)

    compare(ours, ref, [x, w, w_out, w_gate], dtype)
