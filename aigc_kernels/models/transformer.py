"""Transformer: the encoder-decoder of "Attention Is All You Need", with sinusoidal positions."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TransformerConfig
from .layers import DecoderLayer, EncoderLayer, make_norm, sinusoidal_positions


class Transformer(nn.Module):
    """Encoder-decoder Transformer for sequence-to-sequence tasks.

    Embeddings are scaled by sqrt(d_model) and added to sinusoidal positions; the encoder and
    decoder stacks end in a norm (as torch.nn.Transformer's do, pre-LN or post-LN); the output
    projection is tied to the target embedding when config.tie_embeddings.

    Padding masks use torch.nn.Transformer's convention: (B, L) bool, True = padding (ignored).
    """

    def __init__(self, config: TransformerConfig, *, backend: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.backend = backend
        d = config.d_model
        self.src_emb = nn.Embedding(config.vocab_size, d)
        tgt_vocab = config.tgt_vocab_size or config.vocab_size
        self.tgt_emb = self.src_emb if config.tgt_vocab_size is None else nn.Embedding(tgt_vocab, d)
        self.register_buffer("positions", sinusoidal_positions(config.max_seq_len, d), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(config, backend=backend) for _ in range(config.n_layers))
        self.encoder_norm = make_norm(config, backend)
        n_dec = config.n_decoder_layers if config.n_decoder_layers is not None else config.n_layers
        self.decoder_layers = nn.ModuleList(DecoderLayer(config, backend=backend) for _ in range(n_dec))
        self.decoder_norm = make_norm(config, backend)
        self.generator = nn.Linear(d, tgt_vocab, bias=False)
        if config.tie_embeddings:
            self.generator.weight = self.tgt_emb.weight
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _embed(self, emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"Transformer: expected token ids of shape (B, L), got {tuple(ids.shape)}")
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"Transformer: length {ids.shape[1]} exceeds max_seq_len={self.config.max_seq_len}")
        x = emb(ids) * math.sqrt(self.config.d_model) + self.positions[: ids.shape[1]].to(emb.weight.dtype)
        return self.drop(x)

    @staticmethod
    def _keep(padding_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, L) True = pad  ->  (B, 1, 1, L) True = attend."""
        if padding_mask is None:
            return None
        return (~padding_mask.bool()).view(padding_mask.shape[0], 1, 1, padding_mask.shape[1])

    # The stacks on already-embedded inputs: what torch.nn.Transformer computes.
    def encoder_stack(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = self._keep(src_key_padding_mask)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def decoder_stack(self, y: torch.Tensor, memory: torch.Tensor, tgt_key_padding_mask: torch.Tensor | None = None,
                      memory_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask, memory_mask = self._keep(tgt_key_padding_mask), self._keep(memory_key_padding_mask)
        for layer in self.decoder_layers:
            y = layer(y, memory, mask, memory_mask)
        return self.decoder_norm(y)

    def encode(self, src: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder_stack(self._embed(self.src_emb, src), src_key_padding_mask)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, tgt_key_padding_mask: torch.Tensor | None = None,
               memory_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, Lt, tgt_vocab) of the next target token at every position (causal)."""
        y = self.decoder_stack(self._embed(self.tgt_emb, tgt), memory, tgt_key_padding_mask, memory_key_padding_mask)
        return self.generator(y)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None,
                tgt_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        memory = self.encode(src, src_key_padding_mask)
        return self.decode(tgt, memory, tgt_key_padding_mask, src_key_padding_mask)
