"""Argument checks at the public API boundary, shared by every op and backend.

Each check raises TypeError (wrong type or dtype) or ValueError (shape, device, value) with a
message that names the op, what was expected and what was given. Backends add their own limits
(head dims, dtypes) through their ``why_not`` checks in aigc_kernels.backend.

None of these checks reads tensor data, so they cost no device synchronization and trace
cleanly under torch.compile -- except where noted for CPU-resident index tensors.

Each per-op builder (``attention_call``, ..., ``make_call(op, ...)``) returns the op's normalized
call (aigc_kernels.contracts.calls): the arguments checked and normalized (the window; scale, eps and
dropout as floats, a scale of None kept for 1/sqrt(D)). It first runs a fast path: plain boolean
tests of the common, valid call (a decoding step makes ~150 such calls per token, so the cost of
getting to the kernel matters). Anything it does not recognise goes to the full check, which raises
the precise error (or accepts a valid but less common call).
"""

from __future__ import annotations

import numbers

import torch

from .contracts.calls import (
    AttentionCall,
    AttentionVarlenCall,
    Call,
    FFNCall,
    KVCacheAppendCall,
    KVCacheCall,
    LayerNormCall,
    LinearCall,
    RMSNormCall,
    RotaryCall,
)
from .contracts.tables import ACTIVATIONS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLOATS = frozenset(FLOAT_DTYPES)
_T = torch.Tensor


def _fmt(dims) -> str:
    dims = [str(d) for d in dims]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _shape(t: torch.Tensor) -> str:
    return _fmt(t.shape)


def tensor(op: str, name: str, t, *, ndim: int | None = None, layout: str = "",
           dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES) -> torch.Tensor:
    """t is a tensor with one of ``dtypes`` and (if given) ``ndim`` dims described by ``layout``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: expected {name} to be {ndim}-D {layout}, got shape {_shape(t)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{op}: expected {name} of dtype {names}, got {str(t.dtype).removeprefix('torch.')}")
    return t


def optional_tensor(op: str, name: str, t, **kwargs) -> torch.Tensor | None:
    return None if t is None else tensor(op, name, t, **kwargs)


def same_dtype(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.dtype != ref.dtype:
            raise TypeError(f"{op}: expected {name} to have the dtype of {ref_name} "
                            f"({str(ref.dtype).removeprefix('torch.')}), got {str(t.dtype).removeprefix('torch.')}; "
                            "cast the inputs to one dtype")


def same_device(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{op}: expected {name} on {ref_name}'s device {ref.device}, got {t.device}; "
                             "move the inputs to one device")


def shape(op: str, name: str, t: torch.Tensor | None, expected: tuple, layout: str) -> None:
    """t's shape equals ``expected`` (entries None are free)."""
    if t is None:
        return
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape, strict=True))
    if not ok:
        want = _fmt("*" if e is None else e for e in expected)
        raise ValueError(f"{op}: expected {name} of shape {want} {layout}, got {_shape(t)}")


def number(op: str, name: str, value, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: expected {name} to be a number, got {type(value).__name__}")
    value = float(value)
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high or value != value:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{op}: expected {name} in {lo}{low}, {high}{hi}, got {value}")
    return value


def window(op: str, window_size) -> tuple[int, int] | None:
    if window_size is None:
        return None
    if (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) for w in window_size)):
        raise TypeError(f"{op}: expected window_size=(left, right) of two ints (-1 = unbounded), got {window_size!r}")
    left, right = window_size
    if left < -1 or right < -1:
        raise ValueError(f"{op}: expected window_size entries >= -1 (-1 = unbounded), got {window_size!r}")
    return (left, right)


def _flag(op: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: expected {name} to be a bool, got {type(value).__name__}")
    return value


def activation(op: str, name, *, allow_none: bool = True) -> None:
    if name is None and allow_none:
        return
    if name not in ACTIVATIONS:
        allowed = ", ".join(repr(a) for a in ACTIVATIONS) + (" or None" if allow_none else "")
        raise ValueError(f"{op}: expected activation {allowed}, got {name!r}")


# ----------------------------------------------------------------------------------------------
# per-op checks
# ----------------------------------------------------------------------------------------------
def _attention_args_full(q, k, v, attn_mask, dropout_p, scale, window_size, causal, softcap=None, sinks=None):
    op = "ak.attention"
    tensor(op, "q", q, ndim=4, layout="(B, Hq, Lq, D)")
    tensor(op, "k", k, ndim=4, layout="(B, Hkv, Lk, D)")
    tensor(op, "v", v, ndim=4, layout="(B, Hkv, Lk, D)")
    same_dtype(op, "q", q, k=k, v=v)
    same_device(op, "q", q, k=k, v=v)
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    shape(op, "k", k, (b, None, None, d), "(B, Hkv, Lk, D) with q's B and D")
    shape(op, "v", v, tuple(k.shape), "(B, Hkv, Lk, D), the shape of k")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"{op}: expected the query heads Hq={hq} to be a multiple of the key/value heads "
                         f"Hkv={hkv} (GQA/MQA)")
    if attn_mask is not None:
        tensor(op, "attn_mask", attn_mask, dtypes=(torch.bool, *FLOAT_DTYPES))
        same_device(op, "q", q, attn_mask=attn_mask)
        try:
            broadcast = torch.broadcast_shapes(attn_mask.shape, (b, hq, lq, lk))
        except RuntimeError:
            broadcast = None
        if broadcast != torch.Size((b, hq, lq, lk)):
            raise ValueError(f"{op}: expected attn_mask broadcastable to (B, Hq, Lq, Lk) = "
                             f"({b}, {hq}, {lq}, {lk}), got shape {_shape(attn_mask)}")
    number(op, "dropout_p", dropout_p, low=0.0, high=1.0, high_open=True)
    if scale is not None:
        number(op, "scale", scale)
    _flag(op, "causal", causal)
    if softcap is not None:
        number(op, "softcap", softcap, low=0.0, low_open=True)
    if sinks is not None:
        tensor(op, "sinks", sinks, ndim=1, layout="(Hq,)")
        shape(op, "sinks", sinks, (hq,), f"(Hq,) with Hq = {hq}")
        same_device(op, "q", q, sinks=sinks)
    return window(op, window_size)


