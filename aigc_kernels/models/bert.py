"""BERT: an encoder-only, post-LN Transformer with token-type embeddings and a masked-LM head."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .config import TransformerConfig
from .layers import EncoderLayer, make_norm


class BERT(nn.Module):
    """encode(input_ids, attention_mask) -> hidden states (B, L, D), like HF BertModel's
    last_hidden_state; forward(...) -> masked-LM logits (B, L, vocab).

    attention_mask follows Hugging Face: (B, L) with 1 (or True) for tokens and 0 for padding.
    """

    def __init__(self, config: TransformerConfig, *, backend: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.backend = backend
        d = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Embedding(config.max_seq_len, d)
        self.type_emb = nn.Embedding(config.type_vocab_size, d)
        self.emb_norm = make_norm(config, backend)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config, backend=backend) for _ in range(config.n_layers))
        # Masked-LM head: dense + activation + norm, then the (tied) decoder with its own bias.
        self.mlm_dense = nn.Linear(d, d)
        self.mlm_norm = make_norm(config, backend)
        self.mlm_decoder = nn.Linear(d, config.vocab_size, bias=False)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        if config.tie_embeddings:
            self.mlm_decoder.weight = self.tok_emb.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"BERT: expected input_ids of shape (B, L), got {tuple(input_ids.shape)}")
        b, seq = input_ids.shape
        if seq > self.config.max_seq_len:
            raise ValueError(f"BERT: sequence length {seq} exceeds max_seq_len={self.config.max_seq_len}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        pos = torch.arange(seq, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos) + self.type_emb(token_type_ids)
        x = self.drop(self.emb_norm(x))
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (b, seq):
                raise ValueError(f"BERT: expected attention_mask of shape {(b, seq)}, "
                                 f"got {tuple(attention_mask.shape)}")
            mask = attention_mask.bool().view(b, 1, 1, seq)  # keys to attend
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encode(input_ids, attention_mask, token_type_ids)
        h = self.mlm_norm(ops.linear(h, self.mlm_dense.weight, self.mlm_dense.bias, activation=self.config.activation,
                                     backend=self.backend))
        return ops.linear(h, self.mlm_decoder.weight, self.mlm_bias, backend=self.backend)
