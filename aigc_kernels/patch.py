"""ak.patch(model): swap the library's kernels into an existing model, in place, keeping its weights.

Works on
* ``aigc_kernels.models`` (they already run the library's ops: patching sets their backend);
* ``torch.nn.MultiheadAttention``, ``LayerNorm``, ``RMSNorm`` and the ``torch.nn.Transformer*``
  layers (attention and norms swapped; the layers' inline feed-forward runs ``ak.ffn`` while its
  dropout is inactive, PyTorch's own code otherwise; the native encoder fast path is turned off so
  the swapped modules actually run);
* Hugging Face GPT-2, BERT and Llama-family models: attention through transformers' attention
  registry under the name ``"aigc_kernels"`` (so ``attn_implementation="aigc_kernels"`` works
  too once this module is imported), LayerNorm/RMSNorm swapped, MLPs replaced by ``ak.ffn`` /
  ``ak.linear`` calls on the same weights, BERT's "dense + dropout + LayerNorm(h + input)"
  blocks fused into ``ak.layer_norm(..., residual=...)``, and the rotary embedding of Llama-family
  attention on ``ak.rotary`` (per instance: the module's own forward reading ``apply_rotary_pos_emb``
  as ``hf_rotary``).

What is replaced is data: ``RULES`` (a module predicate -> its replacement, first match wins, each turned
on by patch()'s attention / layer_norm / ffn flags) and ``HF_MODEL_TYPES`` (the Hugging Face model types
patch is tested on, and where their configs name the activation; another model type is patched by the
same rules, and the report notes that it is untested).

Replacement modules share the original Parameters (an optimizer built before patching keeps
working) and ``ak.unpatch(model)`` puts every original module back. The returned report lists
every module replaced and every one left alone, with the reason, and for each op family which
backend runs it (a backend without a kernel for an op is replaced by "auto" for that op, and the
report says so).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import logging
import sys
import textwrap
import types
from collections.abc import Callable

import torch
from torch import nn

from . import backend as backend_mod
from . import nn as ak_nn
from . import ops
from .contracts.tables import HF_ACTIVATIONS, HF_ATTENTION_KEYWORDS

ATTR = "_aigc_kernels_patch"  # the undo log stored on a patched model
HF_NAME = "aigc_kernels"
# The same attention function under a name transformers' continuous batching accepts (5.25 takes "sdpa",
# "paged|eager" or a name containing "flash"; see continuous_batching() below).
HF_CB_NAME = "aigc_kernels_flash"


@dataclasses.dataclass
class PatchReport:
    backend: str
    op_backends: dict[str, str]  # op family -> the backend it runs on
    notes: list[str] = dataclasses.field(default_factory=list)
    replaced: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (name, from, to)
    left_alone: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (name, type, reason)

    def __str__(self) -> str:
        lines = [f"aigc_kernels.patch: backend {self.backend!r}; "
                 + ", ".join(f"{op} on {b!r}" for op, b in self.op_backends.items())]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  replaced {name or '<root>'}: {old} -> {new}" for name, old, new in self.replaced]
        lines += [f"  left alone {name or '<root>'} ({kind}): {why}" for name, kind, why in self.left_alone]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Hugging Face attention
# ----------------------------------------------------------------------------------------------
# What the attention function does with each keyword transformers' attention implementations read: one table,
# aigc_kernels.contracts.tables.HF_ATTENTION_KEYWORDS (honoured / refused / ignored). Keywords no attention
# implementation reads (loss arguments such as shift_labels, a model's bookkeeping) pass, as they pass sdpa.
_HF_VERDICT = {name: verdict for name, (verdict, _) in HF_ATTENTION_KEYWORDS.items()}
# The leading positional arguments of an attention function (and of transformers' flash helpers), not keywords.
_POSITIONAL_ARGS = frozenset({"module", "query", "key", "value", "attention_mask", "q", "k", "v", "query_states",
                              "key_states", "value_states"})
# transformers' helpers that its flash wrapper forwards a model's **kwargs to (their parameters are keywords too).
_HF_FLASH_HELPERS = ("_flash_attention_forward", "_process_flash_attention_kwargs")


def keywords_read(fn_def: ast.FunctionDef) -> set[str]:
    """The keywords an attention function reads: its parameters after the leading (module, query, key, value,
    attention_mask), and the names it reads from its ``**kwargs`` (``kwargs.get("x")``, ``.pop("x")``,
    ``kwargs["x"]``, ``"x" in kwargs``)."""
    args = fn_def.args
    params = [a.arg for a in args.posonlyargs + args.args]
    while params and params[0] in _POSITIONAL_ARGS:
        params.pop(0)
    names = set(params) | {a.arg for a in args.kwonlyargs}
    kw = args.kwarg.arg if args.kwarg else None
    if kw is None:
        return names

    def is_kwargs(node) -> bool:
        return isinstance(node, ast.Name) and node.id == kw

    def text(node) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    for node in ast.walk(fn_def):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop")
                and is_kwargs(node.func.value) and node.args and text(node.args[0])):
            names.add(text(node.args[0]))
        elif isinstance(node, ast.Subscript) and is_kwargs(node.value) and text(node.slice):
            names.add(text(node.slice))
        elif (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn))
              and is_kwargs(node.comparators[0]) and text(node.left)):
            names.add(text(node.left))
    return names


def function_keywords(fn) -> frozenset[str]:
    """keywords_read() of a live function: its signature, and what its source reads from **kwargs (where the
    source is available and is this function's)."""
    fn = inspect.unwrap(fn)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return frozenset()
    while params and params[0].name in _POSITIONAL_ARGS:
        params.pop(0)
    found = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return frozenset(found)
    fn_def = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if fn_def is not None and fn_def.name == fn.__name__:
        found |= keywords_read(fn_def)
    return frozenset(found)


_hf_registry_keywords: frozenset[str] | None = None  # what transformers' registered attention functions read
_hf_eager_keywords: dict[type, frozenset[str]] = {}  # per attention module class: what its model's eager reads
_hf_passed_logged: set[str] = set()  # keywords passed through unread (logged once each at DEBUG)


def _registry_keywords() -> frozenset[str]:
    """The keywords read by transformers' own attention functions (sdpa, flash, flex, paged; their flash helpers)."""
    global _hf_registry_keywords
    if _hf_registry_keywords is None:
        found: set[str] = set()
        try:
            from transformers import AttentionInterface

            fns = list(AttentionInterface._global_mapping.values())
        except (ImportError, AttributeError):  # pragma: no cover - other transformers versions
            fns = []
        try:
            from transformers import modeling_flash_attention_utils as fa_utils

            fns += [getattr(fa_utils, name) for name in _HF_FLASH_HELPERS if hasattr(fa_utils, name)]
        except ImportError:  # pragma: no cover - other transformers versions
            pass
        for fn in fns:
            if callable(fn) and getattr(fn, "__module__", "").startswith("transformers."):
                found |= function_keywords(fn)
        _hf_registry_keywords = frozenset(found)
    return _hf_registry_keywords


def _eager_keywords(module) -> frozenset[str]:
    """The keywords read by the eager attention function of ``module``'s modeling file (none when it has none)."""
    cls = type(module)
    found = _hf_eager_keywords.get(cls)
    if found is None:
        eager = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
        found = function_keywords(eager) if callable(eager) else frozenset()
        _hf_eager_keywords[cls] = found
    return found


def _attention_reads(module, name: str) -> bool:
    """Whether transformers' attention implementations (for this module's model) read keyword ``name``: one that
    the table does not list yet, from a newer transformers, is refused rather than ignored."""
    if torch.compiler.is_compiling():  # no source reading inside a trace: what was read before it
        return name in (_hf_registry_keywords or ()) or name in _hf_eager_keywords.get(type(module), ())
    return name in _registry_keywords() or name in _eager_keywords(module)


def _check_keywords(module, kwargs: dict) -> None:
    """Refuse the keywords that would change the result and that the library cannot honour; let the others pass."""
    refused = []
    for name, value in kwargs.items():
        if value is None or value is False:  # unset: changes nothing
            continue
        verdict = _HF_VERDICT.get(name)
        if verdict == "ignored":
            continue
        if verdict == "refused" or (verdict is None and _attention_reads(module, name)):
            refused.append(name)
        elif not torch.compiler.is_compiling() and name not in _hf_passed_logged:
            _hf_passed_logged.add(name)
            log.debug("%s: keyword %r is read by none of transformers' attention implementations; it passes, as it "
                      "passes sdpa", type(module).__name__, name)
    if refused:
        raise TypeError(f"aigc_kernels attention ({type(module).__name__}): got keyword(s) {sorted(refused)} that it "
                        "cannot honour (they change what attention computes); use attn_implementation='eager' (or "
                        "'sdpa') for this model, or ak.unpatch(model)")


log = logging.getLogger("aigc_kernels.patch")


def _weights_requested(kwargs: dict) -> bool:
    """Whether this call must return the attention probabilities: ``output_attentions`` in its keywords,
    or transformers' output collector recording attentions (models such as GPT-2 pop the keyword and
    record the attention modules' second output instead)."""
    if kwargs.pop("output_attentions", False):
        return True
    global _collector
    if _collector is None:  # (looked up once: an import statement costs ~1 us a call)
        try:
            from transformers.utils.output_capturing import _active_collector as _collector
        except ImportError:  # pragma: no cover - other transformers versions
            _collector = False
    if _collector is False:  # pragma: no cover - other transformers versions
        return False
    collected = _collector.get()
    return bool(collected) and ("attentions" in collected or "cross_attentions" in collected)


_collector = None  # transformers' output collector (a ContextVar), False where this transformers has none


def hf_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         is_causal=None, **kwargs):
    """transformers' attention-function signature: q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) ->
    ((B, Lq, Hq, D), attention probabilities or None).

    Gives what transformers' "sdpa" gives, with the library's kernels:
    * the mask, when given, is the bool keep-mask of the sdpa mask builder (registered under the same
      name); without one, a call is causal exactly when sdpa's would be (more than one query, the
      module causal), and a prefill into an empty static cache (Lk > Lq, no mask) attends over the
      first Lq keys as sdpa does -- the library's causal is bottom-right aligned, sdpa's top-left;
    * ``softcap`` (Gemma-2), ``s_aux`` (attention sinks, GPT-OSS), ``position_bias`` (an additive
      bias, as sdpa applies it) and ``sliding_window`` are honoured; a keyword that transformers'
      attention implementations read and the library cannot honour raises (``HF_ATTENTION_KEYWORDS``);
      a keyword none of them reads (a loss argument such as ``shift_labels``) passes, as it passes sdpa;
    * ``output_attentions``: the real probabilities, from the materialized scores (slow path, logged
      at DEBUG), where "sdpa" returns None.
    """
    softcap = kwargs.pop("softcap", None)
    sinks = kwargs.pop("s_aux", None)
    position_bias = kwargs.pop("position_bias", None)
    sliding_window = kwargs.pop("sliding_window", None)
    want_weights = _weights_requested(kwargs)
    cu_q, cu_k = kwargs.pop("cu_seq_lens_q", None), kwargs.pop("cu_seq_lens_k", None)
    max_q, max_k = kwargs.pop("max_length_q", None), kwargs.pop("max_length_k", None)
    kwargs.pop("deterministic", None)  # the library's attention gradients are reproducible whatever it asks
    block_table, k_cache, v_cache = kwargs.pop("block_table", None), kwargs.pop("k_cache", None), \
        kwargs.pop("v_cache", None)
    if kwargs:
        _check_keywords(module, kwargs)
    backend = getattr(module, "aigc_kernels_backend", None)
    if block_table is not None or k_cache is not None or v_cache is not None:
        return _hf_paged_decode(module, query, key, value, block_table, k_cache, v_cache, cu_k, scaling, softcap,
                                sinks, sliding_window, want_weights, backend)
    q_len, kv_len = query.shape[2], key.shape[2]
    if cu_q is not None:  # packed sequences (transformers' flattening collator): attention within each one
        return _hf_packed(module, query, key, value, cu_q, cu_k, max_q, max_k, scaling, softcap, sinks,
                          sliding_window, want_weights, backend, is_causal)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and q_len > 1 and attention_mask is None
    top_left = causal and kv_len > q_len  # prefill into an empty static cache: sdpa's top-left causal
    if attention_mask is not None and attention_mask.dtype != torch.bool and attention_mask.dtype != query.dtype:
        attention_mask = attention_mask.to(query.dtype)
    mask = attention_mask
    if position_bias is not None:
        bias = position_bias.to(query.dtype)
        if top_left:
            bias = bias[..., :q_len]
        mask = bias if mask is None else (bias.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                                          else bias + mask)
    window = _window_of(sliding_window) if attention_mask is None else None  # (a mask carries the window)
    if want_weights:
        from . import native

        if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
            log.debug("%s: output_attentions=True: attention probabilities from the materialized scores (slow path)",
                      type(module).__name__)
        if top_left:  # keep every cache slot in the weights (as eager does), masked above the diagonal
            keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
            mask = keep if mask is None else (mask.masked_fill(~keep, float("-inf")) if mask.dtype != torch.bool
                                              else mask & keep)
            causal = False
        out, probs = native.attention_math(query, key, value, causal=causal, attn_mask=mask, dropout_p=dropout,
                                           scale=scaling, window_size=window, softcap=softcap, sinks=sinks)
        return out.transpose(1, 2).contiguous(), probs
    if top_left:  # as sdpa: the cache slots past the prompt are empty, attend over the first Lq keys
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    out = ops.attention(query, key, value, causal=causal, attn_mask=mask, dropout_p=dropout, scale=scaling,
                        window_size=window, softcap=softcap, sinks=sinks, backend=backend)
    return out.transpose(1, 2).contiguous(), None


