"""Rotary position embedding (RoPE)."""

from __future__ import annotations

import torch

from .. import validation
from ..backend import fast, select


def rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    position_ids: torch.Tensor | None = None,
    interleaved: bool = False,
    inplace: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Rotate the first rotary_dim features of each head by its position's angles (FA2's apply_rotary_emb).

    Args:
        x: (B, H, L, D).
        cos, sin: (Lmax, rotary_dim / 2), rotary_dim even and <= D; any float dtype (the kernels compute in
            float32). Row p holds cos/sin(p * inv_freq).
        position_ids: int32/int64 (B, L) or (1, L): the row of cos/sin for each token; default 0..L-1.
        interleaved: False: GPT-NeoX layout, feature i pairs with i + rotary_dim / 2 (Llama, HF's
            ``rotate_half``); True: GPT-J layout, features 2i and 2i + 1 pair.
        inplace: write the result into x (returned); x's features past rotary_dim are then untouched.

    A pair (x1, x2) with angle t becomes (x1 cos t - x2 sin t, x1 sin t + x2 cos t); features past rotary_dim
    pass through. Differentiable in x, cos and sin.

    Returns:
        (B, H, L, D) in x's dtype (x itself with ``inplace``).
    """
    call = validation.rotary_call(x, cos, sin, position_ids, interleaved, inplace)
    return (fast("rotary", x, backend) or select(call, backend))(*call)
