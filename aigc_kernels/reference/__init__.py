"""Naive PyTorch for every op: the oracle of the tests, the CPU path, and the baseline.

Each function is written for clarity, not speed: it materializes the full score matrix, loops
over packed sequences, and relies on autograd for the backward. Run it in float64 to get the
reference the kernels are judged against, or in the kernels' own low precision to measure the
error that precision alone causes (see aigc_kernels.testing).

Arguments are assumed valid: the public functions in aigc_kernels.ops check them first. One module
per op family (attention, norm, linear, rotary).
"""

from __future__ import annotations

from ..contracts.linear import apply_activation  # one table for every backend
from ..contracts.tables import ACTIVATIONS
from .attention import attention, attention_mask, attention_varlen, attention_with_kvcache, band_mask, kvcache_append
from .linear import ffn, linear
from .norm import layer_norm, rms_norm
from .rotary import rotary

__all__ = [
    "ACTIVATIONS",
    "apply_activation",
    "attention",
    "attention_mask",
    "band_mask",
    "attention_varlen",
    "attention_with_kvcache",
    "ffn",
    "kvcache_append",
    "layer_norm",
    "linear",
    "rms_norm",
    "rotary",
]
