"""Flash attention in Triton: forward, backward, packed variable-length sequences, and split-K
decoding over a KV cache.

Layers: kernels -> launchers -> torch.library ops (fake impls + autograd) -> the "triton"
backend's entry points ``attention`` / ``attention_varlen`` / ``attention_with_kvcache``.

Forward (per query block, online softmax in float32, exp2 with log2(e) folded into the scale):
    m_new = max(m, rowmax(s));  p = exp2(s - m_new);  l = l * exp2(m - m_new) + rowsum(p)
    acc = acc * exp2(m - m_new) + (p * keep / (1 - dropout_p)) @ v
    out = acc / l,  lse = (m + log2(l)) / log2(e)  (natural log, saved for the backward)
A row whose every score is masked keeps m = -inf and l = 0: its output is 0 and its lse -inf.

Backward (FlashAttention-2): delta = rowsum(dO * O); recompute p = exp(s - lse) per block;
    dV += (p * z)^T dO,  dP = (dO V^T) * z,  dS = p * (dP - delta),  dK += dS^T Q * scale,
    dQ += dS K * scale,  with z = keep / (1 - dropout_p) (1 without dropout).
dK/dV programs own one key block of one KV head and loop over the query heads of its group
(GQA) and the query blocks, so the reduction is deterministic with no atomics; dQ programs own
one query block.

Masks: bottom-right causal (query i sees keys j <= i + Lk - Lq), a sliding window (left, right)
around that diagonal, key padding (j < Lk), and a user mask (bool keep-mask or additive float)
read through broadcast strides. The key-block loop skips blocks that the causal/window band
excludes entirely. Dropout draws Philox numbers from (seed, query, key) so the backward
regenerates the forward's mask exactly.

Soft-capping (Gemma-2): s = c * tanh(s_raw / c) on the scaled scores, before the masks; its
derivative 1 - tanh^2 multiplies dS in the backward. Attention sinks (GPT-OSS): each row's online
softmax starts from the head's sink logit (m = sink, l = 1) -- one more column with no value -- so
the lse includes it, the backward's P is unchanged, and dsink = -sum_rows exp(sink - lse) * delta.

Configs. Every autotuned kernel takes its configs from a table per (arch, dtype, head dim)
(_FWD, _TMA, _DKDV, _DQ below): each entry compiles for that arch without register spills and fits
its shared memory, for every feature the kernel has -- ``aigc-kernels audit`` proves it in CI by
compiling them for sm_90a and sm_80 -- and the first entry is the static default. Autotuning keys
hold bucketed lengths, so a new sequence length re-tunes at most once per power of two.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .. import _device
from ..contracts.attention import lse_like, rowmajor, softmax_scale, window_pair
from . import _tuning

try:  # host-side TMA descriptors (triton >= 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton: the pointer kernels only
    TensorDescriptor = None

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # the one log2(e) of the kernels: scores are kept in log2 units (exp2)
INTERPRET = _tuning.INTERPRET
# The Hopper forward (TMA descriptors, persistent grid): "auto" = on compute capability >= 9 when the
# call qualifies, "1" = whenever the call qualifies (also under the interpreter, for tests), "0" = never.
TMA_MODE = os.environ.get("AIGC_KERNELS_TRITON_TMA", "auto")
# Warp specialization of its key loop: "auto" = Blackwell (sm_100+) only, "1" = on (Hopper too), "0" = off.
WS_MODE = os.environ.get("AIGC_KERNELS_TRITON_WS", "auto")
SUPPORTED_HEAD_DIMS = (16, 256)  # inclusive range; any size in between (padded to a power of 2)


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _band(offs_m, offs_n, lq, lk, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
          IS_CAUSAL: tl.constexpr):
    """Keep-mask of causal/window/padding for query rows offs_m and key columns offs_n."""
    keep = (offs_n[None, :] < lk) & (offs_m[:, None] < lq)
    diag = offs_m[:, None] + (lk - lq)
    if IS_CAUSAL:  # causal caps the window's right side at the diagonal
        keep &= offs_n[None, :] <= diag
    elif WINDOW_RIGHT >= 0:
        keep &= offs_n[None, :] <= diag + WINDOW_RIGHT
    if WINDOW_LEFT >= 0:
        keep &= offs_n[None, :] >= diag - WINDOW_LEFT
    return keep


@triton.jit
def _seq_bounds(CU_Q, CU_K, b, LQ, LK, IS_VARLEN: tl.constexpr):
    """(first q row, first k row, Lq, Lk) of batch b: from the offsets of packed sequences, or the
    dense sizes. The row starts are int64 tensors in both cases (offsets * strides may pass 2^31)."""
    if IS_VARLEN:
        q0 = tl.load(CU_Q + b).to(tl.int64)
        k0 = tl.load(CU_K + b).to(tl.int64)
        lq = tl.load(CU_Q + b + 1) - tl.load(CU_Q + b)
        lk = tl.load(CU_K + b + 1) - tl.load(CU_K + b)
    else:
        q0 = b.to(tl.int64) * 0
        k0 = b.to(tl.int64) * 0
        lq = LQ
        lk = LK
    return q0, k0, lq, lk


@triton.jit
def _user_mask(MASK, b64, h, offs_m, offs_n, lq, lk, stride_mb, stride_mh, stride_mm, stride_mn, s, keep,
               MASK_KIND: tl.constexpr):
    """Apply the user's mask to a score tile: a bool keep-mask, or additive (in log2 units)."""
    mv = tl.load(MASK + b64 * stride_mb + h * stride_mh + offs_m[:, None].to(tl.int64) * stride_mm
                 + offs_n[None, :].to(tl.int64) * stride_mn, mask=(offs_m[:, None] < lq) & (offs_n[None, :] < lk),
                 other=0)
    if MASK_KIND == 1:
        keep = keep & (mv != 0)
    else:
        s = s + mv.to(tl.float32) * _LOG2E
    return s, keep


