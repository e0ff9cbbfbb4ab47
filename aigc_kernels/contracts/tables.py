"""The lists that Python, Triton, C++ and Hugging Face maps all need, kept once.

Pure data (no torch import). ``scripts/gen_tables.py`` generates from it the CUDA attention
instantiations (``csrc/attention/flash_{fwd,bwd}_<dtype>_d<D>.cu``), their head-dim switch
(``csrc/attention/flash_head_dims.h``) and the activation table of the C++ GEMMs
(``csrc/gemm/act_table.h``); ``tests/test_generated.py`` runs it with ``--check``.
"""

from __future__ import annotations

# Activations of ak.linear / ak.ffn: name -> the id the Triton kernels (a constexpr) and the CUDA
# kernels (gemm::Act) switch on. 0 is "no activation".
ACTIVATION_IDS = {"relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}
ACTIVATIONS = tuple(ACTIVATION_IDS)
NO_ACTIVATION_ID = 0

# transformers' activation names (config.hidden_act / activation_function) -> ours. One map for
# ak.patch and for the model converters. gelu_fast (FastGELUActivation) is the tanh approximation
# written as x * 0.7978845608 * (1 + 0.044715 x^2): the same function as gelu_tanh (its constant is
# sqrt(2/pi) to 10 digits). Names absent here are not supported.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

# The CUDA flash attention (csrc/attention): one instantiation per (direction, dtype, head dim).
CUDA_ATTENTION_DTYPES = {"f16": "__half", "bf16": "__nv_bfloat16"}  # file tag -> C++ type
CUDA_FWD_HEAD_DIMS = (32, 64, 96, 128, 256)
CUDA_BWD_HEAD_DIMS = (32, 64, 96, 128)  # a subset of the forward's

# The Triton attention: any head dim in this inclusive range (padded to a power of two).
TRITON_HEAD_DIMS = (16, 256)

# Keywords that transformers' attention implementations read (the named parameters of sdpa, flash,
# flex, paged and every model's eager attention function past (module, query, key, value, mask), and
# what they read from **kwargs), with what the library's attention function does with each:
#   "honoured": computed as transformers' own attention computes it;
#   "refused":  it changes what attention computes and the library cannot do it: a TypeError names it
#               (when its value is set: None and False change nothing);
#   "ignored":  read by some implementation, yet it does not change what sdpa computes (the reason says why).
# A keyword that no attention implementation reads (a loss argument such as shift_labels, a model's own
# bookkeeping) is not listed: it passes, as sdpa lets it pass. tests/test_hf_parity.py scans the installed
# transformers and fails on an attention keyword missing here; at run time an unlisted keyword that the
# installed transformers' attention functions read is refused (aigc_kernels/patch.py).
HF_ATTENTION_KEYWORDS: dict[str, tuple[str, str]] = {
    "dropout": ("honoured", "attention dropout, as ak.attention(dropout_p=...)"),
    "scaling": ("honoured", "the softmax scale"),
    "is_causal": ("honoured", "causal exactly when sdpa's would be (more than one query, no mask)"),
    "softcap": ("honoured", "soft-capping c*tanh(s/c) of the scores (Gemma-2)"),
    "s_aux": ("honoured", "attention sinks: one logit per head in the softmax denominator (GPT-OSS)"),
    "position_bias": ("honoured", "an additive bias on the scores, combined with the mask as sdpa combines it"),
    "sliding_window": ("honoured", "a window of that many keys (without a mask; a mask already carries it)"),
    "output_attentions": ("honoured", "the real attention probabilities, from the materialized scores"),
    "cu_seq_lens_q": ("honoured", "packed sequences: attention within each, through ak.attention_varlen"),
    "cu_seq_lens_k": ("honoured", "packed sequences (with cu_seq_lens_q)"),
    "max_length_q": ("honoured", "packed sequences (with cu_seq_lens_q)"),
    "max_length_k": ("honoured", "packed sequences (with cu_seq_lens_q)"),
    "deterministic": ("honoured", "the library's attention gradients are always bitwise reproducible"),
    "position_ids": ("ignored", "flash reads it to find packed rows; sdpa does not, and the mask builder "
                                "registered with the library's attention (sdpa's) turns packed position_ids "
                                "into a block mask"),
    "cache_position": ("ignored", "read by the sparse MSA kernel for its cache bound; the mask carries it"),
    "kernel_options": ("ignored", "flex_attention's kernel tuning options: no effect on the result"),
    "layer_idx": ("ignored", "passed by transformers' flash wrapper to its own helper (a kernel cache key)"),
    "target_dtype": ("ignored", "set by transformers' flash wrapper: the dtype flash-attn casts fp32 inputs to"),
    "attn_implementation": ("ignored", "set by transformers' flash wrapper: which flash kernel to load"),
    "use_top_left_mask": ("ignored", "set by transformers' flash wrapper: an old flash-attn's causal alignment"),
    "softmax_scale": ("ignored", "set by transformers' flash wrapper from scaling (honoured)"),
    "query_length": ("ignored", "set by transformers' flash wrapper from the query's shape"),
    "key_length": ("ignored", "set by transformers' flash wrapper from the key's shape"),
    "max_seqlen_q": ("ignored", "set by transformers' flash wrapper from max_length_q (honoured)"),
    "max_seqlen_k": ("ignored", "set by transformers' flash wrapper from max_length_k (honoured)"),
    "supports_mapping": ("ignored", "set by transformers' flash wrapper: what the loaded flash kernel takes"),
    "head_mask": ("refused", "multiplies each head's probabilities (transformers 4.x eager)"),
    "alibi": ("refused", "ALiBi position biases (older Falcon/Bloom attention)"),
    "alibi_slopes": ("refused", "ALiBi slopes (flash-attn's API)"),
    "block_table": ("honoured", "transformers' continuous-batching decode fast path: one new token per request "
                                "written into the paged cache and attended over it, by ak.attention_with_kvcache("
                                "block_table=...) (with k_cache, v_cache and cu_seq_lens_k)"),
    "k_cache": ("honoured", "the paged key cache (num_pages, page_size, Hkv, D) of the decode fast path"),
    "v_cache": ("honoured", "the paged value cache (num_pages, page_size, Hkv, D) of the decode fast path"),
    "cache_seqlens": ("refused", "transformers' flash wrapper derives it from cu_seq_lens_k, as the library does; "
                                 "given to the attention function directly it is not read"),
    "cache": ("ignored", "the model's KV cache object: what it holds is in key/value when attention runs, or in "
                        "k_cache/v_cache with block_table (honoured)"),
    "indices": ("refused", "sparse attention: the keys each query attends to (DeepSeek-V3.2-style indexers)"),
    "block_indices": ("refused", "block-sparse attention: the key blocks each query attends to (MSA)"),
    "sinks": ("refused", "a model's own sink parameter (Inkling-2), untested with the library's sinks"),
}
HF_KEYWORD_VERDICTS = ("honoured", "refused", "ignored")


# The norm backward's grid, both backends. A CTA (program) walks its rows one after another with one row's loads in
# flight, so keeping HBM busy takes about bandwidth x latency bytes in flight (Little's law: ~2 MiB on an H100,
# 3.35 TB/s x ~600 ns), a row each; and every CTA writes a float32 partial weight (and bias) gradient row that the
# second pass reads back, so no more CTAs than that: SMs x k, k = these bytes over a row's bytes (x, dy, dx, and
# ds with a residual) per SM, rounded down, from 1 to what fits per SM (CUDA 2, Triton 4). csrc/norm/norm_api.cpp
# states the same rule (kNormBwdBytesInFlight; a test holds the two equal); aigc_kernels/perf.py models it.
NORM_BWD_BYTES_IN_FLIGHT = 2 << 20
NORM_BWD_MAX_PER_SM = {"cuda": 2, "triton": 4}


def norm_bwd_grid(rows: int, row_bytes: int, sms: int, max_per_sm: int) -> int:
    """Backward CTAs for ``rows`` rows of ``row_bytes`` bytes on ``sms`` SMs."""
    per_sm = min(max(NORM_BWD_BYTES_IN_FLIGHT // max(row_bytes, 1) // sms, 1), max_per_sm)
    return max(1, min(rows, per_sm * sms))
