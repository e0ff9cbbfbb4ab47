"""Hugging Face parity: a model on attn_implementation="aigc_kernels", or after ak.patch, gives what
transformers' own attention gives ("sdpa", or "eager" where sdpa is not offered: Gemma-2's softcap,
GPT-OSS's sinks) -- outputs, gradients, generation (greedy and beam; dynamic and static caches), and
the attentions and hidden states of ``return_dict_in_generate`` -- padded left and right, on the
native backend and on the Triton backend under the interpreter.

Positions that are padding (query rows that see no real key) are not compared: what a model computes
there is discarded, and implementations differ (eager: uniform weights, ours: zeros).

Keywords (aigc_kernels.contracts.tables.HF_ATTENTION_KEYWORDS): the honoured ones (softcap, s_aux,
position_bias, sliding_window, output_attentions, packed cu_seq_lens_*, dropout, scaling, is_causal,
deterministic) give transformers' answers here; the refused ones (head_mask, ALiBi, paged-cache and
sparse-attention keywords) raise by name; the ignored ones (position_ids, cache_position, flash-wrapper
internals, the cache object) pass with a recorded reason; a keyword no attention implementation reads
(shift_labels, a made-up one) passes, as in sdpa. A scan of the installed transformers fails the suite on
an attention keyword the table does not classify.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels.patch import HF_MODEL_TYPES

transformers = pytest.importorskip("transformers")
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*generation flags.*")

V = 97
INTERP = os.environ.get("TRITON_INTERPRET") == "1"
BACKENDS = ["torch"] + (["triton"] if "triton" in ak.available_backends() else [])


def tiny(name: str, dtype=torch.float32):
    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    if name == "gpt2":
        m = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4,
                                                                 n_positions=64, bos_token_id=1, eos_token_id=2))
    elif name == "bert":
        m = transformers.BertModel(transformers.BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2,
                                                           num_attention_heads=4, intermediate_size=128,
                                                           max_position_embeddings=64), add_pooling_layer=False)
    elif name == "llama":
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    elif name == "mistral":
        m = transformers.MistralForCausalLM(transformers.MistralConfig(sliding_window=4, **common))
    elif name == "gemma2":
        m = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
            head_dim=16, sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
            query_pre_attn_scalar=16, **common))
    elif name == "gpt_oss":
        cfg = dict(common, intermediate_size=64)
        m = transformers.GptOssForCausalLM(transformers.GptOssConfig(head_dim=16, sliding_window=4, num_local_experts=4,
                                                                     num_experts_per_tok=2, **cfg))
        with torch.no_grad():
            for mod in m.modules():
                if hasattr(mod, "sinks"):
                    mod.sinks.normal_()
    else:
        raise ValueError(name)
    return m.to(dtype).eval()


def reference_impl(name: str) -> str:
    return "eager" if name in ("gemma2", "gpt_oss") else "sdpa"


def inputs(side: str, batch=2, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if side == "left":
        mask[0, :3] = 0
    elif side == "right":
        mask[0, -3:] = 0
    return ids, mask


def tol(dtype):
    return dict(atol=2e-4, rtol=2e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


def run_ours(model, name, way, backend, fn):
    """fn(model) on the library's attention: registered (attn_implementation) or after ak.patch."""
    ak.register_hf()
    if way == "registered":
        model.set_attn_implementation("aigc_kernels")
        try:
            with ak.use_backend(backend):
                return fn(model)
        finally:
            model.set_attn_implementation(reference_impl(name))
    report = ak.patch(model, backend=backend)
    try:
        return fn(model)
    finally:
        ak.unpatch(model)
        assert report.replaced


def kernel_run(backend):
    """Triton under the interpreter is slow: a subset of the cases."""
    return backend == "triton"