@triton.jit
def _key_range(start_m, lq, lk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW_LEFT: tl.constexpr,
               WINDOW_RIGHT: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """[lo, hi) of the key blocks that may hold a visible key for query rows [start_m, start_m + BLOCK_M)."""
    lo = 0
    hi = lk
    if WINDOW_LEFT >= 0:
        lo = tl.maximum(start_m + (lk - lq) - WINDOW_LEFT, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M + (lk - lq), lk)
    elif WINDOW_RIGHT >= 0:
        hi = tl.minimum(start_m + BLOCK_M + (lk - lq) + WINDOW_RIGHT, lk)
    hi = tl.maximum(hi, 0)
    return lo, hi


@triton.jit
def _kv_rows(BT, b64, stride_btb, offs_n, n_ok, PAGE, NUM_PAGES, stride_kb, stride_kn, stride_vb, stride_vn,
             PAGED: tl.constexpr):
    """(k row offsets, v row offsets, rows to load) of key rows offs_n of sequence b: contiguous (row * stride),
    or PAGED -- slot n % PAGE of page BT[b, n // PAGE] (one table read per row, so pages of any size). A page id
    outside [0, NUM_PAGES) (a bad table on the device, where validation cannot read it) is never dereferenced:
    its rows are not loaded, and the callers mask them as keys no query sees."""
    if PAGED:
        page = tl.load(BT + b64 * stride_btb + offs_n // PAGE, mask=n_ok, other=0).to(tl.int64)
        n_ok &= (page >= 0) & (page < NUM_PAGES)
        slot = (offs_n % PAGE).to(tl.int64)
        return page * stride_kb + slot * stride_kn, page * stride_vb + slot * stride_vn, n_ok
    rows = offs_n.to(tl.int64)
    return rows * stride_kn, rows * stride_vn, n_ok


@triton.jit
def _dropout_keep(seed, offs_m, offs_n, lk, dropout_p):
    """The keep-mask of dropout for these (query, key) positions: Philox from (seed, i * Lk + j)."""
    rnd = tl.rand(seed, offs_m[:, None] * lk + offs_n[None, :])
    return rnd >= dropout_p


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _scores(qk, sm_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """q k^T -> scores in log2 units, scaled and (with HAS_SOFTCAP) soft-capped: c * tanh(qk * scale / c)."""
    if HAS_SOFTCAP:
        return (softcap * _LOG2E) * _tanh(qk * (sm_scale / softcap))
    return qk * (sm_scale * _LOG2E)


@triton.jit
def _cap_grad(s, softcap):
    """d(capped score) / d(raw score) = 1 - tanh^2, from the capped score s (log2 units)."""
    t = s / (softcap * _LOG2E)
    return 1.0 - t * t


@triton.jit
def _softmax_init(SINKS, h, BLOCK: tl.constexpr, HAS_SINKS: tl.constexpr):
    """(m, l) before the first key: -inf and 0, or the head's sink logit (log2 units) and 1."""
    if HAS_SINKS:
        m_i = tl.zeros([BLOCK], dtype=tl.float32) + tl.load(SINKS + h).to(tl.float32) * _LOG2E
        l_i = tl.full([BLOCK], 1.0, dtype=tl.float32)
    else:
        m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK], dtype=tl.float32)
    return m_i, l_i


@triton.jit
def _softmax_step(s, m_i, l_i):
    """One key block of the online softmax, s in log2 units (-inf where masked):
    (p, alpha, m_new, l_new) with p = exp2(s - m_new), alpha = exp2(m_i - m_new) the rescale of what
    came before. Rows with no key yet keep m = -inf without computing inf - inf."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _softmax_finish(acc, m_i, l_i):
    """(out = acc / l, lse in log2 units); a row that saw no key (l = 0) gives 0 and -inf."""
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    return out, tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))


# (BLOCK_M, BLOCK_N, num_warps, num_stages), best first, per (arch, dtype class, head-dim class); see the
# module docstring. Half = fp16/bf16 (tensor cores: wgmma on sm_90a needs blocks of >= 64 rows);
# fp32 runs IEEE dots on FMA units, which hold whole tiles in registers: small tiles.
_FWD = {
    ("sm90", "half", 32): [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
    ("sm90", "half", 64): [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
    ("sm90", "half", 128): [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3)],
    ("sm90", "half", 256): [(64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 8, 2)],
    ("sm80", "half", 32): [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
    ("sm80", "half", 64): [(128, 64, 8, 3), (128, 32, 4, 3), (128, 32, 8, 3), (64, 32, 4, 2)],
    ("sm80", "half", 128): [(128, 32, 8, 3), (32, 32, 4, 2)],
    ("sm80", "half", 256): [(64, 32, 8, 2), (32, 32, 4, 2)],
    **{(a, "fp32", d): [(64, 32, 8, 2), (32, 32, 4, 2)] for a in ("sm90", "sm80") for d in (32, 64)},
    **{(a, "fp32", 128): [(32, 32, 8, 2), (16, 32, 4, 2)] for a in ("sm90", "sm80")},
    **{(a, "fp32", 256): [(32, 32, 8, 2), (32, 16, 4, 2)] for a in ("sm90", "sm80")},
}
# The backward: dK/dV programs hold a key block's dK and dV accumulators (BLOCK_N rows), dQ programs a query
# block's dQ. float32 with head dims over 64 has no entry: every tile spills there (limits route it away).
_DKDV = {
    ("sm90", "half", 32): [(64, 64, 8, 2), (128, 64, 8, 2), (32, 64, 4, 2)],
    ("sm90", "half", 64): [(64, 64, 8, 2), (128, 64, 8, 2), (32, 128, 8, 2), (32, 64, 4, 2)],
    ("sm90", "half", 128): [(32, 64, 4, 2), (32, 32, 4, 2)],
    ("sm90", "half", 256): [(16, 32, 4, 1), (32, 32, 4, 2)],
    ("sm80", "half", 32): [(64, 64, 8, 2), (128, 64, 8, 2), (32, 64, 4, 2)],
    ("sm80", "half", 64): [(32, 32, 4, 2), (16, 32, 4, 1)],
    ("sm80", "half", 128): [(32, 64, 8, 2), (32, 32, 4, 2), (16, 32, 4, 1)],
    ("sm80", "half", 256): [(32, 32, 4, 2), (16, 32, 4, 1)],
    **{(a, "fp32", d): [(32, 32, 8, 2), (16, 32, 4, 2)] for a in ("sm90", "sm80") for d in (32, 64)},
}
_DQ = {
    ("sm90", "half", 32): [(128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 4, 2)],
    ("sm90", "half", 64): [(128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 2)],
    ("sm90", "half", 128): [(128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 2)],
    ("sm90", "half", 256): [(64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2)],
    ("sm80", "half", 32): [(64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2)],
    ("sm80", "half", 64): [(64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2)],
    ("sm80", "half", 128): [(64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2)],
    ("sm80", "half", 256): [(32, 32, 8, 2), (32, 32, 4, 2)],
    **{(a, "fp32", d): [(32, 32, 8, 2), (64, 16, 4, 2)] for a in ("sm90", "sm80") for d in (32, 64)},
}
# Sequences shorter than every block of a table entry take one of these (masked rows cost little there).
_SHORT = [(32, 32, 4, 2), (16, 32, 4, 2), (16, 16, 2, 1)]
_INTERPRET_SHAPE = (16, 16, 1, 1)


def _shapes_configs(tables, mode: str, pre_hook=None) -> list:
    """The configs of a mode: one small config under the interpreter, else every shape of the tables
    (the prune picks the ones for the call's arch, dtype and head dim)."""
    shapes = [_INTERPRET_SHAPE] if mode == "interpret" else list(dict.fromkeys(
        [sh for table in tables for entries in table.values() for sh in entries] + _SHORT))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st, pre_hook=pre_hook)
            for bm, bn, w, st in shapes]


_fwd_configs = functools.partial(_shapes_configs, [_FWD])
_dkdv_configs = functools.partial(_shapes_configs, [_DKDV])
_dq_configs = functools.partial(_shapes_configs, [_DQ])


def _smem_fwd(bm, bn, stages, d, elem, mask_elem):
    """Shared memory of the pointer forward (bytes, an upper bound): the Q tile, `stages` buffers of K
    and V tiles, and of the user mask's tile when there is one."""
    return elem * d * (bm + 2 * bn * stages) + stages * bm * bn * mask_elem


def _smem_bwd(rows_fixed, rows_looped, stages, d, elem, mask_elem, bm, bn):
    """dK/dV: K, V fixed, Q and dO looped; dQ: Q, dO fixed, K and V looped."""
    return elem * d * (2 * rows_fixed + 2 * rows_looped * stages) + stages * bm * bn * mask_elem


def _attention_prune(table, kind):
    """A prune for the pointer kernels: the table's configs for this GPU, dtype and head dim, blocks no
    larger than the (bucketed) sequence lengths, that fit the GPU's shared memory."""

    def prune(configs, named_args, **kwargs):
        gpu = _tuning.target_gpu(named_args)
        q = _tuning.arg(named_args, kwargs, "Q")
        d = _tuning.dim_class(_tuning.arg(named_args, kwargs, "HEAD_DIM"))
        lq = _tuning.arg(named_args, kwargs, "LQ_BUCKET")
        lk = _tuning.arg(named_args, kwargs, "LK_BUCKET")
        mask_kind = _tuning.arg(named_args, kwargs, "MASK_KIND")
        elem = q.element_size()
        mask_elem = 0 if mask_kind == 0 else (1 if mask_kind == 1 else elem)

        def fits(c):
            bm, bn, st = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages
            if kind == "fwd":
                smem = _smem_fwd(bm, bn, st, d, elem, mask_elem)
            elif kind == "dkdv":
                smem = _smem_bwd(bn, bm, st, d, elem, mask_elem, bm, bn)
            else:
                smem = _smem_bwd(bm, bn, st, d, elem, mask_elem, bm, bn)
            return smem <= gpu.smem_per_block

        wanted = table.get((_tuning.arch_class(gpu), _tuning.dtype_class(q.dtype), d), [])
        # the block along the sequence the grid is over must not exceed it (a block of 128 rows for 20
        # queries is 108 wasted rows); along the looped one, a larger block only masks more
        grid_block, grid_len = ("BLOCK_N", lk) if kind == "dkdv" else ("BLOCK_M", lq)
        sized = [w for w in wanted if (w[0] if grid_block == "BLOCK_M" else w[1]) <= grid_len]
        keep = _tuning.pick(configs, sized or [s for s in _SHORT if s[0] <= max(grid_len, 16)] or _SHORT, fits)
        return keep or _tuning.pick(configs, _SHORT[-1:])

    return prune


_AUTOTUNE_KEY = ["LQ_BUCKET", "LK_BUCKET", "HEAD_DIM", "MASK_KIND", "IS_CAUSAL", "WINDOW_LEFT", "WINDOW_RIGHT",
                 "IS_VARLEN", "HAS_DROPOUT", "IEEE", "HAS_SOFTCAP", "HAS_SINKS", "PAGED", "HAS_SEQUSED"]


