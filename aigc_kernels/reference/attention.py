"""Naive attention: the full score matrix, a loop over packed sequences, autograd for the backward."""

from __future__ import annotations

import itertools
import math

import torch

from .rotary import rotary


def band_mask(
    qpos: torch.Tensor,
    kpos: torch.Tensor,
    shift: torch.Tensor | int,
    *,
    causal: bool = False,
    window_size: tuple[int, int] | None = None,
) -> torch.Tensor | None:
    """Bool mask (True = attend) of causal masking and a sliding window around a shifted diagonal.

    Query position i is aligned with key position i + shift. causal keeps keys j <= i + shift;
    window_size=(left, right) keeps i + shift - left <= j <= i + shift + right (-1 = unbounded).
    qpos, kpos and shift broadcast against each other. Returns None when nothing is masked.
    """
    left, right = window_size if window_size is not None else (-1, -1)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    if left < 0 and right < 0:
        return None
    diag = qpos + shift
    keep = torch.ones(torch.broadcast_shapes(diag.shape, kpos.shape), dtype=torch.bool, device=kpos.device)
    if right >= 0:
        keep &= kpos <= diag + right
    if left >= 0:
        keep &= kpos >= diag - left
    return keep


def attention_mask(
    lq: int,
    lk: int,
    *,
    causal: bool = False,
    window_size: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """The (Lq, Lk) mask of :func:`band_mask` for one sequence, bottom-right aligned (shift = Lk - Lq),
    so the last query sees the last key."""
    i = torch.arange(lq, device=device).unsqueeze(1)
    j = torch.arange(lk, device=device).unsqueeze(0)
    return band_mask(i, j, lk - lq, causal=causal, window_size=window_size)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, L, D) -> (B, Hkv * groups, L, D): query head h reads kv head h // groups."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    window_size: tuple[int, int] | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    *,
    dropout_mask: torch.Tensor | None = None,
    return_lse: bool = False,
    return_probs: bool = False,
):
    """softmax(q k^T * scale + mask) v, for q (B, Hq, Lq, D) and k, v (B, Hkv, Lk, D).

    attn_mask: bool (True = attend) or float (added to the scores), broadcastable to
    (B, Hq, Lq, Lk). A query row that sees no key returns zeros (and lse = -inf).
    softcap: scores <- softcap * tanh(scores / softcap) before the masks (Gemma-2).
    sinks: (Hq,) one extra logit per head in each row's softmax denominator, with no value (GPT-OSS).
    dropout_mask: an explicit keep-mask (bool, broadcastable to (B, Hq, Lq, Lk)) used instead
    of drawing one, so a kernel with its own random numbers can be checked exactly.
    Returns out, or (out, lse) with lse (B, Hq, Lq) in float32 (float64 for float64 inputs), or
    (out, probs) with return_probs (the probabilities after dropout, as transformers' eager returns).
    """
    hq, hkv = q.shape[1], k.shape[1]
    lq, lk = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    k = _repeat_kv(k, hq // hkv)
    v = _repeat_kv(v, hq // hkv)
    # Softmax statistics in float32 at least, as every fused kernel keeps them.
    stat_dtype = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(q, k.transpose(-2, -1)).to(stat_dtype) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(stat_dtype)
    structural = attention_mask(lq, lk, causal=causal, window_size=window_size, device=q.device)
    if structural is not None:
        scores = scores.masked_fill(~structural, float("-inf"))
    if sinks is not None:
        # the sink is one more column of every row's softmax, with no value behind it: a row that sees no
        # key puts all its weight there and returns zeros
        sink = sinks.to(stat_dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        combined = torch.cat([scores, sink], dim=-1)
        lse = torch.logsumexp(combined, dim=-1)
        probs = torch.softmax(combined, dim=-1)[..., :-1]
    else:
        # Rows that see no key: softmax would give NaN; the contract says zeros. Only -inf entries
        # count as "no key", so a NaN in q or k still propagates.
        empty = (scores == float("-inf")).all(dim=-1, keepdim=True)
        scores = scores.masked_fill(empty, 0.0)
        lse = torch.logsumexp(scores, dim=-1).masked_fill(empty.squeeze(-1), float("-inf"))
        probs = torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)
    if dropout_mask is None and dropout_p > 0.0:
        dropout_mask = torch.rand(probs.shape, device=probs.device) >= dropout_p
    if dropout_mask is not None:
        probs = probs * dropout_mask / (1.0 - dropout_p)
    out = torch.matmul(probs.to(v.dtype), v)
    if return_probs:
        return out, probs.to(q.dtype)
    return (out, lse) if return_lse else out


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    scale: float | None = None,
    window_size: tuple[int, int] | None = None,
    block_table: torch.Tensor | None = None,
    seqused_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention over packed sequences: q (total_q, Hq, D), k/v (total_k, Hkv, D).

    Sequence b owns rows cu_seqlens_q[b]:cu_seqlens_q[b+1] of q and the matching rows of k/v;
    causal and the window are aligned bottom-right within each sequence. With ``block_table`` k/v are a paged
    cache (num_pages, page_size, Hkv, D): key t of sequence b is k[block_table[b, t // page_size], t % page_size];
    ``seqused_k`` (B,) limits sequence b to its first seqused_k[b] keys (with block_table: its key count).
    """
    if block_table is not None or seqused_k is not None:  # each sequence's keys, read one by one, then packed
        span = None if cu_seqlens_k is None else [b - a for a, b in zip(cu_seqlens_k.tolist()[:-1],
                                                                         cu_seqlens_k.tolist()[1:], strict=True)]
        used = seqused_k.tolist() if seqused_k is not None else span
        ks, vs = [], []
        for b, n in enumerate(used):
            if block_table is not None:
                page = k.shape[1]
                rows = [(int(block_table[b, t // page]), t % page) for t in range(n)]
                ks += [k[p, s] for p, s in rows]
                vs += [v[p, s] for p, s in rows]
            else:
                start = int(cu_seqlens_k[b])
                ks += list(k[start:start + n])
                vs += list(v[start:start + n])
        shape = (0, k.shape[-2], k.shape[-1])
        k = torch.stack(ks) if ks else k.new_zeros(shape)
        v = torch.stack(vs) if vs else v.new_zeros(shape)
        cu_seqlens_k = torch.tensor([0] + list(itertools.accumulate(used)), dtype=torch.int32, device=q.device)
    # One block-diagonal mask over all packed rows: a row attends only within its own sequence,
    # with causal/window aligned bottom-right there. Rows past the last offset see no key.
    def rows(cu: torch.Tensor, total: int):
        r = torch.arange(total, device=cu.device)
        seq = torch.searchsorted(cu[1:].to(torch.long), r, right=True)
        cu_ext = torch.cat([cu.to(torch.long), cu[-1:].to(torch.long)])
        return seq, r - cu_ext[seq], cu_ext[seq + 1] - cu_ext[seq]

    seq_q, pos_q, len_q = rows(cu_seqlens_q, q.shape[0])
    seq_k, pos_k, _ = rows(cu_seqlens_k, k.shape[0])
    len_k_of_q = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).to(torch.long)
    len_k_of_q = torch.cat([len_k_of_q, len_k_of_q.new_zeros(1)])[seq_q]
    keep = seq_q[:, None] == seq_k[None, :]
    band = band_mask(pos_q[:, None], pos_k[None, :], (len_k_of_q - len_q)[:, None], causal=causal,
                     window_size=window_size)
    if band is not None:
        keep &= band
    out = attention(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
                    attn_mask=keep, scale=scale)
    return out.squeeze(0).transpose(0, 1)


def kvcache_append(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor | None = None,
) -> None:
    """Write k_new/v_new (B, Hkv, Lnew, D) into the caches at rows cache_seqlens[b]:+Lnew, in place.

    With a block table (B, max_pages) the caches are paged, (num_pages, page_size, Hkv, D): row t of
    sequence b lives in page block_table[b, t // page_size], slot t % page_size."""
    b, h, lnew, d = k_new.shape
    if block_table is not None:
        page = k_cache.shape[1]
        for i in range(b):
            for j in range(lnew):
                t = int(cache_seqlens[i]) + j
                p = int(block_table[i, t // page])
                k_cache[p, t % page] = k_new[i, :, j]
                v_cache[p, t % page] = v_new[i, :, j]
        return
    rows = cache_seqlens.to(torch.long).view(b, 1, 1, 1) + torch.arange(lnew, device=k_new.device).view(1, 1, lnew, 1)
    index = rows.expand(b, h, lnew, d)
    k_cache.scatter_(2, index, k_new)
    v_cache.scatter_(2, index, v_new)


def attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    block_table: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    rotary_interleaved: bool = False,
    window_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Decoding attention over a KV cache: q (B, Hq, Lq, D), caches (B, Hkv, Lmax, D) -- or, with a block table
    (B, max_pages), paged caches (num_pages, page_size, Hkv, D) (see kvcache_append).

    window_size=(left, right) keeps keys i + off - left <= j <= i + off + right of query i (off = valid keys - Lq;
    causal caps right at 0), as FA2's flash_attn_with_kvcache.

    With rotary_cos/rotary_sin (Lro, R/2), k_new is rotated at positions cache_seqlens[b] + i before it is
    written, and q at cache_seqlens[b] + i (causal) or cache_seqlens[b] (not causal), as FA2 does.

    cache_seqlens (B,) int32 counts the valid rows of each cache before this call. k_new/v_new,
    when given, are written at those rows first (in place), and batch b then attends to its
    first cache_seqlens[b] + Lq keys; causal is aligned bottom-right, so the new queries see the
    whole old cache and the new keys up to their own position. cache_seqlens is not modified.
    """
    lq, lmax = q.shape[2], k_cache.shape[2]
    if rotary_cos is not None:
        start = cache_seqlens.to(torch.long).unsqueeze(1)
        pos_q = start + torch.arange(lq, device=q.device) if causal else start.expand(-1, lq)
        q = rotary(q, rotary_cos, rotary_sin, pos_q, rotary_interleaved)
        k_new = rotary(k_new, rotary_cos, rotary_sin, start + torch.arange(k_new.shape[2], device=q.device),
                       rotary_interleaved)
    if k_new is not None:
        kvcache_append(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)
    if block_table is not None:  # each sequence's rows, read page by page into a contiguous cache
        page, (_, _, hkv, d) = k_cache.shape[1], k_cache.shape
        n_rows = block_table.shape[1] * page
        lengths = cache_seqlens.to(torch.long) + (k_new.shape[2] if k_new is not None else 0)
        dense_k = k_cache.new_zeros(q.shape[0], hkv, n_rows, d)
        dense_v = v_cache.new_zeros(q.shape[0], hkv, n_rows, d)
        for i in range(q.shape[0]):
            for t in range(int(lengths[i])):
                p = int(block_table[i, t // page])
                dense_k[i, :, t], dense_v[i, :, t] = k_cache[p, t % page], v_cache[p, t % page]
        k_cache, v_cache, lmax = dense_k, dense_v, n_rows
    lengths = (cache_seqlens.to(torch.long) + (k_new.shape[2] if k_new is not None else 0)).view(-1, 1, 1)
    j = torch.arange(lmax, device=q.device).view(1, 1, lmax)
    keep = j < lengths  # (B, 1, Lmax): valid cache rows
    i = torch.arange(lq, device=q.device).view(1, lq, 1)
    band = band_mask(i, j, lengths - lq, causal=causal, window_size=window_size)  # (B, Lq, Lmax) or None
    if band is not None:
        keep = keep & band
    return attention(q, k_cache, v_cache, attn_mask=keep.unsqueeze(1), scale=scale)
