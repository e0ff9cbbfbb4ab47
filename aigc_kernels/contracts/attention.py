"""What the Triton and CUDA attention entry points share: resolving the softmax scale and the window,
the operand layout both kernels read, and the shape of the log-sum-exp they return."""

from __future__ import annotations

import math

import torch


def softmax_scale(q: torch.Tensor, scale: float | None) -> float:
    """The scale of q k^T: 1 / sqrt(head dim) unless given."""
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def window_pair(window_size) -> tuple[int, int]:
    """(left, right) as ints, -1 = unbounded on that side."""
    left, right = window_size if window_size is not None else (-1, -1)
    return int(left), int(right)


def lse_like(q: torch.Tensor, packed: bool) -> torch.Tensor:
    """The float32 log-sum-exp of the forward: (B, Hq, Lq) dense, (Hq, total_q) packed."""
    if packed:
        return q.new_empty(q.shape[1], q.shape[0], dtype=torch.float32)
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], dtype=torch.float32)


def rowmajor(t: torch.Tensor) -> torch.Tensor:
    """t with unit stride along the head dim (a copy only when it has not)."""
    return t if t.stride(-1) == 1 else t.contiguous()
