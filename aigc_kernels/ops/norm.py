"""LayerNorm and RMSNorm over the last dim, with an optional fused residual add."""

from __future__ import annotations

import torch

from .. import backend as _backend
from .. import validation
from ..backend import _ENV_DATA, _ENV_KEY, _explaining, _scoped_backends, fast, select
from ..native.norm import layer_norm as _native_layer_norm

_T, _FLOATS, _torch_layer_norm = torch.Tensor, validation._FLOATS, torch.layer_norm

# "auto" on CPU tensors with plain arguments -- every norm of a model on CPU -- in this one frame:
# fast()'s backend precedence (backend="auto", as patched modules pass it, or no backend= with no scoped
# or global backend and no environment variable; not explaining) and validation's fast-path checks
# written out again, then the memoized PyTorch call (_CPU_AUTO, filled with its DEBUG line by the op's
# first call through fast()) -- for layer_norm, torch.layer_norm itself when that memo is the native
# implementation and the arguments need no conversion (one frame less: ~0.3 us). The helper calls are what
# costs: this path is ~0.7-0.9 us over F.layer_norm (0.98x of it at 512x768) where the general one is
# ~1.8-2.6 us. Anything else -- including every argument validation would refuse -- takes the general path
# below, whose checks and errors are the contract (tests compare the two paths).


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
    if ((backend == "auto" or (backend is None and not _scoped_backends and _backend._global_backend is None
                               and _ENV_DATA is not None and _ENV_KEY not in _ENV_DATA)) and not _explaining
            and (fn := _backend._CPU_AUTO.get("layer_norm")) is not None
            and isinstance(x, _T) and type(eps) is float and eps >= 0.0 and (xs := x.shape) and x.is_cpu
            and (dt := x.dtype) in _FLOATS):
        n = xs[-1]
        if ((weight is None or (isinstance(weight, _T) and (ws := weight.shape) and len(ws) == 1 and ws[0] == n
                                and weight.dtype in _FLOATS and weight.is_cpu))
                and (bias is None or (isinstance(bias, _T) and (bs := bias.shape) and len(bs) == 1 and bs[0] == n
                                      and bias.dtype in _FLOATS and bias.is_cpu))
                and (residual is None or (isinstance(residual, _T) and residual.shape == xs and residual.dtype is dt
                                          and residual.is_cpu))):
            if (residual is None and fn is _native_layer_norm and (weight is None or weight.dtype is dt)
                    and (bias is None or bias.dtype is dt)):
                return _torch_layer_norm(x, (n,), weight, bias, eps)  # what fn does for these: one frame less
            return fn(x, weight, bias, eps, residual)
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
    if ((backend == "auto" or (backend is None and not _scoped_backends and _backend._global_backend is None
                               and _ENV_DATA is not None and _ENV_KEY not in _ENV_DATA)) and not _explaining
            and (fn := _backend._CPU_AUTO.get("rms_norm")) is not None
            and isinstance(x, _T) and type(eps) is float and eps >= 0.0 and (xs := x.shape) and x.is_cpu
            and (dt := x.dtype) in _FLOATS):  # (as layer_norm's)
        if ((weight is None or (isinstance(weight, _T) and (ws := weight.shape) and len(ws) == 1 and ws[0] == xs[-1]
                                and weight.dtype in _FLOATS and weight.is_cpu))
                and (residual is None or (isinstance(residual, _T) and residual.shape == xs and residual.dtype is dt
                                          and residual.is_cpu))):
            return fn(x, weight, eps, residual)
    call = validation.rms_norm_call(x, weight, eps, residual)
    return (fast("rms_norm", x, backend) or select(call, backend))(*call)
