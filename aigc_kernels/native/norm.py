"""The "torch" backend's LayerNorm / RMSNorm: the residual add, then PyTorch's layer_norm / rms_norm.

They call ``torch.layer_norm`` / ``torch.rms_norm``, the ops that ``F.layer_norm`` / ``F.rms_norm`` wrap:
the same kernels (and ``__torch_function__`` handling, which the ops' bindings do), without the Python
wrapper's ~0.4 us a call (F.layer_norm reads torch.backends.cudnn.enabled each time; LayerNorm has no
cuDNN kernel, so that flag changes nothing). One exception, measured: rms_norm on CPU without autograd
(below)."""

from __future__ import annotations

import torch

_layer_norm = torch.layer_norm
_rms_norm = torch.rms_norm
_vector_norm = torch.linalg.vector_norm
_Tensor = torch.Tensor  # (a subclass keeps torch.rms_norm: its __torch_function__ sees the op it overrides)

# On CPU, torch.rms_norm is a composite (pow, mean, add, rsqrt, two multiplies, each a pass over memory
# with its own temporary; CUDA has a fused kernel). Without autograd, one reduction (vector_norm) and two
# multiplies in place over a single output buffer do the same arithmetic in float32 (float64 for float64)
# and measured 1.15-1.3x faster at 16x4096, ~1.5-1.9x at 512x768 and 512x4096 (this 2-core machine,
# float32 and bfloat16), but ~1 us slower below ~16k elements (more calls): hence the floor. vector_norm
# accumulates less exactly than the mean's cascade sum: mean(x^2) within 6.4e-7 (relative) of float64 up
# to rows of 16384 (torch: 1.5e-7), 1.6e-6 at 65536, hence the ceiling on the row length. With autograd,
# torch.rms_norm (its backward, double backward and compiled forms are PyTorch's own).
_CPU_COMPOSITE_MIN = 32768
_CPU_COMPOSITE_MAX_ROW = 16384


def _f32(p):
    return None if p is None else p.float()


def layer_norm(x, weight=None, bias=None, eps=1e-5, residual=None):
    s = x if residual is None else x + residual
    if (weight is None or weight.dtype == x.dtype) and (bias is None or bias.dtype == x.dtype):
        y = _layer_norm(s, (x.shape[-1],), weight, bias, eps)
    else:  # half inputs with float32 parameters: computed in float32 (layer_norm wants one dtype)
        y = _layer_norm(s.float(), (x.shape[-1],), _f32(weight), _f32(bias), eps).to(x.dtype)
    return y if residual is None else (y, s)


def _rms_norm_cpu(s, weight, eps, dtype):
    """RMSNorm of s in its compute dtype (float32, or float64 for float64), rounded once to dtype."""
    sf = s.double() if s.dtype == torch.float64 else s.float()
    r = _vector_norm(sf, 2, -1, True).square().div_(s.shape[-1]).add_(eps).rsqrt_()  # (square_ has no vmap rule)
    y = sf.mul_(r) if sf is not s else sf * r  # (a copy made by the upcast is reused)
    if weight is not None:
        y.mul_(weight)  # (a float32 weight, or one of x's dtype promoted: the product stays float32)
    return y.to(dtype)


def rms_norm(x, weight=None, eps=1e-6, residual=None):
    s = x if residual is None else x + residual
    if (type(s) is _Tensor and s.is_cpu and s.numel() >= _CPU_COMPOSITE_MIN and s.shape[-1] <= _CPU_COMPOSITE_MAX_ROW
            and not (torch.is_grad_enabled() and (s.requires_grad or (weight is not None and weight.requires_grad)))
            and not torch.compiler.is_compiling()):
        y = _rms_norm_cpu(s, weight, eps, x.dtype)
    elif weight is None or weight.dtype == x.dtype:
        y = _rms_norm(s, (x.shape[-1],), weight, eps)
    else:
        y = _rms_norm(s.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)
    return y if residual is None else (y, s)