DECODERS = ["gpt2", "llama", "mistral", "gemma2", "gpt_oss"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("way", ["registered", "patched"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "mistral", "gemma2", "gpt_oss"])
def test_outputs_and_gradients(name, side, way, backend):
    if kernel_run(backend) and side == "right" and way == "registered":
        pytest.skip("kept short under the interpreter")
    model = tiny(name)
    model.set_attn_implementation(reference_impl(name))
    ids, mask = inputs(side)
    keep = mask.bool()

    def step(m):
        m.zero_grad(set_to_none=True)
        out = m(input_ids=ids, attention_mask=mask)
        logits = out.logits if hasattr(out, "logits") else out.last_hidden_state
        (logits[keep].float() ** 2).mean().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        return logits.detach(), grads

    ref_out, ref_grads = step(model)
    out, grads = run_ours(model, name, way, backend, step)
    torch.testing.assert_close(out[keep], ref_out[keep], **tol(torch.float32))
    assert set(grads) == set(ref_grads)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=5e-4, rtol=5e-3, msg=lambda m, n=n: f"grad {n}: {m}")


def generate(model, ids, mask, **kw):
    torch.manual_seed(0)
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                          return_dict_in_generate=True, output_scores=True, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("beams", [1, 2])
@pytest.mark.parametrize("name", DECODERS)
def test_generate_matches(name, beams, cache, backend):
    if kernel_run(backend) and (beams > 1 or name in ("mistral",)):
        pytest.skip("kept short under the interpreter")
    model = tiny(name)
    model.set_attn_implementation(reference_impl(name))
    ids, mask = inputs("left")
    kw = dict(num_beams=beams)
    if cache == "static":
        kw["cache_implementation"] = "static"
    ref = generate(model, ids, mask, **kw)
    for way in ("registered", "patched"):
        got = run_ours(model, name, way, backend, lambda m: generate(m, ids, mask, **kw))
        assert torch.equal(got.sequences, ref.sequences), (way, got.sequences, ref.sequences)
        for a, b in zip(got.scores, ref.scores, strict=True):
            finite = torch.isfinite(b)
            assert torch.equal(torch.isfinite(a), finite)
            torch.testing.assert_close(a[finite], b[finite], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("name", DECODERS)
def test_generate_returns_attentions_and_hidden_states(name, cache):
    """output_attentions: the real probabilities (eager's), where "sdpa" returns none."""
    model = tiny(name)
    model.set_attn_implementation("eager")
    ids, mask = inputs("left")
    kw = dict(output_attentions=True, output_hidden_states=True)
    if cache == "static":
        kw["cache_implementation"] = "static"
    ref = generate(model, ids, mask, **kw)
    ak.register_hf()
    for way in ("registered", "patched"):
        if way == "patched":
            report = ak.patch(model, attention="force")  # the model runs eager: replacing it must be asked for
            try:
                got = generate(model, ids, mask, **kw)
            finally:
                ak.unpatch(model)
            assert any("attention function" in old for _, old, _ in report.replaced)
        else:
            model.set_attn_implementation("aigc_kernels")
            try:
                got = generate(model, ids, mask, **kw)
            finally:
                model.set_attn_implementation("eager")
        assert torch.equal(got.sequences, ref.sequences)
        assert len(got.attentions) == len(ref.attentions) > 0
        real = mask.bool()  # the prompt's real (non-pad) positions
        for step, (layers_got, layers_ref) in enumerate(zip(got.attentions, ref.attentions, strict=True)):
            for a, b in zip(layers_got, layers_ref, strict=True):
                assert a is not None and a.shape == b.shape
                if step == 0:  # the prefill: query rows of real tokens only
                    a, b = a.transpose(1, 2)[real], b.transpose(1, 2)[real]
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        for step, (layers_got, layers_ref) in enumerate(zip(got.hidden_states, ref.hidden_states, strict=True)):
            for a, b in zip(layers_got, layers_ref, strict=True):
                if step == 0:
                    a, b = a[real], b[real]
                torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)


