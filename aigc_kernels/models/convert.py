"""Weights from other implementations: torch.nn.Transformer, Hugging Face GPT-2 and BERT.

Each function maps the other model's state_dict onto ours and loads it strictly (every
parameter of ours must be matched), so a silent partial load cannot pass.
"""

from __future__ import annotations

import torch
from torch import nn

from ..contracts.tables import HF_ACTIVATIONS
from .bert import BERT
from .config import TransformerConfig
from .gpt import GPT
from .transformer import Transformer


def _load(model: nn.Module, state: dict[str, torch.Tensor], allow_missing: tuple[str, ...] = ()) -> nn.Module:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(allow_missing)]
    if missing or unexpected:
        raise RuntimeError(f"{type(model).__name__}: weights did not map cleanly; missing {missing}, "
                           f"unexpected {unexpected}")
    return model


# ----------------------------------------------------------------------------------------------
# torch.nn.Transformer
# ----------------------------------------------------------------------------------------------
_TORCH_LAYER_RENAMES = {"linear1.": "ffn.up_proj.", "linear2.": "ffn.down_proj.", "multihead_attn.": "cross_attn."}


def load_torch_transformer(model: Transformer, ref: nn.Transformer) -> Transformer:
    """Copy the encoder/decoder stacks of a torch.nn.Transformer into ``model`` (embeddings untouched)."""
    state = {}
    for key, value in ref.state_dict().items():
        new = key.replace("encoder.layers.", "encoder_layers.").replace("decoder.layers.", "decoder_layers.")
        new = new.replace("encoder.norm.", "encoder_norm.").replace("decoder.norm.", "decoder_norm.")
        for old, repl in _TORCH_LAYER_RENAMES.items():
            new = new.replace(old, repl)
        state[new] = value
    return _load(model, state, allow_missing=("src_emb.", "tgt_emb.", "generator."))


# ----------------------------------------------------------------------------------------------
# Hugging Face GPT-2
# ----------------------------------------------------------------------------------------------
_HF_ACTIVATIONS = HF_ACTIVATIONS


def _activation(name: str) -> str:
    if name not in _HF_ACTIVATIONS:
        raise ValueError(f"unsupported Hugging Face activation {name!r}; supported: {sorted(_HF_ACTIVATIONS)}")
    return _HF_ACTIVATIONS[name]


def gpt2_config(hf_config) -> TransformerConfig:
    return TransformerConfig(vocab_size=hf_config.vocab_size, d_model=hf_config.n_embd, n_heads=hf_config.n_head,
                             n_layers=hf_config.n_layer, d_ff=hf_config.n_inner, max_seq_len=hf_config.n_positions,
                             activation=_activation(hf_config.activation_function),
                             norm_eps=hf_config.layer_norm_epsilon, norm_first=True, tie_embeddings=True)


def gpt_from_hf(hf_model, *, backend: str | None = None) -> GPT:
    """A GPT with the weights of a Hugging Face GPT2Model / GPT2LMHeadModel (Conv1D weights transposed)."""
    hf_config = hf_model.config
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False) or not getattr(hf_config, "scale_attn_weights",
                                                                                   True):
        raise ValueError("gpt_from_hf: only GPT-2's default attention scaling (1/sqrt(head_dim)) is supported")
    model = GPT(gpt2_config(hf_config), backend=backend)
    src = hf_model.state_dict()
    prefix = "transformer." if any(k.startswith("transformer.") for k in src) else ""
    state = {"tok_emb.weight": src[prefix + "wte.weight"], "pos_emb.weight": src[prefix + "wpe.weight"],
             "norm_f.weight": src[prefix + "ln_f.weight"], "norm_f.bias": src[prefix + "ln_f.bias"]}
    for i in range(hf_config.n_layer):
        h, o = f"{prefix}h.{i}.", f"blocks.{i}."
        pairs = {"ln_1": "norm1", "ln_2": "norm2"}
        for a, b in pairs.items():
            state[o + b + ".weight"], state[o + b + ".bias"] = src[h + a + ".weight"], src[h + a + ".bias"]
        # HF's Conv1D stores (in, out): transpose into nn.Linear's (out, in).
        state[o + "self_attn.in_proj_weight"] = src[h + "attn.c_attn.weight"].t()
        state[o + "self_attn.in_proj_bias"] = src[h + "attn.c_attn.bias"]
        state[o + "self_attn.out_proj.weight"] = src[h + "attn.c_proj.weight"].t()
        state[o + "self_attn.out_proj.bias"] = src[h + "attn.c_proj.bias"]
        state[o + "ffn.up_proj.weight"] = src[h + "mlp.c_fc.weight"].t()
        state[o + "ffn.up_proj.bias"] = src[h + "mlp.c_fc.bias"]
        state[o + "ffn.down_proj.weight"] = src[h + "mlp.c_proj.weight"].t()
        state[o + "ffn.down_proj.bias"] = src[h + "mlp.c_proj.bias"]
    state["lm_head.weight"] = state["tok_emb.weight"]
    return _load(model, {k: v.detach().clone().contiguous() for k, v in state.items()})


