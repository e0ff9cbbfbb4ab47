"""Naive LayerNorm / RMSNorm, computed in float32 (or float64) and cast back."""

from __future__ import annotations

import torch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are kept in float32 for half precisions, in float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
):
    """LayerNorm over the last dim; with residual, returns (LN(x + residual), x + residual).

    The sum and the statistics are computed in float32 (float64 for float64 input); the outputs
    are rounded to x's dtype.
    """
    cdt = _compute_dtype(x.dtype)
    s = x.to(cdt) if residual is None else x.to(cdt) + residual.to(cdt)
    mean = s.mean(dim=-1, keepdim=True)
    var = (s - mean).pow(2).mean(dim=-1, keepdim=True)
    y = (s - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(cdt)
    if bias is not None:
        y = y + bias.to(cdt)
    y = y.to(x.dtype)
    return y if residual is None else (y, s.to(x.dtype))


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
):
    """RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight; residual as in layer_norm."""
    cdt = _compute_dtype(x.dtype)
    s = x.to(cdt) if residual is None else x.to(cdt) + residual.to(cdt)
    y = s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(cdt)
    y = y.to(x.dtype)
    return y if residual is None else (y, s.to(x.dtype))
