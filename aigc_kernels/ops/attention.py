"""Softmax attention: dense, packed variable-length, and decoding over a KV cache."""

from __future__ import annotations

import torch

from .. import backend as _backend
from .. import validation
from ..backend import _ENV_DATA, _ENV_KEY, _explaining, _scoped_backends, fast, select
from ..native.attention import attention_with_kvcache as _native_kv


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    window_size: tuple[int, int] | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, with the layout and mask rules of F.scaled_dot_product_attention.

    Args:
        q: (B, Hq, Lq, D).
        k, v: (B, Hkv, Lk, D), with Hq % Hkv == 0 (GQA; Hkv = 1 is MQA).
        causal: query i sees keys j <= i + Lk - Lq (bottom-right aligned; SDPA's when Lq == Lk).
        attn_mask: bool (True = attend) or float (added to the scores), broadcastable to (B, Hq, Lq, Lk).
        dropout_p: dropout on the attention probabilities (always applied when > 0).
        scale: defaults to 1 / sqrt(D).
        window_size: (left, right) sliding window around the aligned diagonal; -1 = unbounded.
        softcap: tanh soft-capping of the scores (Gemma-2): s <- softcap * tanh(s / softcap), applied to
            the scaled scores before the masks.
        sinks: (Hq,) attention sinks (GPT-OSS): one logit per query head that joins each row's softmax
            denominator without a value (so a row's probabilities sum to less than 1); differentiable.
        backend: "cuda" | "triton" | "torch" | "reference" | "auto" | None (the active default).

    Returns:
        (B, Hq, Lq, D) in q's dtype. A query row that sees no key gives zeros.
    """
    call = validation.attention_call(q, k, v, causal, attn_mask, dropout_p, scale, window_size, softcap, sinks)
    return (fast("attention", q, backend) or select(call, backend))(*call)


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    scale: float | None = None,
    window_size: tuple[int, int] | None = None,
    block_table: torch.Tensor | None = None,
    seqused_k: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention over packed sequences of different lengths (no padding).

    Args:
        q: (total_q, Hq, D); k, v: (total_k, Hkv, D), or with ``block_table`` a paged cache
            (num_pages, page_size, Hkv, D) -- vLLM's / FA2's layout.
        cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,) offsets: sequence b owns q rows
            cu_seqlens_q[b]:cu_seqlens_q[b+1] and the matching k/v rows. With ``block_table`` the k offsets only
            give each sequence's key count (cu_seqlens_k[b+1] - cu_seqlens_k[b]); cu_seqlens_k may be None when
            ``seqused_k`` gives the counts.
        max_seqlen_q, max_seqlen_k: the longest sequence lengths (kernels size their grids by them).
        causal, scale, window_size, backend: as in attention, per sequence (causal bottom-right: a sequence's
            last query row sees its last key -- chunked prefill, and decode rows of one query).
        block_table: int32 (batch, max_pages): key row t of sequence b is slot t % page_size of page
            block_table[b, t // page_size] (pages in any order, shared between sequences, a table wider than
            needed). Forward only (inference: chunked prefill, mixed prefill + decode in one launch).
        seqused_k: int32 (batch,): sequence b attends over its first seqused_k[b] keys (FA3's seqused_k); with
            block_table it gives the key counts. Forward only.

    Returns:
        (total_q, Hq, D).
    """
    call = validation.attention_varlen_call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                                            scale, window_size, block_table, seqused_k)
    return select(call, backend)(*call)


def attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    rotary_interleaved: bool = False,
    block_table: torch.Tensor | None = None,
    window_size: tuple[int, int] | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Decoding attention over a KV cache, appending the new keys/values first.

    Args:
        q: (B, Hq, Lq, D), Lq small (1 for token-by-token decoding).
        k_cache, v_cache: (B, Hkv, Lmax, D); modified in place when k_new/v_new are given. With ``block_table``:
            paged, (num_pages, page_size, Hkv, D), the layout of vLLM and FA2's block_table.
        cache_seqlens: int32 (B,), the valid rows of each cache before this call (not modified).
        k_new, v_new: (B, Hkv, Lnew, D), written at rows cache_seqlens[b]:cache_seqlens[b] + Lnew.
        causal: bottom-right aligned over the cache_seqlens[b] + Lnew valid keys.
        rotary_cos, rotary_sin: (Lro, rotary_dim / 2), as ak.rotary's cos/sin; with k_new only. k_new is rotated
            at positions cache_seqlens[b] + i before it is written, and q at cache_seqlens[b] + i when causal,
            else every query row at cache_seqlens[b] -- FA2's flash_attn_with_kvcache. On "triton" and "cuda"
            inside the append kernel (one launch rotates q and writes k_new rotated and v_new into the cache);
            "torch" rotates them with its ak.rotary before its append.
        rotary_interleaved: GPT-J pairs instead of GPT-NeoX halves.
        block_table: int32 (B, max_pages): row t of sequence b is in page block_table[b, t // page_size], slot
            t % page_size; pages in any order, shared between sequences or not; entries past a sequence's pages
            are not read. Every backend runs paged caches: "torch" gathers the pages, the Triton and CUDA
            kernels read (and the appends write) each row through the table in place.
        window_size: (left, right), -1 = unbounded: query i of batch b (at cache position cache_seqlens[b] + i
            with the new keys) sees keys j with i + off - left <= j <= i + off + right, off = its valid keys - Lq
            (FA2's flash_attn_with_kvcache window; causal caps right at 0). A sliding-window model's decode.

    Returns:
        (B, Hq, Lq, D).
    """
    rotary = rotary_cos is not None or rotary_sin is not None or rotary_interleaved is not False
    # auto on CPU tensors with plain arguments and equal host lengths -- a decoding step on CPU, ~150 calls a
    # token -- in one frame: fast()'s backend precedence written out (as in ops/norm.py), validation's
    # fast-path checks and the one read of the lengths in kvcache_host_start, then the native step with that
    # length: 2.0-2.2 us over PyTorch's own step in the dispatch bench, 2.8-3.1 through the general path.
    # Anything else takes the general path below, whose checks and errors are the contract.
    if ((backend == "auto" or (backend is None and not _scoped_backends and _backend._global_backend is None
                               and _ENV_DATA is not None and _ENV_KEY not in _ENV_DATA)) and not _explaining
            and block_table is None and not rotary and window_size is None
            and _backend._CPU_AUTO.get("attention_with_kvcache") is _native_kv
            and (start := validation.kvcache_host_start(q, k_cache, v_cache, cache_seqlens, k_new, v_new, causal,
                                                        scale)) is not None):
        return _native_kv(q, k_cache, v_cache, cache_seqlens, k_new, v_new, causal, scale, _start=start)
    call = validation.kvcache_call(q, k_cache, v_cache, cache_seqlens, k_new, v_new, causal, scale, block_table,
                                   rotary_cos, rotary_sin, rotary_interleaved, window_size)
    return (fast("attention_with_kvcache", q, backend) or select(call, backend))(*call)


def kvcache_append(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    block_table: torch.Tensor | None = None,
    backend: str | None = None,
) -> None:
    """Write k_new/v_new (B, Hkv, Lnew, D) into the caches (B, Hkv, Lmax, D) in place -- or, with an int32
    block_table (B, max_pages), into paged caches (num_pages, page_size, Hkv, D) (see attention_with_kvcache).

    Batch b's new rows land at cache rows cache_seqlens[b]:cache_seqlens[b] + Lnew;
    cache_seqlens (int32, (B,)) is not modified. On a GPU an out-of-range write is caught by a
    device-side assert; with CPU-resident cache_seqlens it is a ValueError before any write.
    """
    call = validation.kvcache_append_call(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)
    (fast("kvcache_append", k_cache, backend) or select(call, backend))(*call)
