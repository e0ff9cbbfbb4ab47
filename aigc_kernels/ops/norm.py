"""LayerNorm and RMSNorm over the last dim, with an optional fused residual add."""

from __future__ import annotations

import torch

from .. import validation
from ..backend import fast, select


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual: torch.Tensor | None = None,
    backend: str | None = None,
):
    """LayerNorm over the last dim of x (..., N).

    Args:
        x: (..., N), any rank >= 1.
        weight, bias: (N,) or None; their dtype may be x's or float32.
        eps: added to the variance.
        residual: (..., N) like x. When given, s = x + residual is normalized and (LN(s), s) is
            returned, so a pre-LN block reads its input once.
        backend: "cuda" | "triton" | "torch" | "auto" | None.

    Returns:
        y, or (y, s) with residual; both in x's dtype. Statistics are computed in float32.
    """
    call = validation.layer_norm_call(x, weight, bias, eps, residual)
    return (fast("layer_norm", x, backend) or select(call, backend))(*call)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    residual: torch.Tensor | None = None,
    backend: str | None = None,
):
    """RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight. Arguments as in layer_norm."""
    call = validation.rms_norm_call(x, weight, eps, residual)
    return (fast("rms_norm", x, backend) or select(call, backend))(*call)
