"""LayerNorm and RMSNorm in Triton: forward (with fused residual add) and backward.

Layers, as in every op file: kernels -> launchers -> torch.library ops (with fake impls and
autograd, from aigc_kernels.contracts.norm) -> the "triton" backend's entry points ``layer_norm`` /
``rms_norm`` (what they accept: aigc_kernels.contracts.limits).

Math. With s = x (+ residual), per row of N elements, in float32:
    LayerNorm: mean = sum(s)/N, rstd = 1/sqrt(sum((s-mean)^2)/N + eps), xhat = (s-mean)*rstd
    RMSNorm:   mean = 0,        rstd = 1/sqrt(sum(s^2)/N + eps),        xhat = s*rstd
    y = xhat * w + b
Backward, with g = dy * w:
    dx = rstd * (g - xhat * mean(g * xhat) - mean(g))      (RMSNorm: without the mean(g) term)
    dw = sum over rows of dy * xhat,  db = sum over rows of dy
and with a residual, the gradient of the returned s is added to dx, which is then the gradient of
both x and residual.

Layout. Rows up to MAX_FUSED_N elements live in registers (one read of x, one write of y). Wider
rows loop over column blocks: three reads in the forward (sum, centred sum of squares,
normalize), two in the backward. dw/db are reduced deterministically: each backward program
owns a fixed set of rows and writes one float32 partial row; a second pass sums the partials in
a fixed order. No atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _device
from ..contracts import norm as contract
from ..contracts.tables import NORM_BWD_MAX_PER_SM, norm_bwd_grid

MAX_FUSED_N = 16384  # widest row kept whole in registers (elements)
LOOP_BLOCK_N = 4096  # column block of the looped path for wider rows


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _norm_fwd_kernel(
    X, R, Y, S, W, B, MEAN, RSTD,  # pointers: input, residual, output, x+residual, weight, bias, stats
    stride_x, stride_r, stride_y, stride_s,  # row strides in elements (columns are contiguous)
    N, eps,
    IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, STORE_S: tl.constexpr, HAS_W: tl.constexpr,
    HAS_B: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x
    Y += row * stride_y
    if HAS_RES:
        R += row * stride_r
    if STORE_S:
        S += row * stride_s
    cols = tl.arange(0, BLOCK_N)
    if SINGLE:
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            x += tl.load(R + cols, mask=mask, other=0.0).to(tl.float32)
        if STORE_S:
            tl.store(S + cols, x.to(S.dtype.element_ty), mask=mask)
        if IS_RMS:
            mean = 0.0
            xc = x
        else:
            mean = tl.sum(x, axis=0) / N
            xc = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
        y = xc * rstd
        if HAS_W:
            y *= tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)
    else:
        # Pass 1: the mean (and s = x + residual written once).
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            c = start + cols
            mask = c < N
            x = tl.load(X + c, mask=mask, other=0.0).to(tl.float32)
            if HAS_RES:
                x += tl.load(R + c, mask=mask, other=0.0).to(tl.float32)
            if STORE_S:
                tl.store(S + c, x.to(S.dtype.element_ty), mask=mask)
            acc += x
        if IS_RMS:
            mean = 0.0
        else:
            mean = tl.sum(acc, axis=0) / N
        # Pass 2: the centred sum of squares (two passes: no cancellation for large means).
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            c = start + cols
            mask = c < N
            x = tl.load(X + c, mask=mask, other=0.0).to(tl.float32)
            if HAS_RES:
                x += tl.load(R + c, mask=mask, other=0.0).to(tl.float32)
            xc = tl.where(mask, x - mean, 0.0)
            acc += xc * xc
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
        # Pass 3: normalize. x + residual is recomputed in float32 rather than re-read rounded.
        for start in range(0, N, BLOCK_N):
            c = start + cols
            mask = c < N
            x = tl.load(X + c, mask=mask, other=0.0).to(tl.float32)
            if HAS_RES:
                x += tl.load(R + c, mask=mask, other=0.0).to(tl.float32)
            y = (x - mean) * rstd
            if HAS_W:
                y *= tl.load(W + c, mask=mask, other=0.0).to(tl.float32)
            if HAS_B:
                y += tl.load(B + c, mask=mask, other=0.0).to(tl.float32)
            tl.store(Y + c, y.to(Y.dtype.element_ty), mask=mask)
    if not IS_RMS:
        tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _norm_bwd_kernel(
    DY, DS, XS, W, MEAN, RSTD, DX, DW_PART, DB_PART,  # pointers; XS is the normalized input (x or x+res)
    stride_dy, stride_ds, stride_xs, stride_dx,  # row strides in elements
    M, N, rows_per_program,
    IS_RMS: tl.constexpr, HAS_DS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
):
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program  # int64 row offsets: M * N may pass 2^31
    row_end = tl.minimum(row_start + rows_per_program, M)
    cols = tl.arange(0, BLOCK_N)
    part = pid.to(tl.int64) * N
    if SINGLE:
        mask = cols < N
        if HAS_W:
            w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_N], dtype=tl.float32)
        db = tl.zeros([BLOCK_N], dtype=tl.float32)
        for r in range(row_start, row_end):
            x = tl.load(XS + r * stride_xs + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + r)
            if IS_RMS:
                xhat = x * rstd
            else:
                xhat = tl.where(mask, (x - tl.load(MEAN + r)) * rstd, 0.0)
            g = dy
            if HAS_W:
                g = dy * w
            c1 = tl.sum(xhat * g, axis=0) / N
            if IS_RMS:
                dx = (g - xhat * c1) * rstd
            else:
                dx = (g - xhat * c1 - tl.sum(g, axis=0) / N) * rstd
            if HAS_DS:
                dx += tl.load(DS + r * stride_ds + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + r * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
            dw += dy * xhat
            db += dy
        if HAS_W:
            tl.store(DW_PART + part + cols, dw, mask=mask)
        if HAS_B:
            tl.store(DB_PART + part + cols, db, mask=mask)
    else:
        for r in range(row_start, row_end):
            rstd = tl.load(RSTD + r)
            if IS_RMS:
                mean = 0.0
            else:
                mean = tl.load(MEAN + r)
            # Pass 1: the two row sums.
            acc1 = tl.zeros([BLOCK_N], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                mask = c < N
                x = tl.load(XS + r * stride_xs + c, mask=mask, other=0.0).to(tl.float32)
                g = tl.load(DY + r * stride_dy + c, mask=mask, other=0.0).to(tl.float32)
                if HAS_W:
                    g *= tl.load(W + c, mask=mask, other=0.0).to(tl.float32)
                xhat = tl.where(mask, (x - mean) * rstd, 0.0)
                acc1 += xhat * g
                acc2 += g
            c1 = tl.sum(acc1, axis=0) / N
            c2 = tl.sum(acc2, axis=0) / N
            # Pass 2: dx, and this program's partial dw/db rows (read-modify-write, owned rows only).
            for start in range(0, N, BLOCK_N):
                c = start + cols
                mask = c < N
                x = tl.load(XS + r * stride_xs + c, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + r * stride_dy + c, mask=mask, other=0.0).to(tl.float32)
                g = dy
                if HAS_W:
                    g = dy * tl.load(W + c, mask=mask, other=0.0).to(tl.float32)
                xhat = tl.where(mask, (x - mean) * rstd, 0.0)
                if IS_RMS:
                    dx = (g - xhat * c1) * rstd
                else:
                    dx = (g - xhat * c1 - c2) * rstd
                if HAS_DS:
                    dx += tl.load(DS + r * stride_ds + c, mask=mask, other=0.0).to(tl.float32)
                tl.store(DX + r * stride_dx + c, dx.to(DX.dtype.element_ty), mask=mask)
                if HAS_W:
                    p = tl.load(DW_PART + part + c, mask=mask, other=0.0)
                    tl.store(DW_PART + part + c, p + dy * xhat, mask=mask)
                if HAS_B:
                    p = tl.load(DB_PART + part + c, mask=mask, other=0.0)
                    tl.store(DB_PART + part + c, p + dy, mask=mask)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
MAX_FUSED_N_BWD = 8192  # the backward keeps more per element live (x, dy, w, xhat, partial dw/db rows)


def _block(n: int, bwd: bool = False) -> tuple[int, bool, int]:
    """(BLOCK_N, whole row in one block, num_warps) for rows of n elements. The backward's warp counts are
    the ones `aigc-kernels audit` finds spill-free on sm_90a and sm_80 with triton 3.6 and 3.8."""
    block = triton.next_power_of_2(max(n, 1))
    if bwd:
        if n <= MAX_FUSED_N_BWD:
            return block, True, min(8, max(1, block // 64)) if block <= 4096 else 16
        return LOOP_BLOCK_N, False, 16
    if n <= MAX_FUSED_N:
        return block, True, min(max(block // 256, 1), 16)
    return LOOP_BLOCK_N, False, 8


def _programs(x: torch.Tensor, row_bytes: int) -> int:
    """Backward programs: contracts.tables.norm_bwd_grid on a GPU, few under the interpreter."""
    if not _device.on_gpu(x):
        return 4
    return norm_bwd_grid(x.shape[0], row_bytes, _device.sm_count(x.device), NORM_BWD_MAX_PER_SM["triton"])


def _fwd(x, weight, bias, residual, eps: float, is_rms: bool, store_s: bool):
    m, n = x.shape
    y = torch.empty_like(x)
    s = torch.empty_like(x) if store_s else x.new_empty(0)
    mean = torch.empty(0 if is_rms else m, dtype=torch.float32, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    if m == 0 or n == 0:
        return y, s, mean, rstd
    block, single, warps = _block(n)
    res = residual if residual is not None else x
    _norm_fwd_kernel[(m,)](
        x, res, y, s if store_s else y, weight if weight is not None else x, bias if bias is not None else x,
        mean if not is_rms else rstd, rstd,
        x.stride(0), res.stride(0), y.stride(0), s.stride(0) if store_s else 0,
        n, eps,
        IS_RMS=is_rms, HAS_RES=residual is not None, STORE_S=store_s, HAS_W=weight is not None,
        HAS_B=bias is not None, BLOCK_N=block, SINGLE=single, num_warps=warps,
    )
    return y, s, mean, rstd


def _bwd(dy, ds, xs, weight, mean, rstd, has_bias: bool, is_rms: bool):
    m, n = xs.shape
    dx = torch.empty_like(xs)
    programs = max(1, min(m, _programs(xs, n * xs.element_size() * (4 if ds is not None else 3))))
    rows_per_program = triton.cdiv(m, programs) if m else 0
    programs = triton.cdiv(m, rows_per_program) if m else 0
    has_w = weight is not None
    dw_part = torch.zeros((programs, n) if has_w else (0,), dtype=torch.float32, device=xs.device)
    db_part = torch.zeros((programs, n) if has_bias else (0,), dtype=torch.float32, device=xs.device)
    if m and n:
        block, single, warps = _block(n, bwd=True)
        _norm_bwd_kernel[(programs,)](
            dy, ds if ds is not None else dy, xs, weight if has_w else xs, mean if not is_rms else rstd, rstd, dx,
            dw_part if has_w else dx, db_part if has_bias else dx,
            dy.stride(0), ds.stride(0) if ds is not None else 0, xs.stride(0), dx.stride(0),
            m, n, rows_per_program,
            IS_RMS=is_rms, HAS_DS=ds is not None, HAS_W=has_w, HAS_B=has_bias, BLOCK_N=block, SINGLE=single,
            num_warps=warps,
        )
    # Second pass of the deterministic reduction: a fixed-order sum over the partial rows.
    dw = dw_part.sum(0) if has_w else dw_part
    db = db_part.sum(0) if has_bias else db_part
    return dx, dw, db


# ----------------------------------------------------------------------------------------------
# torch.library ops
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("aigc_kernels::norm_fwd_triton", mutates_args=())
def norm_fwd(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
             residual: torch.Tensor | None, eps: float, is_rms: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, residual (M, N) -> y (M, N), s = x + residual (M, N; empty without residual),
    mean (M,) float32 (empty for RMSNorm), rstd (M,) float32."""
    return _fwd(x, weight, bias, residual, eps, is_rms, residual is not None)


norm_fwd.register_fake(contract.fake_fwd)


@torch.library.custom_op("aigc_kernels::norm_bwd_triton", mutates_args=())
def norm_bwd(dy: torch.Tensor, ds: torch.Tensor | None, xs: torch.Tensor, weight: torch.Tensor | None,
             mean: torch.Tensor, rstd: torch.Tensor, has_bias: bool, is_rms: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dx (M, N), dw (N,) float32 or empty, db (N,) float32 or empty)."""
    return _bwd(dy, ds, xs, weight, mean, rstd, has_bias, is_rms)


norm_bwd.register_fake(contract.fake_bwd)
contract.register_autograd("aigc_kernels::norm_fwd_triton", norm_bwd)

# The "triton" backend's entry points, with the signatures of ak.layer_norm / ak.rms_norm.
layer_norm, rms_norm = contract.entry_points(norm_fwd)
