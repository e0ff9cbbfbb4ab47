"""Linear layers with the activation in the GEMM epilogue, and the feed-forward block."""

from __future__ import annotations

import torch

from .. import validation
from ..backend import fast, select


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """act(x @ weight.T + bias).

    Args:
        x: (..., K).
        weight: (N, K), as in torch.nn.Linear.
        bias: (N,) or None.
        activation: None | "relu" | "gelu" (erf) | "gelu_tanh" | "silu".
        backend: "cuda" | "triton" | "torch" | "auto" | None.

    Returns:
        (..., N) in x's dtype.
    """
    call = validation.linear_call(x, weight, bias, activation)
    return (fast("linear", x, backend) or select(call, backend))(*call)


def ffn(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor | None,
    w_out: torch.Tensor,
    b_out: torch.Tensor | None,
    *,
    activation: str = "gelu",
    w_gate: torch.Tensor | None = None,
    b_gate: torch.Tensor | None = None,
    recompute: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """The feed-forward block.

    plain: act(x W_in^T + b_in) W_out^T + b_out
    gated: (act(x W_gate^T + b_gate) * (x W_in^T + b_in)) W_out^T + b_out
           ("silu" = SwiGLU, "gelu" = GeGLU, as in Llama's gate_proj / up_proj / down_proj)

    Args:
        x: (..., D).
        w_in, w_gate: (H, D); b_in, b_gate: (H,) or None.
        w_out: (D, H); b_out: (D,) or None.
        activation: "relu" | "gelu" | "gelu_tanh" | "silu" (None allowed only when not gated).
        recompute: keep only x for the backward and recompute the hidden activations there,
            trading one GEMM for the (M, H) tensors a training step would otherwise hold.

    Returns:
        (..., D) in x's dtype.
    """
    call = validation.ffn_call(x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate, recompute)
    return (fast("ffn", x, backend) or select(call, backend))(*call)