def _window_of(sliding_window) -> tuple[int, int] | None:
    """transformers' sliding_window (a token sees itself and the sliding_window - 1 keys before it) as the
    library's window_size."""
    if sliding_window is None:
        return None
    if not isinstance(sliding_window, int) or isinstance(sliding_window, bool) or sliding_window < 1:
        raise ValueError(f"aigc_kernels attention: expected sliding_window to be an int >= 1, got {sliding_window!r}")
    return (sliding_window - 1, -1)


def _hf_packed(module, query, key, value, cu_q, cu_k, max_q, max_k, scaling, softcap, sinks, sliding_window,
               want_weights, backend, is_causal):
    """Packed sequences in one row (batch 1, cu_seq_lens): flash-attention's semantics, through attention_varlen."""
    if query.shape[0] != 1 or want_weights or softcap is not None or sinks is not None:
        raise TypeError("aigc_kernels attention: packed sequences (cu_seq_lens_q) are supported for batch 1 without "
                        "softcap, sinks or output_attentions")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    window = _window_of(sliding_window)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (L, H, D)
    out = ops.attention_varlen(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), int(max_q), int(max_k),
                               causal=bool(causal), scale=scaling, window_size=window, backend=backend)
    return out.unsqueeze(0), None


def _hf_paged_decode(module, query, key, value, block_table, k_cache, v_cache, cu_k, scaling, softcap, sinks,
                     sliding_window, want_weights, backend):
    """transformers' continuous-batching decode step on a paged cache (its "decode fast path"), the contract of its
    flash wrapper: one new token per sequence, q/k/v (1, H, N, D) with token i of sequence i, the caches
    (num_pages, page_size, Hkv, D), block_table (N, max_pages) and cu_seq_lens_k counting the new token; the new
    keys/values are written into the pages, then attention over them, by ak.attention_with_kvcache(block_table=)."""
    missing = [n for n, t in (("block_table", block_table), ("k_cache", k_cache), ("v_cache", v_cache),
                              ("cu_seq_lens_k", cu_k)) if t is None]
    if missing:
        raise TypeError(f"aigc_kernels attention ({type(module).__name__}): a paged KV cache needs block_table, "
                        f"k_cache, v_cache and cu_seq_lens_k together; missing {missing}")
    if want_weights or softcap is not None or sinks is not None:
        raise TypeError(f"aigc_kernels attention ({type(module).__name__}): a paged KV cache is supported without "
                        "softcap, sinks or output_attentions")
    window = _window_of(sliding_window)
    if query.shape[0] != 1 or block_table.dim() != 2:
        raise ValueError(f"aigc_kernels attention: expected packed decode tokens (1, H, N, D) and a block table "
                         f"(N, max_pages), got q {tuple(query.shape)} and block_table {tuple(block_table.shape)}")
    n = block_table.shape[0]
    if query.shape[2] < n or cu_k.shape[0] < n + 1:
        raise ValueError(f"aigc_kernels attention: a paged decode step takes one query token per sequence: "
                         f"{n} sequences in the block table, {query.shape[2]} tokens, {cu_k.shape[0] - 1} key lengths")
    lens = (cu_k[1:n + 1] - cu_k[:n]).to(torch.int32)  # with the new token
    out = query.new_zeros(query.shape[2], query.shape[1], query.shape[3])  # (tokens, Hq, D)
    live = torch.nonzero(lens > 0).flatten()  # padding sequences (length 0) hold no token: left at zero
    if live.numel():
        q = query[0, :, live].transpose(0, 1).unsqueeze(2)  # (N', Hq, 1, D)
        k_new = key[0, :, live].transpose(0, 1).unsqueeze(2)
        v_new = value[0, :, live].transpose(0, 1).unsqueeze(2)
        res = ops.attention_with_kvcache(q, k_cache, v_cache, lens[live] - 1, k_new=k_new, v_new=v_new,
                                         causal=True, scale=scaling, block_table=block_table[live].to(torch.int32),
                                         window_size=window, backend=backend)
        out[live] = res[:, :, 0].to(out.dtype)
    return out.unsqueeze(0), None


