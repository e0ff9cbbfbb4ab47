"""Drop-in modules whose parameters and state_dict match torch.nn's, running the library's ops.

    ak.nn.LayerNorm           == torch.nn.LayerNorm            (weight, bias)
    ak.nn.RMSNorm             == torch.nn.RMSNorm              (weight)
    ak.nn.MultiheadAttention  == torch.nn.MultiheadAttention   (in_proj_weight, in_proj_bias, out_proj.*)
    ak.nn.FeedForward         Llama layout (up_proj, gate_proj, down_proj); also loads the
                              Sequential(Linear, act, Linear) layout ("0.*", "2.*")

Every module has a ``backend`` attribute (None = the active default) passed to each op, and the
norms accept ``residual=`` in forward for the fused residual add.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import ops

__all__ = ["FeedForward", "LayerNorm", "MultiheadAttention", "RMSNorm", "set_backend"]


class _Norm:
    """Shared by LayerNorm and RMSNorm (a mixin before the torch.nn class): flattens a multi-dim
    normalized_shape onto the last dim and calls the library's op with the module's backend."""

    def _flat(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        n = len(self.normalized_shape)
        if tuple(x.shape[-n:]) != self.normalized_shape:
            raise ValueError(f"{type(self).__name__}: expected input ending in normalized_shape "
                             f"{self.normalized_shape}, got shape {tuple(x.shape)}")
        return (x if n == 1 else x.flatten(-n)), n

    def _param(self, p: torch.Tensor | None) -> torch.Tensor | None:
        return None if p is None else p.reshape(-1)

    def _unflat(self, y, x_shape):
        if isinstance(y, tuple):
            return tuple(t.reshape(x_shape) for t in y)
        return y.reshape(x_shape)

    def _normalize(self, op, x: torch.Tensor, residual: torch.Tensor | None, *params):
        """op over the flattened normalized dims, with the optional fused residual."""
        flat, _ = self._flat(x)
        if residual is not None:
            residual = self._flat(residual)[0]
        return self._unflat(op(flat, *params, residual=residual, backend=self.backend), x.shape)


class LayerNorm(_Norm, nn.LayerNorm):
    """torch.nn.LayerNorm (a subclass: same constructor, parameters, state_dict and init) running the library's
    kernel; ``forward(x, residual=r)`` returns (LN(x + r), x + r)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, *, backend: str | None = None) -> None:
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias, device=device,
                         dtype=dtype)
        self.backend = backend

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        ns = self.normalized_shape
        if len(ns) == 1 and isinstance(x, torch.Tensor) and x.dim() and x.shape[-1] == ns[0]:
            # one normalized dim (nearly every model): the op as it is, with no reshapes (~3 us a call)
            return ops.layer_norm(x, self.weight, self.bias, self.eps, residual=residual, backend=self.backend)
        return self._normalize(ops.layer_norm, x, residual, self._param(self.weight), self._param(self.bias), self.eps)


class RMSNorm(_Norm, nn.RMSNorm):
    """torch.nn.RMSNorm (a subclass) running the library's kernel (eps=None means torch.finfo(x.dtype).eps, as
    torch); ``forward(x, residual=r)`` returns (RMSNorm(x + r), x + r)."""

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True,
                 device=None, dtype=None, *, backend: str | None = None) -> None:
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, device=device, dtype=dtype)
        self.backend = backend

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        ns = self.normalized_shape
        if len(ns) == 1 and isinstance(x, torch.Tensor) and x.dim() and x.shape[-1] == ns[0]:  # (as LayerNorm)
            return ops.rms_norm(x, self.weight, eps, residual=residual, backend=self.backend)
        return self._normalize(ops.rms_norm, x, residual, self._param(self.weight), eps)


