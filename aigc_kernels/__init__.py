"""aigc-kernels: fused GPU kernels for Transformers, as torch ops with a backend switch.

    import aigc_kernels as ak
    y = ak.attention(q, k, v, causal=True)            # the active backend ("auto" by default)
    with ak.use_backend("triton"):                     # or backend="triton" per call
        y, s = ak.layer_norm(x, w, b, residual=r)

This module imports torch only: triton and the compiled extension aigc_kernels._C load on
first use of a backend that needs them.
"""

from __future__ import annotations

import sys

from . import backend, reference
from ._version import __version__
from .backend import (
    BackendError,
    available_backends,
    get_backend,
    set_backend,
    use_backend,
)
from .ops import (
    attention,
    attention_varlen,
    attention_with_kvcache,
    explain,
    ffn,
    kvcache_append,
    layer_norm,
    linear,
    rms_norm,
    rotary,
)
from .patch import patch, register_hf, unpatch

__all__ = [
    "BackendError",
    "__version__",
    "attention",
    "attention_varlen",
    "attention_with_kvcache",
    "available_backends",
    "backend",
    "explain",
    "ffn",
    "get_backend",
    "kvcache_append",
    "layer_norm",
    "linear",
    "models",
    "nn",
    "reference",
    "rms_norm",
    "rotary",
    "patch",
    "register_hf",
    "set_backend",
    "unpatch",
    "use_backend",
]


if "transformers" in sys.modules:  # already loaded: make attn_implementation="aigc_kernels" work now
    register_hf()


def __getattr__(name: str):
    # nn and models are plain torch, but loading them lazily keeps `import aigc_kernels` light.
    if name in ("nn", "models", "testing"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
