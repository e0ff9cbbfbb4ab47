"""TransformerConfig: one configuration for the encoder-decoder, GPT and BERT models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..contracts.tables import ACTIVATIONS


@dataclass
class TransformerConfig:
    """Sizes and choices of a Transformer; every field has a GPT-2-small-like default.

    n_layers is the depth of GPT/BERT and of the encoder of Transformer; n_decoder_layers the
    depth of Transformer's decoder (default n_layers). d_ff defaults to 4 * d_model. norm_first
    selects pre-LN (GPT-2, Llama) or post-LN (the original Transformer, BERT).
    """

    vocab_size: int = 50257
    d_model: int = 768
    n_heads: int = 12
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads
    n_layers: int = 12
    n_decoder_layers: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 1024
    dropout: float = 0.0  # embeddings and residual branches
    attn_dropout: float = 0.0  # attention probabilities
    activation: str = "gelu"
    gated_ffn: bool = False  # SwiGLU/GeGLU with gate_proj
    norm: str = "layer_norm"  # or "rms_norm"
    norm_eps: float = 1e-5
    norm_first: bool = True
    bias: bool = True
    tie_embeddings: bool = True
    type_vocab_size: int = 2  # BERT's token types
    tgt_vocab_size: int | None = None  # Transformer's target vocabulary; None = vocab_size (shared)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"TransformerConfig: d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"TransformerConfig: n_heads={self.n_heads} must be a multiple of "
                             f"n_kv_heads={self.n_kv_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TransformerConfig: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.norm not in ("layer_norm", "rms_norm"):
            raise ValueError(f"TransformerConfig: norm must be 'layer_norm' or 'rms_norm', got {self.norm!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    def replace(self, **changes) -> TransformerConfig:
        return dataclasses.replace(self, **changes)

    # Presets from the models the benchmarks take their shapes from.
    @classmethod
    def gpt2(cls, size: str = "small", **overrides) -> TransformerConfig:
        dims = {"small": (768, 12, 12), "medium": (1024, 16, 24), "large": (1280, 20, 36), "xl": (1600, 25, 48)}
        if size not in dims:
            raise ValueError(f"TransformerConfig.gpt2: size must be one of {sorted(dims)}, got {size!r}")
        d, h, n = dims[size]
        return cls(d_model=d, n_heads=h, n_layers=n, activation="gelu_tanh", **overrides)

    @classmethod
    def bert(cls, size: str = "base", **overrides) -> TransformerConfig:
        dims = {"base": (768, 12, 12), "large": (1024, 16, 24)}
        if size not in dims:
            raise ValueError(f"TransformerConfig.bert: size must be one of {sorted(dims)}, got {size!r}")
        d, h, n = dims[size]
        return cls(vocab_size=30522, d_model=d, n_heads=h, n_layers=n, max_seq_len=512, norm_first=False,
                   norm_eps=1e-12, **overrides)