def register_hf() -> bool:
    """Register "aigc_kernels" (and its continuous-batching name, HF_CB_NAME) in transformers' attention and mask
    registries; False without transformers."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    for name in (HF_NAME, HF_CB_NAME):
        AttentionInterface.register(name, hf_attention_forward)
        # Without a mask builder under the same name, padded batches reach the function with no mask.
        AttentionMaskInterface.register(name, sdpa_mask)
    return True


# ----------------------------------------------------------------------------------------------
# Hugging Face rotary embedding
# ----------------------------------------------------------------------------------------------
HF_ROTARY_FN = "apply_rotary_pos_emb"  # the modeling module's function its attention forward calls


def hf_rotary(q, k, cos, sin, unsqueeze_dim=1, *, layout: str, original: Callable, backend: str | None = None):
    """transformers' ``apply_rotary_pos_emb(q, k, cos, sin)`` on ak.rotary: q/k (B, H, L, D), cos/sin (B or 1, L, R)
    holding each token's angles -- ``layout`` "doubled": cat(freqs, freqs), R = D (Llama, Mistral, Gemma-2);
    "half": freqs, R = D / 2 (GPT-OSS) -- both GPT-NeoX pairs. Any other call goes to ``original``."""
    if unsqueeze_dim != 1 or cos.dim() != 3 or q.dim() != 4 or k.dim() != 4:
        return original(q, k, cos, sin, unsqueeze_dim)
    b, length, r = cos.shape
    half = r // 2 if layout == "doubled" else r
    if layout == "doubled":
        cos, sin = cos[..., :half], sin[..., :half]
    # one table row per token: (B * L, R/2) views of the gathered angles, rows picked by b * L + l
    cos, sin = cos.reshape(b * length, half), sin.reshape(b * length, half)
    pos = None if b == 1 else torch.arange(b * length, device=q.device).view(b, length)
    return (ops.rotary(q, cos, sin, position_ids=pos, backend=backend),
            ops.rotary(k, cos, sin, position_ids=pos, backend=backend))


def _rebound(fn: Callable, name: str, value) -> Callable | None:
    """``fn`` reading the global ``name`` as ``value``: the same code over a copy of its globals, rebuilt through
    the wrappers of its decorators (whose closures hold the inner function); None where fn never reads it."""
    inner = getattr(fn, "__wrapped__", None)
    if inner is not None and fn.__closure__:
        new_inner = _rebound(inner, name, value)
        if new_inner is None:
            return None
        swapped = False
        cells = []
        for cell in fn.__closure__:
            try:
                held = cell.cell_contents
            except ValueError:  # an empty cell
                held = None
            if held is inner:
                cells.append(types.CellType(new_inner))
                swapped = True
            else:
                cells.append(cell)
        if not swapped:
            return None
        new = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, tuple(cells))
    else:
        if name not in fn.__code__.co_names:
            return None
        scope = dict(fn.__globals__)
        scope[name] = value
        new = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__, new.__qualname__ = fn.__kwdefaults__, fn.__qualname__
    new.__dict__.update(fn.__dict__)
    if inner is not None:
        new.__wrapped__ = new_inner
    return new


def _hf_rotary_module(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding") and hasattr(m, "inv_freq")),
                None)


def _rotary_matches(model: nn.Module, original: Callable, layout: str) -> str | None:
    """None when hf_rotary gives what the model's own function gives on its own angles (two batches of
    different positions), else why not: checked once, at patch time, on the "torch" backend."""
    rot = _hf_rotary_module(model)
    if rot is None:
        return "no rotary embedding module (one with inv_freq) to check the convention against"
    p = next(iter(rot.buffers()))
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 64, (2, 5), generator=g).to(p.device)
    config = model.config
    d = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    bad = f"its {HF_ROTARY_FN} is not the {layout} GPT-NeoX rotation the library implements"
    with torch.no_grad():
        cos, sin = rot(torch.zeros(1, dtype=torch.float32, device=p.device), pos)
        q, k = (torch.randn(2, 2, 5, d, generator=g).to(p.device) for _ in range(2))
        want = original(q, k, cos, sin)
        try:
            got = hf_rotary(q, k, cos, sin, layout=layout, original=original, backend="torch")
        except (ValueError, RuntimeError) as exc:  # angles of another width than the layout says
            return f"{bad} ({type(exc).__name__}: {exc})"
    if not all(a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5)
               for a, b in zip(got, want, strict=True)):
        return bad
    return None


def _patch_hf_rotary(model, hf_config, backend: str, report: PatchReport, set_attr) -> None:
    """Route the HF attention modules' rotary embedding to ak.rotary: each module's forward is transformers' own,
    reading its modeling module's apply_rotary_pos_emb as hf_rotary (per instance; ak.unpatch removes it)."""
    known = HF_MODEL_TYPES.get(getattr(hf_config, "model_type", None))
    layout = known.rotary if known is not None else None
    done: dict[type, Callable | str] = {}
    for name, module in model.named_modules():
        cls = type(module)
        fwd = cls.__dict__.get("forward")
        if fwd is None or not cls.__module__.startswith("transformers.") or not hasattr(module, "is_causal"):
            continue
        if cls not in done:
            original = getattr(sys.modules.get(cls.__module__), HF_ROTARY_FN, None)
            target = inspect.unwrap(fwd)
            if original is None or HF_ROTARY_FN not in target.__code__.co_names:
                continue  # no rotary in this attention (GPT-2, BERT)
            why = (_rotary_matches(model, original, layout) if layout is not None else
                   f"model_type {hf_config.model_type!r} is not in HF_MODEL_TYPES with a rotary layout")
            done[cls] = why if why else _rebound(fwd, HF_ROTARY_FN, functools.partial(
                hf_rotary, layout=layout, original=original, backend=backend))
            if done[cls] is None:
                done[cls] = f"{cls.__name__}.forward could not be rebuilt around {HF_ROTARY_FN}"
        new = done[cls]
        if isinstance(new, str):
            report.left_alone.append((name, cls.__name__ + " rotary embedding", new))
            continue
        set_attr(module, "forward", types.MethodType(new, module))
        report.replaced.append((name, f"{_qualname(module)} rotary ({cls.__module__.rsplit('.', 1)[-1]}."
                                      f"{HF_ROTARY_FN})", f"ak.rotary on {backend!r}"))


