"""The "torch" backend's attention: SDPA under the library's contract (see aigc_kernels.native)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from .rotary import rotary

_HAS_ENABLE_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)  # SDPA's enable_gqa

# torch.nn.attention.bias / .varlen are imported on first use: importing them pulls in torch._dynamo
# (and triton) at ~1 s, which `import aigc_kernels` must not pay.
@functools.cache
def _causal_lower_right():
    try:  # torch >= 2.3
        from torch.nn.attention.bias import causal_lower_right
    except ImportError:  # pragma: no cover
        return None
    return causal_lower_right


@functools.cache
def _varlen_attn_fn():
    try:  # torch >= 2.10: flash varlen attention (CUDA, half types)
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # pragma: no cover
        return None
    return varlen_attn


def _window_bounds(causal: bool, window_size) -> tuple[int, int]:
    """(left, right) of the window (-1 = unbounded), causal capping the right side at the diagonal."""
    left, right = window_size if window_size is not None else (-1, -1)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    return left, right


def _window_keep(j: torch.Tensor, diag: torch.Tensor, left: int, right: int) -> torch.Tensor | None:
    """Bool keep-mask of keys j for queries whose bottom-right diagonal key is diag (broadcast); None when the
    window bounds nothing."""
    keep = None
    if right >= 0:
        keep = j <= diag + right
    if left >= 0:
        far = j >= diag - left
        keep = far if keep is None else keep & far
    return keep


def _band(lq: int, lk: int, causal: bool, window_size, device) -> torch.Tensor | None:
    """(Lq, Lk) bool keep-mask of bottom-right causal masking and the window; None when nothing is masked."""
    left, right = _window_bounds(causal, window_size)
    if left < 0 and right < 0:
        return None
    diag = torch.arange(lq, device=device).unsqueeze(1) + (lk - lq)
    return _window_keep(torch.arange(lk, device=device).unsqueeze(0), diag, left, right)


# Packing costs two views (~2 us); SDPA's enable_gqa on CPU copies (groups - 1) x the keys and values.
# Measured crossover (fp32, one query; 4/2 heads x 32, 8/2 x 64, 32/8 x 128, batch 1 and 4): ~25k
# repeated elements of k; packing from 32k on.
_PACK_MIN_REPEATED = 1 << 15


def _packs(q, k, mask, groups: int, is_causal: bool) -> bool:
    """Whether GQA runs as one SDPA over the query rows of each key head (see _sdpa_packed)."""
    if groups == 1 or is_causal or not q.is_cpu or (groups - 1) * k.numel() < _PACK_MIN_REPEATED:
        return False
    if mask is None:
        return True
    # the mask must be the same for every head and (with Lq > 1) every query row: it then broadcasts
    # over the packed rows
    nd = mask.dim()
    return (nd < 3 or mask.shape[-3] == 1) and (nd < 2 or q.shape[2] == 1 or mask.shape[-2] == 1)


def _sdpa_packed(q, k, v, mask, dropout_p, scale):
    """GQA without repeating the keys: the Hq/Hkv query heads that share key head h become Hq/Hkv * Lq
    query rows of one head, (B, Hq, Lq, D) -> (B, Hkv, Hq/Hkv * Lq, D) (a view of a contiguous q). Exact
    when no row's mask depends on its head or position (no causal mask). Measured on CPU (fp32, Lq = 1,
    2 -> 8 heads over 1024 keys): 27 us against 50 us for SDPA's enable_gqa. CPU only: on a GPU
    SDPA's own GQA path is what runs until a recorded run says otherwise."""
    b, hq, lq, _ = q.shape
    hk = k.shape[1]
    qp = q.reshape(b, hk, (hq // hk) * lq, q.shape[3])
    if mask is None and dropout_p == 0.0 and scale is None:
        out = F.scaled_dot_product_attention(qp, k, v)
    else:
        out = F.scaled_dot_product_attention(qp, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out.reshape(b, hq, lq, v.shape[3])


def _sdpa(q, k, v, mask, dropout_p, scale, is_causal=False):
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and _packs(q, k, mask, groups, is_causal):
        return _sdpa_packed(q, k, v, mask, dropout_p, scale)
    if mask is None and dropout_p == 0.0 and not is_causal and scale is None:  # each keyword costs ~0.3 us
        if groups == 1:
            return F.scaled_dot_product_attention(q, k, v)
        if _HAS_ENABLE_GQA:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    if groups > 1:
        if _HAS_ENABLE_GQA:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                                                  scale=scale, enable_gqa=True)
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale)


# CPU masks known to leave no row empty, with the version they had then (transformers hands one mask to
# every layer of a forward: its rows are read once, not once per layer). Weak, by identity.
_FULL_ROWS = WeakIdKeyDictionary()


def _empty_rows(mask: torch.Tensor, find) -> torch.Tensor | None:
    """The (.., Lq, 1) bool tensor of the mask's rows that see no key (``find(mask)``), or None when the
    host can see there is none -- CPU tensors outside torch.compile, memoized per mask tensor until it is
    written to (inference tensors have no version counter: read each time). On a GPU reading it would
    synchronize, so there the rows are always fixed up."""
    if not mask.is_cpu or torch.compiler.is_compiling():
        return find(mask)
    inference = mask.is_inference()
    if not inference and _FULL_ROWS.get(mask) == mask._version:
        return None
    empty = find(mask)
    if bool(empty.any()):
        return empty
    if not inference:
        _FULL_ROWS[mask] = mask._version
    return None


def _empty_bool_rows(keep: torch.Tensor) -> torch.Tensor:
    # a bool mask read as uint8: its max is ~10x faster than Tensor.any on CPU
    return keep.view(torch.uint8).amax(dim=-1, keepdim=True) == 0


def _empty_float_rows(mask: torch.Tensor) -> torch.Tensor:
    return mask.amax(dim=-1, keepdim=True) == float("-inf")


def _masked_sdpa(q, k, v, keep, additive, dropout_p, scale):
    """SDPA with a bool keep-mask (and an optional additive float mask on top); rows with no visible
    key get every key (a finite, harmless softmax) and a zero output. Where the host sees that no row
    is empty (CPU), the mask goes to SDPA as it is and the output is not touched again."""
    empty = None
    if additive is not None:
        mask = additive.to(q.dtype)
        if keep is not None:
            mask = mask.masked_fill(~keep, float("-inf"))
        empty = _empty_rows(mask, _empty_float_rows)
        if empty is not None:
            mask = mask.masked_fill(empty, 0.0)
    elif keep is not None:
        mask = keep
        empty = _empty_rows(keep, _empty_bool_rows)
        if empty is not None:
            mask = keep | empty
    else:
        mask = None
    out = _sdpa(q, k, v, mask, dropout_p, scale)
    if empty is not None:
        # empty broadcasts like the mask: (.., Lq, 1) -> zero those query rows.
        out = out.masked_fill(empty, 0.0)
    return out


def attention_math(q, k, v, *, causal=False, attn_mask=None, dropout_p=0.0, scale=None, window_size=None,
                   softcap=None, sinks=None, training_dropout=True):
    """(out, probs): attention with the scores materialized -- the path for what SDPA cannot do (softcap,
    sinks) and for callers that want the probabilities (transformers' ``output_attentions``). Softmax
    statistics in float32; probs (B, Hq, Lq, Lk) in q's dtype, after dropout."""
    hq, hkv = q.shape[1], k.shape[1]
    lq, lk = q.shape[-2], k.shape[-2]
    if hq != hkv:
        k, v = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
    stat = torch.promote_types(q.dtype, torch.float32)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)).to(stat) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask.to(stat)
    band = _band(lq, lk, causal, window_size, q.device)
    if band is not None:
        scores = scores.masked_fill(~band, float("-inf"))
    if sinks is not None:
        sink = sinks.to(stat).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        empty = torch.isneginf(scores).all(dim=-1, keepdim=True)  # rows that see no key: zeros
        probs = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p, training=training_dropout)
    probs = probs.to(q.dtype)
    return torch.matmul(probs, v), probs


