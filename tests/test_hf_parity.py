"""Hugging Face parity: a model on attn_implementation="aigc_kernels", or after ak.patch, gives what
transformers' own attention gives ("sdpa", or "eager" where sdpa is not offered: Gemma-2's softcap,
GPT-OSS's sinks) -- outputs, gradients, generation (greedy and beam; dynamic and static caches), and
the attentions and hidden states of ``return_dict_in_generate`` -- padded left and right, on the
native backend and on the Triton backend under the interpreter.

Positions that are padding (query rows that see no real key) are not compared: what a model computes
there is discarded, and implementations differ (eager: uniform weights, ours: zeros).
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import aigc_kernels as ak

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


def test_unknown_keywords_are_refused_and_known_ones_honoured():
    from aigc_kernels.patch import hf_attention_forward

    class M(torch.nn.Module):
        is_causal = True

    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(TypeError, match=r"\['alibi_slopes'\].*cannot honour"):
        hf_attention_forward(M(), q, q, q, None, alibi_slopes=torch.ones(2))
    with pytest.raises(TypeError, match="head_mask"):
        hf_attention_forward(M(), q, q, q, None, head_mask=torch.ones(2))
    out, _ = hf_attention_forward(M(), q, q, q, None, use_cache=True, position_ids=torch.arange(5))  # ignorable
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