# ----------------------------------------------------------------------------------------------
# Hugging Face BERT (BertModel, BertForMaskedLM; e.g. sentence-transformers/all-MiniLM-L6-v2)
# ----------------------------------------------------------------------------------------------
def bert_config(hf_config) -> TransformerConfig:
    return TransformerConfig(vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size,
                             n_heads=hf_config.num_attention_heads, n_layers=hf_config.num_hidden_layers,
                             d_ff=hf_config.intermediate_size, max_seq_len=hf_config.max_position_embeddings,
                             activation=_activation(hf_config.hidden_act), norm_eps=hf_config.layer_norm_eps,
                             norm_first=False, type_vocab_size=hf_config.type_vocab_size, tie_embeddings=True)


def bert_from_hf(hf_model, *, backend: str | None = None) -> BERT:
    """A BERT with the weights of a Hugging Face BertModel or BertForMaskedLM.

    A BertModel has no masked-LM head: ours then keeps its freshly initialized head weights.
    """
    hf_config = hf_model.config
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("bert_from_hf: only absolute position embeddings are supported")
    model = BERT(bert_config(hf_config), backend=backend)
    src = hf_model.state_dict()
    prefix = "bert." if any(k.startswith("bert.") for k in src) else ""
    e = prefix + "embeddings."
    state = {"tok_emb.weight": src[e + "word_embeddings.weight"],
             "pos_emb.weight": src[e + "position_embeddings.weight"],
             "type_emb.weight": src[e + "token_type_embeddings.weight"], "emb_norm.weight": src[e + "LayerNorm.weight"],
             "emb_norm.bias": src[e + "LayerNorm.bias"]}
    for i in range(hf_config.num_hidden_layers):
        h, o = f"{prefix}encoder.layer.{i}.", f"layers.{i}."
        qkv = [h + f"attention.self.{n}" for n in ("query", "key", "value")]
        state[o + "self_attn.in_proj_weight"] = torch.cat([src[n + ".weight"] for n in qkv])
        state[o + "self_attn.in_proj_bias"] = torch.cat([src[n + ".bias"] for n in qkv])
        renames = {"attention.output.dense": "self_attn.out_proj", "attention.output.LayerNorm": "norm1",
                   "intermediate.dense": "ffn.up_proj", "output.dense": "ffn.down_proj", "output.LayerNorm": "norm2"}
        for a, b in renames.items():
            state[o + b + ".weight"], state[o + b + ".bias"] = src[h + a + ".weight"], src[h + a + ".bias"]
    head = "cls.predictions."
    if head + "bias" in src:
        state.update({"mlm_dense.weight": src[head + "transform.dense.weight"],
                      "mlm_dense.bias": src[head + "transform.dense.bias"],
                      "mlm_norm.weight": src[head + "transform.LayerNorm.weight"],
                      "mlm_norm.bias": src[head + "transform.LayerNorm.bias"], "mlm_bias": src[head + "bias"]})
        allow = ()
    else:
        allow = ("mlm_",)
    state["mlm_decoder.weight"] = state["tok_emb.weight"]
    return _load(model, {k: v.detach().clone() for k, v in state.items()}, allow_missing=allow)