def attention(q, k, v, causal=False, attn_mask=None, dropout_p=0.0, scale=None, window_size=None, softcap=None,
              sinks=None):
    qs, ks = q.shape, k.shape
    lq, lk = qs[2], ks[2]
    if (attn_mask is None and window_size is None and softcap is None and sinks is None and lk > 0
            and (not causal or lq == 1)):  # the common calls, decoding steps included: SDPA as is
        if qs[1] == ks[1] and dropout_p == 0.0 and scale is None and lq > 0 and qs[0] > 0:
            return F.scaled_dot_product_attention(q, k, v)  # (parsing keywords costs ~0.5 us per call)
        return _sdpa(q, k, v, None, dropout_p, scale) if q.numel() else torch.empty_like(q)
    if q.numel() == 0:
        return torch.empty_like(q)
    if softcap is not None or sinks is not None:  # SDPA has neither: the scores are materialized
        if lk == 0:
            return q.masked_fill(torch.ones((), dtype=torch.bool, device=q.device), 0.0)
        return attention_math(q, k, v, causal=causal, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale,
                              window_size=window_size, softcap=softcap, sinks=sinks)[0]
    if lk == 0:  # no key at all: every row returns zeros (and q gets a zero gradient)
        return q.masked_fill(torch.ones((), dtype=torch.bool, device=q.device), 0.0)
    band = None
    if window_size is not None and tuple(window_size) != (-1, -1):
        band = _band(lq, lk, causal, window_size, q.device)
    elif causal and lq > 1:
        if lq == lk and attn_mask is None:
            return _sdpa(q, k, v, None, dropout_p, scale, is_causal=True)
        if lq < lk and attn_mask is None and (lower_right := _causal_lower_right()) is not None:
            return _sdpa(q, k, v, lower_right(lq, lk), dropout_p, scale)
        band = _band(lq, lk, True, None, q.device)
    if attn_mask is None:
        if band is None:
            return _sdpa(q, k, v, None, dropout_p, scale)
        return _masked_sdpa(q, k, v, band, None, dropout_p, scale)
    if attn_mask.dim() < 2:  # (Lk,) or a scalar broadcasts by the contract; SDPA wants >= 2 dims
        attn_mask = attn_mask.reshape((1,) * (2 - attn_mask.dim()) + tuple(attn_mask.shape))
    if attn_mask.dtype == torch.bool:
        keep = attn_mask if band is None else (attn_mask & band)
        return _masked_sdpa(q, k, v, keep, None, dropout_p, scale)
    return _masked_sdpa(q, k, v, band, attn_mask, dropout_p, scale)