# ----------------------------------------------------------------------------------------------
# replacement modules (share the original parameters)
# ----------------------------------------------------------------------------------------------
class _FFNFromConv1D(nn.Module):
    """HF GPT-2's MLP (Conv1D c_fc, activation, Conv1D c_proj, dropout) as one ak.ffn call."""

    def __init__(self, mlp: nn.Module, activation: str, backend: str | None) -> None:
        super().__init__()
        self.c_fc, self.c_proj, self.dropout = mlp.c_fc, mlp.c_proj, mlp.dropout
        self.activation, self.backend = activation, backend

    def forward(self, x):
        # Conv1D stores (in, out): the transposed views are the nn.Linear-layout weights.
        y = ops.ffn(x, self.c_fc.weight.t(), self.c_fc.bias, self.c_proj.weight.t(), self.c_proj.bias,
                    activation=self.activation, backend=self.backend)
        return self.dropout(y)


class _GatedFFN(nn.Module):
    """A Llama-style MLP (gate_proj, up_proj, down_proj) as one gated ak.ffn call."""

    def __init__(self, mlp: nn.Module, activation: str, backend: str | None) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.activation, self.backend = activation, backend

    def forward(self, x):
        g, u, d = self.gate_proj, self.up_proj, self.down_proj
        return ops.ffn(x, u.weight, u.bias, d.weight, d.bias, activation=self.activation, w_gate=g.weight,
                       b_gate=g.bias, backend=self.backend)


