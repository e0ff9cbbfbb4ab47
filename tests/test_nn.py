"""ak.nn modules against their torch.nn counterparts: same state_dict, same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aigc_kernels as ak

f64 = torch.float64


@pytest.mark.parametrize("shape", [16, (4, 6)])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_drop_in(shape, bias):
    ref = nn.LayerNorm(shape, eps=1e-6, bias=bias, dtype=f64)
    with torch.no_grad():
        ref.weight.normal_()
        if bias:
            ref.bias.normal_()
    ours = ak.nn.LayerNorm(shape, eps=1e-6, bias=bias, dtype=f64)
    ours.load_state_dict(ref.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, 5, *((shape,) if isinstance(shape, int) else shape), dtype=f64)
    torch.testing.assert_close(ours(x), ref(x))
    ref.load_state_dict(ours.state_dict())  # and back


def test_rms_norm_drop_in_and_residual():
    ref = nn.RMSNorm(32, dtype=f64)  # eps=None: finfo(dtype).eps, as ours
    with torch.no_grad():
        ref.weight.normal_()
    ours = ak.nn.RMSNorm(32, dtype=f64)
    ours.load_state_dict(ref.state_dict())
    x, r = torch.randn(4, 32, dtype=f64), torch.randn(4, 32, dtype=f64)
    torch.testing.assert_close(ours(x), ref(x))
    y, s = ours(x, residual=r)
    torch.testing.assert_close(s, x + r)
    torch.testing.assert_close(y, ref(x + r))


def test_norms_are_torch_subclasses():
    # isinstance checks in user code and in transformers' _init_weights see the torch class; repr and init are torch's
    ln, rms = ak.nn.LayerNorm(8, backend="torch"), ak.nn.RMSNorm(8, eps=1e-6)
    assert isinstance(ln, nn.LayerNorm) and isinstance(rms, nn.RMSNorm)
    assert repr(ln) == repr(nn.LayerNorm(8)) and repr(rms) == repr(nn.RMSNorm(8, eps=1e-6))
    assert ln.backend == "torch" and rms.backend is None
    assert torch.equal(ln.weight, torch.ones(8)) and torch.equal(ln.bias, torch.zeros(8))
    no_affine = ak.nn.LayerNorm((2, 4), elementwise_affine=False)
    assert no_affine.weight is None and no_affine.bias is None and no_affine.normalized_shape == (2, 4)


def test_norm_wrong_trailing_shape():
    with pytest.raises(ValueError, match=r"expected input ending in normalized_shape \(16,\), got shape \(2, 8\)"):
        ak.nn.LayerNorm(16)(torch.randn(2, 8))
    for norm in (ak.nn.LayerNorm(16, elementwise_affine=False), ak.nn.RMSNorm(16), ak.nn.RMSNorm(16, eps=1e-6)):
        with pytest.raises(ValueError, match=r"normalized_shape \(16,\), got shape \(2, 8\)"):
            norm(torch.randn(2, 8))
        with pytest.raises(ValueError, match=r"normalized_shape \(16,\), got shape \(\)"):
            norm(torch.randn(()))


def test_one_dim_norms_call_the_op_as_is(monkeypatch):
    """A 1-D normalized_shape (nearly every model) reaches the op with no flatten/reshape round trip, with
    and without the fused residual; the multi-dim shapes still take it."""
    from aigc_kernels.nn import _Norm

    real, used = _Norm._normalize, []
    monkeypatch.setattr(_Norm, "_normalize", lambda self, *a: used.append(a) or real(self, *a))
    x, r = torch.randn(3, 5, 16, dtype=f64), torch.randn(3, 5, 16, dtype=f64)
    ln, ref = ak.nn.LayerNorm(16, dtype=f64), nn.LayerNorm(16, dtype=f64)
    with torch.no_grad():
        ln.weight.normal_(), ln.bias.normal_()
    ref.load_state_dict(ln.state_dict())
    torch.testing.assert_close(ln(x), ref(x))
    y, s = ln(x, residual=r)
    torch.testing.assert_close(y, ref(x + r))
    torch.testing.assert_close(s, x + r)
    torch.testing.assert_close(ak.nn.RMSNorm(16, dtype=f64)(x), nn.RMSNorm(16, dtype=f64)(x))
    assert not used
    ak.nn.LayerNorm((5, 16), dtype=f64)(x)
    assert len(used) == 1


def mha_pair(batch_first=True, bias=True):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(32, 4, bias=bias, batch_first=batch_first, dtype=f64)
    ours = ak.nn.MultiheadAttention(32, 4, bias=bias, batch_first=batch_first, dtype=f64)
    if bias:
        with torch.no_grad():
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    return ref.eval(), ours.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_mha_self_attention_with_masks(bias):
    ref, ours = mha_pair(bias=bias)
    x = torch.randn(2, 7, 32, dtype=f64)
    kpm = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    causal = nn.Transformer.generate_square_subsequent_mask(7, dtype=f64)
    bool_causal = causal.isinf()
    for kwargs in (dict(), dict(key_padding_mask=kpm), dict(attn_mask=causal), dict(attn_mask=bool_causal),
                   dict(attn_mask=bool_causal, key_padding_mask=kpm), dict(attn_mask=causal, key_padding_mask=kpm),
                   dict(attn_mask=bool_causal, is_causal=True)):
        out, w = ours(x, x, x, need_weights=False, **kwargs)
        want, _ = ref(x, x, x, need_weights=False, **kwargs)
        assert w is None
        torch.testing.assert_close(out, want, msg=lambda m, kw=kwargs: f"{sorted(kw)}: {m}")


def test_mha_cross_attention_and_seq_first():
    ref, ours = mha_pair(batch_first=False)
    q, kv = torch.randn(5, 2, 32, dtype=f64), torch.randn(9, 2, 32, dtype=f64)
    torch.testing.assert_close(ours(q, kv, kv)[0], ref(q, kv, kv, need_weights=False)[0])
    v = torch.randn(9, 2, 32, dtype=f64)
    torch.testing.assert_close(ours(q, kv, v)[0], ref(q, kv, v, need_weights=False)[0])


def test_mha_per_head_mask_and_unsupported_options():
    ref, ours = mha_pair()
    x = torch.randn(2, 6, 32, dtype=f64)
    mask = torch.rand(2 * 4, 6, 6) > 0.5
    mask[..., 0] = False  # every query sees key 0 (torch gives NaN otherwise)
    torch.testing.assert_close(ours(x, x, x, attn_mask=mask)[0], ref(x, x, x, attn_mask=mask, need_weights=False)[0])
    with pytest.raises(ValueError, match="need_weights=True is not supported"):
        ours(x, x, x, need_weights=True)
    with pytest.raises(NotImplementedError, match="add_bias_kv"):
        ak.nn.MultiheadAttention(32, 4, add_bias_kv=True)
    with pytest.raises(ValueError, match="divisible by num_heads=5"):
        ak.nn.MultiheadAttention(32, 5)


def test_mha_gqa_extension():
    m = ak.nn.MultiheadAttention(32, 4, num_kv_heads=2)
    assert m.in_proj_weight.shape == ((4 + 2 * 2) * 8, 32)
    x = torch.randn(2, 5, 32)
    assert m(x, x, x)[0].shape == (2, 5, 32)


@pytest.mark.parametrize("act,torch_act", [("gelu", nn.GELU()), ("relu", nn.ReLU()), ("silu", nn.SiLU())])
def test_feedforward_loads_sequential_layout(act, torch_act):
    seq = nn.Sequential(nn.Linear(16, 40), torch_act, nn.Linear(40, 16)).double()
    ff = ak.nn.FeedForward(16, 40, act, dtype=f64)
    ff.load_state_dict(seq.state_dict())
    x = torch.randn(3, 4, 16, dtype=f64)
    torch.testing.assert_close(ff(x), seq(x))
    assert set(ff.state_dict()) == {"up_proj.weight", "up_proj.bias", "down_proj.weight", "down_proj.bias"}


def test_feedforward_llama_layout():
    ff = ak.nn.FeedForward(16, 24, "silu", gated=True, bias=False, dtype=f64)
    assert set(ff.state_dict()) == {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}
    x = torch.randn(2, 16, dtype=f64)
    want = ff.down_proj(nn.functional.silu(ff.gate_proj(x)) * ff.up_proj(x))
    torch.testing.assert_close(ff(x), want)


def test_module_backend_attribute_reaches_the_op():
    m = nn.Sequential(ak.nn.LayerNorm(8), ak.nn.RMSNorm(8))
    ak.nn.set_backend(m, "cuda")
    assert all(mod.backend == "cuda" for mod in m)
    with pytest.raises(ak.BackendError):
        m(torch.randn(2, 8))
    ak.nn.set_backend(m, None)
    m(torch.randn(2, 8))