@_tuning.autotune(_fwd_configs, _AUTOTUNE_KEY, _attention_prune(_FWD, "fwd"))
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, MASK, OUT, LSE, CU_Q, CU_K, SEED, SINKS,
    BT, SEQUSED,  # PAGED: the block table (B, max_pages); HAS_SEQUSED: the keys each sequence uses (B,)
    stride_btb, PAGE, NUM_PAGES,  # PAGED: kb/vb stride the pages, kn/vn the slots of a page of PAGE rows
    stride_qb, stride_qh, stride_qm,  # q (B, Hq, Lq, D) or packed (total_q, Hq, D): batch, head, row strides
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_mb, stride_mh, stride_mm, stride_mn,  # mask strides (0 on broadcast dims)
    stride_lb, stride_lh,  # lse (B, Hq, Lq) or packed (Hq, total_q): batch, head strides (row stride 1)
    H, GROUPS, LQ, LK, HEAD_DIM, sm_scale, dropout_p, softcap,
    LQ_BUCKET, LK_BUCKET,  # the lengths' tuning buckets (autotune key only)
    MASK_KIND: tl.constexpr,  # 0 none, 1 bool keep-mask, 2 additive
    IS_CAUSAL: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr, IEEE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr, PAGED: tl.constexpr, HAS_SEQUSED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """PAGED (packed queries over a paged cache, forward only): key row n of sequence b is slot n % PAGE of
    page BT[b, n // PAGE] (one table read per row: pages of any size); a page id outside [0, NUM_PAGES) -- a
    bad table on the device -- is never dereferenced, its rows are keys no query sees. HAS_SEQUSED: sequence
    b has SEQUSED[b] keys (FA3's seqused_k), from its first row."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUPS
    q0, k0, lq, lk = _seq_bounds(CU_Q, CU_K, b, LQ, LK, IS_VARLEN)
    if HAS_SEQUSED:
        lk = tl.load(SEQUSED + b)
    start_m = pid_m * BLOCK_M
    if start_m >= lq:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    b64 = b.to(tl.int64)
    q_ptrs = Q + b64 * stride_qb + h * stride_qh + (q0 + offs_m)[:, None].to(tl.int64) * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < lq) & d_ok[None, :], other=0.0)
    if PAGED:
        k_base = K + hk * stride_kh
        v_base = V + hk * stride_vh
    else:
        k_base = K + b64 * stride_kb + hk * stride_kh + k0 * stride_kn
        v_base = V + b64 * stride_vb + hk * stride_vh + k0 * stride_vn
    m_i, l_i = _softmax_init(SINKS, h, BLOCK_M, HAS_SINKS)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_DROPOUT:
        seed = tl.load(SEED) + pid_bh
    lo, hi = _key_range(start_m, lq, lk, BLOCK_M, BLOCK_N, WINDOW_LEFT, WINDOW_RIGHT, IS_CAUSAL)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k_rows, v_rows, n_ok = _kv_rows(BT, b64, stride_btb, offs_n, offs_n < lk, PAGE, NUM_PAGES, stride_kb,
                                        stride_kn, stride_vb, stride_vn, PAGED)
        k = tl.load(k_base + k_rows[None, :] + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        if IEEE:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = _scores(s, sm_scale, softcap, HAS_SOFTCAP)
        keep = _band(offs_m, offs_n, lq, lk, WINDOW_LEFT, WINDOW_RIGHT, IS_CAUSAL)
        if PAGED:
            keep &= n_ok[None, :]
        if MASK_KIND != 0:
            s, keep = _user_mask(MASK, b64, h, offs_m, offs_n, lq, lk, stride_mb, stride_mh, stride_mm, stride_mn,
                                 s, keep, MASK_KIND)
        s = tl.where(keep, s, float("-inf"))
        p, alpha, m_new, l_i = _softmax_step(s, m_i, l_i)
        if HAS_DROPOUT:
            p = tl.where(_dropout_keep(seed, offs_m, offs_n, lk, dropout_p), p / (1.0 - dropout_p), 0.0)
        v = tl.load(v_base + v_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None]
        if IEEE:
            acc += tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc += tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out, lse2 = _softmax_finish(acc, m_i, l_i)
    lse = lse2 / _LOG2E  # natural log for the backward
    o_ptrs = OUT + b64 * stride_ob + h * stride_oh + (q0 + offs_m)[:, None].to(tl.int64) * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=(offs_m[:, None] < lq) & d_ok[None, :])
    tl.store(LSE + b64 * stride_lb + h * stride_lh + q0 + offs_m, lse, mask=offs_m < lq)


# ----------------------------------------------------------------------------------------------
# Hopper forward: TMA tensor descriptors + persistent scheduling (+ optional warp specialization)
# ----------------------------------------------------------------------------------------------
# The TMA forward (sm_90+, fp16/bf16 only: fp32 tiles of this kernel spill): a persistent program also
# stages its output tile in shared memory for the TMA store.
_TMA = {
    ("sm90", "half", 32): [(128, 128, 8, 2), (128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
    ("sm90", "half", 64): [(128, 128, 8, 2), (128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
    ("sm90", "half", 128): [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
    ("sm90", "half", 256): [(64, 64, 8, 2), (64, 64, 4, 2)],
}


def _tma_configs(mode: str):
    return _shapes_configs([_TMA], mode, pre_hook=_tma_block_hook)


def _tma_block_hook(nargs):
    """The descriptors' block shapes follow the config's tiles (set before each launch)."""
    bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"]
    nargs["desc_q"].block_shape = [1, 1, bm, d]
    nargs["desc_o"].block_shape = [1, 1, bm, d]
    nargs["desc_k"].block_shape = [1, 1, bn, d]
    nargs["desc_v"].block_shape = [1, 1, bn, d]


def _tma_prune(configs, named_args, **kwargs):
    gpu = _tuning.target_gpu(named_args)
    d = _tuning.arg(named_args, kwargs, "HEAD_DIM")
    elem = _tuning.arg(named_args, kwargs, "desc_q").base.element_size()
    lq = _tuning.arg(named_args, kwargs, "LQ_BUCKET")

    def fits(c):  # Q and O tiles, `stages` buffers of K and V tiles
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        return elem * d * (2 * bm + 2 * bn * c.num_stages) <= gpu.smem_per_block

    wanted = _TMA.get(("sm90", "half", _tuning.dim_class(d)), [])
    sized = [w for w in wanted if w[0] <= lq]
    return _tuning.pick(configs, sized or wanted[-1:], fits) or _tuning.pick(configs, wanted[-1:])


@_tuning.autotune(_tma_configs, ["LQ_BUCKET", "LK_BUCKET", "HEAD_DIM", "IS_CAUSAL", "WINDOW_LEFT", "WINDOW_RIGHT",
                                  "WARP_SPECIALIZE"], _tma_prune)
@triton.jit
def _attn_fwd_tma_kernel(
    desc_q, desc_k, desc_v, desc_o,  # 4-D (B, H, L, D) tensor descriptors: TMA loads, zero fill past L
    LSE, stride_lb, stride_lh,
    B, H, GROUPS, LQ, LK, sm_scale,
    LQ_BUCKET, LK_BUCKET,  # the lengths' tuning buckets (autotune key only)
    HEAD_DIM: tl.constexpr, NUM_PROGS: tl.constexpr,
    IS_CAUSAL: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Dense forward without user masks or dropout. A fixed grid of NUM_PROGS programs walks the
    (batch, head, query block) tiles, heaviest causal blocks first; Q/K/V/O move by TMA."""
    qk_scale = sm_scale * _LOG2E
    num_m = tl.cdiv(LQ, BLOCK_M)
    num_tiles = B * H * num_m
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_PROGS):
        pid_m = num_m - 1 - tile % num_m  # the last query blocks see the most keys under causal masks
        bh = tile // num_m
        b = bh // H
        h = bh % H
        hk = h // GROUPS
        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = desc_q.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        dtype = q.dtype
        m_i, l_i = _softmax_init(LSE, h, BLOCK_M, False)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        lo, hi = _key_range(start_m, LQ, LK, BLOCK_M, BLOCK_N, WINDOW_LEFT, WINDOW_RIGHT, IS_CAUSAL)
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = desc_k.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
            if dtype == tl.float32:
                s = tl.dot(q, k.T, input_precision="ieee")
            else:
                s = tl.dot(q, k.T)
            keep = _band(offs_m, offs_n, LQ, LK, WINDOW_LEFT, WINDOW_RIGHT, IS_CAUSAL)
            s = tl.where(keep, s * qk_scale, float("-inf"))
            p, alpha, m_new, l_i = _softmax_step(s, m_i, l_i)
            v = desc_v.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
            acc = acc * alpha[:, None]
            if dtype == tl.float32:
                acc = tl.dot(p.to(dtype), v, acc, input_precision="ieee")
            else:
                acc = tl.dot(p.to(dtype), v, acc)
            m_i = m_new
        out, lse2 = _softmax_finish(acc, m_i, l_i)
        lse = lse2 / _LOG2E
        desc_o.store([b, h, start_m, 0], out.to(dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))  # rows past LQ clipped
        tl.store(LSE + b.to(tl.int64) * stride_lb + h * stride_lh + offs_m, lse, mask=offs_m < LQ)


