"""Naive linear and FFN: matmuls and the activation functions of aigc_kernels.contracts.linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..contracts.linear import apply_activation


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """act(x @ weight.T + bias) for x (..., K), weight (N, K), bias (N,)."""
    return apply_activation(F.linear(x, weight, bias), activation)


def ffn(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor | None,
    w_out: torch.Tensor,
    b_out: torch.Tensor | None,
    activation: str = "gelu",
    w_gate: torch.Tensor | None = None,
    b_gate: torch.Tensor | None = None,
    recompute: bool = False,
) -> torch.Tensor:
    """The feed-forward block.

    plain: act(x W_in^T + b_in) W_out^T + b_out
    gated: (act(x W_gate^T + b_gate) * (x W_in^T + b_in)) W_out^T + b_out  (silu: SwiGLU, gelu: GeGLU)

    recompute only changes what a kernel keeps for the backward; the reference keeps whatever
    autograd keeps, and the math is the same.
    """
    if w_gate is None:
        h = linear(x, w_in, b_in, activation=activation)
    else:
        h = linear(x, w_gate, b_gate, activation=activation) * F.linear(x, w_in, b_in)
    return F.linear(h, w_out, b_out)
