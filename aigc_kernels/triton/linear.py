"""Linear + activation and the feed-forward block in Triton, forward and backward.

One persistent, tile-swizzled GEMM kernel does all the matrix products:

    C = epilogue( prologue_A(A) @ prologue_B(B) )

* epilogue: + bias, then the activation, in registers before the single store of C; it can also
  store the pre-activation Z (saved for the backward) and, in the gated form, compute
  act(A @ B2 + b2) * (A @ B + b) from two accumulators (one pass over A for W_in and W_gate,
  writing the intermediate once), or sum two products A @ B + A2 @ B2 in one
  accumulator (the gated backward's dx = du W_in + dg W_gate, with no concatenated weight);
* prologues, applied to operand tiles as they are loaded: "dact" (A * act'(Z), the gradient of
  the activation fused into the gradient GEMMs), "gate" (act(Z) * A, recomputing a SwiGLU output)
  and act(B) (recomputing an activation output);
* an optional row sum of the (prologue-applied) A operand over the reduction dim: the bias
  gradient comes out of the weight-gradient GEMM, with no extra pass over dY.

On Hopper (compute capability >= 9) the GEMMs without operand prologues (the forward GEMMs, the
gated forward, the plain linear's backward) run a second kernel that moves its tiles by TMA
(host-side tensor descriptors; zero fill past the edges) with the same persistent swizzled
schedule and epilogue; the pointer kernel is the Ampere path and takes the prologues.
AIGC_KERNELS_TRITON_TMA=0 turns the TMA kernel off, =1 forces it wherever the operands allow.

What the backward keeps (the memory it costs):
    linear, activation None:   x (the weight's gradient needs it); nothing else
    linear with activation:    x and Z = x W^T + b (one output-sized tensor); act' is fused into
                               the dX and dW GEMMs' operand loads
    ffn plain:                 x and Z_in (M x H); h = act(Z_in) is recomputed in the dW_out GEMM
    ffn gated (SwiGLU/GeGLU):  x, U = x W_in^T + b_in and G = x W_gate^T + b_gate (2 x M x H);
                               du = dh * act(G), dg = dh * U * act'(G) are one elementwise pass
    ffn(recompute=True):       x only; the first GEMM is recomputed in the backward
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

try:  # host-side TMA descriptors (triton >= 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton: the pointer kernel only
    TensorDescriptor = None

from .. import _device
from ..contracts import linear as contract
from ..contracts.linear import apply_activation
from ..contracts.tables import ACTIVATION_IDS, NO_ACTIVATION_ID
from . import _tuning

INTERPRET = _tuning.INTERPRET
ACT_IDS = {None: NO_ACTIVATION_ID, **ACTIVATION_IDS}  # the kernels' ACT constexpr (csrc/gemm/act_table.h too)
# The TMA GEMM (operands by tensor descriptor): "auto" = on compute capability >= 9 for GEMMs
# without operand prologues, "1" = whenever the call qualifies (also under the interpreter), "0" = never.
TMA_MODE = os.environ.get("AIGC_KERNELS_TRITON_TMA", "auto")


# ----------------------------------------------------------------------------------------------
# activations and their derivatives (float32)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == 1:
        return tl.maximum(x, 0.0)
    elif ACT == 2:
        return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == 3:
        # 0.5 x (1 + tanh(y)) = x * sigmoid(2y),  y = sqrt(2/pi) (x + 0.044715 x^3)
        return x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
    elif ACT == 4:
        return x * tl.sigmoid(x)
    else:
        return x


@triton.jit
def _dact(x, ACT: tl.constexpr):
    if ACT == 1:
        return tl.where(x > 0.0, 1.0, 0.0)
    elif ACT == 2:
        return 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476)) + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
    elif ACT == 3:
        s = tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
        return s + x * s * (1.0 - s) * 1.5957691216057308 * (1.0 + 0.134145 * x * x)
    elif ACT == 4:
        s = tl.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    else:
        return tl.full(x.shape, 1.0, tl.float32)


# ----------------------------------------------------------------------------------------------
# the GEMM
# ----------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), best first, per (arch, dtype class, variant) -- variant
# "plain" (+ bias/activation epilogue), "prologue" (act' or the gate applied to operand tiles as they load:
# register-hungry, so BLOCK_K 32), "gated" (two accumulators and, in training, two pre-activation stores).
# Every entry compiles for its arch without register spills and fits its shared memory (`aigc-kernels audit`);
# the first is the default (AIGC_KERNELS_AUTOTUNE=0).
_GEMM = {
    ("sm90", "half", "plain"): [(128, 128, 32, 8, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 3)],
    ("sm90", "half", "prologue"): [(128, 128, 32, 8, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3),
                                   (64, 128, 32, 4, 3), (64, 64, 32, 4, 3)],
    ("sm90", "half", "gated"): [(64, 128, 32, 8, 3), (64, 64, 32, 4, 3)],
    ("sm80", "half", "plain"): [(64, 128, 32, 8, 3), (64, 64, 32, 4, 3), (64, 64, 64, 4, 3)],
    ("sm80", "half", "prologue"): [(128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 3)],
    ("sm80", "half", "gated"): [(64, 128, 32, 8, 3), (64, 64, 32, 4, 3)],
    # float32 runs IEEE dots on FMA units: small tiles
    **{(a, "fp32", v): [(64, 32, 32, 8, 2), (64, 32, 16, 4, 2), (32, 32, 16, 4, 2)]
       for a in ("sm90", "sm80") for v in ("plain", "prologue", "gated")},
}
# The TMA GEMM (sm_90+, fp16/bf16): no prologues, so larger K blocks.
_GEMM_TMA = {
    ("sm90", "half", "plain"): [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
                                (64, 64, 64, 4, 4)],
    ("sm90", "half", "gated"): [(128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (64, 64, 64, 4, 4)],
}
# Problems smaller than every tile of an entry take one of these.
_GEMM_SMALL = [(32, 32, 32, 4, 2), (16, 16, 16, 1, 1)]
_GEMM_INTERPRET = (16, 16, 16, 1, 1)


def _gemm_configs(tables, mode: str, pre_hook=None) -> list:
    shapes = [_GEMM_INTERPRET] if mode == "interpret" else list(dict.fromkeys(
        [sh for t in tables for entries in t.values() for sh in entries] + _GEMM_SMALL))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8 if bm > 16 else 2}, num_warps=w,
                          num_stages=st, pre_hook=pre_hook) for bm, bn, bk, w, st in shapes]


def _configs(mode: str):
    return _gemm_configs([_GEMM], mode)


def _gemm_prune(table, tma: bool):
    """The table's configs for this GPU, dtype and variant, not much larger than the problem, that fit the
    GPU's shared memory (A and B tiles per stage, a second B for the gated form, the prologue's tiles)."""

    def prune(configs, named_args, **kwargs):
        gpu = _tuning.target_gpu(named_args)
        m, n, k = (_tuning.arg(named_args, kwargs, name) for name in ("M_BUCKET", "N_BUCKET", "K_BUCKET"))
        gated = _tuning.arg(named_args, kwargs, "GATED")
        prologue = not tma and (_tuning.arg(named_args, kwargs, "A_PRO") or _tuning.arg(named_args, kwargs, "B_PRO"))
        ieee = _tuning.arg(named_args, kwargs, "IEEE")
        elem = 4 if ieee else 2
        variant = "gated" if gated else ("prologue" if prologue else "plain")
        dt = "fp32" if ieee else "half"

        def fits(c):
            bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
            per_stage = bm * bk * (2 if prologue else 1) + bk * bn * (2 if gated or prologue else 1)
            return elem * per_stage * c.num_stages <= gpu.smem_per_block

        wanted = table.get((_tuning.arch_class(gpu), dt, variant), [])
        sized = [w for w in wanted if w[0] <= 2 * m and w[1] <= 2 * n and w[2] <= k]
        keep = _tuning.pick(configs, sized, fits)
        return keep or _tuning.pick(configs, [s for s in _GEMM_SMALL if s[2] <= k] or _GEMM_SMALL[-1:])

    return prune


_prune = _gemm_prune(_GEMM, tma=False)


@triton.jit
def _epilogue(acc, acc2, offs_m, offs_n, M, N, BIAS, BIAS2, C, ZOUT, ZOUT2, stride_cm, stride_cn,
              ACT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_Z: tl.constexpr, GATED: tl.constexpr):
    """+ bias, the activation (gated: act(acc2 + b2) * (acc + b)), optional pre-activation stores,
    then the one store of C."""
    m_ok = offs_m < M
    n_ok = offs_n < N
    c_mask = m_ok[:, None] & n_ok[None, :]
    z_off = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if GATED:
        if HAS_BIAS:
            acc2 += tl.load(BIAS2 + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if STORE_Z:
            tl.store(ZOUT + z_off, acc.to(ZOUT.dtype.element_ty), mask=c_mask)
            tl.store(ZOUT2 + z_off, acc2.to(ZOUT2.dtype.element_ty), mask=c_mask)
        out = _act(acc2, ACT) * acc  # act(x W_gate^T + b_gate) * (x W_in^T + b_in)
    else:
        if STORE_Z:
            tl.store(ZOUT + z_off, acc.to(ZOUT.dtype.element_ty), mask=c_mask)
        out = _act(acc, ACT)
    c_off = offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :].to(tl.int64) * stride_cn
    tl.store(C + c_off, out.to(C.dtype.element_ty), mask=c_mask)


@triton.jit
def _tile_coords(tile, num_m, num_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of a tile, GROUP_M rows of blocks at a time (consecutive tiles share B columns)."""
    group = tile // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (tile % (GROUP_M * num_n)) % size_m
    pid_n = (tile % (GROUP_M * num_n)) // size_m
    return pid_m, pid_n


