"""Rotary position embedding in Triton.

Layers, as in every op file: kernel -> launcher -> torch.library ops (fake impls, autograd and the entry
point from aigc_kernels.contracts.rotary) -> the "triton" backend's ``rotary``.

Math. For each token row, angle row p = positions[b, l] (or l), pair (x1, x2) -- features (i, i + R/2)
(GPT-NeoX) or (2i, 2i + 1) (GPT-J, INTERLEAVED) -- becomes (x1 c - x2 s, x1 s + x2 c) with c, s = cos, sin
[p, i] (s negated for the backward, CONJ), in float32. Features past R are copied when the output is a
new tensor (COPY_REST), left alone in place.

Layout. One program per (b, h, block of BLOCK_L rows): it reads BLOCK_L rows of cos/sin once for the
block (the same rows serve every head, from L2) and BLOCK_L x R features of x, each once: the op moves
the fewest bytes it can (x read once, out written once). The grid is one-dimensional, so B x H x
row blocks may exceed 65535.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..contracts import rotary as contract

ELEMS_PER_PROGRAM = 4096  # rows x rotary features a program holds (two BLOCK_L x BLOCK_K halves)


@triton.jit
def _rotary_kernel(
    X, OUT, COS, SIN, POS,  # pointers: input, output (X itself in place), angle tables, positions
    stride_xb, stride_xh, stride_xl, stride_ob, stride_oh, stride_ol,  # element strides (last dim unit)
    stride_cos, stride_sin, stride_pb, stride_pl,  # angle-table row strides; positions (stride_pb 0: (1, L))
    H, L, D, HALF,  # heads, rows, features, rotary pairs (R / 2)
    INTERLEAVED: tl.constexpr, CONJ: tl.constexpr, HAS_POS: tl.constexpr, COPY_REST: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_REST: tl.constexpr,
):
    pid = tl.program_id(0)
    blocks_l = tl.cdiv(L, BLOCK_L)
    bh = pid // blocks_l
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = (pid % blocks_l) * BLOCK_L + tl.arange(0, BLOCK_L)
    row_ok = rows < L
    if HAS_POS:
        pos = tl.load(POS + b * stride_pb + rows.to(tl.int64) * stride_pl, mask=row_ok, other=0).to(tl.int64)
    else:
        pos = rows.to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    ok = row_ok[:, None] & (k < HALF)[None, :]
    c = tl.load(COS + pos[:, None] * stride_cos + k[None, :], mask=ok, other=0.0).to(tl.float32)
    s = tl.load(SIN + pos[:, None] * stride_sin + k[None, :], mask=ok, other=0.0).to(tl.float32)
    if CONJ:
        s = -s
    x_row = X + b * stride_xb + h * stride_xh + rows.to(tl.int64)[:, None] * stride_xl
    o_row = OUT + b * stride_ob + h * stride_oh + rows.to(tl.int64)[:, None] * stride_ol
    if INTERLEAVED:
        # the 2 * HALF features as one contiguous tile, split into its even and odd columns in registers
        # (two stride-2 accesses would each touch every sector twice)
        k2 = tl.arange(0, 2 * BLOCK_K)
        ok2 = row_ok[:, None] & (k2 < 2 * HALF)[None, :]
        xt = tl.load(x_row + k2[None, :], mask=ok2, other=0.0).to(tl.float32)
        x1, x2 = tl.split(tl.reshape(xt, [BLOCK_L, BLOCK_K, 2]))
        o = tl.reshape(tl.join(x1 * c - x2 * s, x1 * s + x2 * c), [BLOCK_L, 2 * BLOCK_K])
        tl.store(o_row + k2[None, :], o.to(OUT.dtype.element_ty), mask=ok2)
    else:
        x1 = tl.load(x_row + k[None, :], mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(x_row + (k + HALF)[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(o_row + k[None, :], (x1 * c - x2 * s).to(OUT.dtype.element_ty), mask=ok)
        tl.store(o_row + (k + HALF)[None, :], (x1 * s + x2 * c).to(OUT.dtype.element_ty), mask=ok)
    if COPY_REST:  # the features past R pass through
        for start in range(2 * HALF, D, BLOCK_REST):
            cols = start + tl.arange(0, BLOCK_REST)
            m = row_ok[:, None] & (cols < D)[None, :]
            tl.store(o_row + cols[None, :], tl.load(x_row + cols[None, :], mask=m), mask=m)


def _launch(x: torch.Tensor, out: torch.Tensor, cos, sin, positions, interleaved: bool, conjugate: bool) -> None:
    b, h, length, d = x.shape
    half = cos.shape[1]
    if x.numel() == 0:
        return
    block_k = triton.next_power_of_2(half)
    block_l = max(1, min(triton.next_power_of_2(length), ELEMS_PER_PROGRAM // (2 * block_k)))
    copy_rest = out.data_ptr() != x.data_ptr() and d > 2 * half
    block_rest = triton.next_power_of_2(max(1, min(d - 2 * half, 128))) if copy_rest else 1
    pos = positions if positions is not None else x  # (unused without HAS_POS)
    grid = (b * h * triton.cdiv(length, block_l),)
    _rotary_kernel[grid](
        x, out, cos, sin, pos,
        x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
        cos.stride(0), sin.stride(0),
        0 if positions is None or positions.shape[0] == 1 else positions.stride(0),
        0 if positions is None else positions.stride(1),
        h, length, d, half,
        INTERLEAVED=interleaved, CONJ=conjugate, HAS_POS=positions is not None, COPY_REST=copy_rest,
        BLOCK_L=block_l, BLOCK_K=block_k, BLOCK_REST=block_rest, num_warps=4,
    )


# ----------------------------------------------------------------------------------------------
# torch.library ops
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("aigc_kernels::rotary_fwd_triton", mutates_args=())
def rotary_fwd(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None,
               interleaved: bool, conjugate: bool) -> torch.Tensor:
    """x (B, H, L, D) rotated by the angles of cos/sin (Lmax, R/2) rows ``positions`` -> a new (B, H, L, D)."""
    out = torch.empty_like(x)
    _launch(x, out, cos, sin, positions, interleaved, conjugate)
    return out


rotary_fwd.register_fake(contract.fake_fwd)


@torch.library.custom_op("aigc_kernels::rotary_inplace_triton", mutates_args=("x",))
def rotary_inplace(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None,
                   interleaved: bool, conjugate: bool) -> None:
    """rotary_fwd written into x (its first R features; the rest untouched)."""
    _launch(x, x, cos, sin, positions, interleaved, conjugate)


rotary_inplace.register_fake(contract.fake_inplace)

# The "triton" backend's entry point, with the signature of ak.rotary.
rotary = contract.entry_point(rotary_fwd, rotary_inplace)
