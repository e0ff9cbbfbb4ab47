"""LayerNorm / RMSNorm kernels against the float64 reference, with the FlashAttention error rule.

Every test runs on each kernel backend available here: on CPU the Triton kernels under
TRITON_INTERPRET=1 (set by conftest.py); on a GPU the compiled Triton kernels and the CUDA C++
kernels, bf16 included. The CUDA ops' CPU-side checks (schema, fake impls, opcheck on meta
tensors) are at the end.
"""

from __future__ import annotations

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R
from aigc_kernels.testing import ATOL, assert_close_to_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
BACKENDS = [b for b in ("triton", "cuda") if b in ak.available_backends()]
# Triton on CPU is the interpreter; on a GPU every kernel test is a GPU test.
KERNEL = pytest.mark.interpreter if DEVICE == "cpu" else pytest.mark.gpu
backends = pytest.mark.parametrize("backend", [pytest.param(b, marks=KERNEL) for b in BACKENDS] or
                                   [pytest.param("triton", marks=pytest.mark.skip(reason="no kernel backend here"))])


def inputs(shape, dtype, *, weight=True, bias=True, residual=False, param_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    mk = lambda *s, scale=1.0, shift=0.0: (torch.randn(*s, generator=g) * scale + shift).to(DEVICE, dtype)  # noqa: E731
    pd = param_dtype or dtype
    x = mk(*shape, scale=2.0, shift=0.5)
    w = (torch.randn(n, generator=g) + 1).to(DEVICE, pd) if weight else None
    b = torch.randn(n, generator=g).to(DEVICE, pd) if bias else None
    r = mk(*shape) if residual else None
    return x, w, b, r


def run_norm(kind, x, w, b, r, backend, grad_seed=1):
    """Forward + backward with a fixed random cotangent; returns (outputs, grads) detached."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, r)]
    xl, wl, bl, rl = leaves
    if kind == "layer_norm":
        out = R.layer_norm(xl, wl, bl, residual=rl) if backend == "ref" else \
            ak.layer_norm(xl, wl, bl, residual=rl, backend=backend)
    else:
        out = R.rms_norm(xl, wl, residual=rl) if backend == "ref" else ak.rms_norm(xl, wl, residual=rl, backend=backend)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(grad_seed)
    cots = [torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outs]
    used = [t for t in leaves if t is not None and (kind == "layer_norm" or t is not bl)]
    grads = torch.autograd.grad(outs, used, cots, allow_unused=True)
    return tuple(o.detach() for o in outs), tuple(gr for gr in grads)


def check(kind, x, w, b, r, backend):
    out, grads = run_norm(kind, x, w, b, r, backend)
    to64 = lambda t: None if t is None else t.double()  # noqa: E731
    out64, grads64 = run_norm(kind, to64(x), to64(w), to64(b), to64(r), "ref")
    outlp, gradslp = run_norm(kind, x, w, b, r, "ref")
    assert_close_to_reference(out, out64, outlp, dtype=x.dtype, name=f"{kind} forward")
    for i, (g, g64, glp) in enumerate(zip(grads, grads64, gradslp, strict=True)):
        assert g.dtype == glp.dtype
        assert_close_to_reference(g, g64, glp, dtype=x.dtype, name=f"{kind} grad #{i}")


@backends
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 1023, 1500, 4097])
def test_sizes(kind, dtype, n, backend):
    x, w, b, _ = inputs((3, 7, n) if n < 1000 else (5, n), dtype)
    check(kind, x, w, b, None, backend)


@backends
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_and_fp32_params(kind, dtype, backend):
    x, w, b, r = inputs((2, 3, 96), dtype, residual=True, param_dtype=torch.float32)
    check(kind, x, w, b, r, backend)


@pytest.mark.parametrize("kind,affine", [("layer_norm", (False, False)), ("layer_norm", (True, False)),
                                         ("layer_norm", (False, True)), ("rms_norm", (False, False))])
@backends
def test_optional_weight_and_bias(kind, affine, backend):
    x, w, b, _ = inputs((4, 40), torch.float32, weight=affine[0], bias=affine[1])
    check(kind, x, w, b, None, backend)


@KERNEL
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_triton_looped_path_for_wide_rows(kind, monkeypatch):
    """Rows wider than MAX_FUSED_N loop over column blocks; exercise it at a small width."""
    if "triton" not in BACKENDS:
        pytest.skip("the triton backend is not available here")
    from aigc_kernels.triton import norm as tnorm

    backend = "triton"
    monkeypatch.setattr(tnorm, "MAX_FUSED_N", 64)
    monkeypatch.setattr(tnorm, "LOOP_BLOCK_N", 32)
    for residual in (False, True):
        x, w, b, r = inputs((3, 100), torch.float32, residual=residual)
        check(kind, x, w, b, r, backend)


@backends
def test_hidden_65536(backend):
    x, w, b, r = inputs((2, 65536), torch.float32, residual=True)
    check("layer_norm", x, w, b, r, backend)


@backends
def test_non_contiguous_input_and_stride0_grad(backend):
    x, w, b, _ = inputs((6, 48), torch.float32)
    xt = x.t().contiguous().t()  # same values, column-major strides
    assert not xt.is_contiguous()
    torch.testing.assert_close(ak.layer_norm(xt, w, b, backend=backend), ak.layer_norm(x, w, b, backend=backend))
    sliced = torch.randn(6, 96, device=DEVICE)[:, ::2]  # last-dim stride 2
    torch.testing.assert_close(ak.rms_norm(sliced, w, backend=backend), R.rms_norm(sliced, w))
    # y.sum() sends back an expanded gradient (stride 0): must still give the right dx
    xl = x.clone().requires_grad_()
    ak.layer_norm(xl, w, b, backend=backend).sum().backward()
    xr = x.clone().requires_grad_()
    R.layer_norm(xr, w, b).sum().backward()
    torch.testing.assert_close(xl.grad, xr.grad, atol=ATOL[torch.float32] * 10, rtol=1e-4)


@backends
def test_weight_grad_is_deterministic(backend):
    x, w, b, _ = inputs((37, 64), torch.float32)
    grads = [run_norm("layer_norm", x, w, b, None, backend)[1] for _ in range(2)]
    assert all(torch.equal(a, c) for a, c in zip(*grads, strict=True))


@backends
def test_constant_rows_and_extremes(backend):
    x = torch.full((3, 32), 7.0, device=DEVICE)
    torch.testing.assert_close(ak.layer_norm(x, backend=backend), torch.zeros_like(x))
    big = torch.randn(2, 64, device=DEVICE, dtype=torch.float16) * 1e4
    y = ak.rms_norm(big, backend=backend)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), R.rms_norm(big.float()), atol=2e-3, rtol=2e-3)


@backends
def test_empty_rows(backend):
    assert ak.layer_norm(torch.randn(0, 16, device=DEVICE), backend=backend).shape == (0, 16)


@backends
def test_bad_dtype_is_a_clear_error(backend):
    with pytest.raises(ak.BackendError, match="the (Triton|CUDA) norms take float32, float16 or bfloat16, got float64"):
        ak.layer_norm(torch.randn(2, 8, dtype=torch.float64, device=DEVICE), backend=backend)
    with pytest.raises(ak.BackendError, match="take weight in x's dtype or float32, got float16 with x in float32"):
        ak.rms_norm(torch.randn(2, 8, device=DEVICE), torch.ones(8, dtype=torch.float16, device=DEVICE),
                    backend=backend)


@KERNEL
def test_opcheck_triton_ops():
    if "triton" not in BACKENDS:
        pytest.skip("the triton backend is not available here")
    from aigc_kernels.triton import norm  # noqa: F401  (defines the ops)

    x, w, b, r = inputs((4, 24), torch.float32, residual=True)
    torch.library.opcheck(torch.ops.aigc_kernels.norm_fwd_triton.default, (x, w, b, r, 1e-5, False))
    torch.library.opcheck(torch.ops.aigc_kernels.norm_fwd_triton.default, (x, w, None, None, 1e-6, True))
    y, s, mean, rstd = torch.ops.aigc_kernels.norm_fwd_triton(x, w, b, r, 1e-5, False)
    torch.library.opcheck(torch.ops.aigc_kernels.norm_bwd_triton.default, (torch.randn_like(y), None, s, w, mean, rstd,
                                                                           True, False))


@backends
def test_compile_fullgraph(backend):
    x, w, b, r = inputs((4, 32), torch.float32, residual=True)

    def f(x, w, b, r):
        y, s = ak.layer_norm(x, w, b, residual=r, backend=backend)
        return ak.rms_norm(y, w, backend=backend).sum() + s.sum()

    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x, w, b, r), f(x, w, b, r))


@backends
def test_nn_modules_on_kernels(backend):
    ln = ak.nn.LayerNorm(32, backend=backend).to(DEVICE)
    ref = torch.nn.LayerNorm(32).to(DEVICE)
    ref.load_state_dict(ln.state_dict())
    x = torch.randn(3, 32, device=DEVICE)
    torch.testing.assert_close(ln(x), ref(x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# the CUDA ops on any machine: schema, fake impls, opcheck on meta tensors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("is_rms", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_norm_ops_fake_path(cuda_ops, is_rms, dtype):
    ops = torch.ops.aigc_kernels
    assert torch._C._dispatch_has_kernel_for_dispatch_key("aigc_kernels::norm_fwd", "CUDA")
    x = torch.randn(6, 40, dtype=dtype, device="meta")
    w = torch.randn(40, dtype=torch.float32, device="meta")
    b = None if is_rms else torch.randn(40, dtype=torch.float32, device="meta")
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.norm_fwd.default, (x, w, b, x, 1e-5, is_rms), test_utils=tests)
    y, s, mean, rstd = ops.norm_fwd(x, w, b, x, 1e-5, is_rms)
    assert y.shape == s.shape == (6, 40) and rstd.shape == (6,) and mean.shape == ((0,) if is_rms else (6,))
    assert rstd.dtype == torch.float32
    torch.library.opcheck(ops.norm_bwd.default, (y, s, s, w, mean, rstd, b is not None, is_rms), test_utils=tests)
    dx, dw, db = ops.norm_bwd(y, s, s, w, mean, rstd, b is not None, is_rms)
    assert dx.shape == (6, 40) and dw.shape == (40,) and db.shape == ((0,) if is_rms else (40,))


def test_cuda_norm_autograd_traces_on_meta(cuda_ops):
    """The registered autograd reaches norm_bwd: a backward on meta tensors produces meta grads."""
    x = torch.randn(3, 5, 16, device="meta", requires_grad=True)
    w = torch.randn(16, device="meta", requires_grad=True)
    r = torch.randn(3, 5, 16, device="meta", requires_grad=True)
    y, s = cuda_ops.layer_norm(x, w, None, 1e-5, residual=r)
    torch.autograd.backward((y, s), (torch.ones_like(y), torch.ones_like(s)))
    assert x.grad.shape == x.shape and r.grad.shape == r.shape and w.grad.shape == w.shape


def test_cuda_norm_compiles_fullgraph_on_fake_tensors(cuda_ops):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(4, 8, 32, dtype=torch.bfloat16)
        out = cuda_ops.rms_norm(x, torch.ones(32), 1e-6)
    assert out.shape == (4, 8, 32) and out.dtype == torch.bfloat16
