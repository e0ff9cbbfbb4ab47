"""What each kernel backend accepts, checked without importing triton or the extension (the
backend registry calls these before loading a kernel module). Each check returns None, or the
reason the kernel cannot run these arguments."""

from __future__ import annotations

import functools

import torch

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


def _layer_norm(kernel, x, weight=None, bias=None, eps=1e-5, *, residual=None) -> str | None:
    return _norm(kernel, x, weight, bias)


def _rms_norm(kernel, x, weight=None, eps=1e-6, *, residual=None) -> str | None:
    return _norm(kernel, x, weight, None)


triton_layer_norm = functools.partial(_layer_norm, "Triton")
triton_rms_norm = functools.partial(_rms_norm, "Triton")
cuda_layer_norm = functools.partial(_layer_norm, "CUDA")
cuda_rms_norm = functools.partial(_rms_norm, "CUDA")


# ----------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------
TRITON_HEAD_DIMS = (16, 256)
HEAD_DIMS = {"triton": TRITON_HEAD_DIMS}  # per kernel backend with an attention kernel


def attention_head_dim(backend: str, head_dim: int) -> str | None:
    """None if ``backend``'s attention takes this head dim, else why not (checked by ak.patch up front)."""
    lo, hi = HEAD_DIMS.get(backend, (1, 1 << 30))
    if not lo <= head_dim <= hi:
        return f"the {backend} attention supports head dims {lo} to {hi}, got {head_dim}"
    return None


def _attention_common(kernel: str, q: torch.Tensor, head_dims: tuple[int, int]) -> str | None:
    if q.dtype not in KERNEL_DTYPES:
        return f"the {kernel} attention takes float32, float16 or bfloat16, got {_name(q.dtype)}"
    d = q.shape[-1]
    if not head_dims[0] <= d <= head_dims[1]:
        return f"the {kernel} attention supports head dims {head_dims[0]} to {head_dims[1]}, got {d}"
    return None


def triton_attention(q, k, v, *, causal=False, attn_mask=None, dropout_p=0.0, scale=None, window_size=None):
    if attn_mask is not None and attn_mask.requires_grad:
        return "the Triton attention does not compute the gradient of attn_mask (it requires grad)"
    return _attention_common("Triton", q, TRITON_HEAD_DIMS)


def triton_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                            scale=None, window_size=None):
    return _attention_common("Triton", q, TRITON_HEAD_DIMS)


def triton_attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, *, k_new=None, v_new=None, causal=True,
                                  scale=None):
    return _attention_common("Triton", q, TRITON_HEAD_DIMS)


# ----------------------------------------------------------------------------------------------
# linear and ffn
# ----------------------------------------------------------------------------------------------
def _gemm_dtype(kernel: str, x: torch.Tensor) -> str | None:
    if x.dtype not in KERNEL_DTYPES:
        return f"the {kernel} GEMM takes float32, float16 or bfloat16, got {_name(x.dtype)}"
    return None


def triton_linear(x, weight, bias=None, *, activation=None) -> str | None:
    return _gemm_dtype("Triton", x)


def triton_ffn(x, w_in, b_in, w_out, b_out, *, activation="gelu", w_gate=None, b_gate=None,
               recompute=False) -> str | None:
    return _gemm_dtype("Triton", x)


def cuda_linear(x, weight, bias=None, *, activation=None) -> str | None:
    return _gemm_dtype("CUDA", x)


def cuda_ffn(x, w_in, b_in, w_out, b_out, *, activation="gelu", w_gate=None, b_gate=None,
             recompute=False) -> str | None:
    return _gemm_dtype("CUDA", x)