def _varlen_keys(k, v, cu_seqlens_k, block_table, seqused_k):
    """attention_varlen's keys as packed (total_k, Hkv, D) rows and their offsets, for block_table (a paged cache)
    and/or seqused_k (the first seqused_k[b] keys of sequence b): the rows gathered by one index_select each."""
    if seqused_k is not None:
        used = seqused_k.to(torch.long)
    else:
        used = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).to(torch.long)
    device = used.device
    total = int(used.sum()) if used.numel() else 0
    starts = torch.cumsum(used, 0) - used
    seq = torch.repeat_interleave(torch.arange(used.numel(), device=device), used, output_size=total)
    t = torch.arange(total, device=device) - starts[seq]  # key t of its sequence
    if block_table is not None:
        page = k.shape[1]
        rows = block_table.to(torch.long)[seq, t // page] * page + t % page
        k, v = k.flatten(0, 1), v.flatten(0, 1)
    else:
        rows = cu_seqlens_k.to(torch.long)[seq] + t
    cu = torch.zeros(used.numel() + 1, dtype=torch.int32, device=device)
    cu[1:] = torch.cumsum(used, 0)
    return k.index_select(0, rows), v.index_select(0, rows), cu


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, scale=None,
                     window_size=None, block_table=None, seqused_k=None):
    if block_table is not None or seqused_k is not None:  # the keys gathered into packed rows (correct, not fast)
        k, v, cu_seqlens_k = _varlen_keys(k, v, cu_seqlens_k, block_table, seqused_k)
    if (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and not torch.compiler.is_compiling()
            and (_varlen_attn := _varlen_attn_fn()) is not None):
        left, right = _window_bounds(causal, window_size)
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = _varlen_attn(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), scale=scale,
                           window_size=(left, right))
        total = int(cu_seqlens_q[-1])
        if total < q.shape[0]:  # packed rows past the last offset belong to no sequence: zeros
            out = torch.cat([out[:total], out.new_zeros(q.shape[0] - total, *out.shape[1:])])
        return out
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    parts = []
    for b in range(len(cq) - 1):
        qs = q[cq[b]:cq[b + 1]].transpose(0, 1).unsqueeze(0)
        ks = k[ck[b]:ck[b + 1]].transpose(0, 1).unsqueeze(0)
        vs = v[ck[b]:ck[b + 1]].transpose(0, 1).unsqueeze(0)
        o = attention(qs, ks, vs, causal=causal, scale=scale, window_size=window_size)
        parts.append(o.squeeze(0).transpose(0, 1))
    if cq[-1] < q.shape[0]:  # packed rows past the last offset belong to no sequence: zeros
        parts.append(q.new_zeros(q.shape[0] - cq[-1], *q.shape[1:]))
    return torch.cat(parts) if parts else q.new_zeros(q.shape)