def test_static_cache_prefill_attends_like_sdpa():
    """Prefill into an empty StaticCache reaches the attention function with no mask and Lk > Lq:
    sdpa's top-left causal, which the library (bottom-right) must reproduce."""
    model = tiny("llama")
    model.set_attn_implementation("sdpa")
    ids = torch.randint(3, V, (1, 7), generator=torch.Generator().manual_seed(5))
    cache = transformers.StaticCache(config=model.config, max_cache_len=11)
    ref = model(ids, cache=cache, use_cache=True).logits
    ak.register_hf()
    model.set_attn_implementation("aigc_kernels")
    cache = transformers.StaticCache(config=model.config, max_cache_len=11)
    got = model(ids, cache=cache, use_cache=True).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_patch_respects_a_users_eager_choice():
    model = tiny("llama")
    model.set_attn_implementation("eager")
    report = ak.patch(model)
    try:
        assert model.config._attn_implementation == "eager"
        assert any("attn_implementation='eager'" in why for _, _, why in report.left_alone)
        ids, mask = inputs("none")
        assert model(ids, attention_mask=mask, output_attentions=True).attentions[0] is not None
    finally:
        ak.unpatch(model)
    report = ak.patch(model, attention="force")
    try:
        assert model.config._attn_implementation == "aigc_kernels"
    finally:
        ak.unpatch(model)
    assert model.config._attn_implementation == "eager"


