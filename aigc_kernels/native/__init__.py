"""The "torch" backend: PyTorch's own best native call for every op, under the library's contract.

Where the contract and PyTorch's function differ, the difference is bridged here, never ignored:

* attention: F.scaled_dot_product_attention (its flash / cuDNN / efficient kernels on a GPU).
  GQA through ``enable_gqa`` (or repeated heads on older torch); ``causal`` is bottom-right aligned
  here and top-left in SDPA, so Lq == Lk passes ``is_causal``, Lq < Lk uses PyTorch's lower-right
  causal bias, and everything else (Lq > Lk, windows, user masks with causal) becomes one bool
  mask. A query row that sees no key returns zeros (SDPA would give NaN): such rows are given
  every key, and their output is zeroed, so gradients stay finite and exact.
* attention_varlen: PyTorch's flash varlen attention on a GPU where the installed torch has it
  (half types), else one SDPA call per sequence.
* attention_with_kvcache: the new rows written in place (one slice copy per cache when the lengths
  are on the host and equal, the usual decoding step, else a scatter), then SDPA over that prefix of
  the caches, or over the whole caches with a mask of each batch's valid (and causally visible) rows.
* layer_norm / rms_norm: the residual add in x's dtype, then F.layer_norm / F.rms_norm (float32
  parameters with half inputs: computed in float32). On CPU without autograd, rms_norm of >= 32k
  elements (rows <= 16384) runs one vector_norm and two in-place multiplies instead of torch's
  six-kernel composite (measured 1.5-1.9x faster here; see native/norm.py).
* linear: F.linear and the activation (``torch._addmm_activation`` fuses bias + ReLU into the GEMM
  where it applies); ffn: the same, and ``recompute=True`` through activation checkpointing.
* rotary: PyTorch has no fused rotary call: its elementwise ops, in float32 for half inputs.

One module per op family (attention, norm, linear). The naive oracle stays ``aigc_kernels.reference``
(backend "reference"); this package never calls it.
"""

from __future__ import annotations

from .attention import attention, attention_math, attention_varlen, attention_with_kvcache, kvcache_append
from .linear import ffn, linear
from .norm import layer_norm, rms_norm
from .rotary import rotary

__all__ = ["attention", "attention_math", "attention_varlen", "attention_with_kvcache", "ffn", "kvcache_append",
           "layer_norm", "linear", "rms_norm", "rotary"]
