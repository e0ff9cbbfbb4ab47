"""linear + activation and the FFN block on the kernel backends, against the float64 reference.

On CPU the Triton GEMM runs under TRITON_INTERPRET=1 (fp32, fp16; odd sizes); on a GPU the
compiled kernel runs, bf16 too.
"""

from __future__ import annotations

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R
from aigc_kernels.testing import assert_close_to_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
KERNEL = pytest.mark.interpreter if DEVICE == "cpu" else pytest.mark.gpu
pytestmark = [KERNEL, pytest.mark.skipif("triton" not in ak.available_backends(),
                                         reason="the triton backend is not available here")]
ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)


def fwd_bwd(fn, tensors):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
    used = [t for t in leaves if t is not None]
    return (out.detach(), *torch.autograd.grad(out, used, dout))


def check(kernel_fn, ref_fn, tensors, dtype):
    got = fwd_bwd(kernel_fn, tensors)
    ref64 = fwd_bwd(ref_fn, [None if t is None else t.double() for t in tensors])
    lowp = fwd_bwd(ref_fn, tensors)
    for i, (a, b, c) in enumerate(zip(got, ref64, lowp, strict=True)):
        assert a.dtype == c.dtype, f"#{i}: dtype {a.dtype} != {c.dtype}"
        assert_close_to_reference(a, b, c, dtype=dtype, name=f"output #{i}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_linear_odd_sizes(dtype, act):
    x, w, b = rand(17, 40, dtype=dtype), rand(72, 40, dtype=dtype, seed=1, scale=0.2), rand(72, dtype=dtype, seed=2)
    check(lambda x, w, b: ak.linear(x, w, b, activation=act, backend="triton"),
          lambda x, w, b: R.linear(x, w, b, activation=act), [x, w, b], dtype)


def test_linear_3d_no_bias_and_strided():
    x = rand(2, 40, 3, dtype=torch.float32).transpose(1, 2)  # (2, 3, 40), last-dim stride 3
    w = rand(40, 24, seed=1, scale=0.2).t()  # (24, 40) non-contiguous weight
    check(lambda x, w: ak.linear(x, w, activation="gelu", backend="triton"),
          lambda x, w: R.linear(x, w, activation="gelu"), [x, w], torch.float32)


def test_linear_bias_grad_is_the_column_sum():
    x, w, b = rand(33, 16), rand(20, 16, seed=1), rand(20, seed=2)
    bl = b.clone().requires_grad_()
    y = ak.linear(x, w, bl, backend="triton")
    dy = rand(33, 20, seed=3)
    y.backward(dy)
    torch.testing.assert_close(bl.grad, dy.sum(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,gated,recompute", [("gelu", False, False), ("relu", False, True),
                                                 ("silu", True, False), ("gelu", True, True),
                                                 ("gelu_tanh", True, False)])
def test_ffn(dtype, act, gated, recompute):
    x = rand(3, 5, 24, dtype=dtype)
    w_in, b_in = rand(40, 24, dtype=dtype, seed=1, scale=0.2), rand(40, dtype=dtype, seed=2)
    w_out, b_out = rand(24, 40, dtype=dtype, seed=3, scale=0.2), rand(24, dtype=dtype, seed=4)
    w_gate, b_gate = (rand(40, 24, dtype=dtype, seed=5, scale=0.2), rand(40, dtype=dtype, seed=6)) if gated \
        else (None, None)

    def kernel(x, wi, bi, wo, bo, wg, bg):
        return ak.ffn(x, wi, bi, wo, bo, activation=act, w_gate=wg, b_gate=bg, recompute=recompute, backend="triton")

    def ref(x, wi, bi, wo, bo, wg, bg):
        return R.ffn(x, wi, bi, wo, bo, activation=act, w_gate=wg, b_gate=bg)

    check(kernel, ref, [x, w_in, b_in, w_out, b_out, w_gate, b_gate], dtype)


def test_ffn_without_biases():
    x, wi, wo, wg = rand(9, 16), rand(32, 16, seed=1, scale=0.2), rand(16, 32, seed=2, scale=0.2), \
        rand(32, 16, seed=3, scale=0.2)
    check(lambda x, wi, wo, wg: ak.ffn(x, wi, None, wo, None, activation="silu", w_gate=wg, backend="triton"),
          lambda x, wi, wo, wg: R.ffn(x, wi, None, wo, None, activation="silu", w_gate=wg), [x, wi, wo, wg],
          torch.float32)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward while fn runs."""
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total)


@pytest.mark.parametrize("gated", [False, True])
def test_recompute_keeps_only_the_input(gated):
    m, d, h = 64, 16, 48
    x = rand(m, d).requires_grad_()
    wi, wo = rand(h, d, seed=1).requires_grad_(), rand(d, h, seed=2).requires_grad_()
    wg = rand(h, d, seed=3).requires_grad_() if gated else None
    act = "silu" if gated else "gelu"
    kept = saved_bytes(lambda: ak.ffn(x, wi, None, wo, None, activation=act, w_gate=wg, backend="triton"))
    lean = saved_bytes(lambda: ak.ffn(x, wi, None, wo, None, activation=act, w_gate=wg, recompute=True,
                                      backend="triton"))
    hidden = m * h * 4 * (2 if gated else 1)
    assert kept - lean == hidden  # exactly the hidden activations are dropped


def test_empty_and_degenerate_shapes():
    w = rand(8, 16)
    assert ak.linear(rand(0, 16), w, backend="triton").shape == (0, 8)
    y = ak.linear(rand(3, 0), rand(8, 0), rand(8), activation="relu", backend="triton")
    torch.testing.assert_close(y, torch.relu(rand(8)).expand(3, 8))


def test_opcheck():
    from aigc_kernels.triton import linear as L

    x, w, b = rand(9, 16), rand(12, 16, seed=1), rand(12, seed=2)
    torch.library.opcheck(L.linear_fwd, (x, w, b, "gelu"))
    y, z = L.linear_fwd(x, w, b, "gelu")
    torch.library.opcheck(L.linear_bwd, (torch.randn_like(y), x, w, z, "gelu", True))
    wi, wo, wg = rand(20, 16, seed=3), rand(16, 20, seed=4), rand(20, 16, seed=5)
    torch.library.opcheck(L.ffn_fwd, (x, wi, None, wo, None, "silu", wg, None, True))
    out, z1, z2 = L.ffn_fwd(x, wi, None, wo, None, "silu", wg, None, True)
    torch.library.opcheck(L.ffn_bwd, (torch.randn_like(out), x, wi, None, wo, "silu", wg, None, z1, z2, False))


def test_compile_fullgraph():
    x, wl, wi, wo = rand(9, 16), rand(16, 16, seed=3), rand(20, 16, seed=1), rand(16, 20, seed=2)

    def f(x, wl, wi, wo):
        h = ak.linear(x, wl, activation="relu", backend="triton")
        return ak.ffn(h, wi, None, wo, None, backend="triton").sum()

    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x, wl, wi, wo), f(x, wl, wi, wo))


def test_bad_dtype():
    x = torch.randn(3, 4, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ak.BackendError, match="the Triton GEMM takes float32, float16 or bfloat16, got float64"):
        ak.linear(x, x, backend="triton")


# ----------------------------------------------------------------------------------------------
# the CUDA ops on any machine: schema, fake impls, opcheck on meta tensors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gated", [False, True])
def test_cuda_linear_and_ffn_ops_fake_path(cuda_ops, gated):
    ops = torch.ops.aigc_kernels
    tests = ("test_schema", "test_faketensor")
    x, w, b = (torch.randn(9, 16, device="meta", dtype=torch.bfloat16), torch.randn(12, 16, device="meta",
               dtype=torch.bfloat16), torch.randn(12, device="meta", dtype=torch.bfloat16))
    torch.library.opcheck(ops.linear_fwd.default, (x, w, b, "gelu"), test_utils=tests)
    y, z = ops.linear_fwd(x, w, b, "gelu")
    assert y.shape == z.shape == (9, 12)
    torch.library.opcheck(ops.linear_bwd.default, (y, x, w, z, "gelu", True), test_utils=tests)
    wi, wo = torch.randn(20, 16, device="meta", dtype=torch.bfloat16), torch.randn(16, 20, device="meta",
                                                                                    dtype=torch.bfloat16)
    wg = torch.randn(20, 16, device="meta", dtype=torch.bfloat16) if gated else None
    torch.library.opcheck(ops.ffn_fwd.default, (x, wi, None, wo, None, "silu", wg, None, True), test_utils=tests)
    out, z1, z2 = ops.ffn_fwd(x, wi, None, wo, None, "silu", wg, None, True)
    assert out.shape == (9, 16) and z1.shape == (9, 40 if gated else 20)
    grads = ops.ffn_bwd(out, x, wi, None, wo, "silu", wg, None, z1, z2, False)
    assert grads[0].shape == x.shape and grads[1].shape == wi.shape and grads[3].shape == wo.shape
    # the registered autograd reaches ffn_bwd
    xs = torch.randn(2, 3, 16, device="meta", requires_grad=True)
    wis = torch.randn(20, 16, device="meta", requires_grad=True)
    wos = torch.randn(16, 20, device="meta", requires_grad=True)
    cuda_ops.ffn(xs, wis, None, wos, None, activation="gelu").sum().backward()
    assert xs.grad.shape == xs.shape and wis.grad.shape == wis.shape


# ----------------------------------------------------------------------------------------------
# the TMA GEMM (Hopper; tensor descriptors), forced on so the interpreter runs it
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def tma_forced(force_tma):
    from aigc_kernels.triton import linear

    return force_tma(linear, "_gemm_tma")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "gelu", "silu"])
def test_tma_linear(tma_forced, dtype, act):
    # K = 40 and N = 72 keep 16-byte row strides in every dtype; M = 17 is odd
    x, w, b = rand(17, 40, dtype=dtype), rand(72, 40, dtype=dtype, seed=1, scale=0.2), rand(72, dtype=dtype, seed=2)
    check(lambda x, w, b: ak.linear(x, w, b, activation=act, backend="triton"),
          lambda x, w, b: R.linear(x, w, b, activation=act), [x, w, b], dtype)
    assert tma_forced, "the TMA GEMM did not run"


@pytest.mark.parametrize("gated", [False, True])
def test_tma_ffn(tma_forced, gated):
    dtype = torch.float16
    x = rand(3, 5, 24, dtype=dtype)
    w_in, b_in = rand(40, 24, dtype=dtype, seed=1, scale=0.2), rand(40, dtype=dtype, seed=2)
    w_out, b_out = rand(24, 40, dtype=dtype, seed=3, scale=0.2), rand(24, dtype=dtype, seed=4)
    w_gate, b_gate = (rand(40, 24, dtype=dtype, seed=5, scale=0.2), rand(40, dtype=dtype, seed=6)) if gated \
        else (None, None)
    act = "silu" if gated else "gelu"
    check(lambda *t: ak.ffn(*t[:5], activation=act, w_gate=t[5] if gated else None, b_gate=t[6] if gated else None,
                            backend="triton"),
          lambda *t: R.ffn(*t[:5], activation=act, w_gate=t[5] if gated else None, b_gate=t[6] if gated else None),
          [x, w_in, b_in, w_out, b_out] + ([w_gate, b_gate] if gated else []), dtype)
    assert tma_forced


def test_tma_gemm_is_not_used_where_it_cannot_run(tma_forced):
    from aigc_kernels.triton import linear as L

    odd = rand(9, 33, dtype=torch.float16)  # row stride 66 bytes: not a 16-byte multiple
    assert L._tma_view(odd) is None
    assert L._tma_views(odd, rand(33, 8, dtype=torch.float16), None) is None
    both = rand(8, 16, dtype=torch.float16)[:, ::2]  # no unit-stride dim
    assert L._tma_view(both) is None
    ak.linear(odd, rand(8, 33, dtype=torch.float16), backend="triton")
    assert not tma_forced


def test_gemm_sums_two_products_without_a_concatenated_operand():
    """The gated backward's dx = du W_in + dg W_gate: one accumulator over two operand pairs, the A's strided
    halves of one (M, 2K) tensor, the B's separate weights (the pointer kernel; the TMA one in test_tma_ffn)."""
    from aigc_kernels.triton import linear as L

    dudg = rand(13, 2 * 21, seed=3)
    w_in, w_gate = rand(21, 10, seed=4), rand(21, 10, seed=5)
    c, _, _, _ = L.gemm(dudg[:, :21], w_in, a2=dudg[:, 21:], b2=w_gate)
    ref = dudg[:, :21].double() @ w_in.double() + dudg[:, 21:].double() @ w_gate.double()
    torch.testing.assert_close(c.double(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shapes of A"):
        L.gemm(dudg[:, :21], w_in, a2=dudg[:, :20], b2=w_gate)
    with pytest.raises(ValueError, match="no prologue, bias"):
        L.gemm(dudg[:, :21], w_in, a2=dudg[:, 21:], b2=w_gate, act="gelu")
