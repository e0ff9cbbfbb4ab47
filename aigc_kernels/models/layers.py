"""Transformer layers built from the library's modules (and so from its functional API).

Pre-LN layers use the fused residual add of the norms: ``h, x = norm2(a, residual=x)`` is
``x = x + a; h = norm2(x)`` in one kernel. Parameter names follow torch.nn.TransformerEncoderLayer
/ TransformerDecoderLayer where they have a counterpart (self_attn, norm1, norm2, norm3), so
converting checkpoints is a rename of linear1/linear2 to ffn.up_proj/ffn.down_proj.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import nn as ak_nn
from .. import ops
from .config import TransformerConfig


def make_norm(cfg: TransformerConfig, backend: str | None) -> nn.Module:
    if cfg.norm == "rms_norm":
        return ak_nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps, backend=backend)
    return ak_nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias, backend=backend)


def make_attention(cfg: TransformerConfig, backend: str | None) -> ak_nn.MultiheadAttention:
    return ak_nn.MultiheadAttention(cfg.d_model, cfg.n_heads, dropout=cfg.attn_dropout, bias=cfg.bias,
                                    num_kv_heads=cfg.kv_heads, backend=backend)


def make_ffn(cfg: TransformerConfig, backend: str | None) -> ak_nn.FeedForward:
    return ak_nn.FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation, gated=cfg.gated_ffn, bias=cfg.bias,
                             backend=backend)


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...) ("Attention Is All You Need")."""
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return pe.float()


class EncoderLayer(nn.Module):
    """Self-attention + feed-forward; causal=True makes it a GPT block (with an optional KV cache)."""

    def __init__(self, cfg: TransformerConfig, *, causal: bool = False, backend: str | None = None) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.causal = causal
        self.self_attn = make_attention(cfg, backend)
        self.ffn = make_ffn(cfg, backend)
        self.norm1 = make_norm(cfg, backend)
        self.norm2 = make_norm(cfg, backend)
        self.dropout = nn.Dropout(cfg.dropout)

    def _self_attention(self, h: torch.Tensor, mask: torch.Tensor | None, cache: KVCacheLayer | None) -> torch.Tensor:
        attn = self.self_attn
        q, k, v = attn.project_qkv(h)
        if cache is None:
            o = attn.attend(q, k, v, causal=self.causal, attn_mask=mask)
        else:
            o = cache.attend(q, k, v)
        return self.dropout(attn.project_out(o))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCacheLayer | None = None) -> torch.Tensor:
        """x (B, L, D); mask: an ak.attention mask (True = attend), e.g. padding as (B, 1, 1, L)."""
        if self.norm_first:
            a = self._self_attention(self.norm1(x), mask, cache)
            h, x = self.norm2(a, residual=x)
            return x + self.dropout(self.ffn(h))
        x, _ = self.norm1(self._self_attention(x, mask, cache), residual=x)
        y, _ = self.norm2(self.dropout(self.ffn(x)), residual=x)
        return y


class DecoderLayer(nn.Module):
    """Causal self-attention + cross-attention over the encoder's memory + feed-forward."""

    def __init__(self, cfg: TransformerConfig, *, backend: str | None = None) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attn = make_attention(cfg, backend)
        self.cross_attn = make_attention(cfg, backend)
        self.ffn = make_ffn(cfg, backend)
        self.norm1 = make_norm(cfg, backend)
        self.norm2 = make_norm(cfg, backend)
        self.norm3 = make_norm(cfg, backend)
        self.dropout = nn.Dropout(cfg.dropout)

    def _self(self, h, mask):
        attn = self.self_attn
        q, k, v = attn.project_qkv(h)
        return self.dropout(attn.project_out(attn.attend(q, k, v, causal=True, attn_mask=mask)))

    def _cross(self, h, memory, memory_mask):
        attn = self.cross_attn
        k, v = attn.project_kv(memory)
        o = attn.attend(attn.project_q(h), k, v, attn_mask=memory_mask)
        return self.dropout(attn.project_out(o))

    def forward(self, y: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            a = self._self(self.norm1(y), mask)
            h, y = self.norm2(a, residual=y)
            c = self._cross(h, memory, memory_mask)
            h, y = self.norm3(c, residual=y)
            return y + self.dropout(self.ffn(h))
        y, _ = self.norm1(self._self(y, mask), residual=y)
        y, _ = self.norm2(self._cross(y, memory, memory_mask), residual=y)
        y, _ = self.norm3(self.dropout(self.ffn(y)), residual=y)
        return y


class KVCacheLayer:
    """One layer's slice of a KVCache: attends with ak.attention_with_kvcache, appending k/v."""

    def __init__(self, cache: KVCache, index: int) -> None:
        self.cache, self.index = cache, index

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        c = self.cache
        return ops.attention_with_kvcache(q, c.k[self.index], c.v[self.index], c.seqlens, k_new=k, v_new=v,
                                          causal=True, backend=c.backend)


class KVCache:
    """Per-layer caches (B, Hkv, Lmax, Dh) and the valid length of each batch row (int32, (B,))."""

    def __init__(self, n_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device, backend: str | None = None) -> None:
        shape = (batch, kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=device)
        self.max_len = max_len
        self.backend = backend

    def layer(self, index: int) -> KVCacheLayer:
        return KVCacheLayer(self, index)

    def advance(self, n: int) -> None:
        """Count n more valid rows (call after every layer has appended them)."""
        self.seqlens += n