# index_copy_ with a ready index beats narrow().copy_() for small writes on CPU (fp32, lnew = 1: 1.4 against
# 2.1 us per cache at 1x2x1x32, 1.7 against 2.2 at 1x8x1x128) and loses from ~4k elements (3.0 against 2.8 at
# 4x8x1x128; 7.9 against 3.4 at 1x8x16x128).
_INDEX_COPY_MAX = 2048
# the rows of the last small append, (start, Lnew, int64 index): every layer of a decoding step writes the
# same rows, so the index is made once per step
_last_rows: tuple = (-1, 0, None)


def _host_length(cache_seqlens) -> int | None:
    """The one length of every batch entry when the lengths live on the host (reading them is free there)
    and are all equal -- the usual decoding step -- else None."""
    if cache_seqlens.is_cpu and not torch.compiler.is_compiling():
        lens = cache_seqlens.tolist()
        if len(lens) == 1 or (lens and lens.count(lens[0]) == len(lens)):
            return lens[0]
    return None


def _append(k_cache, v_cache, k_new, v_new, cache_seqlens, start: int | None) -> int:
    """Write the new rows (see kvcache_append); returns Lnew."""
    global _last_rows
    ns = k_new.shape
    lnew = ns[2]
    if start is not None:  # one write per cache (validation has checked start + Lnew <= Lmax; start is a host
        # length, so the caches are on the host)
        if ns[0] * ns[1] * lnew * ns[3] <= _INDEX_COPY_MAX:
            rows = _last_rows
            if rows[0] != start or rows[1] != lnew:
                with torch.inference_mode(False):  # a normal tensor: autograd may save it (an index_copy_ of a
                    # cache that requires grad) after a step under inference mode made it
                    rows = _last_rows = (start, lnew, torch.arange(start, start + lnew))
            k_cache.index_copy_(2, rows[2], k_new)
            v_cache.index_copy_(2, rows[2], v_new)
        else:
            k_cache.narrow(2, start, lnew).copy_(k_new)  # (narrow is ~0.3 us cheaper than [:, :, a:b])
            v_cache.narrow(2, start, lnew).copy_(v_new)
        return lnew
    if k_new.numel():  # per-batch rows: one scatter per cache
        b, h, _, d = ns
        offsets = torch.arange(lnew, device=k_new.device).view(1, 1, lnew, 1)
        index = (cache_seqlens.to(torch.long).view(b, 1, 1, 1) + offsets).expand(b, h, lnew, d)
        k_cache.scatter_(2, index, k_new)
        v_cache.scatter_(2, index, v_new)
    return lnew


