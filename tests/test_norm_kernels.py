"""LayerNorm / RMSNorm kernels (Triton; CUDA where built and a GPU is present) against the
float64 reference, with the FlashAttention error rule.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (set by conftest.py); on a GPU the same
tests run the compiled kernels, bf16 included.
"""

from __future__ import annotations

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R
from aigc_kernels.testing import ATOL, assert_close_to_reference

pytest.importorskip("triton")
if "triton" not in ak.available_backends():
    pytest.skip("the triton backend is not available (no GPU and TRITON_INTERPRET unset)", allow_module_level=True)

from aigc_kernels.triton import norm as tnorm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
pytestmark = pytest.mark.interpreter if DEVICE == "cpu" else pytest.mark.gpu


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


def check(kind, x, w, b, r, backend="triton"):
    out, grads = run_norm(kind, x, w, b, r, backend)
    to64 = lambda t: None if t is None else t.double()  # noqa: E731
    out64, grads64 = run_norm(kind, to64(x), to64(w), to64(b), to64(r), "ref")
    outlp, gradslp = run_norm(kind, x, w, b, r, "ref")
    assert_close_to_reference(out, out64, outlp, dtype=x.dtype, name=f"{kind} forward")
    for i, (g, g64, glp) in enumerate(zip(grads, grads64, gradslp)):
        assert g.dtype == glp.dtype
        assert_close_to_reference(g, g64, glp, dtype=x.dtype, name=f"{kind} grad #{i}")


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 1023, 1500, 4097])
def test_sizes(kind, dtype, n):
    x, w, b, _ = inputs((3, 7, n) if n < 1000 else (5, n), dtype)
    check(kind, x, w, b, None)


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_and_fp32_params(kind, dtype):
    x, w, b, r = inputs((2, 3, 96), dtype, residual=True, param_dtype=torch.float32)
    check(kind, x, w, b, r)


@pytest.mark.parametrize("kind,affine", [("layer_norm", (False, False)), ("layer_norm", (True, False)),
                                         ("layer_norm", (False, True)), ("rms_norm", (False, False))])
def test_optional_weight_and_bias(kind, affine):
    x, w, b, _ = inputs((4, 40), torch.float32, weight=affine[0], bias=affine[1])
    check(kind, x, w, b, None)


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_looped_path_for_wide_rows(kind, monkeypatch):
    """Rows wider than MAX_FUSED_N loop over column blocks; exercise it at a small width."""
    monkeypatch.setattr(tnorm, "MAX_FUSED_N", 64)
    monkeypatch.setattr(tnorm, "LOOP_BLOCK_N", 32)
    for residual in (False, True):
        x, w, b, r = inputs((3, 100), torch.float32, residual=residual)
        check(kind, x, w, b, r)


def test_hidden_65536():
    x, w, b, r = inputs((2, 65536), torch.float32, residual=True)
    check("layer_norm", x, w, b, r)


def test_non_contiguous_input_and_stride0_grad():
    x, w, b, _ = inputs((6, 48), torch.float32)
    xt = x.t().contiguous().t()  # same values, column-major strides
    assert not xt.is_contiguous()
    torch.testing.assert_close(ak.layer_norm(xt, w, b, backend="triton"), ak.layer_norm(x, w, b, backend="triton"))
    sliced = torch.randn(6, 96, device=DEVICE)[:, ::2]  # last-dim stride 2
    torch.testing.assert_close(ak.rms_norm(sliced, w, backend="triton"), R.rms_norm(sliced, w))
    # y.sum() sends back an expanded gradient (stride 0): must still give the right dx
    xl = x.clone().requires_grad_()
    ak.layer_norm(xl, w, b, backend="triton").sum().backward()
    xr = x.clone().requires_grad_()
    R.layer_norm(xr, w, b).sum().backward()
    torch.testing.assert_close(xl.grad, xr.grad, atol=ATOL[torch.float32] * 10, rtol=1e-4)


def test_weight_grad_is_deterministic():
    x, w, b, _ = inputs((37, 64), torch.float32)
    grads = [run_norm("layer_norm", x, w, b, None, "triton")[1] for _ in range(2)]
    assert all(torch.equal(a, c) for a, c in zip(*grads))


def test_constant_rows_and_extremes():
    x = torch.full((3, 32), 7.0, device=DEVICE)
    torch.testing.assert_close(ak.layer_norm(x, backend="triton"), torch.zeros_like(x))
    big = torch.randn(2, 64, device=DEVICE, dtype=torch.float16) * 1e4
    y = ak.rms_norm(big, backend="triton")
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), R.rms_norm(big.float()), atol=2e-3, rtol=2e-3)


def test_empty_rows():
    assert ak.layer_norm(torch.randn(0, 16, device=DEVICE), backend="triton").shape == (0, 16)


def test_bad_dtype_is_a_clear_error():
    with pytest.raises(ak.BackendError, match="the Triton norms take float32, float16 or bfloat16, got float64"):
        ak.layer_norm(torch.randn(2, 8, dtype=torch.float64, device=DEVICE), backend="triton")
    with pytest.raises(ak.BackendError, match="take weight in x's dtype or float32, got float16 with x in float32"):
        ak.rms_norm(torch.randn(2, 8, device=DEVICE), torch.ones(8, dtype=torch.float16, device=DEVICE),
                    backend="triton")


def test_opcheck_triton_ops():
    x, w, b, r = inputs((4, 24), torch.float32, residual=True)
    torch.library.opcheck(torch.ops.aigc_kernels.norm_fwd_triton.default, (x, w, b, r, 1e-5, False))
    torch.library.opcheck(torch.ops.aigc_kernels.norm_fwd_triton.default, (x, w, None, None, 1e-6, True))
    y, s, mean, rstd = torch.ops.aigc_kernels.norm_fwd_triton(x, w, b, r, 1e-5, False)
    torch.library.opcheck(torch.ops.aigc_kernels.norm_bwd_triton.default, (torch.randn_like(y), None, s, w, mean, rstd,
                                                                           True, False))


def test_compile_fullgraph():
    x, w, b, r = inputs((4, 32), torch.float32, residual=True)

    def f(x, w, b, r):
        y, s = ak.layer_norm(x, w, b, residual=r, backend="triton")
        return ak.rms_norm(y, w, backend="triton").sum() + s.sum()

    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x, w, b, r), f(x, w, b, r))


def test_nn_modules_on_triton():
    ln = ak.nn.LayerNorm(32, backend="triton").to(DEVICE)
    ref = torch.nn.LayerNorm(32).to(DEVICE)
    ref.load_state_dict(ln.state_dict())
    x = torch.randn(3, 32, device=DEVICE)
    torch.testing.assert_close(ln(x), ref(x), atol=1e-5, rtol=1e-5)
