"""The public functions, one module per op family, and the backend registrations.

Every public function validates its arguments (aigc_kernels.validation), asks
aigc_kernels.backend.select for the implementation, and calls it. Implementations are registered
below: "torch" is PyTorch's own calls (aigc_kernels.native), "reference" the naive oracle
(aigc_kernels.reference), "cuda" and "triton" the library's kernels (loaded on first use).
"""

from __future__ import annotations

import functools

from .. import backend as _backend_mod
from .. import native, reference
from ..backend import Explanation, register
from ..contracts import limits
from ..contracts.calls import PUBLIC_OPS
from .attention import attention, attention_varlen, attention_with_kvcache, kvcache_append
from .linear import ffn, linear
from .norm import layer_norm, rms_norm
from .rotary import rotary

for _op in PUBLIC_OPS:
    register(_op, "torch", functools.partial(getattr, native, _op))
    register(_op, "reference", functools.partial(getattr, reference, _op))


# Kernel modules load on first use, through import statements (torch.compile executes those
# eagerly, so a first call inside a compiled region works too). One loader per backend x family.
def _cuda_attention():
    from ..cuda import attention

    return attention


def _cuda_kvcache():
    from ..cuda import kvcache

    return kvcache


def _cuda_norm():
    from ..cuda import norm

    return norm


def _cuda_linear():
    from ..cuda import linear

    return linear


def _cuda_rotary():
    from ..cuda import rotary

    return rotary


def _triton_attention():
    from ..triton import attention

    return attention


def _triton_norm():
    from ..triton import norm

    return norm


def _triton_linear():
    from ..triton import linear

    return linear


def _triton_rotary():
    from ..triton import rotary

    return rotary


def _attr(module_loader, name: str):
    return getattr(module_loader(), name)


_KERNELS = [  # (backend, op, module, check of the arguments: aigc_kernels.contracts.limits)
    ("cuda", "attention", _cuda_attention, limits.cuda_attention),
    ("cuda", "attention_varlen", _cuda_attention, limits.cuda_attention_varlen),
    ("cuda", "attention_with_kvcache", _cuda_attention, limits.cuda_attention_with_kvcache),
    ("cuda", "kvcache_append", _cuda_kvcache, limits.cuda_kvcache_append),
    ("cuda", "layer_norm", _cuda_norm, limits.cuda_layer_norm),
    ("cuda", "rms_norm", _cuda_norm, limits.cuda_rms_norm),
    ("cuda", "linear", _cuda_linear, limits.cuda_linear),
    ("cuda", "ffn", _cuda_linear, limits.cuda_ffn),
    ("cuda", "rotary", _cuda_rotary, limits.cuda_rotary),
    ("triton", "attention", _triton_attention, limits.triton_attention),
    ("triton", "attention_varlen", _triton_attention, limits.triton_attention_varlen),
    ("triton", "attention_with_kvcache", _triton_attention, limits.triton_attention_with_kvcache),
    ("triton", "kvcache_append", _triton_attention, limits.triton_kvcache_append),
    ("triton", "layer_norm", _triton_norm, limits.triton_layer_norm),
    ("triton", "rms_norm", _triton_norm, limits.triton_rms_norm),
    ("triton", "linear", _triton_linear, limits.triton_linear),
    ("triton", "ffn", _triton_linear, limits.triton_ffn),
    ("triton", "rotary", _triton_rotary, limits.triton_rotary),
]
for _backend, _op, _module, _check in _KERNELS:
    register(_op, _backend, functools.partial(_attr, _module, _op), _check)

__all__ = [
    "PUBLIC_OPS",
    "explain",
    "attention",
    "attention_varlen",
    "attention_with_kvcache",
    "ffn",
    "kvcache_append",
    "layer_norm",
    "linear",
    "rms_norm",
    "rotary",
]


def explain(op: str, *args, **kwargs) -> Explanation:
    """Which backend ``ak.<op>(*args, **kwargs)`` runs on and why, without running it.

    The arguments are checked exactly as the op checks them (bad input raises the same error).
    """
    if op not in PUBLIC_OPS:
        raise ValueError(f"ak.explain: expected an op in {PUBLIC_OPS}, got {op!r}")
    fn = globals()[op]
    _backend_mod._explaining.append(True)
    try:
        fn(*args, **kwargs)
    except _backend_mod._Explained as done:
        return done.explanation
    finally:
        _backend_mod._explaining.pop()
    raise RuntimeError(f"ak.explain: ak.{op} returned without selecting a backend")  # pragma: no cover
