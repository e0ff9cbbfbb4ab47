"""What the Triton kernels accept, checked without importing triton (the backend registry calls
these before loading a kernel module). Each returns None, or the reason the kernel cannot run."""

from __future__ import annotations

import torch

NORM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> str | None:
    if x.dtype not in NORM_DTYPES:
        return f"the Triton norms take float32, float16 or bfloat16, got {_name(x.dtype)}"
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.dtype not in (x.dtype, torch.float32):
            return (f"the Triton norms take {name} in x's dtype or float32, "
                    f"got {_name(p.dtype)} with x in {_name(x.dtype)}")
    return None


def layer_norm(x, weight=None, bias=None, eps=1e-5, *, residual=None) -> str | None:
    return _norm(x, weight, bias)


def rms_norm(x, weight=None, eps=1e-6, *, residual=None) -> str | None:
    return _norm(x, weight, None)
