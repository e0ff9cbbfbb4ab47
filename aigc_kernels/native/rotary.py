"""The "torch" rotary embedding: PyTorch's own ops (PyTorch has no fused rotary call), computed in
float32 for half inputs -- as the kernels compute it -- with autograd through PyTorch's ops."""

from __future__ import annotations

import torch

_HALF = (torch.float16, torch.bfloat16)


def _angles(t: torch.Tensor, position_ids: torch.Tensor | None, length: int, dtype: torch.dtype) -> torch.Tensor:
    rows = t[:length] if position_ids is None else t[position_ids]  # (L | B, L, R/2)
    return rows.to(dtype).unsqueeze(-3)  # (1 | B, 1, L, R/2): broadcast over heads


def rotary(x, cos, sin, position_ids=None, interleaved=False, inplace=False):
    half = cos.shape[1]
    length = x.shape[2]
    dtype = torch.float32 if x.dtype in _HALF else x.dtype
    c, s = _angles(cos, position_ids, length, dtype), _angles(sin, position_ids, length, dtype)
    part = x[..., : 2 * half].to(dtype, copy=inplace)  # (in place: autograd must keep x's old values)
    if interleaved:
        pairs = part.unflatten(-1, (half, 2))
        x1, x2 = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = part[..., :half], part[..., half:]
        rotated = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    rotated = rotated.to(x.dtype)
    if inplace:
        x[..., : 2 * half].copy_(rotated)
        return x
    if 2 * half == x.shape[-1]:
        return rotated
    return torch.cat((rotated, x[..., 2 * half:]), dim=-1)
