"""Python side of the ops defined in C++ (csrc/registration.cpp): fake impls and wrappers.

Importing this module loads aigc_kernels._C (the schemas and the CPU/CUDA kernels) and then
registers the fake (meta) implementations that let FakeTensor, torch.compile and
torch.library.opcheck reason about shapes without running a kernel. aigc_kernels._ext imports
it on first use; the backend registry names the wrappers below as the "cuda" implementations.
"""

from __future__ import annotations

import torch

from aigc_kernels import _C  # noqa: F401  (runs the TORCH_LIBRARY registrations)

from . import linear_common, norm_common


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