class _LinearAct(nn.Module):
    """HF BERT's intermediate block (dense + activation) as ak.linear with the activation fused."""

    def __init__(self, block: nn.Module, activation: str, backend: str | None) -> None:
        super().__init__()
        self.dense, self.activation, self.backend = block.dense, activation, backend

    def forward(self, x):
        return ops.linear(x, self.dense.weight, self.dense.bias, activation=self.activation, backend=self.backend)


class _DenseResidualNorm(nn.Module):
    """HF BERT's output blocks, LayerNorm(dropout(dense(h)) + input), with the add fused into the norm."""

    def __init__(self, block: nn.Module, linear_backend: str | None, norm_backend: str | None) -> None:
        super().__init__()
        self.dense, self.dropout, self.LayerNorm = block.dense, block.dropout, block.LayerNorm
        self.linear_backend, self.norm_backend = linear_backend, norm_backend

    def forward(self, hidden_states, input_tensor):
        h = self.dropout(ops.linear(hidden_states, self.dense.weight, self.dense.bias, backend=self.linear_backend))
        ln = self.LayerNorm
        y, _ = ops.layer_norm(h, ln.weight, ln.bias, ln.eps, residual=input_tensor, backend=self.norm_backend)
        return y


def _shared_layer_norm(old: nn.LayerNorm, backend: str | None) -> ak_nn.LayerNorm:
    new = ak_nn.LayerNorm(old.normalized_shape, eps=old.eps, elementwise_affine=False, backend=backend)
    new.elementwise_affine = old.elementwise_affine
    new.weight, new.bias = old.weight, old.bias  # the same Parameters
    return new


def _shared_rms_norm(old: nn.Module, eps, backend: str | None) -> ak_nn.RMSNorm:
    shape = getattr(old, "normalized_shape", None) or tuple(old.weight.shape)
    new = ak_nn.RMSNorm(shape, eps=eps, elementwise_affine=False, backend=backend)
    new.elementwise_affine = old.weight is not None
    new.weight = old.weight
    return new


def _fit_head_dim(backend: str, head_dim: int, where: str, report: PatchReport) -> str:
    """The backend for an attention of this head dim: the requested one, or "auto" (noted) when its
    kernel cannot take the head dim."""
    from .contracts.limits import attention_head_dim

    why = attention_head_dim(backend, head_dim) if backend != "auto" else None
    if why is None:
        return backend
    report.notes.append(f"{where}: {why}; its attention runs on 'auto'")
    return "auto"


def _shared_mha(old: nn.MultiheadAttention, backend: str | None) -> ak_nn.MultiheadAttention | str:
    if old.bias_k is not None or old.add_zero_attn:
        return "add_bias_kv / add_zero_attn are not supported"
    if not old._qkv_same_embed_dim:
        return "kdim/vdim different from embed_dim are not supported"
    new = ak_nn.MultiheadAttention(old.embed_dim, old.num_heads, dropout=old.dropout, bias=old.in_proj_bias is not None,
                                   batch_first=old.batch_first, device="meta", backend=backend)
    new.in_proj_weight, new.in_proj_bias, new.out_proj = old.in_proj_weight, old.in_proj_bias, old.out_proj
    return new


# ----------------------------------------------------------------------------------------------
# what patch replaces: rules over modules, and the Hugging Face model types it was tested on
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Context:
    is_hf: bool
    hf_act: str | None  # the model's activation, in transformers' name
    act: str | None  # ours (aigc_kernels.contracts.tables.HF_ACTIVATIONS), None when it has no kernel
    report: PatchReport
    backends: dict[str, str]  # op family -> the backend it runs on (the report's op_backends)
    enabled: dict[str, bool]  # patch()'s attention / layer_norm / ffn flags


