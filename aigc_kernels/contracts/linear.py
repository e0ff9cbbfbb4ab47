"""What the Triton and CUDA linear/FFN kernels share: autograd, and the backend entry points.

Both backends register
    linear_fwd(x (M, K), weight (N, K), bias?, activation?) -> (y, z)        z: pre-activation or empty
    linear_bwd(dy, x, weight, z, activation?, has_bias) -> (dx, dw, db)       db float32, empty without bias
    ffn_fwd(x, w_in, b_in?, w_out, b_out?, activation, w_gate?, b_gate?, save) -> (out, z1, z2)
    ffn_bwd(dout, x, w_in, b_in?, w_out, activation, w_gate?, b_gate?, z1, z2, has_b_out)
        -> [dx, dw_in, db_in, dw_out, db_out, dw_gate, db_gate]
where z1/z2 are whatever that backend's backward needs (empty under recompute: save=False).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .tables import ACTIVATIONS

# The activations in PyTorch: the native backend, the reference, and the kernels' torch fallbacks.
ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}
assert tuple(ACTIVATION_FNS) == ACTIVATIONS, "contracts.tables.ACTIVATIONS and ACTIVATION_FNS disagree"


def apply_activation(x: torch.Tensor, name: str | None) -> torch.Tensor:
    """relu | gelu (erf) | gelu_tanh | silu | None (identity)."""
    if name is None:
        return x
    fn = ACTIVATION_FNS.get(name)
    if fn is None:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS} or None")
    return fn(x)


def fake_linear_fwd(x, weight, bias, activation):
    y = x.new_empty(x.shape[0], weight.shape[0])
    return y, (torch.empty_like(y) if activation is not None else x.new_empty(0))


def fake_linear_bwd(dy, x, weight, z, activation, has_bias):
    return (torch.empty_like(x), torch.empty_like(weight),
            x.new_empty(weight.shape[0] if has_bias else 0, dtype=torch.float32))


def fake_ffn_bwd(dout, x, w_in, b_in, w_out, activation, w_gate, b_gate, z1, z2, has_b_out):
    h, d = w_in.shape
    f32 = torch.float32
    return [torch.empty_like(x), torch.empty_like(w_in), x.new_empty(h if b_in is not None else 0, dtype=f32),
            torch.empty_like(w_out), x.new_empty(d if has_b_out else 0, dtype=f32),
            torch.empty_like(w_gate) if w_gate is not None else x.new_empty(0),
            x.new_empty(h if b_gate is not None else 0, dtype=f32)]


def register_linear_autograd(fwd_name: str, bwd_op: Callable) -> None:
    def setup_context(ctx, inputs, output):
        x, weight, bias, activation = inputs
        _, z = output
        ctx.save_for_backward(x, weight, z)
        ctx.activation = activation
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def backward(ctx, dy, dz):
        x, weight, z = ctx.saved_tensors
        has_bias = ctx.bias_dtype is not None
        dx, dw, db = bwd_op(dy.contiguous(), x, weight, z, ctx.activation, has_bias)
        return dx, dw, (db.to(ctx.bias_dtype) if has_bias else None), None

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)


def register_ffn_autograd(fwd_name: str, bwd_op: Callable) -> None:
    def setup_context(ctx, inputs, output):
        x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate, save = inputs
        _, z1, z2 = output
        ctx.save_for_backward(x, w_in, b_in, w_out, w_gate, b_gate, z1, z2)
        ctx.activation = activation
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (b_in, b_out, b_gate))

    def backward(ctx, dout, dz1, dz2):
        x, w_in, b_in, w_out, w_gate, b_gate, z1, z2 = ctx.saved_tensors
        bi, bo, bg = ctx.dtypes
        dx, dw_in, db_in, dw_out, db_out, dw_gate, db_gate = bwd_op(
            dout.contiguous(), x, w_in, b_in, w_out, ctx.activation, w_gate, b_gate, z1, z2, bo is not None)
        cast = lambda t, dt: None if dt is None else t.to(dt)  # noqa: E731
        return (dx, dw_in, cast(db_in, bi), dw_out, cast(db_out, bo), None,
                dw_gate if w_gate is not None else None, cast(db_gate, bg), None)

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)


def rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # explicit rows: -1 is ambiguous when K = 0


def entry_points(linear_fwd: Callable, ffn_fwd: Callable) -> tuple[Callable, Callable]:
    """(linear, ffn) with the signatures of ak.linear / ak.ffn (minus backend=), running these ops."""

    def linear(x, weight, bias=None, activation=None):
        y, _ = linear_fwd(rows(x), weight, bias, activation)
        return y.view(*x.shape[:-1], weight.shape[0])

    def ffn(x, w_in, b_in, w_out, b_out, activation="gelu", w_gate=None, b_gate=None, recompute=False):
        out, _, _ = ffn_fwd(rows(x), w_in, b_in, w_out, b_out, activation, w_gate, b_gate, not recompute)
        return out.view(*x.shape[:-1], w_out.shape[0])

    return linear, ffn
