"""Python side of the ops defined in C++ (csrc/registration.cpp): fake impls and wrappers.

Importing this module loads aigc_kernels._C (the schemas and the CPU/CUDA kernels) and then
registers the fake (meta) implementations that let FakeTensor, torch.compile and
torch.library.opcheck reason about shapes without running a kernel. aigc_kernels._ext imports
it on first use; the backend registry names the wrappers below as the "cuda" implementations.
"""

from __future__ import annotations

import torch

from aigc_kernels import _C  # noqa: F401  (runs the TORCH_LIBRARY registrations)

from . import norm_common


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
