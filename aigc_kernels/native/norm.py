"""The "torch" backend's LayerNorm / RMSNorm: the residual add, then PyTorch's layer_norm / rms_norm.

They call ``torch.layer_norm`` / ``torch.rms_norm``, the ops that ``F.layer_norm`` / ``F.rms_norm`` wrap:
the same kernels (and ``__torch_function__`` handling, which the ops' bindings do), without the Python
wrapper's ~0.4 us a call (F.layer_norm reads torch.backends.cudnn.enabled each time; LayerNorm has no
cuDNN kernel, so that flag changes nothing)."""

from __future__ import annotations

import torch

_layer_norm = torch.layer_norm
_rms_norm = torch.rms_norm


def _f32(p):
    return None if p is None else p.float()


def layer_norm(x, weight=None, bias=None, eps=1e-5, residual=None):
    s = x if residual is None else x + residual
    if (weight is None or weight.dtype == x.dtype) and (bias is None or bias.dtype == x.dtype):
        y = _layer_norm(s, (x.shape[-1],), weight, bias, eps)
    else:  # half inputs with float32 parameters: computed in float32 (layer_norm wants one dtype)
        y = _layer_norm(s.float(), (x.shape[-1],), _f32(weight), _f32(bias), eps).to(x.dtype)
    return y if residual is None else (y, s)


def rms_norm(x, weight=None, eps=1e-6, residual=None):
    s = x if residual is None else x + residual
    if weight is None or weight.dtype == x.dtype:
        y = _rms_norm(s, (x.shape[-1],), weight, eps)
    else:
        y = _rms_norm(s.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)
    return y if residual is None else (y, s)
