"""One normalized call per op: what the public function's checks (aigc_kernels.validation) return, and what
every backend's ``why_not`` check (aigc_kernels.contracts.limits), the dispatch key and the implementation
take. Fields are the public function's parameters in its order (minus ``backend``), checked, with the window
resolved, so ``impl(*call)`` runs any backend's implementation.

The attention calls keep ``scale=None`` for the default 1/sqrt(D) (``call.softmax_scale`` is the number):
handing SDPA a scale it would compute itself costs ~0.5 us a call, and the "torch" backend passes None on.

They are tuples (NamedTuple): building one costs ~0.2 us, which a decoding step pays ~150 times per token.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .attention import softmax_scale

Tensor = torch.Tensor


def _softmax_scale(call) -> float:
    """The scale of q k^T: 1 / sqrt(D) where the call has None."""
    return softmax_scale(call[0], call.scale)


class AttentionCall(NamedTuple):
    q: Tensor
    k: Tensor
    v: Tensor
    causal: bool
    attn_mask: Tensor | None
    dropout_p: float
    scale: float | None  # a float; None = 1 / sqrt(D) (softmax_scale)
    window_size: tuple[int, int] | None
    softcap: float | None
    sinks: Tensor | None

    op = "attention"
    softmax_scale = property(_softmax_scale)


class AttentionVarlenCall(NamedTuple):
    q: Tensor
    k: Tensor
    v: Tensor
    cu_seqlens_q: Tensor
    cu_seqlens_k: Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    causal: bool
    scale: float | None
    window_size: tuple[int, int] | None
    block_table: Tensor | None  # int32 (B, max_pages): k/v are a paged cache (num_pages, page_size, Hkv, D)
    seqused_k: Tensor | None  # int32 (B,): the keys sequence b uses (FA3's seqused_k)

    op = "attention_varlen"
    softmax_scale = property(_softmax_scale)


class KVCacheCall(NamedTuple):
    q: Tensor
    k_cache: Tensor
    v_cache: Tensor
    cache_seqlens: Tensor
    k_new: Tensor | None
    v_new: Tensor | None
    causal: bool
    scale: float | None
    block_table: Tensor | None  # int32 (B, max_pages): the caches are paged (num_pages, page_size, Hkv, D)
    # (Lro, rotary_dim / 2): q and k_new rotated at their cache positions inside the append (FA2's rotary_cos)
    rotary_cos: Tensor | None
    rotary_sin: Tensor | None
    rotary_interleaved: bool
    window_size: tuple[int, int] | None  # (left, right) around the bottom-right diagonal; causal caps right at 0

    op = "attention_with_kvcache"
    softmax_scale = property(_softmax_scale)


class KVCacheAppendCall(NamedTuple):
    k_cache: Tensor
    v_cache: Tensor
    k_new: Tensor
    v_new: Tensor
    cache_seqlens: Tensor
    block_table: Tensor | None

    op = "kvcache_append"


class LayerNormCall(NamedTuple):
    x: Tensor
    weight: Tensor | None
    bias: Tensor | None
    eps: float
    residual: Tensor | None

    op = "layer_norm"


class RMSNormCall(NamedTuple):
    x: Tensor
    weight: Tensor | None
    eps: float
    residual: Tensor | None

    op = "rms_norm"


class LinearCall(NamedTuple):
    x: Tensor
    weight: Tensor
    bias: Tensor | None
    activation: str | None

    op = "linear"


class FFNCall(NamedTuple):
    x: Tensor
    w_in: Tensor
    b_in: Tensor | None
    w_out: Tensor
    b_out: Tensor | None
    activation: str | None
    w_gate: Tensor | None
    b_gate: Tensor | None
    recompute: bool

    op = "ffn"


class RotaryCall(NamedTuple):
    x: Tensor
    cos: Tensor
    sin: Tensor
    position_ids: Tensor | None
    interleaved: bool
    inplace: bool

    op = "rotary"


Call = (AttentionCall | AttentionVarlenCall | KVCacheCall | KVCacheAppendCall | LayerNormCall | RMSNormCall
        | LinearCall | FFNCall | RotaryCall)
CALLS = {c.op: c for c in (AttentionCall, AttentionVarlenCall, KVCacheCall, KVCacheAppendCall, LayerNormCall,
                           RMSNormCall, LinearCall, FFNCall, RotaryCall)}
# The public ops, in the order of the API table. Here, below backend.py and ops/ (both import it), so that
# neither imports the other to know the list.
PUBLIC_OPS: tuple[str, ...] = tuple(CALLS)
