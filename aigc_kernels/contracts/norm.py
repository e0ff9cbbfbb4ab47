"""What the Triton and CUDA norm kernels share: the op contract, fake impls, autograd and the
backend entry points. Both register a forward op

    norm_fwd(x (M, N), weight?, bias?, residual?, eps, is_rms) -> (y, s, mean, rstd)

(s = x + residual, empty without one; mean empty for RMSNorm; statistics float32) and a backward

    norm_bwd(dy, ds?, xs, weight?, mean, rstd, has_bias, is_rms) -> (dx, dw, db)

(dw/db float32 sums, empty when absent); this module turns such a pair into ak.layer_norm /
ak.rms_norm implementations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def fake_fwd(x, weight, bias, residual, eps, is_rms):
    torch._check(x.dim() == 2, lambda: f"norm_fwd: expected x of shape (rows, cols), got {tuple(x.shape)}")
    m = x.shape[0]
    s = torch.empty_like(x) if residual is not None else x.new_empty(0)
    mean = x.new_empty(0 if is_rms else m, dtype=torch.float32)
    return torch.empty_like(x), s, mean, x.new_empty(m, dtype=torch.float32)


def fake_bwd(dy, ds, xs, weight, mean, rstd, has_bias, is_rms):
    n = xs.shape[1]
    f32 = torch.float32
    return (torch.empty_like(xs), xs.new_empty(n if weight is not None else 0, dtype=f32),
            xs.new_empty(n if has_bias else 0, dtype=f32))


def register_autograd(fwd_name: str, bwd_op: Callable) -> None:
    """Make the forward op ``fwd_name`` differentiable through ``bwd_op``.

    With a residual the forward returns s = x + residual too; the gradient of s adds to the
    norm's dx, and that sum is the gradient of both x and residual.
    """

    def setup_context(ctx, inputs, output):
        x, weight, bias, residual, eps, is_rms = inputs
        _, s, mean, rstd = output
        ctx.save_for_backward(s if residual is not None else x, weight, mean, rstd)
        ctx.has_res, ctx.is_rms = residual is not None, is_rms
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def backward(ctx, dy, ds, dmean, drstd):
        xs, weight, mean, rstd = ctx.saved_tensors
        # The gradient of y.sum() arrives expanded with stride 0: give the kernel real rows.
        dy = dy.contiguous()
        ds = ds.contiguous() if (ctx.has_res and ds is not None) else None
        has_bias = ctx.bias_dtype is not None
        dx, dw, db = bwd_op(dy, ds, xs, weight, mean, rstd, has_bias, ctx.is_rms)
        dweight = dw.to(weight.dtype) if weight is not None else None
        dbias = db.to(ctx.bias_dtype) if has_bias else None
        return dx, dweight, dbias, (dx if ctx.has_res else None), None, None

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)


def rows2d(t: torch.Tensor, n: int) -> torch.Tensor:
    """(..., N) -> (M, N) with unit column stride, copying only when a view cannot do it."""
    t2 = t.reshape(math.prod(t.shape[:-1]), n)  # explicit rows: -1 is ambiguous when N = 0
    return t2 if n <= 1 or t2.stride(1) == 1 else t2.contiguous()


def entry_points(fwd_op: Callable) -> tuple[Callable, Callable]:
    """(layer_norm, rms_norm) with the signatures of ak.layer_norm / ak.rms_norm, running fwd_op."""

    def run(x, weight, bias, eps, residual, is_rms):
        n = x.shape[-1]
        r2 = rows2d(residual, n) if residual is not None else None
        w = weight.contiguous() if weight is not None else None
        b = bias.contiguous() if bias is not None else None
        y, s, _, _ = fwd_op(rows2d(x, n), w, b, r2, float(eps), is_rms)
        y = y.view(x.shape)
        return y if residual is None else (y, s.view(x.shape))

    def layer_norm(x, weight=None, bias=None, eps=1e-5, residual=None):
        return run(x, weight, bias, eps, residual, False)

    def rms_norm(x, weight=None, eps=1e-6, residual=None):
        return run(x, weight, None, eps, residual, True)

    return layer_norm, rms_norm