def _paged_slots(cache_seqlens, block_table, lnew: int, page_size: int):
    """(pages, slots) (B, Lnew) of the rows cache_seqlens[b] + i in a paged cache."""
    pos = cache_seqlens.to(torch.long).unsqueeze(1) + torch.arange(lnew, device=cache_seqlens.device)
    return block_table.to(torch.long).gather(1, pos // page_size), pos % page_size


def _paged_append(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table) -> None:
    """Write k_new/v_new (B, Hkv, Lnew, D) into the pages (num_pages, page_size, Hkv, D) the block table names."""
    if k_new.numel() == 0:
        return
    pages, slots = _paged_slots(cache_seqlens, block_table, k_new.shape[2], k_cache.shape[1])
    k_cache.index_put_((pages, slots), k_new.transpose(1, 2))  # (B, Lnew, Hkv, D) rows
    v_cache.index_put_((pages, slots), v_new.transpose(1, 2))


def _paged_gather(cache, block_table, pages: int | None = None):
    """A paged cache (num_pages, page_size, Hkv, D) as the contiguous (B, Hkv, n * page_size, D) its block table
    describes, n = ``pages`` (the first ones each sequence needs; default every column). Entries past a sequence's
    pages may hold anything (padding): clamped, and masked later. index_select, not advanced indexing: ~4x faster
    on the CPU."""
    table = block_table if pages is None else block_table[:, :pages]
    if table.dtype != torch.int32 and table.dtype != torch.int64:
        table = table.to(torch.int64)
    table = table.clamp(0, cache.shape[0] - 1)
    b, n = table.shape
    rows = cache.index_select(0, table.reshape(-1))  # (B * n, page_size, Hkv, D)
    return rows.view(b, n * cache.shape[1], cache.shape[2], cache.shape[3]).transpose(1, 2)


def kvcache_append(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table=None) -> None:
    if block_table is not None:
        _paged_append(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)
        return
    _append(k_cache, v_cache, k_new, v_new, cache_seqlens, _host_length(cache_seqlens))


def attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, k_new=None, v_new=None, causal=True, scale=None,
                           block_table=None, rotary_cos=None, rotary_sin=None, rotary_interleaved=False,
                           window_size=None, *, _start=-1):
    if rotary_cos is not None:  # q and k_new rotated at their cache positions (ak.rotary's arithmetic), then as usual
        start = cache_seqlens.to(torch.long).unsqueeze(1)  # (B, 1)
        pos_k = start + torch.arange(k_new.shape[2], device=start.device)
        pos_q = start + torch.arange(q.shape[2], device=start.device) if causal else start.expand(-1, q.shape[2])
        q = rotary(q, rotary_cos, rotary_sin, position_ids=pos_q, interleaved=rotary_interleaved)
        k_new = rotary(k_new, rotary_cos, rotary_sin, position_ids=pos_k, interleaved=rotary_interleaved)
    if block_table is not None:
        # paged: the new rows into their pages, then the sequences' pages gathered into a contiguous cache (a
        # copy of every page the table names: correct, not fast -- the kernels will read the pages in place)
        lnew = 0
        if k_new is not None:
            _paged_append(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)
            lnew = k_new.shape[2]
        lens = cache_seqlens + lnew if lnew else cache_seqlens
        pages, start = None, -1  # host lengths (free to read): only the pages the longest sequence reaches, and
        if lens.is_cpu and lens.numel() and not torch.compiler.is_compiling():  # the one length if there is one
            values = lens.tolist()
            pages = max(1, -(-max(values) // k_cache.shape[1]))
            if values.count(values[0]) == len(values):
                start = values[0]
        return attention_with_kvcache(q, _paged_gather(k_cache, block_table, pages),
                                      _paged_gather(v_cache, block_table, pages), lens, None, None, causal, scale,
                                      window_size=window_size, _start=start)
    # one read of the lengths for the append and the attention; _start >= 0: the one host length, read
    # and checked by the caller (ops.attention_with_kvcache's one-frame CPU path)
    start = _host_length(cache_seqlens) if _start < 0 else _start
    lnew = 0 if k_new is None else _append(k_cache, v_cache, k_new, v_new, cache_seqlens, start)
    qs = q.shape
    if window_size is None and start is not None and (n := start + lnew) > 0 and qs[0] and qs[1] and qs[2] and qs[3]:
        # one length for the whole batch (and host lengths, so host tensors): SDPA over that prefix of the
        # caches, with no mask to build
        ks = k_cache.shape
        if n < ks[2]:
            k_cache, v_cache = k_cache.narrow(2, 0, n), v_cache.narrow(2, 0, n)
        if causal and qs[2] > 1:
            return attention(q, k_cache, v_cache, causal, None, 0.0, scale)
        # one query row sees every valid key: plain SDPA (the common decoding steps without _sdpa's general
        # checks, ~0.6 us; the same choices)
        hq, hk = qs[1], ks[1]
        if hq == hk:
            if scale is None:
                return F.scaled_dot_product_attention(q, k_cache, v_cache)
            return F.scaled_dot_product_attention(q, k_cache, v_cache, scale=scale)
        if (hq // hk - 1) * ks[0] * hk * n * ks[3] >= _PACK_MIN_REPEATED:  # as _packs with no mask, on the host
            return _sdpa_packed(q, k_cache, v_cache, None, 0.0, scale)
        if not _HAS_ENABLE_GQA:
            return _sdpa(q, k_cache, v_cache, None, 0.0, scale)
        if scale is None:
            return F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k_cache, v_cache, scale=scale, enable_gqa=True)
    if q.numel() == 0:
        return torch.empty_like(q)
    lq, lmax = q.shape[2], k_cache.shape[2]
    lengths = (cache_seqlens.to(torch.long) + lnew).view(-1, 1, 1)  # (B, 1, 1) valid keys per batch
    j = torch.arange(lmax, device=q.device).view(1, 1, lmax)
    keep = j < lengths
    diag = torch.arange(lq, device=q.device).view(1, lq, 1) + (lengths - lq)  # query i's bottom-right key
    left, right = _window_bounds(causal, window_size)
    # (one query row's diagonal is its last valid key: nothing past it to mask on the right)
    band = _window_keep(j, diag, left, right if lq > 1 else -1)
    if band is not None:
        keep = keep & band
    return _masked_sdpa(q, k_cache, v_cache, keep.unsqueeze(1), None, 0.0, scale)
