"""The "torch" backend's linear and FFN: F.linear (torch._addmm_activation where it fuses) and the activation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..contracts.tables import ACTIVATIONS

# The ops behind F.relu / F.silu, without their Python wrappers (~0.4 us a call); F.gelu is the op itself.
_ACT = {"relu": torch.relu, "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
        "silu": getattr(torch._C._nn, "silu", F.silu)}
assert tuple(_ACT) == ACTIVATIONS, "contracts.tables.ACTIVATIONS and the native activations disagree"


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(x, weight, bias=None, activation=None):
    if (activation == "relu" and bias is not None and x.dim() == 2 and not _needs_grad(x, weight, bias)
            and x.shape[0] > 0 and x.shape[1] > 0):
        # bias + ReLU in the GEMM's epilogue (cuBLASLt on a GPU); inference only (no autograd formula)
        return torch._addmm_activation(bias, x, weight.t(), use_gelu=False)
    y = F.linear(x, weight, bias)
    return y if activation is None else _ACT[activation](y)


def _ffn(x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate):
    if w_gate is None:
        h = linear(x, w_in, b_in, activation=activation)
    else:
        h = _ACT[activation](F.linear(x, w_gate, b_gate)) * F.linear(x, w_in, b_in)
    return F.linear(h, w_out, b_out)


def ffn(x, w_in, b_in, w_out, b_out, activation="gelu", w_gate=None, b_gate=None, recompute=False):
    if recompute and _needs_grad(x, w_in, b_in, w_out, b_out, w_gate, b_gate):
        from torch.utils.checkpoint import checkpoint

        # keeps x only; the hidden activations are recomputed in the backward
        return checkpoint(_ffn, x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate, use_reentrant=False)
    return _ffn(x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate)
