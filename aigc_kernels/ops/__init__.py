"""The functional API, one module per op family, and the backend registrations.

Every public function validates its arguments (aigc_kernels.validation), asks
aigc_kernels.backend.select for the implementation, and calls it. Kernel issues add their
implementations below with backend.register; the "torch" backend is the reference.
"""

from __future__ import annotations

import functools

from .. import reference
from ..backend import register
from . import limits
from .attention import attention, attention_varlen, attention_with_kvcache, kvcache_append
from .linear import ffn, linear
from .norm import layer_norm, rms_norm

PUBLIC_OPS = (
    "attention",
    "attention_varlen",
    "attention_with_kvcache",
    "kvcache_append",
    "layer_norm",
    "rms_norm",
    "linear",
    "ffn",
)

for _op in PUBLIC_OPS:
    register(_op, "torch", functools.partial(getattr, reference, _op))


def _cuda_kvcache_append():
    from . import cuda_ops

    return cuda_ops.kvcache_append


register("kvcache_append", "cuda", _cuda_kvcache_append)


def _triton_layer_norm():
    from ..triton import norm

    return norm.layer_norm


def _triton_rms_norm():
    from ..triton import norm

    return norm.rms_norm


def _cuda_layer_norm():
    from . import cuda_ops

    return cuda_ops.layer_norm


def _cuda_rms_norm():
    from . import cuda_ops

    return cuda_ops.rms_norm


def _triton_attention(name: str):
    def load():
        from ..triton import attention

        return getattr(attention, name)

    return load


for _op in ("attention", "attention_varlen", "attention_with_kvcache"):
    register(_op, "triton", _triton_attention(_op), getattr(limits, f"triton_{_op}"))
def _triton_linear(name: str):
    def load():
        from ..triton import linear

        return getattr(linear, name)

    return load


register("linear", "triton", _triton_linear("linear"), limits.triton_linear)
register("ffn", "triton", _triton_linear("ffn"), limits.triton_ffn)
register("layer_norm", "triton", _triton_layer_norm, limits.triton_layer_norm)
register("rms_norm", "triton", _triton_rms_norm, limits.triton_rms_norm)
register("layer_norm", "cuda", _cuda_layer_norm, limits.cuda_layer_norm)
register("rms_norm", "cuda", _cuda_rms_norm, limits.cuda_rms_norm)

__all__ = [
    "PUBLIC_OPS",
    "attention",
    "attention_varlen",
    "attention_with_kvcache",
    "ffn",
    "kvcache_append",
    "layer_norm",
    "linear",
    "rms_norm",
]