def test_gpt2_patched_returns_attentions():
    model = tiny("gpt2")
    ids, mask = inputs("none")
    ak.patch(model)
    try:
        out = model(ids, attention_mask=mask, output_attentions=True)
    finally:
        ak.unpatch(model)
    model.set_attn_implementation("eager")
    ref = model(ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == len(ref.attentions) == 2
    for a, b in zip(out.attentions, ref.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_attention_keywords_are_refused_by_name_and_known_ones_honoured():
    from aigc_kernels.patch import hf_attention_forward

    class M(torch.nn.Module):
        is_causal = True

    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(TypeError, match=r"\['alibi_slopes'\].*cannot honour"):
        hf_attention_forward(M(), q, q, q, None, alibi_slopes=torch.ones(2))
    with pytest.raises(TypeError, match="head_mask"):
        hf_attention_forward(M(), q, q, q, None, head_mask=torch.ones(2))
    with pytest.raises(TypeError, match=r"\['cache_seqlens', 'indices'\]"):  # every refused one named
        hf_attention_forward(M(), q, q, q, None, cache_seqlens=torch.ones(1), indices=q, shift_labels=q)
    with pytest.raises(TypeError, match=r"paged KV cache needs .* missing \['v_cache', 'cu_seq_lens_k'\]"):
        hf_attention_forward(M(), q, q, q, None, k_cache=q, block_table=torch.zeros(1, 1), shift_labels=q)
    out, _ = hf_attention_forward(M(), q, q, q, None)
    passing = (dict(use_cache=True, position_ids=torch.arange(5)),  # ignorable
               dict(head_mask=None, block_table=None),  # refused ones, unset
               dict(shift_labels=torch.arange(5), a_keyword_no_attention_reads=torch.ones(3)),  # read by no attention
               dict(deterministic=True))  # honoured (always reproducible)
    for kw in passing:
        got, _ = hf_attention_forward(M(), q, q, q, None, **kw)
        torch.testing.assert_close(got, out, atol=0, rtol=0)
    bias = torch.randn(1, 2, 5, 5)
    got, _ = hf_attention_forward(M(), q, q, q, None, position_bias=bias)
    ref = ak.reference.attention(q, q, q, causal=True, attn_mask=bias)
    torch.testing.assert_close(got.transpose(1, 2), ref, atol=1e-5, rtol=1e-5)
    got, _ = hf_attention_forward(M(), q, q, q, None, softcap=1.5, s_aux=torch.randn(2))
    assert torch.isfinite(got).all()


@pytest.mark.skipif(not INTERP or "triton" not in ak.available_backends(), reason="the Triton interpreter")
def test_bf16_on_the_interpreter_is_refused_not_garbage():
    q = torch.randn(1, 2, 8, 16, dtype=torch.bfloat16)
    with pytest.raises(ak.BackendError, match="interpreter.*bfloat16"):
        ak.attention(q, q, q, backend="triton")
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    with pytest.raises(ak.BackendError, match="interpreter.*bfloat16"):
        ak.linear(x, torch.randn(8, 16, dtype=torch.bfloat16), backend="triton")


@pytest.mark.skipif("triton" not in BACKENDS, reason="the Triton backend")
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_fp16_on_the_triton_backend(name):
    """fp16 through the Triton kernels (the interpreter runs fp16 tl.dot): within half precision of the
    same model in float32 on transformers' own attention."""
    model = tiny(name)
    ids, mask = inputs("left")
    keep = mask.bool()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        model.half()
        ref16 = model(input_ids=ids, attention_mask=mask).logits.float()
        got = run_ours(model, name, "registered", "triton", lambda m: m(input_ids=ids, attention_mask=mask).logits)
    bound = 2 * (ref16 - ref)[keep].abs().max() + 2e-2
    assert (got.float() - ref)[keep].abs().max() <= bound


@pytest.mark.parametrize("name", ["llama", "mistral"])
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_chunked_prefill_into_a_partly_filled_cache(name, cache_kind):
    """Prompt in chunks of 5, 4 and then 1 token, left padded: every chunk after the first attends over a
    partly filled cache (Lq < Lk; with a static cache, Lk is the cache's length). Logits of every chunk
    equal transformers' own attention."""
    model = tiny(name)
    ids, mask = inputs("left", length=10)
    chunks = [(0, 5), (5, 9), (9, 10)]

    def run(impl):
        model.set_attn_implementation(impl)
        cache = (transformers.DynamicCache(config=model.config) if cache_kind == "dynamic"
                 else transformers.StaticCache(config=model.config, max_cache_len=16))
        logits = []
        with torch.no_grad():
            for a, b in chunks:
                out = model(ids[:, a:b], attention_mask=mask[:, :b], cache=cache, use_cache=True,
                            cache_position=torch.arange(a, b))
                logits.append(out.logits)
        assert cache.get_seq_length() == 10
        return logits

    ref = run(reference_impl(name))
    ak.register_hf()
    try:
        got = run("aigc_kernels")
    finally:
        model.set_attn_implementation(reference_impl(name))
    for (a, b), x, y in zip(chunks, got, ref, strict=True):
        real = mask[:, a:b].bool()
        torch.testing.assert_close(x[real], y[real], atol=1e-5, rtol=1e-5, msg=lambda m, a=a: f"chunk at {a}: {m}")


# ----------------------------------------------------------------------------------------------
# Keywords: refused only when they change attention (tables.HF_ATTENTION_KEYWORDS); the rest pass as in sdpa
# ----------------------------------------------------------------------------------------------
def _with_labels(name: str):
    """A model of type ``name`` with a loss head: causal LMs as tiny() builds them, BERT as a masked LM."""
    if name != "bert":
        return tiny(name)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    return transformers.BertForMaskedLM(cfg).eval()


@pytest.mark.parametrize("way", ["registered", "patched"])
@pytest.mark.parametrize("name", sorted(HF_MODEL_TYPES))
def test_loss_and_unrelated_keywords_pass_as_in_sdpa(name, way):
    """transformers hands a model's extra keywords to every attention call: shift_labels (a loss argument, as
    sequence-parallel training passes it) and a keyword no attention reads must pass, as sdpa lets them pass, and
    the loss must equal transformers' own attention's."""
    model = _with_labels(name)
    model.set_attn_implementation(reference_impl(name))
    ids, mask = inputs("right")  # right padding: no loss term reads a padding row (where implementations differ)
    labels = ids.masked_fill(mask == 0, -100)
    other = torch.randint(3, V, ids.shape, generator=torch.Generator().manual_seed(7)).masked_fill(mask == 0, -100)
    shift = torch.cat([other[:, 1:], torch.full_like(other[:, :1], -100)], dim=1)  # not labels' own shift
    extra = dict(a_keyword_no_attention_reads=torch.ones(2))

    def losses(m):
        with torch.no_grad():
            plain = m(input_ids=ids, attention_mask=mask, labels=labels).loss
            shifted = m(input_ids=ids, attention_mask=mask, labels=labels, shift_labels=shift, **extra).loss
            return plain, shifted

    ref_plain, ref_shifted = losses(model)
    if name != "bert":  # a causal LM's loss reads shift_labels instead of shifting labels (a masked LM's does not)
        assert not torch.allclose(ref_shifted, ref_plain)
    got_plain, got_shifted = run_ours(model, name, way, "torch", losses)
    torch.testing.assert_close(got_plain, ref_plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_shifted, ref_shifted, atol=1e-5, rtol=1e-5)


def _attention_code(source: str):
    """The AST nodes of the top-level definitions of ``source`` that mention attention functions. Only those are
    parsed (a whole modeling file takes ~35 ms, ~400 of them 15 s); the whole file when a piece does not parse."""
    import ast
    import re

    pieces, decorators = [], ""
    for piece in re.split(r"(?m)^(?=[^\s#)\]}])", source):
        if piece.startswith("@"):  # a decorator belongs to the definition after it
            decorators += piece
            continue
        pieces.append(decorators + piece)
        decorators = ""
    try:
        trees = [ast.parse(p) for p in pieces if "attention_forward" in p or "attention_interface" in p
                 or "_flash_attention" in p]
    except SyntaxError:  # a piece cut inside a multi-line string: the whole file
        trees = [ast.parse(source)]
    for tree in trees:
        yield from ast.walk(tree)


def _scan_transformers() -> dict[str, set[str]]:
    """Every keyword the installed transformers' attention code reads, with where: the named parameters and
    **kwargs reads of every attention function (integrations: sdpa, flash, flex, paged, MSA; every model's
    eager_attention_forward and other ``*attention_forward(module, ...)``), of the flash helpers a model's keywords
    are forwarded to, and the keywords models pass to ``attention_interface(...)``."""
    import ast
    from pathlib import Path

    from aigc_kernels.patch import _HF_FLASH_HELPERS, keywords_read

    root = Path(transformers.__file__).parent
    files = sorted(root.glob("integrations/*.py")) + sorted(root.glob("models/*/modeling_*.py"))
    files.append(root / "modeling_flash_attention_utils.py")
    found: dict[str, set[str]] = {}
    for path in files:
        for node in _attention_code(path.read_text()):
            names: set[str] = set()
            if isinstance(node, ast.FunctionDef) and (
                    node.name in _HF_FLASH_HELPERS or (node.name.endswith("attention_forward") and node.args.args
                                                       and node.args.args[0].arg == "module")):
                names = keywords_read(node)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id == "attention_interface"):
                names = {k.arg for k in node.keywords if k.arg} - {"attention_mask", "query", "key", "value"}
            for n in names:
                found.setdefault(n, set()).add(str(path.relative_to(root)))
    return found


def test_every_attention_keyword_of_transformers_is_honoured_refused_or_ignored():
    """Fails when transformers' attention code reads a keyword the library's table does not classify: a new
    attention argument must be honoured or refused (or shown not to change the result), never passed unread."""
    from aigc_kernels.contracts.tables import HF_ATTENTION_KEYWORDS, HF_KEYWORD_VERDICTS

    assert {v for v, _ in HF_ATTENTION_KEYWORDS.values()} <= set(HF_KEYWORD_VERDICTS)
    found = _scan_transformers()
    # the scan sees what it must: sdpa's, flash's and the models' keywords
    assert {"scaling", "dropout", "softcap", "s_aux", "sliding_window", "position_bias", "cu_seq_lens_q",
            "block_table", "output_attentions"} <= set(found), sorted(found)
    missing = {n: sorted(w)[:3] for n, w in found.items() if n not in HF_ATTENTION_KEYWORDS}
    assert not missing, (f"transformers {transformers.__version__}: attention keywords not in "
                         f"HF_ATTENTION_KEYWORDS: {missing}")


def test_the_scan_sees_a_new_keyword():
    """The classification test can fail: a parameter and every form of **kwargs read are found."""
    import ast

    from aigc_kernels.contracts.tables import HF_ATTENTION_KEYWORDS
    from aigc_kernels.patch import keywords_read

    src = '''
def eager_attention_forward(module, query, key, value, attention_mask, scaling, new_param=None, *, new_kwonly=1,
                            **kw):
    a = kw.get("new_get"); b = kw.pop("new_pop", None); c = kw["new_item"]
    if "new_in" in kw: pass
    other = {}.get("not_a_keyword")
'''
    fn_def = ast.parse(src).body[0]
    got = keywords_read(fn_def)
    assert got == {"scaling", "new_param", "new_kwonly", "new_get", "new_pop", "new_item", "new_in"}
    assert got - set(HF_ATTENTION_KEYWORDS) == got - {"scaling"}


def test_an_unlisted_keyword_that_transformers_attention_reads_is_refused_at_run_time(monkeypatch, caplog, tmp_path):
    """A newer transformers' attention keyword that the table does not list yet is refused, not ignored: the
    function reads what the attention functions of the module's own modeling file read."""
    import importlib.util
    import logging
    import sys

    P = importlib.import_module("aigc_kernels.patch")  # (ak.patch, the function, shadows the module's name)

    source = tmp_path / "modeling_fake.py"  # a modeling file of a newer transformers, with its source on disk
    source.write_text("def eager_attention_forward(module, query, key, value, attention_mask, scaling, brand_new=None,"
                      " **kw):\n    return kw.get('also_new')\n")
    spec = importlib.util.spec_from_file_location("transformers.models.fake.modeling_fake", source)
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    M = type("FakeAttention", (torch.nn.Module,), {"is_causal": True, "__module__": fake.__name__})
    q = torch.randn(1, 2, 5, 8)
    for kw in ("brand_new", "also_new"):
        with pytest.raises(TypeError, match=rf"\['{kw}'\].*cannot honour"):
            P.hf_attention_forward(M(), q, q, q, None, **{kw: torch.ones(1)})
    P._hf_passed_logged.discard("unread_by_anyone")
    with caplog.at_level(logging.DEBUG, logger="aigc_kernels.patch"):
        for _ in range(3):
            P.hf_attention_forward(M(), q, q, q, None, unread_by_anyone=torch.ones(1))
    said = [r for r in caplog.records if "unread_by_anyone" in r.getMessage()]
    assert len(said) == 1 and "passes" in said[0].getMessage()  # once, at DEBUG


def _gemma2(**kw):
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                    head_dim=16, sliding_window=4, attn_logit_softcapping=2.0,
                                    query_pre_attn_scalar=16)
    return transformers.Gemma2ForCausalLM._from_config(cfg, **kw).eval()