@triton.jit
def _attn_bwd_preprocess(OUT, DO, DELTA, stride_ob, stride_oh, stride_om, stride_db, stride_dh, stride_dm,
                         stride_lb, stride_lh, H, LQ, HEAD_DIM, CU_Q,
                         IS_VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta = rowsum(dO * O), float32, laid out like lse."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q0, _, lq, _ = _seq_bounds(CU_Q, CU_Q, b, LQ, LQ, IS_VARLEN)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < lq) & (offs_d[None, :] < HEAD_DIM)
    rows = (q0 + offs_m)[:, None].to(tl.int64)
    b64 = b.to(tl.int64)
    o = tl.load(OUT + b64 * stride_ob + h * stride_oh + rows * stride_om + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b64 * stride_db + h * stride_dh + rows * stride_dm + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + b64 * stride_lb + h * stride_lh + q0 + offs_m, delta, mask=offs_m < lq)


@_tuning.autotune(_dkdv_configs, _AUTOTUNE_KEY, _attention_prune(_DKDV, "dkdv"))
@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, MASK, DO, LSE, DELTA, DK, DV, CU_Q, CU_K, SEED,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    stride_mb, stride_mh, stride_mm, stride_mn, stride_lb, stride_lh,
    H, HKV, GROUPS, LQ, LK, HEAD_DIM, sm_scale, dropout_p, softcap,
    LQ_BUCKET, LK_BUCKET,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr, IEEE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)  # over B * Hkv
    b = pid_bh // HKV
    hk = pid_bh % HKV
    q0, k0, lq, lk = _seq_bounds(CU_Q, CU_K, b, LQ, LK, IS_VARLEN)
    start_n = pid_n * BLOCK_N
    if start_n >= lk:
        return
    b64 = b.to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    kv_mask = (offs_n[:, None] < lk) & d_ok[None, :]
    rows_k = (k0 + offs_n)[:, None].to(tl.int64)
    k = tl.load(K + b64 * stride_kb + hk * stride_kh + rows_k * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b64 * stride_vb + hk * stride_vh + rows_k * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Query rows that can see this key block: the causal/window band read from the key side.
    lo_m = 0
    hi_m = lq
    if IS_CAUSAL:
        lo_m = tl.maximum(start_n - (lk - lq), 0)
    elif WINDOW_RIGHT >= 0:
        lo_m = tl.maximum(start_n - (lk - lq) - WINDOW_RIGHT, 0)
    if WINDOW_LEFT >= 0:
        hi_m = tl.minimum(start_n + BLOCK_N - (lk - lq) + WINDOW_LEFT, lq)
    lo_m = (lo_m // BLOCK_M) * BLOCK_M
    for g in range(0, GROUPS):
        h = hk * GROUPS + g
        if HAS_DROPOUT:
            seed = tl.load(SEED) + b * H + h
        for start_m in range(lo_m, hi_m, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            m_ok = offs_m < lq
            rows_q = (q0 + offs_m)[:, None].to(tl.int64)
            q = tl.load(Q + b64 * stride_qb + h * stride_qh + rows_q * stride_qm + offs_d[None, :],
                        mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            do = tl.load(DO + b64 * stride_dob + h * stride_doh + rows_q * stride_dom + offs_d[None, :],
                         mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            lse = tl.load(LSE + b64 * stride_lb + h * stride_lh + q0 + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + b64 * stride_lb + h * stride_lh + q0 + offs_m, mask=m_ok, other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = _scores(s, sm_scale, softcap, HAS_SOFTCAP)
            if HAS_SOFTCAP:
                dcap = _cap_grad(s, softcap)
            keep = _band(offs_m, offs_n, lq, lk, WINDOW_LEFT, WINDOW_RIGHT, IS_CAUSAL)
            if MASK_KIND != 0:
                s, keep = _user_mask(MASK, b64, h, offs_m, offs_n, lq, lk, stride_mb, stride_mh, stride_mm,
                                     stride_mn, s, keep, MASK_KIND)
            # lse = -inf marks a row that saw no key: its p is 0 everywhere.
            lse2 = tl.where(lse == float("-inf"), float("inf"), lse * _LOG2E)
            p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)
            if IEEE:
                dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            else:
                dp = tl.dot(do, tl.trans(v))
            if HAS_DROPOUT:
                z = tl.where(_dropout_keep(seed, offs_m, offs_n, lk, dropout_p), 1.0 / (1.0 - dropout_p), 0.0)
                pz = p * z
                dp = dp * z
            else:
                pz = p
            if IEEE:
                dv += tl.dot(tl.trans(pz.to(do.dtype)), do, input_precision="ieee")
            else:
                dv += tl.dot(tl.trans(pz.to(do.dtype)), do)
            ds = p * (dp - delta[:, None])
            if HAS_SOFTCAP:
                ds = ds * dcap
            if IEEE:
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee")
            else:
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    dk = dk * sm_scale
    dk_ptrs = DK + b64 * stride_dkb + hk * stride_dkh + rows_k * stride_dkn + offs_d[None, :]
    dv_ptrs = DV + b64 * stride_dvb + hk * stride_dvh + rows_k * stride_dvn + offs_d[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@_tuning.autotune(_dq_configs, _AUTOTUNE_KEY, _attention_prune(_DQ, "dq"))
@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, MASK, DO, LSE, DELTA, DQ, CU_Q, CU_K, SEED,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom, stride_dqb, stride_dqh, stride_dqm,
    stride_mb, stride_mh, stride_mm, stride_mn, stride_lb, stride_lh,
    H, GROUPS, LQ, LK, HEAD_DIM, sm_scale, dropout_p, softcap,
    LQ_BUCKET, LK_BUCKET,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr, IEEE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUPS
    q0, k0, lq, lk = _seq_bounds(CU_Q, CU_K, b, LQ, LK, IS_VARLEN)
    start_m = pid_m * BLOCK_M
    if start_m >= lq:
        return
    b64 = b.to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < lq
    rows_q = (q0 + offs_m)[:, None].to(tl.int64)
    q = tl.load(Q + b64 * stride_qb + h * stride_qh + rows_q * stride_qm + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + b64 * stride_dob + h * stride_doh + rows_q * stride_dom + offs_d[None, :],
                 mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(LSE + b64 * stride_lb + h * stride_lh + q0 + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + b64 * stride_lb + h * stride_lh + q0 + offs_m, mask=m_ok, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * _LOG2E)
    k_base = K + b64 * stride_kb + hk * stride_kh + k0 * stride_kn
    v_base = V + b64 * stride_vb + hk * stride_vh + k0 * stride_vn
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_DROPOUT:
        seed = tl.load(SEED) + pid_bh
    lo, hi = _key_range(start_m, lq, lk, BLOCK_M, BLOCK_N, WINDOW_LEFT, WINDOW_RIGHT, IS_CAUSAL)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < lk
        k = tl.load(k_base + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = _scores(s, sm_scale, softcap, HAS_SOFTCAP)
        if HAS_SOFTCAP:
            dcap = _cap_grad(s, softcap)
        keep = _band(offs_m, offs_n, lq, lk, WINDOW_LEFT, WINDOW_RIGHT, IS_CAUSAL)
        if MASK_KIND != 0:
            s, keep = _user_mask(MASK, b64, h, offs_m, offs_n, lq, lk, stride_mb, stride_mh, stride_mm, stride_mn,
                                 s, keep, MASK_KIND)
        p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)
        if IEEE:
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        else:
            dp = tl.dot(do, tl.trans(v))
        if HAS_DROPOUT:
            dp = tl.where(_dropout_keep(seed, offs_m, offs_n, lk, dropout_p), dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        if HAS_SOFTCAP:
            ds = ds * dcap
        if IEEE:
            dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
        else:
            dq += tl.dot(ds.to(k.dtype), k)
    dq = dq * sm_scale
    tl.store(DQ + b64 * stride_dqb + h * stride_dqh + rows_q * stride_dqm + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _decode_split_kernel(
    Q, K, V, LENS, PART_O, PART_LSE, BT,  # BT: the block table (PAGED)
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_btb, PAGE, NUM_PAGES,  # PAGED: kb/vb stride the pages, kn/vn the slots of a page of PAGE rows
    stride_pb, stride_ph, stride_pm, stride_ps,  # PART_O (B, Hq, Lq, S, D) float32 strides (d contiguous)
    stride_lb, stride_lh, stride_lm,  # PART_LSE (B, Hq, Lq, S) (split contiguous)
    HKV, GROUPS, LQ, LQ_TOTAL, Q_OFFSET, LNEW, HEAD_DIM, sm_scale, chunk, WL, WR,
    IS_CAUSAL: tl.constexpr, IEEE: tl.constexpr, PAGED: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One (batch, kv head, split): the GROUPS * LQ query rows of the kv head against one chunk of
    the cache, writing a normalized partial output and its lse (flash-decoding). The LQ queries
    are rows Q_OFFSET.. of the LQ_TOTAL new queries (long inputs are processed in row chunks).
    PAGED: key row n of batch b is slot n % PAGE of page BT[b, n // PAGE] (one table read per row, so
    pages of any size; rows past the valid keys read no page). A page id outside [0, NUM_PAGES) -- a bad
    table on the device, where validation cannot read it -- is never dereferenced: its rows count as
    keys the query does not see. WL / WR (-1 = unbounded): the window around each query's bottom-right
    diagonal; the split's first key block starts at the first key any of its rows sees."""
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    b64 = b.to(tl.int64)
    lk = tl.load(LENS + b) + LNEW  # valid keys after the append
    rows = tl.arange(0, BLOCK_R)  # row r = (g, i): query head hk * GROUPS + g, query i
    g = rows // LQ
    i = rows % LQ
    r_ok = rows < GROUPS * LQ
    h = hk * GROUPS + g
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b64 * stride_qb + h[:, None] * stride_qh + i[:, None] * stride_qm + offs_d[None, :],
                mask=r_ok[:, None] & d_ok[None, :], other=0.0)
    qk_scale = sm_scale * _LOG2E
    m_i, l_i = _softmax_init(LENS, 0, BLOCK_R, False)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, lk)
    lo = tl.maximum(lo, tl.where(WL >= 0, tl.maximum(Q_OFFSET + lk - LQ_TOTAL - WL, 0), 0))
    if PAGED:
        k_base = K + hk * stride_kh
        v_base = V + hk * stride_vh
    else:
        k_base = K + b64 * stride_kb + hk * stride_kh
        v_base = V + b64 * stride_vb + hk * stride_vh
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_rows, v_rows, n_ok = _kv_rows(BT, b64, stride_btb, offs_n, offs_n < hi, PAGE, NUM_PAGES, stride_kb,
                                        stride_kn, stride_vb, stride_vn, PAGED)
        k = tl.load(k_base + k_rows[None, :] + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        if IEEE:
            s = tl.dot(q, k, input_precision="ieee") * qk_scale
        else:
            s = tl.dot(q, k) * qk_scale
        keep = n_ok[None, :] & r_ok[:, None]
        diag = (Q_OFFSET + i + (lk - LQ_TOTAL))[:, None]  # the key aligned with each query row
        if IS_CAUSAL:
            keep &= offs_n[None, :] <= diag
        keep &= ((WR < 0) | (offs_n[None, :] <= diag + WR)) & ((WL < 0) | (offs_n[None, :] >= diag - WL))
        s = tl.where(keep, s, float("-inf"))
        p, alpha, m_new, l_i = _softmax_step(s, m_i, l_i)
        v = tl.load(v_base + v_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out, lse = _softmax_finish(acc, m_i, l_i)  # lse in log2 units: the combine works in them
    tl.store(PART_O + b64 * stride_pb + h[:, None] * stride_ph + i[:, None] * stride_pm + split * stride_ps
             + offs_d[None, :], out, mask=r_ok[:, None] & d_ok[None, :])
    tl.store(PART_LSE + b64 * stride_lb + h * stride_lh + i * stride_lm + split, lse, mask=r_ok)


@triton.jit
def _decode_combine_kernel(PART_O, PART_LSE, OUT, stride_pb, stride_ph, stride_pm, stride_ps, stride_lb, stride_lh,
                           stride_lm, stride_ob, stride_oh, stride_om, H, LQ, SPLITS, HEAD_DIM,
                           BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """out = sum_s exp2(lse_s - lse) * out_s over the splits of one (batch, head, query)."""
    pid = tl.program_id(0)
    i = pid % LQ
    h = (pid // LQ) % H
    b = (pid // LQ) // H
    b64 = b.to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < SPLITS
    lse = tl.load(PART_LSE + b64 * stride_lb + h * stride_lh + i * stride_lm + offs_s, mask=s_ok,
                  other=float("-inf"))
    m = tl.max(lse, 0)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m_use)
    total = tl.sum(w, 0)
    w = w / tl.where(total == 0.0, 1.0, total)
    parts = tl.load(PART_O + b64 * stride_pb + h * stride_ph + i * stride_pm + offs_s[:, None] * stride_ps
                    + offs_d[None, :], mask=s_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    out = tl.sum(parts * w[:, None], 0)
    tl.store(OUT + b64 * stride_ob + h * stride_oh + i * stride_om + offs_d, out.to(OUT.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def _qkv_strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, head, row) strides of (B, H, L, D) or packed (total, H, D)."""
    if varlen:
        return 0, t.stride(1), t.stride(0)
    return t.stride(0), t.stride(1), t.stride(2)


def _mask_args(attn_mask: torch.Tensor | None, shape: tuple[int, int, int, int], q: torch.Tensor):
    if attn_mask is None:
        return q, (0, 0, 0, 0), 0
    m = attn_mask.expand(shape)
    kind = 1 if m.dtype == torch.bool else 2
    if kind == 1:
        m = m.view(torch.uint8)
    return m, tuple(m.stride()), kind


def _flags(causal: bool, window_left: int, window_right: int):
    return dict(IS_CAUSAL=causal, WINDOW_LEFT=window_left, WINDOW_RIGHT=window_right)


def _lse_layout(q: torch.Tensor, varlen: bool) -> tuple[torch.Tensor, int, int]:
    """lse as (B, Hq, Lq) or packed (Hq, total_q), with its batch and head strides."""
    if varlen:
        lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)
        return lse, 0, lse.stride(0)
    lse = torch.empty(q.shape[0], q.shape[1], q.shape[2], dtype=torch.float32, device=q.device)
    return lse, lse.stride(0), lse.stride(1)


def _fwd(q, k, v, attn_mask, cu_q, cu_k, max_q, max_k, causal, scale, wl, wr, dropout_p, seed, softcap=0.0,
         sinks=None, block_table=None, seqused_k=None):
    """block_table / seqused_k: packed queries (cu_q) over a paged cache k/v (num_pages, page_size, Hkv, D), or
    FA3's seqused_k (the keys each sequence uses); forward only."""
    varlen = cu_q is not None
    paged = block_table is not None
    if varlen:
        batch, hq, d = cu_q.shape[0] - 1, q.shape[1], q.shape[2]
        hkv, lq, lk = k.shape[2 if paged else 1], max_q, max_k
    else:
        batch, hq, lq, d = q.shape
        hkv, lk = k.shape[1], k.shape[2]
    out = torch.zeros_like(q) if varlen else torch.empty_like(q)  # packed rows past the last offset: 0
    lse, slb, slh = _lse_layout(q, varlen)
    if out.numel() == 0 or lq == 0 or batch == 0:
        if lse.numel():
            lse.fill_(float("-inf"))
        return out.zero_(), lse
    if softcap == 0.0 and sinks is None and _tma_ok(q, k, v, attn_mask, varlen, dropout_p):
        _fwd_tma(q, k, v, out, lse, causal, scale, wl, wr)
        return out, lse
    mask, ms, kind = _mask_args(attn_mask, (batch, hq, lq, lk), q)
    dummy = cu_q if varlen else lse
    if paged:  # (num_pages, page_size, Hkv, D): page, head, slot strides
        kst, vst = (k.stride(0), k.stride(2), k.stride(1)), (v.stride(0), v.stride(2), v.stride(1))
        paging = (block_table, seqused_k, block_table.stride(0), k.shape[1], k.shape[0])
    else:
        kst, vst = _qkv_strides(k, varlen), _qkv_strides(v, varlen)
        paging = (dummy, seqused_k if seqused_k is not None else dummy, 0, 1, 0)
    grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), batch * hq)  # noqa: E731
    _attn_fwd_kernel[grid](
        q, k, v, mask, out, lse, cu_q if varlen else dummy, cu_k if varlen and cu_k is not None else dummy,
        seed if seed is not None else lse, sinks if sinks is not None else lse, *paging,
        *_qkv_strides(q, varlen), *kst, *vst, *_qkv_strides(out, varlen),
        *ms, slb, slh,
        hq, hq // hkv, lq, lk, d, scale, dropout_p, softcap, _tuning.bucket(lq), _tuning.bucket(lk),
        MASK_KIND=kind, **_flags(causal, wl, wr), IS_VARLEN=varlen, HAS_DROPOUT=dropout_p > 0,
        IEEE=q.dtype == torch.float32, HAS_SOFTCAP=softcap != 0.0, HAS_SINKS=sinks is not None,
        PAGED=paged, HAS_SEQUSED=seqused_k is not None, BLOCK_D=triton.next_power_of_2(d),
    )
    return out, lse


def _tma_ok(q, k, v, attn_mask, varlen, dropout_p) -> bool:
    """Whether the TMA forward takes this call: dense fp16/bf16, no user mask, no dropout, a power-of-2
    head dim, strides TMA can describe (16-byte multiples), on Hopper or newer (or forced)."""
    if TensorDescriptor is None or TMA_MODE == "0" or varlen or attn_mask is not None or dropout_p > 0:
        return False
    if q.dtype == torch.float32 and TMA_MODE != "1":  # its fp32 tiles spill (the pointer kernel's are small)
        return False
    d = q.shape[-1]
    if d < 16 or d > 256 or d & (d - 1):
        return False
    if q.numel() == 0 or k.numel() == 0:  # a descriptor needs positive sizes (Lk = 0: the pointer kernel)
        return False
    if TMA_MODE != "1" and (INTERPRET or not _device.on_gpu(q) or _device.capability(q.device)[0] < 9):
        return False
    for t in (q, k, v):
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st * t.element_size() % 16 for st in t.stride()[:-1]):
            return False
    return True


def _warp_specialize(q: torch.Tensor) -> bool:
    if WS_MODE in ("0", "1"):
        return WS_MODE == "1"
    return not INTERPRET and _device.on_gpu(q) and _device.capability(q.device)[0] >= 10


def _fwd_tma(q, k, v, out, lse, causal, scale, wl, wr):
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    block = [1, 1, 16, d]  # replaced per config by _tma_block_hook
    descs = [TensorDescriptor(t, list(t.shape), list(t.stride()), block) for t in (q, k, v, out)]
    progs = 2 if INTERPRET else _device.sm_count(q.device)
    grid = lambda meta: (min(progs, b * hq * triton.cdiv(lq, meta["BLOCK_M"])),)  # noqa: E731
    _attn_fwd_tma_kernel[grid](
        *descs, lse, lse.stride(0), lse.stride(1), b, hq, hq // hkv, lq, lk, scale,
        _tuning.bucket(lq), _tuning.bucket(lk), HEAD_DIM=d, NUM_PROGS=progs, **_flags(causal, wl, wr),
        WARP_SPECIALIZE=_warp_specialize(q),
    )


def _bwd(do, q, k, v, out, lse, attn_mask, cu_q, cu_k, max_q, max_k, causal, scale, wl, wr, dropout_p, seed,
         softcap=0.0, sinks=None):
    """(dq, dk, dv, dsinks) -- dsinks (Hq,) float32, or empty without sinks."""
    varlen = cu_q is not None
    if varlen:
        batch, hq, d = cu_q.shape[0] - 1, q.shape[1], q.shape[2]
        hkv, lq, lk = k.shape[1], max_q, max_k
    else:
        batch, hq, lq, d = q.shape
        hkv, lk = k.shape[1], k.shape[2]
    # Packed rows past the last offset belong to no sequence: zero-filled, their gradient is zero.
    new = torch.zeros_like if varlen else torch.empty_like
    dq, dk, dv = new(q), new(k), new(v)
    dsinks = torch.zeros(q.shape[1] if sinks is not None else 0, dtype=torch.float32, device=q.device)
    if q.numel() == 0 or k.numel() == 0 or batch == 0:  # no key: outputs are 0, so is every gradient
        return dq.zero_(), dk.zero_(), dv.zero_(), dsinks
    do = do.contiguous()
    block_d = triton.next_power_of_2(d)
    pre_m = 16 if INTERPRET else 64
    delta = torch.empty_like(lse)
    slb, slh = (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))
    dummy = cu_q if varlen else lse
    cuq, cuk = (cu_q, cu_k) if varlen else (dummy, dummy)
    _attn_bwd_preprocess[(triton.cdiv(lq, pre_m), batch * hq)](
        out, do, delta, *_qkv_strides(out, varlen), *_qkv_strides(do, varlen), slb, slh, hq, lq, d, cuq,
        IS_VARLEN=varlen, BLOCK_M=pre_m, BLOCK_D=block_d)
    mask, ms, kind = _mask_args(attn_mask, (batch, hq, lq, lk), q)
    common = dict(MASK_KIND=kind, **_flags(causal, wl, wr), IS_VARLEN=varlen, HAS_DROPOUT=dropout_p > 0,
                  IEEE=q.dtype == torch.float32, HAS_SOFTCAP=softcap != 0.0, HAS_SINKS=sinks is not None,
                  BLOCK_D=block_d)
    buckets = (_tuning.bucket(lq), _tuning.bucket(lk))
    seed_t = seed if seed is not None else lse
    if lk > 0:
        _attn_bwd_dkdv_kernel[lambda meta: (triton.cdiv(lk, meta["BLOCK_N"]), batch * hkv)](
            q, k, v, mask, do, lse, delta, dk, dv, cuq, cuk, seed_t,
            *_qkv_strides(q, varlen), *_qkv_strides(k, varlen), *_qkv_strides(v, varlen), *_qkv_strides(do, varlen),
            *_qkv_strides(dk, varlen), *_qkv_strides(dv, varlen), *ms, slb, slh,
            hq, hkv, hq // hkv, lq, lk, d, scale, dropout_p, softcap, *buckets, **common)
    _attn_bwd_dq_kernel[lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), batch * hq)](
        q, k, v, mask, do, lse, delta, dq, cuq, cuk, seed_t,
        *_qkv_strides(q, varlen), *_qkv_strides(k, varlen), *_qkv_strides(v, varlen), *_qkv_strides(do, varlen),
        *_qkv_strides(dq, varlen), *ms, slb, slh,
        hq, hq // hkv, lq, lk, d, scale, dropout_p, softcap, *buckets, **common)
    if sinks is not None:  # dense calls only (the public varlen API takes no sinks)
        # d out_i / d sink = -p_sink_i * out_i with p_sink = exp(sink - lse): dsink = -sum_rows p_sink * delta
        dsinks = -(torch.exp(sinks.float().view(1, -1, 1) - lse) * delta).sum(dim=(0, 2))
    return dq, dk, dv, dsinks


@triton.jit
def _cache_rows(BT, b, rows, dst, LNEW, LMAX, s_kcb, s_kcm, s_vcb, s_vcm, s_btb, PAGE, NUM_PAGES,
                PAGED: tl.constexpr):
    """(rows to write, their k and v cache offsets) for new rows `rows` landing at cache rows `dst` of batch b: a
    row outside [0, LMAX) is not written; PAGED: row t goes to slot t % PAGE of page BT[b, t // PAGE] (s_*cb
    strides pages, s_*cm slots), and a page id outside [0, NUM_PAGES) is not written."""
    row_ok = (rows < LNEW) & (dst >= 0) & (dst < LMAX)
    if PAGED:
        page = tl.load(BT + b * s_btb + dst // PAGE, mask=row_ok, other=0).to(tl.int64)
        row_ok &= (page >= 0) & (page < NUM_PAGES)
        return row_ok, page * s_kcb + (dst % PAGE) * s_kcm, page * s_vcb + (dst % PAGE) * s_vcm
    return row_ok, b * s_kcb + dst * s_kcm, b * s_vcb + dst * s_vcm


@triton.jit
def _kvcache_append_kernel(KC, VC, KN, VN, LENS, BT, H, LNEW, LMAX, D,
                           s_kcb, s_kch, s_kcm, s_kcd, s_vcb, s_vch, s_vcm, s_vcd,
                           s_knb, s_knh, s_knm, s_knd, s_vnb, s_vnh, s_vnm, s_vnd, s_btb, PAGE, NUM_PAGES,
                           PAGED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows of k_new/v_new of one (batch, head) -> cache rows cache_seqlens[b] + row (see _cache_rows; validation
    refuses lengths that do not fit when they are on the host)."""
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    dst = tl.load(LENS + b).to(tl.int64) + rows
    row_ok, k_dst, v_dst = _cache_rows(BT, b, rows, dst, LNEW, LMAX, s_kcb, s_kcm, s_vcb, s_vcm, s_btb, PAGE,
                                       NUM_PAGES, PAGED)
    ok = row_ok[:, None] & (cols < D)[None, :]
    r, c = rows.to(tl.int64)[:, None], cols.to(tl.int64)[None, :]
    k = tl.load(KN + b * s_knb + h * s_knh + r * s_knm + c * s_knd, mask=ok)
    tl.store(KC + k_dst[:, None] + h * s_kch + c * s_kcd, k, mask=ok)
    v = tl.load(VN + b * s_vnb + h * s_vnh + r * s_vnm + c * s_vnd, mask=ok)
    tl.store(VC + v_dst[:, None] + h * s_vch + c * s_vcd, v, mask=ok)


@triton.jit
def _rotated(X, x_rows, cols, ok, COS, SIN, pos, LRO, s_cos, s_sin, s_xd, HALF, INTERLEAVED: tl.constexpr):
    """The tile X[x_rows, cols] rotated at positions pos (one a row): the first 2 * HALF features in float32
    (GPT-NeoX pairs (j, j + HALF), GPT-J (2j, 2j + 1)), the rest as loaded. The partner of each feature is a
    second load of the same rows (L1-resident). A position outside [0, LRO) reads no angle (validation refuses
    it when the lengths are on the host): its row is left unrotated."""
    x = tl.load(X + x_rows[:, None] + cols[None, :] * s_xd, mask=ok, other=0.0)
    rot = cols < 2 * HALF
    if INTERLEAVED:
        first = cols % 2 == 0
        f = cols // 2
        partner = cols ^ 1
    else:
        first = cols < HALF
        f = tl.where(first, cols, cols - HALF)
        partner = tl.where(first, cols + HALF, cols - HALF)
    m = ok & rot[None, :] & ((pos >= 0) & (pos < LRO))[:, None]
    y = tl.load(X + x_rows[:, None] + partner[None, :] * s_xd, mask=m, other=0.0).to(tl.float32)
    c = tl.load(COS + pos[:, None] * s_cos + f[None, :], mask=m, other=1.0).to(tl.float32)
    s = tl.load(SIN + pos[:, None] * s_sin + f[None, :], mask=m, other=0.0).to(tl.float32)
    out = x.to(tl.float32) * c + y * tl.where(first[None, :], -s, s)  # x1 c - x2 s | x2 c + x1 s
    return tl.where(rot[None, :], out.to(x.dtype), x)


@triton.jit
def _kvcache_append_rotary_kernel(KC, VC, KN, VN, Q, QO, LENS, BT, COS, SIN, HKV, HQ, LNEW, LQ, LMAX, LRO, D, HALF,
                                  s_kcb, s_kch, s_kcm, s_kcd, s_vcb, s_vch, s_vcm, s_vcd,
                                  s_knb, s_knh, s_knm, s_knd, s_vnb, s_vnh, s_vnm, s_vnd,
                                  s_qb, s_qh, s_qm, s_qd, s_ob, s_oh, s_om, s_od, s_cos, s_sin, s_btb, PAGE,
                                  NUM_PAGES, PAGED: tl.constexpr, INTERLEAVED: tl.constexpr, CAUSAL: tl.constexpr,
                                  BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """The append with the rotary embedding inside (FA2's flash_attn_with_kvcache rotary_cos/sin), one launch:
    programs (b, h < HKV) write rows of k_new rotated at cache_seqlens[b] + row into the cache and copy v_new
    beside them (_cache_rows); programs (b, HKV + h) rotate q's rows into QO at cache_seqlens[b] + row (CAUSAL)
    or cache_seqlens[b]."""
    pid = tl.program_id(0)
    b = (pid // (HKV + HQ)).to(tl.int64)
    h = (pid % (HKV + HQ)).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    r = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    start = tl.load(LENS + b).to(tl.int64)
    if h < HKV:
        dst = start + r
        row_ok, k_dst, v_dst = _cache_rows(BT, b, rows, dst, LNEW, LMAX, s_kcb, s_kcm, s_vcb, s_vcm, s_btb, PAGE,
                                           NUM_PAGES, PAGED)
        ok = row_ok[:, None] & (cols < D)[None, :]
        k = _rotated(KN, b * s_knb + h * s_knh + r * s_knm, cols, ok, COS, SIN, dst, LRO, s_cos, s_sin, s_knd, HALF,
                     INTERLEAVED)
        tl.store(KC + k_dst[:, None] + h * s_kch + cols[None, :] * s_kcd, k, mask=ok)
        v = tl.load(VN + b * s_vnb + h * s_vnh + r[:, None] * s_vnm + cols[None, :] * s_vnd, mask=ok)
        tl.store(VC + v_dst[:, None] + h * s_vch + cols[None, :] * s_vcd, v, mask=ok)
    else:
        hq = h - HKV
        pos = start + r if CAUSAL else start + r * 0
        ok = (rows < LQ)[:, None] & (cols < D)[None, :]
        x = _rotated(Q, b * s_qb + hq * s_qh + r * s_qm, cols, ok, COS, SIN, pos, LRO, s_cos, s_sin, s_qd, HALF,
                     INTERLEAVED)
        tl.store(QO + b * s_ob + hq * s_oh + r[:, None] * s_om + cols[None, :] * s_od, x, mask=ok)


def _cache_layout(cache: torch.Tensor, block_table: torch.Tensor | None) -> tuple[int, tuple, int, int, int]:
    """(rows a sequence can hold, the (batch-or-page, head, row-or-slot, feature) strides, page size, table row
    stride, pages) of a contiguous (B, Hkv, Lmax, D) or paged (num_pages, page_size, Hkv, D) cache."""
    s = cache.stride()
    if block_table is None:
        return cache.shape[2], s, 1, 0, 0
    page = cache.shape[1]
    return block_table.shape[1] * page, (s[0], s[2], s[1], s[3]), page, block_table.stride(0), cache.shape[0]


def _append(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table=None) -> None:
    b, h, lnew, d = k_new.shape
    if k_new.numel() == 0:
        return
    block_d = triton.next_power_of_2(d)
    block_r = max(1, min(triton.next_power_of_2(lnew), 4096 // block_d))
    lmax, ks, page, s_bt, pages = _cache_layout(k_cache, block_table)
    vs = _cache_layout(v_cache, block_table)[1]
    _kvcache_append_kernel[(b * h, triton.cdiv(lnew, block_r))](
        k_cache, v_cache, k_new, v_new, cache_seqlens, block_table if block_table is not None else cache_seqlens,
        h, lnew, lmax, d, *ks, *vs, *k_new.stride(), *v_new.stride(), s_bt, page, pages,
        PAGED=block_table is not None, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=1 if INTERPRET else 4,
    )


def _append_rotary(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, q, cos, sin, interleaved,
                   causal) -> torch.Tensor:
    b, hkv, lnew, d = k_new.shape
    hq, lq = q.shape[1], q.shape[2]
    q_out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if b == 0 or d == 0 or max(hkv * lnew, hq * lq) == 0:
        return q_out
    block_d = triton.next_power_of_2(d)
    block_r = max(1, min(triton.next_power_of_2(max(lnew, lq)), 4096 // block_d))
    lmax, ks, page, s_bt, pages = _cache_layout(k_cache, block_table)
    vs = _cache_layout(v_cache, block_table)[1]
    _kvcache_append_rotary_kernel[(b * (hkv + hq), triton.cdiv(max(lnew, lq), block_r))](
        k_cache, v_cache, k_new, v_new, q, q_out, cache_seqlens,
        block_table if block_table is not None else cache_seqlens, cos, sin,
        hkv, hq, lnew, lq, lmax, cos.shape[0], d, cos.shape[1], *ks, *vs, *k_new.stride(), *v_new.stride(),
        *q.stride(), *q_out.stride(), cos.stride(0), sin.stride(0), s_bt, page, pages,
        PAGED=block_table is not None, INTERLEAVED=interleaved, CAUSAL=causal, BLOCK_R=block_r, BLOCK_D=block_d,
        num_warps=1 if INTERPRET else 4,
    )
    return q_out


def _decode(q, k_cache, v_cache, cache_seqlens, lnew, causal, scale, block_table=None, wl=-1, wr=-1):
    b, hq, lq, d = q.shape
    lmax, ks, page, s_bt, pages = _cache_layout(k_cache, block_table)
    vs = _cache_layout(v_cache, block_table)[1]
    hkv = k_cache.shape[1] if block_table is None else k_cache.shape[2]
    groups = hq // hkv
    out = torch.empty_like(q)
    if out.numel() == 0:
        return out
    block_n = 16 if INTERPRET else 64
    if INTERPRET:
        splits = min(2, triton.cdiv(lmax, block_n))
    else:
        # Enough (batch, kv head, split) programs to fill the SMs twice, chunks of >= 256 keys.
        want = max(1, 2 * _device.sm_count(q.device) // max(1, b * hkv))
        splits = max(1, min(want, triton.cdiv(lmax, 256), 64))
    chunk = triton.cdiv(triton.cdiv(lmax, splits), block_n) * block_n
    splits = triton.cdiv(lmax, chunk)
    block_d = triton.next_power_of_2(d)
    # A program holds GROUPS x rows query rows; long query blocks (a prefill) go in row chunks.
    rows = max(1, 64 // groups)
    for r0 in range(0, lq, rows):
        r1 = min(lq, r0 + rows)
        qc, oc = q[:, :, r0:r1], out[:, :, r0:r1]
        n = r1 - r0
        part_o = torch.empty(b, hq, n, splits, d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(b, hq, n, splits, dtype=torch.float32, device=q.device)
        _decode_split_kernel[(b * hkv, splits)](
            qc, k_cache, v_cache, cache_seqlens, part_o, part_lse,
            block_table if block_table is not None else cache_seqlens,
            qc.stride(0), qc.stride(1), qc.stride(2), ks[0], ks[1], ks[2], vs[0], vs[1], vs[2], s_bt, page, pages,
            part_o.stride(0), part_o.stride(1), part_o.stride(2), part_o.stride(3),
            part_lse.stride(0), part_lse.stride(1), part_lse.stride(2),
            hkv, groups, n, lq, r0, lnew, d, scale, chunk, wl, wr,
            IS_CAUSAL=causal, IEEE=q.dtype == torch.float32, PAGED=block_table is not None,
            BLOCK_R=max(16, triton.next_power_of_2(groups * n)),
            BLOCK_N=block_n, BLOCK_D=block_d, num_warps=1 if INTERPRET else 4,
        )
        _decode_combine_kernel[(b * hq * n,)](
            part_o, part_lse, oc, part_o.stride(0), part_o.stride(1), part_o.stride(2), part_o.stride(3),
            part_lse.stride(0), part_lse.stride(1), part_lse.stride(2), oc.stride(0), oc.stride(1), oc.stride(2),
            hq, n, splits, d, BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d,
            num_warps=1 if INTERPRET else 4,
        )
    return out


# ----------------------------------------------------------------------------------------------
# torch.library ops
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("aigc_kernels::attention_fwd_triton", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                  cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None, max_seqlen_q: int,
                  max_seqlen_k: int, causal: bool, scale: float, window_left: int, window_right: int,
                  dropout_p: float, seed: torch.Tensor | None, softcap: float,
                  sinks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out like q; lse float32 (B, Hq, Lq), or (Hq, total_q) for packed sequences (natural log,
    sinks included). softcap 0 = none."""
    return _fwd(q, k, v, attn_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
                window_left, window_right, dropout_p, seed, softcap, sinks)


@attention_fwd.register_fake
def _(q, k, v, attn_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, window_left,
      window_right, dropout_p, seed, softcap, sinks):
    return torch.empty_like(q), lse_like(q, cu_seqlens_q is not None)


@torch.library.custom_op("aigc_kernels::attention_bwd_triton", mutates_args=())
def attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, attn_mask: torch.Tensor | None, cu_seqlens_q: torch.Tensor | None,
                  cu_seqlens_k: torch.Tensor | None, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                  scale: float, window_left: int, window_right: int, dropout_p: float,
                  seed: torch.Tensor | None, softcap: float, sinks: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dsinks): dsinks (Hq,) float32, or empty without sinks."""
    return _bwd(do, q, k, v, out, lse, attn_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                scale, window_left, window_right, dropout_p, seed, softcap, sinks)


@attention_bwd.register_fake
def _(do, q, k, v, out, lse, attn_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
      window_left, window_right, dropout_p, seed, softcap, sinks):
    dsinks = q.new_empty(q.shape[1] if sinks is not None else 0, dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dsinks


def _setup_context(ctx, inputs, output):
    (q, k, v, attn_mask, cu_q, cu_k, max_q, max_k, causal, scale, wl, wr, dropout_p, seed, softcap, sinks) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask, cu_q, cu_k, seed, sinks)
    ctx.args = (max_q, max_k, causal, scale, wl, wr, dropout_p, softcap)
    ctx.sinks_dtype = sinks.dtype if sinks is not None else None


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, attn_mask, cu_q, cu_k, seed, sinks = ctx.saved_tensors
    max_q, max_k, causal, scale, wl, wr, dropout_p, softcap = ctx.args
    dq, dk, dv, dsinks = attention_bwd(dout, q, k, v, out, lse, attn_mask, cu_q, cu_k, max_q, max_k, causal, scale,
                                       wl, wr, dropout_p, seed, softcap, sinks)
    dsinks = dsinks.to(ctx.sinks_dtype) if sinks is not None else None
    return dq, dk, dv, None, None, None, None, None, None, None, None, None, None, None, None, dsinks


torch.library.register_autograd("aigc_kernels::attention_fwd_triton", _backward, setup_context=_setup_context)


@torch.library.custom_op("aigc_kernels::kvcache_append_triton", mutates_args=("k_cache", "v_cache"))
def kvcache_append_op(k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                      cache_seqlens: torch.Tensor, block_table: torch.Tensor | None) -> None:
    """Write k_new/v_new (B, Hkv, Lnew, D) into the caches at rows cache_seqlens[b]:+Lnew, in place (paged
    caches (num_pages, page_size, Hkv, D) through block_table (B, max_pages))."""
    _append(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)


@kvcache_append_op.register_fake
def _(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table) -> None:
    return None


@torch.library.custom_op("aigc_kernels::kvcache_append_rotary_triton", mutates_args=("k_cache", "v_cache"))
def kvcache_append_rotary_op(k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                             cache_seqlens: torch.Tensor, block_table: torch.Tensor | None, q: torch.Tensor,
                             cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, causal: bool) -> torch.Tensor:
    """The append with k_new rotated at cache_seqlens[b] + i as it is written (v_new copied), in one launch with
    q's rotation at cache_seqlens[b] + i (causal) or cache_seqlens[b]; returns q rotated."""
    return _append_rotary(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, q, cos, sin, interleaved,
                          causal)


@kvcache_append_rotary_op.register_fake
def _(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, q, cos, sin, interleaved, causal):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("aigc_kernels::attention_decode_triton", mutates_args=())
def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                     lnew: int, causal: bool, scale: float, block_table: torch.Tensor | None, window_left: int = -1,
                     window_right: int = -1) -> torch.Tensor:
    """Split-K decoding: q (B, Hq, Lq, D) against the first cache_seqlens[b] + lnew cache rows (paged caches
    through block_table), within the window (-1 = unbounded) around each query's bottom-right diagonal."""
    return _decode(q, k_cache, v_cache, cache_seqlens, lnew, causal, scale, block_table, window_left, window_right)


@attention_decode.register_fake
def _(q, k_cache, v_cache, cache_seqlens, lnew, causal, scale, block_table, window_left=-1, window_right=-1):
    return torch.empty_like(q)


# ----------------------------------------------------------------------------------------------
# the "triton" backend's entry points (signatures of the public functions, minus backend=)
# ----------------------------------------------------------------------------------------------
def _seed(dropout_p: float) -> torch.Tensor | None:
    # Drawn from torch's CPU generator, so torch.manual_seed makes the dropout mask reproducible;
    # a tensor (not an int) so torch.compile does not specialize on it.
    if dropout_p <= 0:
        return None
    return torch.randint(0, 2**30, (1,), dtype=torch.int64)


def attention(q, k, v, causal=False, attn_mask=None, dropout_p=0.0, scale=None, window_size=None, softcap=None,
              sinks=None):
    scale = softmax_scale(q, scale)
    wl, wr = window_pair(window_size)
    seed = _seed(dropout_p)
    if seed is not None:
        seed = seed.to(q.device)
    out, _ = attention_fwd(rowmajor(q), rowmajor(k), rowmajor(v), attn_mask, None, None, q.shape[2], k.shape[2],
                           causal, scale, wl, wr, float(dropout_p), seed, float(softcap or 0.0),
                           None if sinks is None else sinks.contiguous())
    return out


@torch.library.custom_op("aigc_kernels::attention_varlen_paged_triton", mutates_args=())
def attention_varlen_paged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor | None, seqused_k: torch.Tensor | None,
                           block_table: torch.Tensor | None, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                           scale: float, window_left: int, window_right: int) -> torch.Tensor:
    """Packed queries over a paged cache (block_table; k/v (num_pages, page_size, Hkv, D)) and/or with the keys each
    sequence uses (seqused_k): the forward of attention_varlen, no autograd (inference: chunked prefill, mixed
    prefill and decode)."""
    out, _ = _fwd(q, k, v, None, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, window_left,
                  window_right, 0.0, None, 0.0, None, block_table, seqused_k)
    return out


@attention_varlen_paged.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, max_seqlen_q, max_seqlen_k, causal, scale,
      window_left, window_right):
    return torch.empty_like(q)


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, scale=None,
                     window_size=None, block_table=None, seqused_k=None):
    scale = softmax_scale(q, scale)
    wl, wr = window_pair(window_size)
    if block_table is not None or seqused_k is not None:
        if block_table is not None and seqused_k is None:  # the keys of sequence b: its cu_seqlens_k span
            seqused_k = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).to(torch.int32)
        unit = (lambda t: t if t.stride(-1) == 1 else t.contiguous()) if block_table is not None else rowmajor
        return attention_varlen_paged(rowmajor(q), unit(k), unit(v), cu_seqlens_q, cu_seqlens_k,
                                      seqused_k, block_table, int(max_seqlen_q), int(max_seqlen_k), causal, scale,
                                      wl, wr)
    out, _ = attention_fwd(rowmajor(q), rowmajor(k), rowmajor(v), None, cu_seqlens_q, cu_seqlens_k,
                           int(max_seqlen_q), int(max_seqlen_k), causal, scale, wl, wr, 0.0, None, 0.0, None)
    return out


def kvcache_append(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table=None) -> None:
    kvcache_append_op(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)


def attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, k_new=None, v_new=None, causal=True, scale=None,
                           block_table=None, rotary_cos=None, rotary_sin=None, rotary_interleaved=False,
                           window_size=None):
    scale = softmax_scale(q, scale)
    lnew = 0
    if rotary_cos is not None:  # one launch: q rotated, k_new rotated into the cache, v_new copied
        unit = (lambda t: t if t.stride(-1) == 1 else t.contiguous())  # noqa: E731  (the angle columns)
        q = kvcache_append_rotary_op(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, q,
                                     unit(rotary_cos), unit(rotary_sin), rotary_interleaved, causal)
        lnew = k_new.shape[2]
    elif k_new is not None:
        kvcache_append_op(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)
        lnew = k_new.shape[2]
    wl, wr = window_pair(window_size)  # (IS_CAUSAL caps the right side at the diagonal in the kernel)
    return attention_decode(rowmajor(q), k_cache, v_cache, cache_seqlens, lnew, causal, scale, block_table, wl, wr)