@dataclasses.dataclass(frozen=True)
class Rule:
    """Replace a child module that ``matches`` with ``make(child, qualified name, ctx)``: a module sharing the
    child's Parameters, or a string saying why the child is left alone. The first matching rule wins; it runs
    when any of ``families`` (patch()'s flags) is on."""

    what: str
    families: tuple[str, ...]
    matches: Callable[[nn.Module, _Context], bool]
    make: Callable[[nn.Module, str, _Context], nn.Module | str]


def _is_rms_norm(child: nn.Module, ctx: _Context) -> bool:
    return isinstance(child, nn.RMSNorm) or (type(child).__name__.endswith("RMSNorm")
                                             and hasattr(child, "variance_epsilon"))  # Llama-style HF RMSNorm


def _with_act(ctx: _Context, make: Callable[[str], nn.Module]) -> nn.Module | str:
    return make(ctx.act) if ctx.act else f"activation {ctx.hf_act!r} has no kernel"


def _hf_class(*names: str) -> Callable[[nn.Module, _Context], bool]:
    return lambda child, ctx: ctx.is_hf and type(child).__name__ in names


RULES: tuple[Rule, ...] = (
    Rule("torch.nn.LayerNorm", ("layer_norm",), lambda c, ctx: isinstance(c, nn.LayerNorm),
         lambda c, full, ctx: _shared_layer_norm(c, ctx.backends["layer_norm"])),
    Rule("torch.nn.RMSNorm and Llama-style RMSNorm", ("layer_norm",), _is_rms_norm,
         lambda c, full, ctx: _shared_rms_norm(c, c.eps if isinstance(c, nn.RMSNorm) else c.variance_epsilon,
                                               ctx.backends["layer_norm"])),
    # e.g. Gemma's RMSNorm scales by (1 + weight): not the kernels' formula
    Rule("another Hugging Face norm", ("layer_norm",),
         lambda c, ctx: ctx.is_hf and type(c).__name__.endswith(("RMSNorm", "LayerNorm")),
         lambda c, full, ctx: "a norm whose formula the kernels do not implement"),
    Rule("torch.nn.MultiheadAttention", ("attention",), lambda c, ctx: isinstance(c, nn.MultiheadAttention),
         lambda c, full, ctx: _shared_mha(c, _fit_head_dim(ctx.backends["attention"], c.head_dim, full, ctx.report))),
    Rule("GPT-2 MLP (Conv1D)", ("ffn",), _hf_class("GPT2MLP"),
         lambda c, full, ctx: _with_act(ctx, lambda act: _FFNFromConv1D(c, act, ctx.backends["ffn"]))),
    Rule("gated MLP (gate_proj, up_proj, down_proj)", ("ffn",),
         lambda c, ctx: ctx.is_hf and all(hasattr(c, a) for a in ("gate_proj", "up_proj", "down_proj")),
         lambda c, full, ctx: _with_act(ctx, lambda act: _GatedFFN(c, act, ctx.backends["ffn"]))),
    Rule("BERT intermediate (dense + activation)", ("ffn",), _hf_class("BertIntermediate"),
         lambda c, full, ctx: _with_act(ctx, lambda act: _LinearAct(c, act, ctx.backends["linear"]))),
    Rule("BERT output (dense + dropout + LayerNorm(h + input))", ("layer_norm", "ffn"),
         _hf_class("BertOutput", "BertSelfOutput"),
         lambda c, full, ctx: _DenseResidualNorm(c, ctx.backends["linear"], ctx.backends["layer_norm"])),
)


@dataclasses.dataclass(frozen=True)
class HFModelType:
    """A Hugging Face model type ak.patch is tested on (tests/test_hf_parity.py): where its config names the MLP
    activation, and what stays transformers' own."""

    activation_attr: str | None
    left_alone: str = ""
    rotary: str | None = None  # hf_rotary's layout of its cos/sin: "doubled" (cat(freqs, freqs)) or "half"


HF_MODEL_TYPES: dict[str, HFModelType] = {
    "gpt2": HFModelType("activation_function"),
    "bert": HFModelType("hidden_act"),
    "llama": HFModelType("hidden_act", rotary="doubled"),
    "mistral": HFModelType("hidden_act", rotary="doubled"),
    "gemma2": HFModelType("hidden_activation", "its RMSNorm (scales by 1 + weight)", rotary="doubled"),
    "gpt_oss": HFModelType(None, "the mixture-of-experts MLP", rotary="half"),
}


def _hf_activation_name(hf_config) -> str | None:
    known = HF_MODEL_TYPES.get(getattr(hf_config, "model_type", None))
    attrs = ("activation_function", "hidden_act", "hidden_activation")
    if known is not None and known.activation_attr:
        attrs = (known.activation_attr, *attrs)
    return next((v for a in attrs if isinstance(v := getattr(hf_config, a, None), str)), None)


# ----------------------------------------------------------------------------------------------
# patch / unpatch
# ----------------------------------------------------------------------------------------------
def _op_backend(op: str, requested: str, report: PatchReport) -> str:
    if op == "attention" and requested == "cuda":
        # Models pass padding masks and train with dropout, which the CUDA kernel does not take:
        # "auto" runs it wherever it can (it comes first) and routes the rest, per call.
        report.notes.append("the 'cuda' attention takes no attn_mask and no dropout: attention runs on 'auto' "
                            "(the CUDA kernel for the calls it supports, the next backend for the others)")
        return "auto"
    if requested == "auto" or requested in backend_mod.implementations(op)[op]:
        return requested
    report.notes.append(f"the '{requested}' backend has no {op} kernel yet: {op} runs on 'auto' (the best "
                        "available backend for each call)")
    return "auto"