def test_patch_keeps_an_explicit_eager_that_returns_attentions_by_config():
    """transformers' test_attention_outputs on Gemma-2 (no sdpa): built with attn_implementation="eager" and
    config.output_attentions = True, which transformers serves only from eager. ak.patch keeps eager (reported);
    attention="force" cannot replace it and says why."""
    model = _gemma2(attn_implementation="eager")
    model.config.output_attentions = True
    ids, mask = inputs("none")
    ref = model(ids, attention_mask=mask)
    report = ak.patch(model)
    try:
        assert model.config._attn_implementation == "eager"
        assert any(kind == "attention" and "output_attentions" in why for _, kind, why in report.left_alone), report
        out = model(ids, attention_mask=mask)
        assert len(out.attentions) == 2
        for a, b in zip(out.attentions, ref.attentions, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    finally:
        ak.unpatch(model)
    with pytest.raises(ValueError, match="output_attentions"):
        ak.patch(model, attention="force")
    assert not hasattr(model, "_aigc_kernels_patch") and model.config._attn_implementation == "eager"


def test_patch_replaces_eager_where_it_is_all_the_model_has():
    """Gemma-2's default attention is eager (it offers no sdpa): patched, and the report says how to keep eager."""
    model = _gemma2()
    assert model.config._attn_implementation == "eager" and not model._supports_sdpa
    ids, mask = inputs("left")
    keep = mask.bool()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
    report = ak.patch(model)
    try:
        assert model.config._attn_implementation == "aigc_kernels"
        assert any("attention=False to keep eager" in n for n in report.notes), report
        with torch.no_grad():
            got = model(ids, attention_mask=mask, output_attentions=True)
        torch.testing.assert_close(got.logits[keep], ref[keep], atol=2e-4, rtol=2e-4)
        assert got.attentions[0] is not None  # per call: the real weights on the library's attention
    finally:
        ak.unpatch(model)
    report = ak.patch(model, attention=False)
    try:
        assert model.config._attn_implementation == "eager"
    finally:
        ak.unpatch(model)


# ----------------------------------------------------------------------------------------------
# the rotary embedding of Llama-family models on ak.rotary
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["llama", "mistral", "gemma2", "gpt_oss"])
def test_patch_routes_the_rotary_embedding_to_ak_rotary(name, backend, monkeypatch):
    """Each attention module's apply_rotary_pos_emb runs ak.rotary (per instance: another model of the same
    class is untouched), outputs and gradients equal transformers' own, and ak.unpatch restores the forward."""
    model, other = tiny(name), tiny(name)
    model.set_attn_implementation(reference_impl(name))
    other.set_attn_implementation(reference_impl(name))
    ids, mask = inputs("right")
    keep = mask.bool()

    def step(m):
        m.zero_grad(set_to_none=True)
        logits = m(input_ids=ids, attention_mask=mask).logits
        (logits[keep] ** 2).mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    ref_out, ref_grads = step(model)
    calls = []
    real = ak.ops.rotary
    monkeypatch.setattr(ak.ops, "rotary", lambda *a, **k: calls.append(k.get("backend")) or real(*a, **k))
    report = ak.patch(model, backend=backend)
    try:
        rotary = [r for r in report.replaced if "rotary" in r[1]]
        assert len(rotary) == 2 and all(f"ak.rotary on '{backend}'" == r[2] for r in rotary), report
        calls.clear()  # (patch checked the convention once, on the "torch" backend)
        out, grads = step(model)
        assert calls and set(calls) == {backend} and len(calls) == 2 * 2  # q and k, 2 layers
        calls.clear()
        step(other)
        assert not calls  # the same class in another model: transformers' own function
    finally:
        ak.unpatch(model)
    assert all("forward" not in vars(m) for m in model.modules())
    torch.testing.assert_close(out[keep], ref_out[keep], atol=2e-4, rtol=2e-4)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=5e-4, rtol=5e-3, msg=lambda m, n=n: f"grad {n}: {m}")


def test_a_rotary_convention_the_library_does_not_implement_is_left_alone(monkeypatch):
    """The convention is checked at patch time against the model's own function: declared wrong, it is refused."""
    import importlib

    P = importlib.import_module("aigc_kernels.patch")
    monkeypatch.setitem(P.HF_MODEL_TYPES, "llama", P.HFModelType("hidden_act", rotary="half"))
    model = tiny("llama")
    report = ak.patch(model, backend="torch")
    try:
        assert not [r for r in report.replaced if "rotary" in r[1]]
        why = [w for _, kind, w in report.left_alone if "rotary" in kind]
        assert len(why) == 2 and "not the half GPT-NeoX rotation" in why[0], report
    finally:
        ak.unpatch(model)


def test_compile_of_a_patched_llama_has_no_graph_breaks():
    model = tiny("llama")
    ak.patch(model, backend="torch")
    try:
        ids = torch.randint(3, V, (2, 7), generator=torch.Generator().manual_seed(0))
        explanation = torch._dynamo.explain(lambda i: model(i).logits)(ids)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    finally:
        ak.unpatch(model)
