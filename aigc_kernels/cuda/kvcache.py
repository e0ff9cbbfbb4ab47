"""The "cuda" KV cache append (csrc/kvcache): fake impl and entry point."""

from __future__ import annotations

import torch


@torch.library.register_fake("aigc_kernels::kvcache_append")
def _kvcache_append_fake(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table=None) -> None:
    torch._check(k_cache.dim() == 4 and v_cache.shape == k_cache.shape,
                 lambda: f"kvcache_append: caches must be (B, Hkv, Lmax, D) or paged (num_pages, page_size, Hkv, D), "
                         f"got {k_cache.shape}, {v_cache.shape}")
    torch._check(block_table is None or (block_table.dim() == 2 and block_table.dtype == torch.int32),
                 lambda: "kvcache_append: block_table must be int32 (B, max_pages)")
    torch._check(k_new.dim() == 4 and v_new.shape == k_new.shape,
                 lambda: f"kvcache_append: k_new/v_new must be (B, Hkv, Lnew, D), got {k_new.shape}, {v_new.shape}")
    torch._check(cache_seqlens.dtype == torch.int32, lambda: "kvcache_append: cache_seqlens must be int32")
    return None


@torch.library.register_fake("aigc_kernels::kvcache_append_rotary")
def _kvcache_append_rotary_fake(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, q, cos, sin,
                                interleaved, causal):
    _kvcache_append_fake(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)
    torch._check(q.dim() == 4 and q.dtype == k_new.dtype,
                 lambda: f"kvcache_append_rotary: q must be (B, Hq, Lq, D) of k_new's dtype, got {q.dtype} {q.shape}")
    torch._check(cos.dim() == 2 and sin.shape == cos.shape and 2 * cos.shape[1] <= q.shape[3],
                 lambda: f"kvcache_append_rotary: cos/sin must be (Lro, rotary_dim / 2), got {cos.shape}, {sin.shape}")
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def index_operand(t: torch.Tensor | None) -> torch.Tensor | None:
    """block_table / seqused_k as the kernels read them (unit stride along the last dim)."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def kvcache_append_rotary(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, q, cos, sin, interleaved,
                          causal) -> torch.Tensor:
    """The append with q and k_new rotated inside (one launch); returns q rotated."""
    return torch.ops.aigc_kernels.kvcache_append_rotary(k_cache, v_cache, k_new, v_new, cache_seqlens,
                                                        index_operand(block_table), q, index_operand(cos),
                                                        index_operand(sin), interleaved, causal)


def kvcache_append(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table=None) -> None:
    torch.ops.aigc_kernels.kvcache_append(k_cache, v_cache, k_new, v_new, cache_seqlens, index_operand(block_table))
