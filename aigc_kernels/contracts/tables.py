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