class FeedForward(nn.Module):
    """The feed-forward block as one call to ak.ffn.

    Parameters (Llama naming): ``up_proj`` (d_hidden x d_model), ``down_proj`` (d_model x
    d_hidden) and, when gated, ``gate_proj``: out = down(act(gate(x)) * up(x)), else
    down(act(up(x))). A state_dict in the layout of nn.Sequential(nn.Linear, act, nn.Linear)
    ("0.weight", "0.bias", "2.weight", "2.bias") loads too, into up_proj and down_proj.
    """

    def __init__(self, d_model: int, d_hidden: int, activation: str = "gelu", *, gated: bool = False,
                 bias: bool = True, recompute: bool = False, device=None, dtype=None,
                 backend: str | None = None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.activation = activation
        self.recompute = recompute
        self.backend = backend
        self.up_proj = nn.Linear(d_model, d_hidden, bias=bias, **factory)
        self.gate_proj = nn.Linear(d_model, d_hidden, bias=bias, **factory) if gated else None
        self.down_proj = nn.Linear(d_hidden, d_model, bias=bias, **factory)
        self._register_load_state_dict_pre_hook(self._load_sequential_layout)

    @staticmethod
    def _load_sequential_layout(state_dict, prefix, *args, **kwargs) -> None:
        for old, new in (("0.", "up_proj."), ("2.", "down_proj.")):
            for name in ("weight", "bias"):
                if prefix + old + name in state_dict:
                    state_dict[prefix + new + name] = state_dict.pop(prefix + old + name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj
        return ops.ffn(x, self.up_proj.weight, self.up_proj.bias, self.down_proj.weight, self.down_proj.bias,
                       activation=self.activation, w_gate=None if gate is None else gate.weight,
                       b_gate=None if gate is None else gate.bias, recompute=self.recompute,
                       backend=self.backend)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, gated={self.gate_proj is not None}"


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention (same parameters and state_dict) running ak.attention.

    Supports batch_first=True (the default here) and False, bias, key_padding_mask and
    attn_mask with torch's conventions (bool True = *masked out*; float = added), is_causal,
    and need_weights=False only: fused attention never materializes the probabilities.
    ``num_kv_heads`` (an extension; default num_heads) gives grouped-query attention with an
    in_proj_weight of ((num_heads + 2 * num_kv_heads) * head_dim, embed_dim) rows.
    Unlike torch, a query that may attend to no key returns zeros, not NaN.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = True, device=None, dtype=None, *,
                 num_kv_heads: int | None = None, backend: str | None = None) -> None:
        super().__init__()
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("ak.nn.MultiheadAttention: add_bias_kv and add_zero_attn are not supported")
        if (kdim is not None and kdim != embed_dim) or (vdim is not None and vdim != embed_dim):
            raise NotImplementedError(f"ak.nn.MultiheadAttention: kdim/vdim must equal embed_dim={embed_dim}, "
                                      f"got kdim={kdim}, vdim={vdim}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"ak.nn.MultiheadAttention: embed_dim={embed_dim} must be divisible by "
                             f"num_heads={num_heads}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"ak.nn.MultiheadAttention: num_heads={num_heads} must be a multiple of "
                             f"num_kv_heads={num_kv_heads}")
        factory = dict(device=device, dtype=dtype)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = self.vdim = embed_dim
        self._qkv_same_embed_dim = True
        self.dropout = dropout
        self.batch_first = batch_first
        self.backend = backend
        rows = (num_heads + 2 * num_kv_heads) * self.head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(rows, embed_dim, **factory))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(rows, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    # -- projections, reused by the models (self-attention with a KV cache, cross-attention) -------
    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, seq, _ = x.shape
        return x.view(b, seq, heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention projections of x (B, L, E): q (B, H, L, Dh), k and v (B, Hkv, L, Dh)."""
        qkv = ops.linear(x, self.in_proj_weight, self.in_proj_bias, backend=self.backend)
        nq, nkv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([nq, nkv, nkv], dim=-1)
        return self._split(q, self.num_heads), self._split(k, self.num_kv_heads), self._split(v, self.num_kv_heads)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        nq = self.num_heads * self.head_dim
        bias = None if self.in_proj_bias is None else self.in_proj_bias[:nq]
        return self._split(ops.linear(x, self.in_proj_weight[:nq], bias, backend=self.backend), self.num_heads)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nq, nkv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        bias = None if self.in_proj_bias is None else self.in_proj_bias[nq:]
        kv = ops.linear(x, self.in_proj_weight[nq:], bias, backend=self.backend)
        k, v = kv.split([nkv, nkv], dim=-1)
        return self._split(k, self.num_kv_heads), self._split(v, self.num_kv_heads)

    def project_out(self, o: torch.Tensor) -> torch.Tensor:
        """(B, H, L, Dh) attention output -> (B, L, E) through out_proj."""
        b, _, seq, _ = o.shape
        o = o.transpose(1, 2).reshape(b, seq, self.embed_dim)
        return ops.linear(o, self.out_proj.weight, self.out_proj.bias, backend=self.backend)

    def attend(self, q, k, v, *, causal: bool = False, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return ops.attention(q, k, v, causal=causal, attn_mask=attn_mask,
                             dropout_p=self.dropout if self.training else 0.0, backend=self.backend)

    # -- torch.nn.MultiheadAttention's interface ---------------------------------------------------
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("ak.nn.MultiheadAttention: need_weights=True is not supported (fused attention never "
                             "materializes the attention probabilities); pass need_weights=False")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if query.dim() != 3:
            raise ValueError("ak.nn.MultiheadAttention: expected batched 3-D inputs (B, L, E), "
                             f"got {tuple(query.shape)}")
        if query is key and key is value:
            q, k, v = self.project_qkv(query)
        else:
            q = self.project_q(query)
            if key is value:
                k, v = self.project_kv(key)
            else:
                k, _ = self.project_kv(key)
                _, v = self.project_kv(value)
        mask = torch_mha_mask(attn_mask, key_padding_mask, q.shape[0], self.num_heads, q.shape[2], k.shape[2],
                              q.dtype)
        out = self.project_out(self.attend(q, k, v, causal=is_causal and attn_mask is None, attn_mask=mask))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def torch_mha_mask(attn_mask, key_padding_mask, b: int, heads: int, lq: int, lk: int, dtype) -> torch.Tensor | None:
    """torch.nn.MultiheadAttention's masks (bool True = masked out) -> one ak.attention mask.

    attn_mask: (Lq, Lk) or (B * H, Lq, Lk); key_padding_mask: (B, Lk). Bool masks become a
    keep-mask (True = attend); if either is float, the result is additive.
    """
    masks = []
    if attn_mask is not None:
        m = attn_mask if attn_mask.dim() == 2 else attn_mask.view(b, heads, lq, lk)
        masks.append(m)
    if key_padding_mask is not None:
        masks.append(key_padding_mask.view(b, 1, 1, lk))
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        keep = ~masks[0]
        for m in masks[1:]:
            keep = keep & ~m
        return keep
    out = None
    for m in masks:
        add = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, -math.inf) if m.dtype == torch.bool \
            else m.to(dtype)
        out = add if out is None else out + add
    return out


def set_backend(module: nn.Module, backend: str | None) -> nn.Module:
    """Set ``backend`` on every submodule that has one (the library's modules); returns module."""
    for m in module.modules():
        if hasattr(m, "backend") and isinstance(m, nn.Module):
            m.backend = backend
    return module
