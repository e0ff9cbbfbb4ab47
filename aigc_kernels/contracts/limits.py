"""What each kernel backend accepts, checked without importing triton or the extension (the
backend registry calls these before loading a kernel module). Each check takes the op's normalized
call (aigc_kernels.contracts.calls) and returns None, or the reason the kernel cannot run it."""

from __future__ import annotations

import functools

import torch

from .. import _device
from .calls import (
    AttentionCall,
    AttentionVarlenCall,
    FFNCall,
    KVCacheAppendCall,
    KVCacheCall,
    LayerNormCall,
    LinearCall,
    RMSNormCall,
    RotaryCall,
)
from .tables import CUDA_BWD_HEAD_DIMS, CUDA_FWD_HEAD_DIMS, TRITON_HEAD_DIMS

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _norm(kernel: str, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> str | None:
    if x.dtype not in KERNEL_DTYPES:
        return f"the {kernel} norms take float32, float16 or bfloat16, got {_name(x.dtype)}"
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.dtype not in (x.dtype, torch.float32):
            return (f"the {kernel} norms take {name} in x's dtype or float32, "
                    f"got {_name(p.dtype)} with x in {_name(x.dtype)}")
    if weight is not None and bias is not None and weight.dtype != bias.dtype:
        return (f"the {kernel} norms take weight and bias of one dtype, "
                f"got {_name(weight.dtype)} and {_name(bias.dtype)}")
    return None


def _layer_norm(kernel, call: LayerNormCall) -> str | None:
    return _norm(kernel, call.x, call.weight, call.bias)


def _rms_norm(kernel, call: RMSNormCall) -> str | None:
    return _norm(kernel, call.x, call.weight, None)


triton_layer_norm = functools.partial(_layer_norm, "Triton")
triton_rms_norm = functools.partial(_rms_norm, "Triton")
cuda_layer_norm = functools.partial(_layer_norm, "CUDA")
cuda_rms_norm = functools.partial(_rms_norm, "CUDA")


# ----------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------
CUDA_HEAD_DIMS = CUDA_FWD_HEAD_DIMS  # one instantiation each (csrc/attention, generated)
CUDA_BWD_MAX_HEAD_DIM = max(CUDA_BWD_HEAD_DIMS)


def attention_head_dim(backend: str, head_dim: int) -> str | None:
    """None if ``backend``'s attention takes this head dim, else why not (checked by ak.patch up front)."""
    if backend == "cuda":
        if head_dim not in CUDA_HEAD_DIMS:
            return f"the cuda attention supports head dims {', '.join(map(str, CUDA_HEAD_DIMS))}, got {head_dim}"
        return None
    if backend == "triton":
        lo, hi = TRITON_HEAD_DIMS
        if not lo <= head_dim <= hi:
            return f"the {backend} attention supports head dims {lo} to {hi}, got {head_dim}"
    return None


def _interpreted_bf16(kernel: str, t: torch.Tensor) -> str | None:
    """Triton's CPU interpreter multiplies bfloat16 tl.dot operands as raw bit patterns: refused, never garbage."""
    if t.dtype == torch.bfloat16 and t.device.type == "cpu" and _device.interpreter():
        return (f"the {kernel} kernels under Triton's CPU interpreter cannot run bfloat16 (its tl.dot has no "
                "bfloat16): use float32/float16 there, or a GPU")
    return None


def _attention_common(kernel: str, q: torch.Tensor, head_dims: tuple[int, int]) -> str | None:
    if q.dtype not in KERNEL_DTYPES:
        return f"the {kernel} attention takes float32, float16 or bfloat16, got {_name(q.dtype)}"
    if kernel == "Triton" and (why := _interpreted_bf16("Triton attention", q)):
        return why
    d = q.shape[-1]
    if not head_dims[0] <= d <= head_dims[1]:
        return f"the {kernel} attention supports head dims {head_dims[0]} to {head_dims[1]}, got {d}"
    return None


# float32 backward tiles spill registers beyond this head dim (FMA dots hold whole tiles; `aigc-kernels audit`)
TRITON_FP32_BWD_MAX_HEAD_DIM = 64


def _triton_grad(tensors, q) -> str | None:
    if (q.dtype == torch.float32 and q.shape[-1] > TRITON_FP32_BWD_MAX_HEAD_DIM and torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in tensors)):
        return (f"the Triton attention backward in float32 takes head dims up to {TRITON_FP32_BWD_MAX_HEAD_DIM}, got "
                f"{q.shape[-1]} (with inputs that require grad); half precision takes up to 256")
    return None


def triton_attention(call: AttentionCall) -> str | None:
    if call.attn_mask is not None and call.attn_mask.requires_grad:
        return "the Triton attention does not compute the gradient of attn_mask (it requires grad)"
    q = call.q
    return _attention_common("Triton", q, TRITON_HEAD_DIMS) or _triton_grad((q, call.k, call.v, call.sinks), q)


def triton_attention_varlen(call: AttentionVarlenCall) -> str | None:
    q = call.q
    return _attention_common("Triton", q, TRITON_HEAD_DIMS) or _triton_grad((q, call.k, call.v), q)


def kernel_kvcache_append(kernel: str, call: KVCacheAppendCall) -> str | None:
    return None  # contiguous or paged, any dtype (a row copy): both kernels