def _attention_varlen_args_full(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, window_size):
    op = "ak.attention_varlen"
    tensor(op, "q", q, ndim=3, layout="(total_q, Hq, D)")
    tensor(op, "k", k, ndim=3, layout="(total_k, Hkv, D)")
    tensor(op, "v", v, ndim=3, layout="(total_k, Hkv, D)")
    same_dtype(op, "q", q, k=k, v=v)
    same_device(op, "q", q, k=k, v=v)
    shape(op, "k", k, (None, None, q.shape[2]), "(total_k, Hkv, D) with q's D")
    shape(op, "v", v, tuple(k.shape), "(total_k, Hkv, D), the shape of k")
    hq, hkv = q.shape[1], k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"{op}: expected the query heads Hq={hq} to be a multiple of the key/value heads Hkv={hkv}")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        tensor(op, name, cu, ndim=1, layout="(batch + 1,)", dtypes=(torch.int32,))
        same_device(op, "q", q, **{name: cu})
        if cu.shape[0] < 1:
            raise ValueError(f"{op}: expected {name} to hold at least one offset (batch + 1 entries), got none")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"{op}: expected cu_seqlens_q and cu_seqlens_k of one length (batch + 1), got "
                         f"{_shape(cu_seqlens_q)} and {_shape(cu_seqlens_k)}")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{op}: expected {name} to be an int >= 0, got {value!r}")
    if scale is not None:
        number(op, "scale", scale)
    # Offsets on the CPU are checked for free; on a GPU that would cost a synchronization.
    if cu_seqlens_q.device.type == "cpu" and not torch.compiler.is_compiling():
        for name, cu, total, longest in (("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q),
                                         ("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)):
            lens = cu[1:] - cu[:-1]
            if int(cu[0]) != 0 or bool((lens < 0).any()) or int(cu[-1]) > total:
                raise ValueError(f"{op}: expected {name} to rise from 0 to at most {total} (the packed rows), "
                                 f"got {cu.tolist()}")
            if lens.numel() and int(lens.max()) > longest:
                name_max = "max_seqlen_q" if name.endswith("q") else "max_seqlen_k"
                raise ValueError(f"{op}: a sequence has {int(lens.max())} rows, more than {name_max}={longest}")
    return window(op, window_size)


def _kvcache_args_full(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale):
    op = "ak.attention_with_kvcache"
    tensor(op, "q", q, ndim=4, layout="(B, Hq, Lq, D)")
    tensor(op, "k_cache", k_cache, ndim=4, layout="(B, Hkv, Lmax, D)")
    tensor(op, "v_cache", v_cache, ndim=4, layout="(B, Hkv, Lmax, D)")
    same_dtype(op, "q", q, k_cache=k_cache, v_cache=v_cache)
    same_device(op, "q", q, k_cache=k_cache, v_cache=v_cache)
    b, hq, _, d = q.shape
    shape(op, "k_cache", k_cache, (b, None, None, d), "(B, Hkv, Lmax, D) with q's B and D")
    shape(op, "v_cache", v_cache, tuple(k_cache.shape), "(B, Hkv, Lmax, D), the shape of k_cache")
    hkv = k_cache.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"{op}: expected the query heads Hq={hq} to be a multiple of the cache heads Hkv={hkv}")
    if (k_new is None) != (v_new is None):
        raise ValueError(f"{op}: expected k_new and v_new together (both or neither), got only "
                         f"{'k_new' if v_new is None else 'v_new'}")
    lnew = 0
    if k_new is not None:
        tensor(op, "k_new", k_new, ndim=4, layout="(B, Hkv, Lnew, D)")
        tensor(op, "v_new", v_new, ndim=4, layout="(B, Hkv, Lnew, D)")
        same_dtype(op, "q", q, k_new=k_new, v_new=v_new)
        same_device(op, "q", q, k_new=k_new, v_new=v_new)
        shape(op, "k_new", k_new, (b, hkv, None, d), "(B, Hkv, Lnew, D) matching the cache")
        shape(op, "v_new", v_new, tuple(k_new.shape), "(B, Hkv, Lnew, D), the shape of k_new")
        lnew = k_new.shape[2]
    kvcache_seqlens(op, cache_seqlens, b, k_cache, lnew, q.device)
    if scale is not None:
        number(op, "scale", scale)


def _paged_kvcache_args_full(op, q, k_cache, v_cache, cache_seqlens, k_new, v_new, block_table, scale) -> None:
    """A paged cache: k_cache/v_cache (num_pages, page_size, Hkv, D), block_table int32 (B, max_pages); q (B, Hq,
    Lq, D) (None for kvcache_append), k_new/v_new (B, Hkv, Lnew, D)."""
    layout = "(num_pages, page_size, Hkv, D) with block_table"
    tensor(op, "k_cache", k_cache, ndim=4, layout=layout)
    tensor(op, "v_cache", v_cache, ndim=4, layout=layout)
    shape(op, "v_cache", v_cache, tuple(k_cache.shape), f"{layout}, the shape of k_cache")
    if q is not None:
        tensor(op, "q", q, ndim=4, layout="(B, Hq, Lq, D)")
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        if t is not None:
            tensor(op, name, t, ndim=4, layout="(B, Hkv, Lnew, D)")
    same_dtype(op, "k_cache", k_cache, v_cache=v_cache, q=q, k_new=k_new, v_new=v_new)
    same_device(op, "k_cache", k_cache, v_cache=v_cache, q=q, k_new=k_new, v_new=v_new, block_table=block_table)
    tensor(op, "block_table", block_table, ndim=2, layout="(B, max_pages)", dtypes=(torch.int32,))
    num_pages, page, hkv, d = k_cache.shape
    b, max_pages = block_table.shape
    if page < 1 or hkv < 1:
        raise ValueError(f"{op}: expected a paged cache {layout} with page_size >= 1 and Hkv >= 1, got "
                         f"{_shape(k_cache)}")
    if q is not None:
        shape(op, "q", q, (b, None, None, d), f"(B, Hq, Lq, D) with block_table's B = {b} and the cache's D = {d}")
        if q.shape[1] % hkv != 0:
            raise ValueError(f"{op}: expected the query heads Hq={q.shape[1]} to be a multiple of the cache heads "
                             f"Hkv={hkv}")
    if (k_new is None) != (v_new is None):
        raise ValueError(f"{op}: expected k_new and v_new together (both or neither), got only "
                         f"{'k_new' if v_new is None else 'v_new'}")
    lnew = 0
    if k_new is not None:
        shape(op, "k_new", k_new, (b, hkv, None, d), "(B, Hkv, Lnew, D) matching block_table and the cache")
        shape(op, "v_new", v_new, tuple(k_new.shape), "(B, Hkv, Lnew, D), the shape of k_new")
        lnew = k_new.shape[2]
    tensor(op, "cache_seqlens", cache_seqlens, ndim=1, layout="(B,)", dtypes=(torch.int32,))
    shape(op, "cache_seqlens", cache_seqlens, (b,), "(B,), block_table's B")
    same_device(op, "k_cache", k_cache, cache_seqlens=cache_seqlens)
    if scale is not None:
        number(op, "scale", scale)
    capacity = max_pages * page
    # Host tensors are read (free there): every row reached fits the table, and every page it names exists.
    if cache_seqlens.device.type == "cpu" and cache_seqlens.numel() and not torch.compiler.is_compiling():
        values = cache_seqlens.tolist()  # (B,) ints: cheaper than a reduction for a decoding batch
        lo, hi = min(values), max(values)
        if lo < 0 or hi + lnew > capacity:
            raise ValueError(f"{op}: expected 0 <= cache_seqlens and cache_seqlens + Lnew <= max_pages * page_size = "
                             f"{capacity} (block_table {_shape(block_table)}, page_size {page}), got cache_seqlens "
                             f"in [{lo}, {hi}] with Lnew = {lnew}")
        _page_ids_exist(op, block_table, [v + lnew for v in values], page, num_pages, "rows")


def _page_ids_exist(op: str, block_table, rows: list[int], page: int, num_pages: int, what: str) -> None:
    """Every page a host block table names for the first rows[b] rows of sequence b is in [0, num_pages)."""
    need = [-(-r // page) for r in rows]  # pages each sequence reaches
    if not need:
        return
    if min(need) == max(need):  # one length (a decoding batch's usual case): a slice of the table, no mask
        ids = block_table[:, :need[0]]
    else:
        used = torch.arange(block_table.shape[1]).unsqueeze(0) < torch.tensor(need).unsqueeze(1)  # (B, max_pages)
        ids = block_table[used]
    if ids.numel():
        id_lo, id_hi = (int(x) for x in ids.aminmax())
        if id_lo < 0 or id_hi >= num_pages:
            raise ValueError(f"{op}: expected the pages block_table names for each sequence's {what} in "
                             f"[0, num_pages) = [0, {num_pages}), got ids in [{id_lo}, {id_hi}]")


def kvcache_seqlens(op: str, cache_seqlens, b: int, k_cache: torch.Tensor, lnew: int, device) -> None:
    tensor(op, "cache_seqlens", cache_seqlens, ndim=1, layout="(B,)", dtypes=(torch.int32,))
    shape(op, "cache_seqlens", cache_seqlens, (b,), "(B,)")
    if cache_seqlens.device != device:
        raise ValueError(f"{op}: expected cache_seqlens on {device}, got {cache_seqlens.device}")
    lmax = k_cache.shape[2]
    if lnew > lmax:
        raise ValueError(f"{op}: {lnew} new rows do not fit a cache of Lmax={lmax}")
    # Reading CPU-resident lengths is free; on a GPU the kernels assert on the device instead.
    if cache_seqlens.device.type == "cpu" and cache_seqlens.numel() and not torch.compiler.is_compiling():
        values = cache_seqlens.tolist()  # (B,) ints: cheaper than two reductions for a decoding batch
        lo, hi = min(values), max(values)
        if lo < 0 or hi + lnew > lmax:
            raise ValueError(f"{op}: expected 0 <= cache_seqlens <= Lmax - Lnew = {lmax - lnew} "
                             f"(Lmax={lmax}, Lnew={lnew}), got values in [{lo}, {hi}]")


def _kvcache_append_args_full(k_cache, v_cache, k_new, v_new, cache_seqlens):
    op = "ak.kvcache_append"
    tensor(op, "k_cache", k_cache, ndim=4, layout="(B, Hkv, Lmax, D)")
    tensor(op, "v_cache", v_cache, ndim=4, layout="(B, Hkv, Lmax, D)")
    tensor(op, "k_new", k_new, ndim=4, layout="(B, Hkv, Lnew, D)")
    tensor(op, "v_new", v_new, ndim=4, layout="(B, Hkv, Lnew, D)")
    same_dtype(op, "k_cache", k_cache, v_cache=v_cache, k_new=k_new, v_new=v_new)
    same_device(op, "k_cache", k_cache, v_cache=v_cache, k_new=k_new, v_new=v_new)
    b, h, _, d = k_cache.shape
    shape(op, "v_cache", v_cache, tuple(k_cache.shape), "(B, Hkv, Lmax, D), the shape of k_cache")
    shape(op, "k_new", k_new, (b, h, None, d), "(B, Hkv, Lnew, D) matching the cache")
    shape(op, "v_new", v_new, tuple(k_new.shape), "(B, Hkv, Lnew, D), the shape of k_new")
    kvcache_seqlens(op, cache_seqlens, b, k_cache, k_new.shape[2], k_cache.device)


def _norm_args_full(op, x, weight, bias, eps, residual):
    tensor(op, "x", x)
    if x.dim() == 0:
        raise ValueError(f"{op}: expected x with at least 1 dim (..., N), got a 0-d tensor")
    n = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            tensor(op, name, t, ndim=1, layout="(N,)")
            shape(op, name, t, (n,), f"(N,) with N = x.shape[-1] = {n}")
            same_device(op, "x", x, **{name: t})
    if residual is not None:
        tensor(op, "residual", residual)
        shape(op, "residual", residual, tuple(x.shape), "(the shape of x)")
        same_dtype(op, "x", x, residual=residual)
        same_device(op, "x", x, residual=residual)
    number(op, "eps", eps, low=0.0)


def _linear_args_full(x, weight, bias, activation_name):
    op = "ak.linear"
    tensor(op, "x", x)
    if x.dim() == 0:
        raise ValueError(f"{op}: expected x with at least 1 dim (..., K), got a 0-d tensor")
    tensor(op, "weight", weight, ndim=2, layout="(N, K)")
    k = x.shape[-1]
    shape(op, "weight", weight, (None, k), f"(N, K) with K = x.shape[-1] = {k}")
    if bias is not None:
        tensor(op, "bias", bias, ndim=1, layout="(N,)")
        shape(op, "bias", bias, (weight.shape[0],), "(N,) with N = weight.shape[0]")
    same_dtype(op, "x", x, weight=weight, bias=bias)
    same_device(op, "x", x, weight=weight, bias=bias)
    activation(op, activation_name)


def _ffn_args_full(x, w_in, b_in, w_out, b_out, activation_name, w_gate, b_gate):
    op = "ak.ffn"
    tensor(op, "x", x)
    if x.dim() == 0:
        raise ValueError(f"{op}: expected x with at least 1 dim (..., D), got a 0-d tensor")
    d = x.shape[-1]
    tensor(op, "w_in", w_in, ndim=2, layout="(H, D)")
    shape(op, "w_in", w_in, (None, d), f"(H, D) with D = x.shape[-1] = {d}")
    h = w_in.shape[0]
    tensor(op, "w_out", w_out, ndim=2, layout="(D, H)")
    shape(op, "w_out", w_out, (d, h), f"(D, H) = ({d}, {h})")
    for name, t, n in (("b_in", b_in, h), ("b_out", b_out, d), ("b_gate", b_gate, h)):
        if t is not None:
            tensor(op, name, t, ndim=1, layout=f"({n},)")
            shape(op, name, t, (n,), "")
    if w_gate is not None:
        tensor(op, "w_gate", w_gate, ndim=2, layout="(H, D)")
        shape(op, "w_gate", w_gate, (h, d), f"(H, D) = ({h}, {d}), the shape of w_in")
    elif b_gate is not None:
        raise ValueError(f"{op}: got b_gate without w_gate; pass w_gate for a gated FFN")
    same_dtype(op, "x", x, w_in=w_in, b_in=b_in, w_out=w_out, b_out=b_out, w_gate=w_gate, b_gate=b_gate)
    same_device(op, "x", x, w_in=w_in, b_in=b_in, w_out=w_out, b_out=b_out, w_gate=w_gate, b_gate=b_gate)
    activation(op, activation_name, allow_none=w_gate is None)


# ----------------------------------------------------------------------------------------------
# fast paths (see the module docstring): True only for calls the full check would accept
# ----------------------------------------------------------------------------------------------
_new = tuple.__new__  # a NamedTuple without its Python-level __new__ (~0.1 us instead of ~0.4)


def _same_device(q: torch.Tensor, *others: torch.Tensor) -> bool:
    if q.is_cpu:  # the common CPU case without building device objects (~0.1 us each)
        for t in others:  # (a loop, not all(<generator>): ~0.2 us less)
            if not t.is_cpu:
                return False
        return True
    device = q.device
    for t in others:
        if t.device != device:
            return False
    return True


def _scale(scale) -> float | None:
    return None if scale is None else float(scale)  # None: 1 / sqrt(D) (see contracts.calls)


def _mask_ok(mask, qs, lk: int) -> bool:
    """A bool or float mask that broadcasts to (B, Hq, Lq, Lk) (q of shape qs): each of its dims 1 or the
    target's (what torch.broadcast_shapes would accept, at a tenth of its cost). Its device is checked
    with the others."""
    if not (isinstance(mask, _T) and (mask.dtype is torch.bool or mask.dtype in _FLOATS)):
        return False
    ms = mask.shape
    n = len(ms)
    if n > 4:
        return False
    for m, t in zip(ms, (qs[0], qs[1], qs[2], lk)[4 - n:], strict=True):
        if m != 1 and m != t:
            return False
    return True


def attention_call(q, k, v, causal=False, attn_mask=None, dropout_p=0.0, scale=None, window_size=None, softcap=None,
                   sinks=None) -> AttentionCall:
    """ak.attention's arguments checked (raises naming what was expected and given) and normalized."""
    if (window_size is None and softcap is None and sinks is None and type(causal) is bool
            and (scale is None or (type(scale) is float and scale == scale))
            and (dropout_p == 0.0 or (type(dropout_p) is float and 0.0 < dropout_p < 1.0))
            and isinstance(q, _T) and isinstance(k, _T) and isinstance(v, _T)):
        qs, ks, dt = q.shape, k.shape, q.dtype
        if (len(qs) == 4 and len(ks) == 4 and dt in _FLOATS and k.dtype is dt and v.dtype is dt and ks == v.shape
                and qs[0] == ks[0] and qs[3] == ks[3] and ks[1] > 0 and qs[1] % ks[1] == 0
                and (((q.is_cpu and k.is_cpu and v.is_cpu) or _same_device(q, k, v)) if attn_mask is None else
                     (_mask_ok(attn_mask, qs, ks[2]) and _same_device(q, k, v, attn_mask)))):
            return _new(AttentionCall, (q, k, v, causal, attn_mask, float(dropout_p), scale, None, None, None))
    window_size = _attention_args_full(q, k, v, attn_mask, dropout_p, scale, window_size, causal, softcap, sinks)
    return _new(AttentionCall, (q, k, v, causal, attn_mask, float(dropout_p), _scale(scale), window_size,
                                None if softcap is None else float(softcap), sinks))


def _paged_varlen_args_full(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, window_size,
                            block_table, seqused_k):
    """attention_varlen with block_table and/or seqused_k (forward only)."""
    op = "ak.attention_varlen"
    tensor(op, "q", q, ndim=3, layout="(total_q, Hq, D)")
    paged = block_table is not None
    layout = "(num_pages, page_size, Hkv, D) with block_table" if paged else "(total_k, Hkv, D)"
    tensor(op, "k", k, ndim=4 if paged else 3, layout=layout)
    tensor(op, "v", v, ndim=4 if paged else 3, layout=layout)
    same_dtype(op, "q", q, k=k, v=v)
    same_device(op, "q", q, k=k, v=v)
    shape(op, "v", v, tuple(k.shape), f"{layout}, the shape of k")
    if k.shape[-1] != q.shape[2]:
        raise ValueError(f"{op}: expected k {layout} with q's D = {q.shape[2]}, got {_shape(k)}")
    hq, hkv = q.shape[1], k.shape[-2]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"{op}: expected the query heads Hq={hq} to be a multiple of the key/value heads Hkv={hkv}")
    tensor(op, "cu_seqlens_q", cu_seqlens_q, ndim=1, layout="(batch + 1,)", dtypes=(torch.int32,))
    same_device(op, "q", q, cu_seqlens_q=cu_seqlens_q)
    if cu_seqlens_q.shape[0] < 1:
        raise ValueError(f"{op}: expected cu_seqlens_q to hold at least one offset (batch + 1 entries), got none")
    batch = cu_seqlens_q.shape[0] - 1
    if cu_seqlens_k is None and seqused_k is None:
        raise ValueError(f"{op}: expected cu_seqlens_k, or seqused_k to give each sequence's key count, got neither")
    if cu_seqlens_k is None and not paged:
        raise ValueError(f"{op}: expected cu_seqlens_k (the key offsets of the packed k/v) with seqused_k and no "
                         "block_table, got None")
    if cu_seqlens_k is not None:
        tensor(op, "cu_seqlens_k", cu_seqlens_k, ndim=1, layout="(batch + 1,)", dtypes=(torch.int32,))
        same_device(op, "q", q, cu_seqlens_k=cu_seqlens_k)
        if cu_seqlens_k.shape != cu_seqlens_q.shape:
            raise ValueError(f"{op}: expected cu_seqlens_q and cu_seqlens_k of one length (batch + 1), got "
                             f"{_shape(cu_seqlens_q)} and {_shape(cu_seqlens_k)}")
    if seqused_k is not None:
        tensor(op, "seqused_k", seqused_k, ndim=1, layout="(batch,)", dtypes=(torch.int32,))
        shape(op, "seqused_k", seqused_k, (batch,), f"(batch,) with batch = {batch} (cu_seqlens_q's entries - 1)")
        same_device(op, "q", q, seqused_k=seqused_k)
    if paged:
        tensor(op, "block_table", block_table, ndim=2, layout="(batch, max_pages)", dtypes=(torch.int32,))
        same_device(op, "q", q, block_table=block_table)
        if block_table.shape[0] != batch:
            raise ValueError(f"{op}: expected block_table (batch, max_pages) with batch = {batch} (cu_seqlens_q's "
                             f"entries - 1), got {_shape(block_table)}")
        if k.shape[1] < 1:
            raise ValueError(f"{op}: expected a paged cache {layout} with page_size >= 1, got {_shape(k)}")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{op}: expected {name} to be an int >= 0, got {value!r}")
    if scale is not None:
        number(op, "scale", scale)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(f"{op}: block_table / seqused_k are forward only (chunked prefill, decoding); got q, k or v "
                         "requiring grad (run it under torch.no_grad(), or without them)")
    # Host tensors are read (free there); on a GPU the kernels never read a page outside the cache.
    if cu_seqlens_q.device.type == "cpu" and not torch.compiler.is_compiling():
        cq = cu_seqlens_q.tolist()
        lq = [b - a for a, b in zip(cq[:-1], cq[1:], strict=True)]
        if cq[0] != 0 or min(lq, default=0) < 0 or cq[-1] > q.shape[0]:
            raise ValueError(f"{op}: expected cu_seqlens_q to rise from 0 to at most {q.shape[0]} (the packed rows), "
                             f"got {cq}")
        if lq and max(lq) > max_seqlen_q:
            raise ValueError(f"{op}: a sequence has {max(lq)} query rows, more than max_seqlen_q={max_seqlen_q}")
        span = None
        if cu_seqlens_k is not None:
            ck = cu_seqlens_k.tolist()
            span = [b - a for a, b in zip(ck[:-1], ck[1:], strict=True)]
            if ck[0] != 0 or min(span, default=0) < 0 or (not paged and ck[-1] > k.shape[0]):
                raise ValueError(f"{op}: expected cu_seqlens_k to rise from 0"
                                 + ("" if paged else f" to at most {k.shape[0]} (the packed rows)") + f", got {ck}")
        used = seqused_k.tolist() if seqused_k is not None else span
        if min(used, default=0) < 0 or (seqused_k is not None and span is not None and not paged
                                        and any(u > s for u, s in zip(used, span, strict=True))):
            raise ValueError(f"{op}: expected 0 <= seqused_k[b] <= the rows cu_seqlens_k gives sequence b, got "
                             f"seqused_k {used} for {span}")
        if used and max(used) > max_seqlen_k:
            raise ValueError(f"{op}: a sequence has {max(used)} keys, more than max_seqlen_k={max_seqlen_k}")
        if paged:
            page, num_pages, width = k.shape[1], k.shape[0], block_table.shape[1]
            if used and max(used) > width * page:
                raise ValueError(f"{op}: expected each sequence's keys to fit its block table: at most max_pages * "
                                 f"page_size = {width * page}, got {max(used)}")
            _page_ids_exist(op, block_table, used, page, num_pages, "keys")
    return window(op, window_size)


def attention_varlen_call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, scale=None,
                          window_size=None, block_table=None, seqused_k=None) -> AttentionVarlenCall:
    if block_table is not None or seqused_k is not None:
        window_size = _paged_varlen_args_full(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                                              window_size, block_table, seqused_k)
    else:
        window_size = _attention_varlen_args_full(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                  scale, window_size)
    _flag("ak.attention_varlen", "causal", causal)
    return _new(AttentionVarlenCall, (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                                      _scale(scale), window_size, block_table, seqused_k))


_I32 = torch.int32


def _lengths_fit(cache_seqlens: torch.Tensor, lnew: int, lmax: int) -> bool:
    """Host lengths (B,) all in [0, Lmax - Lnew] (reading them is free on the host)."""
    values = cache_seqlens.tolist()
    if len(values) == 1:  # (batch 1: no min/max)
        return 0 <= values[0] <= lmax - lnew
    return not values or (min(values) >= 0 and max(values) <= lmax - lnew)


def kvcache_call(q, k_cache, v_cache, cache_seqlens, k_new=None, v_new=None, causal=True, scale=None,
                 block_table=None, rotary_cos=None, rotary_sin=None, rotary_interleaved=False,
                 window_size=None) -> KVCacheCall:
    # the fast path covers a decoding step's call, the append included (~150 such calls per token); every
    # tensor attribute costs ~0.06-0.12 us, so each is read once (the full check below says what is wrong)
    rotary = rotary_cos is not None or rotary_sin is not None or rotary_interleaved is not False
    if block_table is not None or rotary or window_size is not None:
        op = "ak.attention_with_kvcache"
        if block_table is not None:
            _paged_kvcache_args_full(op, q, k_cache, v_cache, cache_seqlens, k_new, v_new, block_table, scale)
        else:
            _kvcache_args_full(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale)
        _flag(op, "causal", causal)
        if rotary:
            rotary_for_append(op, q, k_new, cache_seqlens, rotary_cos, rotary_sin, rotary_interleaved)
        window_size = window(op, window_size)
        return _new(KVCacheCall, (q, k_cache, v_cache, cache_seqlens, k_new, v_new, causal, _scale(scale),
                                  block_table, rotary_cos, rotary_sin, rotary_interleaved, window_size))
    if ((scale is None or (type(scale) is float and scale == scale)) and type(causal) is bool and isinstance(q, _T)
            and isinstance(k_cache, _T) and isinstance(v_cache, _T) and isinstance(cache_seqlens, _T)):
        qs, ks, dt, cpu = q.shape, k_cache.shape, q.dtype, q.is_cpu
        if len(qs) != 4 or len(ks) != 4:
            lnew = -1
        elif k_new is None:
            lnew = 0 if v_new is None else -1
        elif (isinstance(k_new, _T) and isinstance(v_new, _T) and (ns := k_new.shape) == v_new.shape
              and len(ns) == 4 and ns[0] == qs[0] and ns[1] == ks[1] and ns[3] == qs[3] and ns[2] <= ks[2]
              and k_new.dtype is dt and v_new.dtype is dt):
            lnew = ns[2]
        else:
            lnew = -1
        if (lnew >= 0 and dt in _FLOATS and k_cache.dtype is dt
                and v_cache.dtype is dt and ks == v_cache.shape and qs[0] == ks[0] and qs[3] == ks[3] and ks[1] > 0
                and qs[1] % ks[1] == 0 and cache_seqlens.dtype is _I32 and cache_seqlens.shape == (qs[0],)
                and ((k_cache.is_cpu and v_cache.is_cpu and cache_seqlens.is_cpu
                      and (k_new is None or (k_new.is_cpu and v_new.is_cpu))) if cpu else
                     (_same_device(q, k_cache, v_cache, cache_seqlens) if k_new is None else
                      _same_device(q, k_cache, v_cache, cache_seqlens, k_new, v_new)))):
            # (on a GPU the kernels assert on the device: reading the lengths would synchronize)
            if not cpu or torch.compiler.is_compiling() or _lengths_fit(cache_seqlens, lnew, ks[2]):
                return _new(KVCacheCall, (q, k_cache, v_cache, cache_seqlens, k_new, v_new, causal, scale, None,
                                          None, None, False, None))
    _kvcache_args_full(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale)
    _flag("ak.attention_with_kvcache", "causal", causal)
    return _new(KVCacheCall, (q, k_cache, v_cache, cache_seqlens, k_new, v_new, causal, _scale(scale), None, None,
                              None, False, None))


def kvcache_host_start(q, k_cache, v_cache, cache_seqlens, k_new=None, v_new=None, causal=True, scale=None):
    """For ops.attention_with_kvcache's one-frame CPU path: the one length of every batch entry of a CPU
    decoding step whose arguments pass kvcache_call's fast path (its checks restricted to host tensors),
    with the new rows fitting -- the lengths read once, here -- else None (then kvcache_call decides and
    says what is wrong)."""
    if not ((scale is None or (type(scale) is float and scale == scale)) and type(causal) is bool
            and isinstance(q, _T) and isinstance(k_cache, _T) and isinstance(v_cache, _T)
            and isinstance(cache_seqlens, _T) and q.is_cpu):
        return None
    qs, ks, dt = q.shape, k_cache.shape, q.dtype
    if len(qs) != 4 or len(ks) != 4:
        return None
    if k_new is None:
        if v_new is not None:
            return None
        lnew = 0
    elif (isinstance(k_new, _T) and isinstance(v_new, _T) and (ns := k_new.shape) == v_new.shape and len(ns) == 4
          and ns[0] == qs[0] and ns[1] == ks[1] and ns[3] == qs[3] and ns[2] <= ks[2] and k_new.dtype is dt
          and v_new.dtype is dt and k_new.is_cpu and v_new.is_cpu):
        lnew = ns[2]
    else:
        return None
    if not (dt in _FLOATS and k_cache.dtype is dt and v_cache.dtype is dt and ks == v_cache.shape and qs[0] == ks[0]
            and qs[3] == ks[3] and ks[1] > 0 and qs[1] % ks[1] == 0 and cache_seqlens.dtype is _I32
            and cache_seqlens.shape == (qs[0],) and k_cache.is_cpu and v_cache.is_cpu and cache_seqlens.is_cpu
            and qs[0] > 0) or torch.compiler.is_compiling():
        return None
    lens = cache_seqlens.tolist()
    start = lens[0]
    if len(lens) != 1 and lens.count(start) != len(lens):
        return None
    return start if 0 <= start <= ks[2] - lnew else None


def kvcache_append_call(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table=None) -> KVCacheAppendCall:
    if block_table is not None:
        _paged_kvcache_args_full("ak.kvcache_append", None, k_cache, v_cache, cache_seqlens, k_new, v_new,
                                 block_table, None)
        return _new(KVCacheAppendCall, (k_cache, v_cache, k_new, v_new, cache_seqlens, block_table))
    if (isinstance(k_cache, _T) and isinstance(v_cache, _T) and isinstance(k_new, _T) and isinstance(v_new, _T)
            and isinstance(cache_seqlens, _T)):
        ks, ns, dt, cpu = k_cache.shape, k_new.shape, k_cache.dtype, k_cache.is_cpu
        if (len(ks) == 4 and len(ns) == 4 and ks == v_cache.shape and ns == v_new.shape and ns[0] == ks[0]
                and ns[1] == ks[1] and ns[3] == ks[3] and ns[2] <= ks[2] and dt in _FLOATS and v_cache.dtype is dt
                and k_new.dtype is dt and v_new.dtype is dt and cache_seqlens.dtype is _I32
                and cache_seqlens.shape == (ks[0],)
                and ((v_cache.is_cpu and k_new.is_cpu and v_new.is_cpu and cache_seqlens.is_cpu) if cpu else
                     _same_device(k_cache, v_cache, k_new, v_new, cache_seqlens))
                and (not cpu or torch.compiler.is_compiling() or _lengths_fit(cache_seqlens, ns[2], ks[2]))):
            return _new(KVCacheAppendCall, (k_cache, v_cache, k_new, v_new, cache_seqlens, None))
    _kvcache_append_args_full(k_cache, v_cache, k_new, v_new, cache_seqlens)
    return _new(KVCacheAppendCall, (k_cache, v_cache, k_new, v_new, cache_seqlens, None))


# The norms' fast paths are written out in each function (no helper calls): after a kernel has streamed
# its tensors through the caches, every Python function and object touched is a cache miss, and the
# in-situ cost of a check is several times its cost in a tight loop (~2.5 us vs ~0.7 us at 512x768).
def layer_norm_call(x, weight=None, bias=None, eps=1e-5, residual=None) -> LayerNormCall:
    if isinstance(x, _T) and type(eps) is float and eps >= 0.0 and (xs := x.shape) and (dt := x.dtype) in _FLOATS:
        n, cpu = xs[-1], x.is_cpu
        if ((weight is None or (isinstance(weight, _T) and (ws := weight.shape) and len(ws) == 1 and ws[0] == n
                                and weight.dtype in _FLOATS
                                and (weight.is_cpu if cpu else weight.device == x.device)))
                and (bias is None or (isinstance(bias, _T) and (bs := bias.shape) and len(bs) == 1 and bs[0] == n
                                      and bias.dtype in _FLOATS and (bias.is_cpu if cpu else bias.device == x.device)))
                and (residual is None or (isinstance(residual, _T) and residual.shape == xs and residual.dtype is dt
                                          and (residual.is_cpu if cpu else residual.device == x.device)))):
            return _new(LayerNormCall, (x, weight, bias, eps, residual))
    _norm_args_full("ak.layer_norm", x, weight, bias, eps, residual)  # (the fast path takes a float eps only)
    return _new(LayerNormCall, (x, weight, bias, float(eps), residual))


def rms_norm_call(x, weight=None, eps=1e-6, residual=None) -> RMSNormCall:
    if isinstance(x, _T) and type(eps) is float and eps >= 0.0 and (xs := x.shape) and (dt := x.dtype) in _FLOATS:
        cpu = x.is_cpu
        if ((weight is None or (isinstance(weight, _T) and (ws := weight.shape) and len(ws) == 1 and ws[0] == xs[-1]
                                and weight.dtype in _FLOATS
                                and (weight.is_cpu if cpu else weight.device == x.device)))
                and (residual is None or (isinstance(residual, _T) and residual.shape == xs and residual.dtype is dt
                                          and (residual.is_cpu if cpu else residual.device == x.device)))):
            return _new(RMSNormCall, (x, weight, eps, residual))
    _norm_args_full("ak.rms_norm", x, weight, None, eps, residual)
    return _new(RMSNormCall, (x, weight, float(eps), residual))


def linear_call(x, weight, bias=None, activation=None) -> LinearCall:
    if isinstance(x, _T) and isinstance(weight, _T) and (activation is None or activation in _ACTS):
        xs, ws, dt = x.shape, weight.shape, x.dtype  # (each attribute read once: ~0.06-0.12 us apiece)
        if (xs and len(ws) == 2 and ws[1] == xs[-1] and dt in _FLOATS and weight.dtype is dt
                and (((x.is_cpu and weight.is_cpu) or _same_device(x, weight)) if bias is None else
                     (isinstance(bias, _T) and (bs := bias.shape) and len(bs) == 1 and bs[0] == ws[0]
                      and bias.dtype is dt and ((x.is_cpu and weight.is_cpu and bias.is_cpu)
                                                or _same_device(x, weight, bias))))):
            return _new(LinearCall, (x, weight, bias, activation))
    _linear_args_full(x, weight, bias, activation)
    return _new(LinearCall, (x, weight, bias, activation))


def _vec(b, n: int, x: torch.Tensor) -> bool:
    return b is None or (isinstance(b, _T) and b.dim() == 1 and b.shape[0] == n and b.dtype == x.dtype
                         and _same_device(x, b))


def _mat(w, rows: int, cols: int, x: torch.Tensor) -> bool:
    return (isinstance(w, _T) and w.dim() == 2 and w.shape[0] == rows and w.shape[1] == cols and w.dtype == x.dtype
            and _same_device(x, w))


def _ffn_ok(x, w_in, b_in, w_out, b_out, activation_name, w_gate, b_gate) -> bool:
    if isinstance(x, _T) and isinstance(w_in, _T) and x.dim() >= 1 and w_in.dim() == 2 and x.dtype in _FLOATS:
        d, h = x.shape[-1], w_in.shape[0]
        return (_mat(w_in, h, d, x) and _mat(w_out, d, h, x) and _vec(b_in, h, x) and _vec(b_out, d, x)
                and (w_gate is None or _mat(w_gate, h, d, x))
                and (b_gate is None or (w_gate is not None and _vec(b_gate, h, x)))
                and (activation_name in _ACTS or (activation_name is None and w_gate is None)))
    return False


def ffn_call(x, w_in, b_in, w_out, b_out, activation="gelu", w_gate=None, b_gate=None, recompute=False) -> FFNCall:
    if not _ffn_ok(x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate):
        _ffn_args_full(x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate)
    _flag("ak.ffn", "recompute", recompute)
    return _new(FFNCall, (x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate, recompute))


_INDEX_DTYPES = (torch.int32, torch.int64)


def _rotary_args_full(x, cos, sin, position_ids, interleaved, inplace) -> None:
    op = "ak.rotary"
    tensor(op, "x", x, ndim=4, layout="(B, H, L, D)")
    tensor(op, "cos", cos, ndim=2, layout="(Lmax, rotary_dim / 2)")
    tensor(op, "sin", sin, ndim=2, layout="(Lmax, rotary_dim / 2)")
    if sin.shape != cos.shape:
        raise ValueError(f"{op}: expected sin of cos's shape {_shape(cos)} (Lmax, rotary_dim / 2), got {_shape(sin)}")
    same_dtype(op, "cos", cos, sin=sin)
    same_device(op, "x", x, cos=cos, sin=sin, position_ids=position_ids)
    b, _, length, d = x.shape
    half = cos.shape[1]
    if half < 1 or 2 * half > d:
        raise ValueError(f"{op}: expected cos/sin of shape (Lmax, rotary_dim / 2) with 2 <= rotary_dim <= D = {d}, "
                         f"got {_shape(cos)} (rotary_dim = {2 * half})")
    lmax = cos.shape[0]
    if position_ids is None:
        if length > lmax:
            raise ValueError(f"{op}: without position_ids, rows 0..L-1 of cos/sin are used: expected L = {length} <= "
                             f"Lmax = {lmax} (cos/sin rows), or pass position_ids")
    else:
        tensor(op, "position_ids", position_ids, ndim=2, layout="(B, L) or (1, L)", dtypes=_INDEX_DTYPES)
        if position_ids.shape[1] != length or position_ids.shape[0] not in (1, b):
            raise ValueError(f"{op}: expected position_ids of shape ({b}, {length}) or (1, {length}) (B, L), "
                             f"got {_shape(position_ids)}")
        # Reading CPU-resident positions is free; on a GPU an out-of-range row is the caller's bug (the CUDA
        # kernel asserts on the device, as torch's own index kernels do).
        if position_ids.device.type == "cpu" and position_ids.numel() and not torch.compiler.is_compiling():
            lo, hi = int(position_ids.min()), int(position_ids.max())
            if lo < 0 or hi >= lmax:
                raise ValueError(f"{op}: expected position_ids in [0, Lmax) = [0, {lmax}) (cos/sin rows), got values "
                                 f"in [{lo}, {hi}]")
    _flag(op, "interleaved", interleaved)
    _flag(op, "inplace", inplace)


def rotary_for_append(op: str, q, k_new, cache_seqlens, cos, sin, interleaved) -> None:
    """rotary_cos / rotary_sin / rotary_interleaved of a KV-cache call: both tables or neither, with new keys to
    rotate, and every position the append reaches (cache_seqlens + Lnew - 1, or + Lq - 1) inside them."""
    _flag(op, "rotary_interleaved", interleaved)
    if cos is None or sin is None:
        raise ValueError(f"{op}: expected rotary_cos and rotary_sin together (rotary_interleaved needs them too), got "
                         f"rotary_cos={'a tensor' if cos is not None else None}, "
                         f"rotary_sin={'a tensor' if sin is not None else None}")
    if k_new is None:
        raise ValueError(f"{op}: rotary_cos/rotary_sin rotate the new keys as they are appended: expected k_new and "
                         "v_new with them (rotate q and the cache yourself with ak.rotary otherwise)")
    for name, t in (("rotary_cos", cos), ("rotary_sin", sin)):
        tensor(op, name, t, ndim=2, layout="(Lro, rotary_dim / 2)")
    if sin.shape != cos.shape:
        raise ValueError(f"{op}: expected rotary_sin of rotary_cos's shape {_shape(cos)}, got {_shape(sin)}")
    same_dtype(op, "rotary_cos", cos, rotary_sin=sin)
    same_device(op, "q", q, rotary_cos=cos, rotary_sin=sin)
    half, d = cos.shape[1], q.shape[-1]
    if half < 1 or 2 * half > d:
        raise ValueError(f"{op}: expected rotary_cos of shape (Lro, rotary_dim / 2) with 2 <= rotary_dim <= D = {d}, "
                         f"got {_shape(cos)}")
    if cache_seqlens.device.type == "cpu" and cache_seqlens.numel() and not torch.compiler.is_compiling():
        reach = int(cache_seqlens.max()) + max(k_new.shape[2], q.shape[2])
        if reach > cos.shape[0]:
            raise ValueError(f"{op}: the append reaches position {reach - 1}, past rotary_cos's {cos.shape[0]} rows "
                             "(Lro): expected Lro >= max(cache_seqlens) + max(Lnew, Lq)")


def rotary_call(x, cos, sin, position_ids=None, interleaved=False, inplace=False) -> RotaryCall:
    if (isinstance(x, _T) and isinstance(cos, _T) and isinstance(sin, _T) and position_ids is None
            and type(interleaved) is bool and type(inplace) is bool):
        xs, cs = x.shape, cos.shape
        if (len(xs) == 4 and len(cs) == 2 and sin.shape == cs and 1 <= cs[1] and 2 * cs[1] <= xs[3]
                and xs[2] <= cs[0] and x.dtype in _FLOATS and cos.dtype in _FLOATS and sin.dtype is cos.dtype
                and _same_device(x, cos, sin)):
            return _new(RotaryCall, (x, cos, sin, None, interleaved, inplace))
    _rotary_args_full(x, cos, sin, position_ids, interleaved, inplace)
    return _new(RotaryCall, (x, cos, sin, position_ids, interleaved, inplace))


def _kvcache_public_call(q, k_cache, v_cache, cache_seqlens, k_new=None, v_new=None, causal=True, scale=None,
                        rotary_cos=None, rotary_sin=None, rotary_interleaved=False, block_table=None,
                        window_size=None) -> KVCacheCall:
    """make_call's attention_with_kvcache: the public arguments (in the public order)."""
    return kvcache_call(q, k_cache, v_cache, cache_seqlens, k_new, v_new, causal, scale, block_table, rotary_cos,
                        rotary_sin, rotary_interleaved, window_size)


_BUILDERS = {"attention": attention_call, "attention_varlen": attention_varlen_call,
             "attention_with_kvcache": _kvcache_public_call, "kvcache_append": kvcache_append_call,
             "layer_norm": layer_norm_call, "rms_norm": rms_norm_call, "linear": linear_call, "ffn": ffn_call,
             "rotary": rotary_call}


def make_call(op: str, *args, **kwargs) -> Call:
    """The normalized call of public op ``op`` for these arguments (as ak.<op> takes them, minus backend=),
    checked exactly as the op checks them."""
    try:
        builder = _BUILDERS[op]
    except KeyError:
        raise ValueError(f"make_call: expected an op in {tuple(_BUILDERS)}, got {op!r}") from None
    return builder(*args, **kwargs)


_ACTS = frozenset(ACTIVATIONS)
