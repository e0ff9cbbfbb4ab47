"""Rotary position embedding (RoPE), written for clarity: the oracle of ak.rotary."""

from __future__ import annotations

import torch


def rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    interleaved: bool = False,
    inplace: bool = False,
) -> torch.Tensor:
    """Rotate the first R = 2 * cos.shape[1] features of x (B, H, L, D) by the angles of rows
    ``position_ids`` (B or 1, L) of cos/sin (Lmax, R/2) (rows 0..L-1 without position_ids).

    Pairs (x1, x2) -- the two halves of the R features (GPT-NeoX) or neighbours 2i, 2i+1 (GPT-J,
    ``interleaved``) -- become (x1 cos - x2 sin, x1 sin + x2 cos); features past R pass through.
    Computed in x's dtype (cos/sin cast to it); ``inplace`` writes the result into x and returns x.
    """
    b, h, length, d = x.shape
    half = cos.shape[1]
    pos = (torch.arange(length, device=x.device).unsqueeze(0) if position_ids is None
           else position_ids.to(torch.long))
    c = cos[pos].to(x.dtype).unsqueeze(1)  # (B or 1, 1, L, R/2)
    s = sin[pos].to(x.dtype).unsqueeze(1)
    rot = x[..., : 2 * half]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
    o1, o2 = x1 * c - x2 * s, x1 * s + x2 * c
    rotated = torch.stack((o1, o2), dim=-1).flatten(-2) if interleaved else torch.cat((o1, o2), dim=-1)
    out = torch.cat((rotated, x[..., 2 * half:]), dim=-1)
    if inplace:
        x.copy_(out)
        return x
    return out