def triton_kvcache_append(call: KVCacheAppendCall) -> str | None:
    return kernel_kvcache_append("Triton", call)


cuda_kvcache_append = functools.partial(kernel_kvcache_append, "CUDA")


def triton_attention_with_kvcache(call: KVCacheCall) -> str | None:
    return _attention_common("Triton", call.q, TRITON_HEAD_DIMS)


def _cuda_attention_common(tensors, q: torch.Tensor) -> str | None:
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"the CUDA attention takes float16 or bfloat16, got {_name(q.dtype)}"
    d = q.shape[-1]
    why = attention_head_dim("cuda", d)
    if why is not None:
        return why.replace("the cuda attention", "the CUDA attention")
    if d not in CUDA_BWD_HEAD_DIMS and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return (f"the CUDA attention backward supports head dims up to {CUDA_BWD_MAX_HEAD_DIM}, got {d} "
                "(with inputs that require grad)")
    if q.is_cuda:
        major, minor = device_capability(q.device)
        if major < 8:
            return f"the CUDA attention needs compute capability 8.0 or newer (mma.sync, cp.async), got {major}.{minor}"
    return None


def device_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device, looked up once per device."""
    return _device.capability(device)


def cuda_attention(call: AttentionCall) -> str | None:
    if call.softcap is not None or call.sinks is not None:
        return "the CUDA attention has no softcap and no attention sinks; the triton and torch backends do"
    if call.attn_mask is not None:
        return ("the CUDA attention takes no attn_mask (causal, window_size, and key padding through "
                "attention_varlen cover its masks); the triton and torch backends take bool/float masks")
    if call.dropout_p > 0:
        return "the CUDA attention has no dropout; the triton and torch backends do"
    return _cuda_attention_common((call.q, call.k, call.v), call.q)


def cuda_attention_varlen(call: AttentionVarlenCall) -> str | None:
    return _cuda_attention_common((call.q, call.k, call.v), call.q)


def flash_ready(t: torch.Tensor) -> bool:
    """Whether the CUDA attention kernels read t in place: unit stride along the head dim, other
    strides and the start offset multiples of 8 elements (16-byte chunks)."""
    return t.stride(-1) == 1 and all(s % 8 == 0 for s in t.stride()[:-1]) and t.storage_offset() % 8 == 0


def cuda_attention_with_kvcache(call: KVCacheCall) -> str | None:
    for name, t in (("k_cache", call.k_cache), ("v_cache", call.v_cache)):
        if not flash_ready(t):
            return (f"the CUDA decoding kernel reads {name} in place and needs unit stride along the head dim, "
                    f"other strides multiples of 8 elements; got strides {tuple(t.stride())}")
    cos = call.rotary_cos
    if cos is not None and cos.dtype not in (torch.float32, call.q.dtype):
        return (f"the CUDA append-with-rotary kernel reads rotary_cos/rotary_sin in float32 or q's dtype "
                f"({_name(call.q.dtype)}), got {_name(cos.dtype)}")
    return _cuda_attention_common((call.q,), call.q)


# ----------------------------------------------------------------------------------------------
# linear and ffn
# ----------------------------------------------------------------------------------------------
def _gemm_dtype(kernel: str, x: torch.Tensor) -> str | None:
    if x.dtype not in KERNEL_DTYPES:
        return f"the {kernel} GEMM takes float32, float16 or bfloat16, got {_name(x.dtype)}"
    if kernel == "Triton":
        return _interpreted_bf16("Triton GEMM", x)
    return None


def triton_gemm(call: LinearCall | FFNCall) -> str | None:
    return _gemm_dtype("Triton", call.x)


def cuda_gemm(call: LinearCall | FFNCall) -> str | None:
    return _gemm_dtype("CUDA", call.x)


triton_linear = triton_ffn = triton_gemm
cuda_linear = cuda_ffn = cuda_gemm


# ----------------------------------------------------------------------------------------------
# rotary
# ----------------------------------------------------------------------------------------------
ROTARY_MAX_HALF = 256  # rotary pairs a row (rotary_dim <= 512): one register tile of the kernels


def _rotary(kernel: str, call: RotaryCall) -> str | None:
    x, cos = call.x, call.cos
    if x.dtype not in KERNEL_DTYPES:
        return (f"the {kernel} rotary takes x in float32, float16 or bfloat16 (it computes in float32), got "
                f"{_name(x.dtype)}")
    if cos.dtype not in KERNEL_DTYPES:
        return f"the {kernel} rotary takes cos/sin in float32, float16 or bfloat16, got {_name(cos.dtype)}"
    if kernel == "CUDA" and cos.dtype not in (x.dtype, torch.float32):
        return (f"the CUDA rotary takes cos/sin in x's dtype or float32, got {_name(cos.dtype)} with x in "
                f"{_name(x.dtype)}")
    if cos.shape[1] > ROTARY_MAX_HALF:
        return f"the {kernel} rotary takes rotary_dim up to {2 * ROTARY_MAX_HALF}, got {2 * cos.shape[1]}"
    return None


triton_rotary = functools.partial(_rotary, "Triton")
cuda_rotary = functools.partial(_rotary, "CUDA")
