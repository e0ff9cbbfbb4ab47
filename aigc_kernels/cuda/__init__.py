"""The "cuda" backend: the Python side of the ops compiled into aigc_kernels._C (csrc/).

Importing this package loads _C (its TORCH_LIBRARY registrations define the schemas under
torch.ops.aigc_kernels and their CPU/CUDA kernels), then each op family's module registers its fake
(meta) implementations and autograd and defines the backend's entry points, with the signatures of
the public functions (minus ``backend=``). One module per family, beside csrc/<family>/:

    attention  flash attention forward/backward and split-K decoding   (csrc/attention)
    norm       LayerNorm / RMSNorm with the fused residual                (csrc/norm)
    linear     linear and FFN: cuBLASLt GEMMs + activation kernels       (csrc/gemm)
    kvcache    the in-place KV cache append                              (csrc/kvcache)
    rotary     the rotary embedding, new tensor or in place               (csrc/rotary)

aigc_kernels._ext says whether _C loads without importing this package.
"""

from __future__ import annotations

from aigc_kernels import _ext

if (_why := _ext.torch_mismatch()) is not None:  # name both versions, not an undefined symbol
    raise ImportError(_why)

from aigc_kernels import _C  # noqa: E402, F401  (runs the TORCH_LIBRARY registrations)

# Every family's fake impls and autograd, so torch.ops.aigc_kernels.* trace wherever _C is loaded through
# this package. The entry points stay in their modules (aigc_kernels.cuda.attention.attention, ...).
from . import attention, kvcache, linear, norm, rotary  # noqa: E402, F401
