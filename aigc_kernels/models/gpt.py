"""GPT: a decoder-only Transformer (GPT-2 layout) with learned positions, tied embeddings and a
KV-cached ``generate``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TransformerConfig
from .layers import EncoderLayer, KVCache, make_norm


class GPT(nn.Module):
    """Token + learned position embeddings, pre-LN causal blocks, final norm, LM head.

    forward(idx) -> logits (B, L, vocab); forward(idx, targets) -> (logits, mean cross-entropy).
    """

    def __init__(self, config: TransformerConfig, *, backend: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.backend = backend
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(EncoderLayer(config, causal=True, backend=backend) for _ in range(config.n_layers))
        self.norm_f = make_norm(config, backend)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def _embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        if idx.dim() != 2:
            raise ValueError(f"GPT: expected token ids of shape (B, L), got {tuple(idx.shape)}")
        end = start + idx.shape[1]
        if end > self.config.max_seq_len:
            raise ValueError(f"GPT: positions up to {end} exceed max_seq_len={self.config.max_seq_len}")
        pos = torch.arange(start, end, device=idx.device)
        return self.drop(self.tok_emb(idx) + self.pos_emb(pos))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self._embed(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.norm_f(x))
        if targets is None:
            return logits
        # The loss in float32 at least: half-precision logits lose the small probabilities.
        stat = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss = F.cross_entropy(stat.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        cfg, p = self.config, self.tok_emb.weight
        return KVCache(cfg.n_layers, batch, cfg.kv_heads, max_len or cfg.max_seq_len, cfg.head_dim,
                       dtype=p.dtype, device=p.device, backend=self.backend)

    def forward_cached(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits of idx (B, L), continuing the sequences held in ``cache`` (which it extends by L).

        All rows of the batch must be at the same length (generate keeps them so).
        """
        start = int(cache.seqlens[0]) if cache.seqlens.numel() else 0
        x = self._embed(idx, start)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=cache.layer(i))
        cache.advance(idx.shape[1])
        return self.lm_head(self.norm_f(x))

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, use_cache: bool = True, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue prompt (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).

        Greedy unless do_sample; sampling divides the logits by temperature and keeps the top_k.
        With use_cache the prompt is run once and each new token attends to the KV cache through
        ak.attention_with_kvcache; without it every step re-runs the whole sequence.
        """
        if prompt.dim() != 2 or prompt.shape[1] == 0:
            raise ValueError(f"GPT.generate: expected a prompt of shape (B, T) with T >= 1, got {tuple(prompt.shape)}")
        total = prompt.shape[1] + max_new_tokens
        if total > self.config.max_seq_len:
            raise ValueError(f"GPT.generate: prompt + max_new_tokens = {total} exceeds max_seq_len="
                             f"{self.config.max_seq_len}")
        if do_sample and temperature <= 0:
            raise ValueError(f"GPT.generate: temperature must be > 0 when sampling, got {temperature}")
        out = prompt
        cache = self.new_cache(prompt.shape[0], total) if use_cache else None
        next_input = prompt
        for _ in range(max_new_tokens):
            logits = self.forward_cached(next_input, cache) if use_cache else self(out)
            token = self._pick(logits[:, -1, :].float(), do_sample, temperature, top_k, generator)
            out = torch.cat([out, token], dim=1)
            next_input = token
        return out

    @staticmethod
    def _pick(logits, do_sample, temperature, top_k, generator) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
