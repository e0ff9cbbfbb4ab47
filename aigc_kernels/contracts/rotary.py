"""What the Triton and CUDA rotary kernels share: the op contract, fake impls, autograd and the backend
entry point. Each backend registers two ops over the same kernel

    rotary_fwd(x (B, H, L, D), cos (Lmax, R/2), sin, positions?, interleaved, conjugate) -> out (B, H, L, D)
    rotary_inplace(x!, cos, sin, positions?, interleaved, conjugate) -> ()      (x rotated in place)

x (and out) with a unit last-dim stride, any other strides; cos/sin with a unit column stride; positions
int32/int64 (B, L) or (1, L), or None for rows 0..L-1. ``conjugate`` rotates by minus the angle. The
out-of-place op writes the D - R pass-through features too; the in-place one leaves them.

Autograd. A rotation is orthogonal, so the gradient of x is the gradient of the output rotated back
(``conjugate``): one more launch of the same kernel. Where cos or sin need a gradient, with
o1 = x1 c - x2 s and o2 = x1 s + x2 c per pair (g1, g2 the output's gradient),
    dc = g1 x1 + g2 x2,   ds = g2 x1 - g1 x2,
summed over heads and added into the rows each token read (positions may repeat). x is recovered from the
saved output by the inverse rotation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def fake_fwd(x, cos, sin, positions, interleaved, conjugate):
    torch._check(x.dim() == 4, lambda: f"rotary_fwd: expected x of shape (B, H, L, D), got {tuple(x.shape)}")
    return torch.empty_like(x)


def fake_inplace(x, cos, sin, positions, interleaved, conjugate) -> None:
    return None


def last_dim_unit(t: torch.Tensor) -> torch.Tensor:
    """t with a unit last-dim stride (a copy only where it lacks one: the kernels read rows through strides)."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _pairs(t: torch.Tensor, half: int, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    part = t[..., : 2 * half].float()
    if interleaved:
        return part[..., 0::2], part[..., 1::2]
    return part[..., :half], part[..., half:]


def angle_grads(x: torch.Tensor, dout: torch.Tensor, cos: torch.Tensor, positions: torch.Tensor | None,
                interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dcos, dsin) of shape (Lmax, R/2), float32, for input x and output gradient dout (see the module doc)."""
    half, lmax = cos.shape[1], cos.shape[0]
    x1, x2 = _pairs(x, half, interleaved)
    g1, g2 = _pairs(dout, half, interleaved)
    dc, ds = (g1 * x1 + g2 * x2).sum(1), (g2 * x1 - g1 * x2).sum(1)  # (B, L, R/2): summed over heads
    b, length = dc.shape[0], dc.shape[1]
    rows = (torch.arange(length, device=x.device).expand(b, length) if positions is None
            else positions.to(torch.long).expand(b, length))
    dcos = torch.zeros(lmax, half, dtype=torch.float32, device=x.device)
    dsin = torch.zeros_like(dcos)
    dcos.index_add_(0, rows.reshape(-1), dc.reshape(-1, half))
    dsin.index_add_(0, rows.reshape(-1), ds.reshape(-1, half))
    return dcos, dsin


def make_autograd(fwd_op: Callable) -> type[torch.autograd.Function]:
    """The autograd Function of one backend's rotary_fwd: (x, cos, sin, positions, interleaved) -> out."""

    class Rotary(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, cos, sin, positions, interleaved):
            cos_r, sin_r = last_dim_unit(cos), last_dim_unit(sin)
            out = fwd_op(last_dim_unit(x), cos_r, sin_r, positions, interleaved, False)
            angles_need_grad = cos.requires_grad or sin.requires_grad
            ctx.save_for_backward(cos_r, sin_r, positions, out if angles_need_grad else None)
            ctx.interleaved, ctx.dtypes = interleaved, (cos.dtype, sin.dtype)
            return out

        @staticmethod
        def backward(ctx, dout):
            cos_r, sin_r, positions, out = ctx.saved_tensors
            # (the gradient of out.sum() arrives expanded, with stride 0)
            dout = last_dim_unit(dout)
            dx = dcos = dsin = None
            if ctx.needs_input_grad[0]:
                dx = fwd_op(dout, cos_r, sin_r, positions, ctx.interleaved, True)
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                x = fwd_op(last_dim_unit(out), cos_r, sin_r, positions, ctx.interleaved, True)
                dc, ds = angle_grads(x, dout, cos_r, positions, ctx.interleaved)
                dcos = dc.to(ctx.dtypes[0]) if ctx.needs_input_grad[1] else None
                dsin = ds.to(ctx.dtypes[1]) if ctx.needs_input_grad[2] else None
            return dx, dcos, dsin, None, None

    return Rotary


def _rotate_in_place(inplace_op: Callable, x, cos, sin, positions, interleaved) -> None:
    cos, sin = last_dim_unit(cos), last_dim_unit(sin)
    if x.shape[-1] <= 1 or x.stride(-1) == 1:
        inplace_op(x, cos, sin, positions, interleaved, False)
    else:  # the kernel reads rows with a unit stride: rotate a copy, write it back
        tmp = x.contiguous()
        inplace_op(tmp, cos, sin, positions, interleaved, False)
        x.copy_(tmp)


def entry_point(fwd_op: Callable, inplace_op: Callable) -> Callable:
    """The backend's ak.rotary (its signature, minus backend=) running the pair (fwd_op, inplace_op).

    In place without autograd (inference, a KV-cache write) the in-place op rotates x's own storage. Where a
    gradient is needed, the rotation runs out of place and is copied into x (autograd records the copy):
    torch.compile cannot trace an autograd.Function that marks its input dirty, and one extra pass over x
    is the price of a differentiable in-place call.
    """
    function = make_autograd(fwd_op)

    def rotary(x, cos, sin, position_ids=None, interleaved=False, inplace=False):
        if x.numel() == 0:
            return x if inplace else torch.empty_like(x)
        grad = torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad or sin.requires_grad)
        if not inplace:
            if grad:
                return function.apply(x, cos, sin, position_ids, interleaved)
            return fwd_op(last_dim_unit(x), last_dim_unit(cos), last_dim_unit(sin), position_ids, interleaved, False)
        if grad:
            return x.copy_(function.apply(x, cos, sin, position_ids, interleaved))
        _rotate_in_place(inplace_op, x, cos, sin, position_ids, interleaved)
        return x

    return rotary
