"""The "torch" backend's LayerNorm / RMSNorm: the residual add, then F.layer_norm / F.rms_norm."""

from __future__ import annotations

import torch.nn.functional as F


def _f32(p):
    return None if p is None else p.float()


def layer_norm(x, weight=None, bias=None, eps=1e-5, residual=None):
    s = x if residual is None else x + residual
    if (weight is None or weight.dtype == x.dtype) and (bias is None or bias.dtype == x.dtype):
        y = F.layer_norm(s, (x.shape[-1],), weight, bias, eps)
    else:  # half inputs with float32 parameters: computed in float32 (F.layer_norm wants one dtype)
        y = F.layer_norm(s.float(), (x.shape[-1],), _f32(weight), _f32(bias), eps).to(x.dtype)
    return y if residual is None else (y, s)


def rms_norm(x, weight=None, eps=1e-6, residual=None):
    s = x if residual is None else x + residual
    if weight is None or weight.dtype == x.dtype:
        y = F.rms_norm(s, (x.shape[-1],), weight, eps)
    else:
        y = F.rms_norm(s.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)
    return y if residual is None else (y, s)