def patch(model: nn.Module, *, backend: str | None = None, attention: bool | str = True, layer_norm: bool = True,
          ffn: bool = True, continuous_batching: bool = False) -> PatchReport:
    """Swap the library's kernels into ``model`` in place; returns a PatchReport. See the module docstring.

    A Hugging Face model whose attention is ``attn_implementation="eager"`` (the user's way to get the
    attention weights) keeps eager attention unless ``attention="force"``; the report says so.

    ``continuous_batching=True`` (Hugging Face models): the library's attention goes in under ``HF_CB_NAME``
    ("aigc_kernels_flash") instead of ``HF_NAME``, so that transformers' continuous batching
    (``model.generate_batch``, ``model.init_continuous_batching``) runs on it: transformers 5.25 accepts there only
    "sdpa", "paged|eager" or a name containing "flash", and it tries to import a flash-attn package for any such
    name given to ``set_attn_implementation``, so patch sets it on the config directly. transformers then calls it
    as a flash implementation: packed sequences with ``cu_seq_lens_q/k`` and no mask (ak.attention_varlen), and on
    its decode fast path (FA2/FA3 names on CUDA only, in 5.25) the paged cache with ``block_table``
    (ak.attention_with_kvcache(block_table=...)). Everything else runs as under ``HF_NAME``.
    """
    requested = backend_mod._normalize(backend, "ak.patch(backend=...)") or backend_mod.get_backend()
    report = PatchReport(requested, {})
    be_attn = _op_backend("attention", requested, report)
    be_norm = _op_backend("layer_norm", requested, report)
    be_ffn = _op_backend("ffn", requested, report)
    be_lin = _op_backend("linear", requested, report)
    be_rot = _op_backend("rotary", requested, report)
    report.op_backends = {"attention": be_attn, "layer_norm": be_norm, "ffn": be_ffn, "linear": be_lin,
                          "rotary": be_rot}
    log = getattr(model, ATTR, None)
    if log is not None:
        raise RuntimeError("ak.patch: this model is already patched; call ak.unpatch(model) first")
    if continuous_batching and not (getattr(model, "config", None) is not None
                                    and hasattr(model, "set_attn_implementation")):
        raise ValueError("ak.patch(continuous_batching=True): expected a Hugging Face model (transformers' continuous "
                         f"batching), got {type(model).__name__}")
    if continuous_batching and not attention:
        raise ValueError("ak.patch(continuous_batching=True): continuous batching runs the library's attention; "
                         "it cannot go with attention=False")
    log = {"modules": [], "attrs": [], "hf_attn": None}
    hf_config = getattr(model, "config", None)
    is_hf = hf_config is not None and hasattr(hf_config, "model_type") and hasattr(model, "set_attn_implementation")
    hf_act = _hf_activation_name(hf_config) if is_hf else None
    if is_hf and hf_config.model_type not in HF_MODEL_TYPES:
        report.notes.append(f"model_type {hf_config.model_type!r} is not in aigc_kernels.patch.HF_MODEL_TYPES (the "
                            "tested ones): attention goes through transformers' registry and modules by the generic "
                            "rules; check its outputs against the unpatched model")

    rotary = is_hf and bool(attention)  # the rotary embedding goes with attention (kept eager or not)
    keep_eager = _users_eager(model, hf_config, attention, report) if is_hf and attention else None
    if keep_eager and continuous_batching:
        raise ValueError(f"ak.patch(continuous_batching=True): the model keeps its eager attention ({keep_eager})")
    if keep_eager:
        report.left_alone.append(("", "attention", keep_eager))
        attention = False
    elif is_hf and attention:
        heads = getattr(hf_config, "num_attention_heads", None) or getattr(hf_config, "n_head", None)
        width = getattr(hf_config, "hidden_size", None) or getattr(hf_config, "n_embd", None)
        head_dim = getattr(hf_config, "head_dim", None) or (width // heads if heads and width else None)
        if head_dim:
            be_attn = _fit_head_dim(be_attn, head_dim, type(model).__name__, report)
            report.op_backends["attention"] = be_attn
        if not register_hf():
            report.left_alone.append(("", type(model).__name__, "transformers is not importable"))
        else:
            log["hf_attn"] = hf_config._attn_implementation
            model.set_attn_implementation(HF_NAME)
            if continuous_batching:  # transformers' checks ran on HF_NAME; the alias is the same function
                hf_config._attn_implementation = HF_CB_NAME
    elif is_hf and not attention:
        report.left_alone.append(("", "attention", "attention=False"))

    ctx = _Context(is_hf, hf_act, HF_ACTIVATIONS.get(hf_act) if hf_act else None, report, report.op_backends,
                   {"attention": bool(attention), "layer_norm": layer_norm, "ffn": ffn})
    seen_children: set[int] = set()

    def swap(parent: nn.Module, attr: str, new: nn.Module, name: str, old: nn.Module) -> None:
        setattr(parent, attr, new)
        log["modules"].append((parent, attr, old))
        report.replaced.append((name, _qualname(old), _qualname(new)))
        # The replaced module (and what it holds) must not be patched itself: unpatch restores it as is.
        seen_children.update(id(m) for m in old.modules())

    def set_attr(obj, attr, value):
        log["attrs"].append((obj, attr, getattr(obj, attr, None), attr in vars(obj)))
        setattr(obj, attr, value)

    named = list(model.named_modules())
    for name, module in named:
        if id(module) in seen_children:
            continue
        cls = type(module).__name__
        mod_path = type(module).__module__
        # -- the library's own modules: set the backend ------------------------------------------
        if mod_path.startswith("aigc_kernels."):
            if isinstance(module, (ak_nn.LayerNorm, ak_nn.RMSNorm)) and layer_norm:
                set_attr(module, "backend", be_norm)
                report.replaced.append((name, cls, f"{cls} on {be_norm!r} (already aigc_kernels)"))
            elif isinstance(module, ak_nn.MultiheadAttention) and attention:
                set_attr(module, "backend", be_attn)
                report.replaced.append((name, cls, f"{cls} on {be_attn!r} (already aigc_kernels)"))
            elif isinstance(module, ak_nn.FeedForward) and ffn:
                set_attr(module, "backend", be_ffn)
                report.replaced.append((name, cls, f"{cls} on {be_ffn!r} (already aigc_kernels)"))
            elif hasattr(module, "backend") and module is model:
                set_attr(module, "backend", be_attn)  # the model's own calls: GPT's KV-cache attention
            continue
        # -- torch.nn layers ------------------------------------------------------------------------
        if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            _patch_torch_layer(module, name, be_ffn, ffn, report, set_attr)
        for child_name, child in list(module.named_children()):
            if type(child).__module__.startswith("aigc_kernels."):
                continue  # the library's own modules: their backend is set above, where the walk reaches them
            full = f"{name}.{child_name}" if name else child_name
            rule = next((r for r in RULES if r.matches(child, ctx)), None)
            if rule is None:
                continue
            if not any(ctx.enabled[f] for f in rule.families):
                report.left_alone.append((full, type(child).__name__,
                                          " and ".join(f"{f}=False" for f in rule.families)))
                continue
            new = rule.make(child, full, ctx)
            if isinstance(new, str):
                report.left_alone.append((full, type(child).__name__, new))
            else:
                swap(module, child_name, new, full, child)
    if is_hf and attention:
        for name, module in model.named_modules():
            if hasattr(module, "is_causal") and type(module).__module__.startswith("transformers."):
                set_attr(module, "aigc_kernels_backend", be_attn)
                _attention_reads(module, "")  # read the attention keywords now, not inside a torch.compile trace
                report.replaced.append((name, _qualname(module) + " attention function",
                                        f'aigc_kernels attention on {be_attn!r} '
                                        f'(attn_implementation="{hf_config._attn_implementation}")'))
    if rotary:
        _patch_hf_rotary(model, hf_config, be_rot, report, set_attr)
    object.__setattr__(model, ATTR, log)
    return report


def _users_eager(model: nn.Module, hf_config, attention: bool | str, report: PatchReport) -> str | None:
    """Why a Hugging Face model on eager attention keeps it (None: replace it).

    transformers keeps no record of whether eager was asked for or fell back to (a model without sdpa, such as
    Gemma-2 or GPT-OSS, gets eager by default), so what tells a user's eager is what only eager can give:
    * the model offers sdpa, its default: eager is then the user's choice, the usual way to get attention weights;
    * ``config.output_attentions = True``: transformers returns weights by config only from eager attention
      (and refuses any other implementation while it is set) -- the library's attention returns them per call.
    ``attention="force"`` replaces the first; it cannot replace the second (transformers would refuse every
    forward pass), so it raises instead.
    """
    if getattr(hf_config, "_attn_implementation", None) != "eager":
        return None
    if getattr(hf_config, "output_attentions", False):
        if attention == "force":
            raise ValueError("ak.patch(attention='force'): the model's config.output_attentions is True, which "
                             "transformers serves only with attn_implementation='eager' (it refuses any other); set "
                             "model.config.output_attentions = False first (output_attentions=True per call returns "
                             "the real weights on the library's attention), or patch with attention=False")
        return ("config.output_attentions=True: transformers returns attention weights by config only from "
                "attn_implementation='eager'; set it to False (and pass output_attentions=True per call) to replace it")
    if attention == "force":
        return None
    if getattr(model, "_supports_sdpa", False):
        return ("the model runs attn_implementation='eager' where sdpa is its default: the user's choice (it returns "
                "attention weights); pass attention='force' to replace it")
    report.notes.append(f"attn_implementation='eager' is the only built-in attention transformers offers "
                        f"{type(model).__name__} (no sdpa), and it records no difference between an eager asked for "
                        "and one it fell back to: replaced by the library's attention (output_attentions=True per "
                        "call still returns the real weights); pass attention=False to keep eager")
    return None


def _qualname(module: nn.Module) -> str:
    cls = type(module)
    path = cls.__module__
    if path.startswith("torch.nn."):
        path = "torch.nn"
    elif path.startswith("transformers."):
        path = "transformers"
    return f"{path}.{cls.__qualname__}"


def _patch_torch_layer(layer, name, be_ffn, ffn, report, set_attr) -> None:
    """torch.nn.Transformer{Encoder,Decoder}Layer: turn the native fast path off (it would bypass the
    swapped modules) and run the inline feed-forward through ak.ffn while its dropout is inactive."""
    set_attr(layer, "activation_relu_or_gelu", 0)
    act = {torch.nn.functional.relu: "relu", torch.nn.functional.gelu: "gelu"}.get(layer.activation)
    if act is None and isinstance(layer.activation, nn.ReLU):
        act = "relu"
    if act is None and isinstance(layer.activation, nn.GELU) and layer.activation.approximate == "none":
        act = "gelu"
    if not ffn:
        report.left_alone.append((name, type(layer).__name__ + " feed-forward", "ffn=False"))
        return
    if act is None:
        report.left_alone.append((name, type(layer).__name__ + " feed-forward",
                                  f"activation {layer.activation!r} has no kernel"))
        return
    original = layer._ff_block

    def _ff_block(self, x):
        if self.training and self.dropout.p > 0:  # ak.ffn has no inner dropout: PyTorch's code then
            return original(x)
        return ops.ffn(x, self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias,
                       activation=act, backend=be_ffn)

    set_attr(layer, "_ff_block", types.MethodType(_ff_block, layer))
    report.replaced.append((name, type(layer).__name__ + " feed-forward",
                            f"ak.ffn({act}) on {be_ffn!r} (PyTorch's while training with dropout > 0)"))


def unpatch(model: nn.Module) -> nn.Module:
    """Undo ak.patch: restore every replaced module and attribute and the attention implementation."""
    log = getattr(model, ATTR, None)
    if log is None:
        raise RuntimeError("ak.unpatch: this model was not patched by ak.patch")
    for parent, attr, old in reversed(log["modules"]):
        setattr(parent, attr, old)
    for obj, attr, old, existed in reversed(log["attrs"]):
        if existed:
            setattr(obj, attr, old)
        else:
            delattr(obj, attr)
    if log["hf_attn"] is not None:
        model.set_attn_implementation(log["hf_attn"])
    object.__delattr__(model, ATTR)
    return model