@_tuning.autotune(_configs, ["M_BUCKET", "N_BUCKET", "K_BUCKET", "IEEE", "A_PRO", "B_PRO", "GATED", "SUM2", "STORE_Z"],
                  _prune)
@triton.jit
def _gemm_kernel(
    A, ZA, B, ZB, A2, B2, BIAS, BIAS2, C, ZOUT, ZOUT2, ROWSUM,
    M, N, K,
    M_BUCKET, N_BUCKET, K_BUCKET,  # the sizes' tuning buckets (autotune key only)
    stride_am, stride_ak,  # A (M, K); ZA and A2 share A's strides
    stride_bk, stride_bn,  # B (K, N); ZB and B2 share them
    stride_cm, stride_cn,  # C (M, N); ZOUT, ZOUT2 are contiguous (M, N)
    NUM_PROGS,
    A_PRO: tl.constexpr,  # 0: A; 1 (dact): A * act'(ZA); 2 (gate): act(ZA) * A
    PRO_ACT: tl.constexpr,  # the activation of the prologues
    B_PRO: tl.constexpr,  # 0: B; 1: act(B); 2 (gate): act(ZB) * B
    ACT: tl.constexpr,  # the epilogue's activation
    HAS_BIAS: tl.constexpr, STORE_Z: tl.constexpr, GATED: tl.constexpr, ROW_SUM: tl.constexpr,
    SUM2: tl.constexpr,  # acc += A2 @ B2 after A @ B (no prologues, no row sum)
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    tiles = num_m * num_n
    # Persistent: each program walks tiles pid, pid + NUM_PROGS, ...; tiles are grouped GROUP_M
    # rows of blocks at a time so consecutive tiles reuse the same B columns from the L2.
    for tile in range(pid, tiles, NUM_PROGS):
        pid_m, pid_n = _tile_coords(tile, num_m, num_n, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k0 = tl.arange(0, BLOCK_K)
        m_ok = offs_m < M
        n_ok = offs_n < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # the gate's accumulator (unused otherwise)
        if ROW_SUM:
            rsum = tl.zeros([BLOCK_M], dtype=tl.float32)
        a_rows = offs_m[:, None].to(tl.int64) * stride_am
        b_cols = offs_n[None, :].to(tl.int64) * stride_bn
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + offs_k0
            k_ok = offs_k < K
            a_off = a_rows + offs_k[None, :].to(tl.int64) * stride_ak
            a_mask = m_ok[:, None] & k_ok[None, :]
            a = tl.load(A + a_off, mask=a_mask, other=0.0)
            if A_PRO != 0:
                za = tl.load(ZA + a_off, mask=a_mask, other=0.0).to(tl.float32)
                if A_PRO == 1:
                    a = (a.to(tl.float32) * _dact(za, PRO_ACT)).to(A.dtype.element_ty)
                else:
                    a = (_act(za, PRO_ACT) * a.to(tl.float32)).to(A.dtype.element_ty)
            if ROW_SUM:
                rsum += tl.sum(a.to(tl.float32), 1)
            b_off = offs_k[:, None].to(tl.int64) * stride_bk + b_cols
            b_mask = k_ok[:, None] & n_ok[None, :]
            b = tl.load(B + b_off, mask=b_mask, other=0.0)
            if B_PRO == 1:
                b = _act(b.to(tl.float32), PRO_ACT).to(B.dtype.element_ty)
            elif B_PRO == 2:
                zb = tl.load(ZB + b_off, mask=b_mask, other=0.0).to(tl.float32)
                b = (_act(zb, PRO_ACT) * b.to(tl.float32)).to(B.dtype.element_ty)
            if IEEE:
                acc += tl.dot(a, b, input_precision="ieee")
            else:
                acc += tl.dot(a, b)
            if GATED:
                b2 = tl.load(B2 + b_off, mask=b_mask, other=0.0)
                if IEEE:
                    acc2 += tl.dot(a, b2, input_precision="ieee")
                else:
                    acc2 += tl.dot(a, b2)
        if SUM2:  # the second product, over the same K
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + offs_k0
                k_ok = offs_k < K
                a = tl.load(A2 + a_rows + offs_k[None, :].to(tl.int64) * stride_ak, mask=m_ok[:, None] & k_ok[None, :],
                            other=0.0)
                b = tl.load(B2 + offs_k[:, None].to(tl.int64) * stride_bk + b_cols, mask=k_ok[:, None] & n_ok[None, :],
                            other=0.0)
                if IEEE:
                    acc += tl.dot(a, b, input_precision="ieee")
                else:
                    acc += tl.dot(a, b)
        _epilogue(acc, acc2, offs_m, offs_n, M, N, BIAS, BIAS2, C, ZOUT, ZOUT2, stride_cm, stride_cn,
                  ACT, HAS_BIAS, STORE_Z, GATED)
        if ROW_SUM:
            if pid_n == 0:
                tl.store(ROWSUM + offs_m, rsum, mask=m_ok)


def _tma_configs(mode: str):
    return _gemm_configs([_GEMM_TMA], mode, pre_hook=_tma_block_hook)


def _tma_block_hook(nargs):
    """The descriptors' block shapes follow the config's tiles (set before each launch)."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["desc_a"].block_shape = nargs["desc_a2"].block_shape = [bk, bm] if nargs["A_T"] else [bm, bk]
    b_block = [bn, bk] if nargs["B_T"] else [bk, bn]
    nargs["desc_b"].block_shape = b_block
    nargs["desc_b2"].block_shape = b_block


@triton.jit
def _tma_b_dot(a, desc_b, k0, n0, acc, B_T: tl.constexpr, IEEE: tl.constexpr):
    """acc + a @ (the B tile at (k0, n0)), B read through its descriptor ((N, K) storage when B_T)."""
    if B_T:
        b = desc_b.load([n0, k0]).T
    else:
        b = desc_b.load([k0, n0])
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _tma_a(desc_a, k0, m0, A_T: tl.constexpr):
    """The A tile at (m0, k0), read through its descriptor ((K, M) storage when A_T)."""
    if A_T:
        a = desc_a.load([k0, m0]).T
    else:
        a = desc_a.load([m0, k0])
    return a


@_tuning.autotune(_tma_configs, ["M_BUCKET", "N_BUCKET", "K_BUCKET", "IEEE", "A_T", "B_T", "GATED", "SUM2", "STORE_Z"],
                  _gemm_prune(_GEMM_TMA, tma=True))
@triton.jit
def _gemm_tma_kernel(
    desc_a, desc_b, desc_a2, desc_b2, BIAS, BIAS2, C, ZOUT, ZOUT2, ROWSUM,
    M, N, K, M_BUCKET, N_BUCKET, K_BUCKET, stride_cm, stride_cn, NUM_PROGS,
    A_T: tl.constexpr,  # A's storage is (K, M) (e.g. dY^T of a weight gradient), else (M, K)
    B_T: tl.constexpr,  # B's storage is (N, K) (an nn.Linear weight), else (K, N)
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_Z: tl.constexpr, GATED: tl.constexpr, ROW_SUM: tl.constexpr,
    SUM2: tl.constexpr,  # acc += A2 @ B2 after A @ B (A2 laid out as A, B2 as B)
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """The GEMM of _gemm_kernel without operand prologues, its tiles moved by TMA (zero fill past
    the edges, so no masks in the K loop); same persistent swizzled schedule and epilogue."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(pid, num_m * num_n, NUM_PROGS):
        pid_m, pid_n = _tile_coords(tile, num_m, num_n, GROUP_M)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        rsum = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = _tma_a(desc_a, k0, m0, A_T)
            if ROW_SUM:
                rsum += tl.sum(a.to(tl.float32), 1)
            acc = _tma_b_dot(a, desc_b, k0, n0, acc, B_T, IEEE)
            if GATED:
                acc2 = _tma_b_dot(a, desc_b2, k0, n0, acc2, B_T, IEEE)
        if SUM2:
            for k0 in range(0, K, BLOCK_K):
                acc = _tma_b_dot(_tma_a(desc_a2, k0, m0, A_T), desc_b2, k0, n0, acc, B_T, IEEE)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        _epilogue(acc, acc2, offs_m, offs_n, M, N, BIAS, BIAS2, C, ZOUT, ZOUT2, stride_cm, stride_cn,
                  ACT, HAS_BIAS, STORE_Z, GATED)
        if ROW_SUM:
            if pid_n == 0:
                tl.store(ROWSUM + offs_m, rsum, mask=offs_m < M)


@triton.jit
def _gated_grad_kernel(DH, U, G, DUDG, H, numel, ACT: tl.constexpr, BLOCK: tl.constexpr):
    """du = dh * act(g), dg = dh * u * act'(g) over contiguous (M, H) inputs, written side by side
    into DUDG (M, 2H): its halves are the A operands of dx = du W_in + dg W_gate and of dW_in, dW_gate."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    dh = tl.load(DH + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    dst = (offs // H) * (2 * H) + offs % H
    tl.store(DUDG + dst, (dh * _act(g, ACT)).to(DUDG.dtype.element_ty), mask=ok)
    tl.store(DUDG + dst + H, (dh * u * _dact(g, ACT)).to(DUDG.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------
def gemm(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None, bias=None, act=None,
         za=None, a_pro: int = 0, zb=None, b_pro: int = 0, pro_act=None, store_z: bool = False,
         b2=None, bias2=None, a2=None, row_sum: bool = False, out_dtype=None):
    """C = epilogue(prologue(A) @ prologue(B)) for A (M, K) and B (K, N) of any strides; with ``a2``,
    C = A @ B + A2 @ B2 (A2 (M, K) and B2 (K, N) another pair: no prologues, bias, activation or row sum).

    Returns (C, Z, Z2, rowsum): Z/Z2 the stored pre-activations (or None), rowsum the float32
    (M,) sums of prologue(A) over K (or None).
    """
    m, k = a.shape
    n = b.shape[1]
    c = out if out is not None else torch.empty(m, n, device=a.device, dtype=out_dtype or a.dtype)
    sum2 = a2 is not None
    if sum2:
        if b2 is None or a2.shape != a.shape or b2.shape != b.shape:
            raise ValueError(f"gemm: A2 {tuple(a2.shape)} and B2 {tuple(() if b2 is None else b2.shape)} must have "
                             f"the shapes of A {tuple(a.shape)} and B {tuple(b.shape)}")
        if a_pro or b_pro or row_sum or store_z or bias is not None or act is not None:
            raise ValueError("gemm: the summed form (a2) takes no prologue, bias, activation or row sum")
        if a2.stride() != a.stride():  # the kernels take one set of strides per pair
            a, a2 = a.contiguous(), a2.contiguous()
        if b2.stride() != b.stride():
            b, b2 = b.contiguous(), b2.contiguous()
    gated = b2 is not None and not sum2
    z = torch.empty(m, n, device=a.device, dtype=c.dtype) if store_z else None
    z2 = torch.empty(m, n, device=a.device, dtype=c.dtype) if (store_z and gated) else None
    rs = torch.zeros(m, device=a.device, dtype=torch.float32) if row_sum else None
    if m == 0 or n == 0:
        return c, z, z2, rs
    if k == 0:
        c.zero_()
        if bias is not None or gated:  # the epilogue of an empty sum
            zero = torch.zeros(m, n, device=a.device, dtype=torch.float32)
            pre = zero + (bias.float() if bias is not None else 0)
            if gated:
                pre2 = zero + (bias2.float() if bias2 is not None else 0)
                res = apply_activation(pre2, act) * pre
            else:
                res = apply_activation(pre, act)
            c.copy_(res)
        return c, z, z2, rs
    dummy = c
    progs = 4 if INTERPRET else _device.sm_count(a.device)
    views = _tma_views(a, b, b2, a2) if a_pro == 0 and b_pro == 0 else None
    if views is not None:
        _gemm_tma(views, bias, bias2, c, z, z2, rs, act, store_z, row_sum, progs, gated, sum2)
        return c, z, z2, rs
    grid = lambda meta: (min(progs, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)  # noqa: E731
    _gemm_kernel[grid](
        a, za if za is not None else dummy, b, zb if zb is not None else dummy, a2 if sum2 else dummy,
        b2 if b2 is not None else dummy,
        bias if bias is not None else dummy, bias2 if bias2 is not None else dummy, c,
        z if z is not None else dummy, z2 if z2 is not None else dummy, rs if rs is not None else dummy,
        m, n, k, *_buckets(m, n, k), a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        progs,
        A_PRO=a_pro, PRO_ACT=ACT_IDS[pro_act], B_PRO=b_pro, ACT=ACT_IDS[act], HAS_BIAS=bias is not None,
        STORE_Z=store_z, GATED=gated, ROW_SUM=row_sum, SUM2=sum2, IEEE=a.dtype == torch.float32,
    )
    return c, z, z2, rs


def _buckets(m: int, n: int, k: int) -> tuple[int, int, int]:
    return _tuning.bucket(m), _tuning.bucket(n), _tuning.bucket(k)


def _tma_view(t: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
    """(storage matrix with unit column stride, transposed?) for a TMA descriptor, or None when
    neither dim has unit stride or the other stride / start are not 16-byte multiples."""
    if t.stride(1) == 1 and t.shape[1] > 1:
        store, trans = t, False
    elif t.stride(0) == 1:
        store, trans = t.t(), True
    else:
        return None
    if store.stride(0) * store.element_size() % 16 or store.data_ptr() % 16:
        return None
    return store, trans


def _tma_views(a, b, b2, a2=None) -> list[tuple[torch.Tensor, bool]] | None:
    """The (storage, transposed?) views of A, B, B2 and A2 (B's and A's again when absent) for the TMA
    GEMM, or None where it does not run: no descriptors, turned off, not Hopper (unless forced),
    or an operand TMA cannot describe."""
    if TensorDescriptor is None or TMA_MODE == "0":
        return None
    if TMA_MODE != "1" and (INTERPRET or not _device.on_gpu(a) or _device.capability(a.device)[0] < 9
                            or a.dtype == torch.float32):  # fp32: the pointer kernel's small FMA tiles
        return None
    views = [_tma_view(t) for t in (a, b, b2 if b2 is not None else b, a2 if a2 is not None else a)]
    # B and B2 share one descriptor layout, A and A2 another
    if any(v is None for v in views) or views[1][1] != views[2][1] or views[0][1] != views[3][1]:
        return None
    return views


def _gemm_tma(views, bias, bias2, c, z, z2, rs, act, store_z, row_sum, progs, gated, sum2=False):
    (sa, a_t), (sb, b_t), (sb2, _), (sa2, _) = views
    m, n = c.shape
    k = sa.shape[0] if a_t else sa.shape[1]

    def desc(t):  # block shapes are set per config by _tma_block_hook
        return TensorDescriptor(t, list(t.shape), list(t.stride()), [16, 16])

    dummy = c
    grid = lambda meta: (min(progs, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)  # noqa: E731
    _gemm_tma_kernel[grid](
        desc(sa), desc(sb), desc(sa2), desc(sb2), bias if bias is not None else dummy,
        bias2 if bias2 is not None else dummy, c,
        z if z is not None else dummy, z2 if z2 is not None else dummy, rs if rs is not None else dummy,
        m, n, k, *_buckets(m, n, k), c.stride(0), c.stride(1), progs,
        A_T=a_t, B_T=b_t, ACT=ACT_IDS[act], HAS_BIAS=bias is not None, STORE_Z=store_z, GATED=gated,
        ROW_SUM=row_sum, SUM2=sum2, IEEE=sa.dtype == torch.float32,
    )


def _gated_grads(dh: torch.Tensor, u: torch.Tensor, g: torch.Tensor, act: str) -> torch.Tensor:
    """[du, dg] as one (M, 2H) tensor."""
    m, h = u.shape
    dudg = torch.empty(m, 2 * h, device=u.device, dtype=u.dtype)
    n = u.numel()
    if n:
        block = 256 if INTERPRET else 1024
        _gated_grad_kernel[(triton.cdiv(n, block),)](dh.contiguous(), u, g, dudg, h, n, ACT=ACT_IDS[act], BLOCK=block)
    return dudg


# ----------------------------------------------------------------------------------------------
# torch.library ops
# ----------------------------------------------------------------------------------------------
def _empty(ref: torch.Tensor) -> torch.Tensor:
    return ref.new_empty(0)


@torch.library.custom_op("aigc_kernels::linear_fwd_triton", mutates_args=())
def linear_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               activation: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K), weight (N, K) -> (y = act(x W^T + b) (M, N), z = x W^T + b, empty without activation)."""
    y, z, _, _ = gemm(x, weight.t(), bias=bias, act=activation, store_z=activation is not None)
    return y, (z if z is not None else _empty(x))


linear_fwd.register_fake(contract.fake_linear_fwd)


@torch.library.custom_op("aigc_kernels::linear_bwd_triton", mutates_args=())
def linear_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, z: torch.Tensor, activation: str | None,
               has_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dW, db (float32; empty without bias)); act'(z) is applied as dy's tiles are loaded."""
    a_pro = 1 if activation is not None else 0
    za = z if activation is not None else None
    dx, _, _, _ = gemm(dy, weight, za=za, a_pro=a_pro, pro_act=activation)
    dw, _, _, db = gemm(dy.t(), x, za=None if za is None else za.t(), a_pro=a_pro, pro_act=activation,
                        row_sum=has_bias)
    return dx, dw, (db if db is not None else x.new_empty(0, dtype=torch.float32))


linear_bwd.register_fake(contract.fake_linear_bwd)


contract.register_linear_autograd("aigc_kernels::linear_fwd_triton", linear_bwd)


@torch.library.custom_op("aigc_kernels::ffn_fwd_triton", mutates_args=())
def ffn_fwd(x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor | None, w_out: torch.Tensor,
            b_out: torch.Tensor | None, activation: str, w_gate: torch.Tensor | None, b_gate: torch.Tensor | None,
            save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out (M, D), z1, z2): z1 = x W_in^T + b_in and, gated, z2 = x W_gate^T + b_gate, both (M, H),
    stored for the backward when ``save`` (else empty: the backward recomputes them)."""
    if w_gate is None:
        h, z1, _, _ = gemm(x, w_in.t(), bias=b_in, act=activation, store_z=save)
        z2 = None
    else:
        h, z1, z2, _ = gemm(x, w_in.t(), bias=b_in, b2=w_gate.t(), bias2=b_gate, act=activation, store_z=save)
    out, _, _, _ = gemm(h, w_out.t(), bias=b_out)
    return out, (z1 if z1 is not None else _empty(x)), (z2 if z2 is not None else _empty(x))


@ffn_fwd.register_fake
def _(x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate, save):
    m, h = x.shape[0], w_in.shape[0]
    z1 = x.new_empty(m, h) if save else x.new_empty(0)
    z2 = x.new_empty(m, h) if (save and w_gate is not None) else x.new_empty(0)
    return x.new_empty(m, w_out.shape[0]), z1, z2


@torch.library.custom_op("aigc_kernels::ffn_bwd_triton", mutates_args=())
def ffn_bwd(dout: torch.Tensor, x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor | None, w_out: torch.Tensor,
            activation: str, w_gate: torch.Tensor | None, b_gate: torch.Tensor | None, z1: torch.Tensor,
            z2: torch.Tensor, has_b_out: bool) -> list[torch.Tensor]:
    """[dx, dw_in, db_in, dw_out, db_out, dw_gate, db_gate]; bias grads float32, empty when absent."""
    gated = w_gate is not None
    if z1.numel() == 0 and x.shape[0] * w_in.shape[0] > 0:  # recompute=True: the first GEMM again
        if gated:
            _, z1, z2, _ = gemm(x, w_in.t(), bias=b_in, b2=w_gate.t(), bias2=b_gate, act=activation, store_z=True)
        else:
            _, z1, _, _ = gemm(x, w_in.t(), bias=b_in, act=activation, store_z=True)
    dh, _, _, _ = gemm(dout, w_out)  # (M, H)
    h = w_in.shape[0]
    if not gated:
        dx, _, _, _ = gemm(dh, w_in, za=z1, a_pro=1, pro_act=activation)
        dw_in, _, _, db_in = gemm(dh.t(), x, za=z1.t(), a_pro=1, pro_act=activation, row_sum=b_in is not None)
        dw_out, _, _, db_out = gemm(dout.t(), z1, b_pro=1, pro_act=activation, row_sum=has_b_out)
        dw_gate, db_gate = x.new_empty(0), None
    else:
        dudg = _gated_grads(dh, z1, z2, activation)  # (M, 2H) = [du, dg]
        dx, _, _, _ = gemm(dudg[:, :h], w_in, a2=dudg[:, h:], b2=w_gate)  # du W_in + dg W_gate, one accumulator
        # Strided views of [du, dg] as the A operands: separate outputs, no copies.
        dw_in, _, _, db_in = gemm(dudg[:, :h].t(), x, row_sum=b_in is not None)
        dw_gate, _, _, db_gate = gemm(dudg[:, h:].t(), x, row_sum=b_gate is not None)
        dw_out, _, _, db_out = gemm(dout.t(), z1, zb=z2, b_pro=2, pro_act=activation, row_sum=has_b_out)
    def or_empty(t):  # a fresh empty tensor per absent bias: outputs may not alias each other
        return t if t is not None else x.new_empty(0, dtype=torch.float32)

    return [dx, dw_in, or_empty(db_in), dw_out, or_empty(db_out), dw_gate, or_empty(db_gate)]


ffn_bwd.register_fake(contract.fake_ffn_bwd)


contract.register_ffn_autograd("aigc_kernels::ffn_fwd_triton", ffn_bwd)

# The "triton" backend's entry points, with the signatures of ak.linear / ak.ffn.
linear, ffn = contract.entry_points(linear_fwd, ffn_fwd)
