"""The "cuda" flash attention (csrc/attention): mma.sync forward/backward (a wgmma forward on sm_90a),
split-K decoding. Fake impls, autograd, and the entry points of ak.attention, ak.attention_varlen and
ak.attention_with_kvcache."""

from __future__ import annotations

import torch

from ..contracts.attention import lse_like, softmax_scale, window_pair
from ..contracts.limits import flash_ready
from .kvcache import index_operand, kvcache_append_rotary


def _contiguous_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, memory_format=torch.contiguous_format)


@torch.library.register_fake("aigc_kernels::flash_fwd")
def _flash_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal, window_left,
                    window_right, seqused_k=None, block_table=None):
    torch._check(q.dtype in (torch.float16, torch.bfloat16), lambda: f"flash_fwd: q must be fp16/bf16, got {q.dtype}")
    torch._check(k.shape == v.shape, lambda: f"flash_fwd: k and v shapes differ: {k.shape}, {v.shape}")
    torch._check((seqused_k is None and block_table is None) or cu_seqlens_q is not None,
                 lambda: "flash_fwd: seqused_k and block_table take packed q (cu_seqlens_q)")
    torch._check(block_table is None or (k.dim() == 4 and block_table.dim() == 2
                                         and block_table.dtype == torch.int32),
                 lambda: "flash_fwd: with block_table, k/v are (num_pages, page_size, Hkv, D) and block_table int32 "
                         "(B, max_pages)")
    return _contiguous_like(q), lse_like(q, cu_seqlens_q is not None)


@torch.library.register_fake("aigc_kernels::flash_bwd")
def _flash_bwd_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal,
                    window_left, window_right):
    return _contiguous_like(q), _contiguous_like(k), _contiguous_like(v)


@torch.library.register_fake("aigc_kernels::flash_decode")
def _flash_decode_fake(q, k_cache, v_cache, cache_seqlens, lnew, causal, scale, num_splits, block_table=None,
                       window_left=-1, window_right=-1):
    return _contiguous_like(q)


def _flash_setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, wl, wr, *paging = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.args = (max_q, max_k, scale, causal, wl, wr)
    ctx.n_inputs = len(inputs)
    ctx.forward_only = any(t is not None for t in paging)  # seqused_k / block_table


def _flash_backward(ctx, dout, dlse):
    if ctx.forward_only:
        raise RuntimeError("aigc_kernels::flash_fwd: no backward with seqused_k or block_table (forward only)")
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    max_q, max_k, scale, causal, wl, wr = ctx.args
    # the gradient of a sum arrives expanded (stride 0 along the head dim): copy what the kernel cannot read
    dq, dk, dv = torch.ops.aigc_kernels.flash_bwd(_flash_operand(dout), q, k, v, out, lse, cu_q, cu_k, max_q, max_k,
                                                  scale, causal, wl, wr)
    return (dq, dk, dv) + (None,) * (ctx.n_inputs - 3)


torch.library.register_autograd("aigc_kernels::flash_fwd", _flash_backward, setup_context=_flash_setup_context)


def _flash_operand(t: torch.Tensor) -> torch.Tensor:
    return t if flash_ready(t) else t.contiguous()


# The "cuda" backend's entry points, with the signatures of the public functions (minus backend=);
# aigc_kernels.contracts.limits has already turned away what the kernels do not take (masks, dropout).
def attention(q, k, v, causal=False, attn_mask=None, dropout_p=0.0, scale=None, window_size=None, softcap=None,
              sinks=None):
    wl, wr = window_pair(window_size)
    out, _ = torch.ops.aigc_kernels.flash_fwd(_flash_operand(q), _flash_operand(k), _flash_operand(v), None, None,
                                              q.shape[2], k.shape[2], softmax_scale(q, scale), causal, wl, wr)
    return out


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, scale=None,
                     window_size=None, block_table=None, seqused_k=None):
    wl, wr = window_pair(window_size)
    paging = () if block_table is None and seqused_k is None else (index_operand(seqused_k), index_operand(block_table))
    out, _ = torch.ops.aigc_kernels.flash_fwd(_flash_operand(q), _flash_operand(k), _flash_operand(v), cu_seqlens_q,
                                              cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                                              softmax_scale(q, scale), causal, wl, wr, *paging)
    return out


def attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, k_new=None, v_new=None, causal=True, scale=None,
                           block_table=None, rotary_cos=None, rotary_sin=None, rotary_interleaved=False,
                           window_size=None):
    lnew, block_table = 0, index_operand(block_table)
    if rotary_cos is not None:  # one launch: q rotated, k_new rotated into the cache, v_new copied
        q = kvcache_append_rotary(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, q, rotary_cos,
                                  rotary_sin, rotary_interleaved, causal)
        lnew = k_new.shape[2]
    elif k_new is not None:  # in place, into the pages when paged
        torch.ops.aigc_kernels.kvcache_append(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)
        lnew = k_new.shape[2]
    window = () if window_size is None else window_pair(window_size)
    return torch.ops.aigc_kernels.flash_decode(_flash_operand(q), k_cache, v_cache, cache_seqlens, lnew, causal,
                                               softmax_scale(q, scale), 0, block_table, *window)
