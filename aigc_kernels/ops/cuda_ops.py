"""Python side of the ops defined in C++ (csrc/registration.cpp): fake impls and wrappers.

Importing this module loads aigc_kernels._C (the schemas and the CPU/CUDA kernels) and then
registers the fake (meta) implementations that let FakeTensor, torch.compile and
torch.library.opcheck reason about shapes without running a kernel. aigc_kernels._ext imports
it on first use; the backend registry names the wrappers below as the "cuda" implementations.
"""

from __future__ import annotations

import math

import torch

from aigc_kernels import _ext

if (_why := _ext.torch_mismatch()) is not None:  # name both versions, not an undefined symbol
    raise ImportError(_why)

from aigc_kernels import _C  # noqa: E402, F401  (runs the TORCH_LIBRARY registrations)

from . import linear_common, norm_common
from .limits import flash_ready


@torch.library.register_fake("aigc_kernels::kvcache_append")
def _kvcache_append_fake(k_cache, v_cache, k_new, v_new, cache_seqlens) -> None:
    torch._check(k_cache.dim() == 4 and v_cache.shape == k_cache.shape,
                 lambda: f"kvcache_append: caches must be (B, Hkv, Lmax, D), got {k_cache.shape}, {v_cache.shape}")
    torch._check(k_new.dim() == 4 and v_new.shape == k_new.shape,
                 lambda: f"kvcache_append: k_new/v_new must be (B, Hkv, Lnew, D), got {k_new.shape}, {v_new.shape}")
    torch._check(cache_seqlens.dtype == torch.int32, lambda: "kvcache_append: cache_seqlens must be int32")
    return None


def kvcache_append(k_cache, v_cache, k_new, v_new, cache_seqlens) -> None:
    torch.ops.aigc_kernels.kvcache_append(k_cache, v_cache, k_new, v_new, cache_seqlens)



# ----------------------------------------------------------------------------------------------
# LayerNorm / RMSNorm (csrc/norm)
# ----------------------------------------------------------------------------------------------
torch.library.register_fake("aigc_kernels::norm_fwd")(norm_common.fake_fwd)
torch.library.register_fake("aigc_kernels::norm_bwd")(norm_common.fake_bwd)
norm_common.register_autograd("aigc_kernels::norm_fwd", torch.ops.aigc_kernels.norm_bwd)

# The "cuda" backend's entry points, with the signatures of ak.layer_norm / ak.rms_norm.
layer_norm, rms_norm = norm_common.entry_points(torch.ops.aigc_kernels.norm_fwd)


# ----------------------------------------------------------------------------------------------
# linear and FFN (csrc/gemm: cuBLASLt + elementwise kernels)
# ----------------------------------------------------------------------------------------------
torch.library.register_fake("aigc_kernels::linear_fwd")(linear_common.fake_linear_fwd)
torch.library.register_fake("aigc_kernels::linear_bwd")(linear_common.fake_linear_bwd)
torch.library.register_fake("aigc_kernels::ffn_bwd")(linear_common.fake_ffn_bwd)


@torch.library.register_fake("aigc_kernels::ffn_fwd")
def _ffn_fwd_fake(x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate, save):
    m, h = x.shape[0], w_in.shape[0]
    width = 2 * h if w_gate is not None else h  # gated: [u | g] of the one GEMM over [W_in; W_gate]
    return x.new_empty(m, w_out.shape[0]), (x.new_empty(m, width) if save else x.new_empty(0)), x.new_empty(0)



linear_common.register_linear_autograd("aigc_kernels::linear_fwd", torch.ops.aigc_kernels.linear_bwd)
linear_common.register_ffn_autograd("aigc_kernels::ffn_fwd", torch.ops.aigc_kernels.ffn_bwd)

# The "cuda" backend's entry points, with the signatures of ak.linear / ak.ffn.
linear, ffn = linear_common.entry_points(torch.ops.aigc_kernels.linear_fwd, torch.ops.aigc_kernels.ffn_fwd)


# ----------------------------------------------------------------------------------------------
# flash attention (csrc/attention): mma.sync forward/backward, split-K decoding
# ----------------------------------------------------------------------------------------------
def _lse_like(q: torch.Tensor, packed: bool) -> torch.Tensor:
    if packed:
        return q.new_empty(q.shape[1], q.shape[0], dtype=torch.float32)
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], dtype=torch.float32)


def _contiguous_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, memory_format=torch.contiguous_format)


@torch.library.register_fake("aigc_kernels::flash_fwd")
def _flash_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal, window_left,
                    window_right):
    torch._check(q.dtype in (torch.float16, torch.bfloat16), lambda: f"flash_fwd: q must be fp16/bf16, got {q.dtype}")
    torch._check(k.shape == v.shape, lambda: f"flash_fwd: k and v shapes differ: {k.shape}, {v.shape}")
    return _contiguous_like(q), _lse_like(q, cu_seqlens_q is not None)


@torch.library.register_fake("aigc_kernels::flash_bwd")
def _flash_bwd_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal,
                    window_left, window_right):
    return _contiguous_like(q), _contiguous_like(k), _contiguous_like(v)


@torch.library.register_fake("aigc_kernels::flash_decode")
def _flash_decode_fake(q, k_cache, v_cache, cache_seqlens, lnew, causal, scale, num_splits):
    return _contiguous_like(q)


def _flash_setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, wl, wr = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.args = (max_q, max_k, scale, causal, wl, wr)


def _flash_backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    max_q, max_k, scale, causal, wl, wr = ctx.args
    # the gradient of a sum arrives expanded (stride 0 along the head dim): copy what the kernel cannot read
    dq, dk, dv = torch.ops.aigc_kernels.flash_bwd(_flash_operand(dout), q, k, v, out, lse, cu_q, cu_k, max_q, max_k,
                                                  scale, causal, wl, wr)
    return dq, dk, dv, None, None, None, None, None, None, None, None


torch.library.register_autograd("aigc_kernels::flash_fwd", _flash_backward, setup_context=_flash_setup_context)


def _flash_operand(t: torch.Tensor) -> torch.Tensor:
    return t if flash_ready(t) else t.contiguous()


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def _window(window_size) -> tuple[int, int]:
    left, right = window_size if window_size is not None else (-1, -1)
    return int(left), int(right)


# The "cuda" backend's entry points, with the signatures of the public functions (minus backend=);
# aigc_kernels.ops.limits has already turned away what the kernels do not take (masks, dropout).
def attention(q, k, v, causal=False, attn_mask=None, dropout_p=0.0, scale=None, window_size=None, softcap=None,
              sinks=None):
    wl, wr = _window(window_size)
    out, _ = torch.ops.aigc_kernels.flash_fwd(_flash_operand(q), _flash_operand(k), _flash_operand(v), None, None,
                                              q.shape[2], k.shape[2], _scale(q, scale), causal, wl, wr)
    return out


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False, scale=None,
                     window_size=None):
    wl, wr = _window(window_size)
    out, _ = torch.ops.aigc_kernels.flash_fwd(_flash_operand(q), _flash_operand(k), _flash_operand(v), cu_seqlens_q,
                                              cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), _scale(q, scale),
                                              causal, wl, wr)
    return out


def attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, *, k_new=None, v_new=None, causal=True, scale=None):
    lnew = 0
    if k_new is not None:
        torch.ops.aigc_kernels.kvcache_append(k_cache, v_cache, k_new, v_new, cache_seqlens)  # in place
        lnew = k_new.shape[2]
    return torch.ops.aigc_kernels.flash_decode(_flash_operand(q), k_cache, v_cache, cache_seqlens, lnew, causal,
                                               _scale(q, scale), 0)
