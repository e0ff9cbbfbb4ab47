"""The reference ops, in float64, against torch's own functions and against themselves."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aigc_kernels import reference as R

f64 = torch.float64


def rnd(gen, *shape, dtype=f64):
    return torch.randn(*shape, generator=gen, dtype=f64).to(dtype)


def explicit_band(lq, lk, causal, window):
    """Loop-built mask of bottom-right causal + window: the semantics spelled out."""
    left, right = window if window is not None else (-1, -1)
    keep = torch.zeros(lq, lk, dtype=torch.bool)
    for i in range(lq):
        d = i + lk - lq
        for j in range(lk):
            ok = True
            if causal and j > d:
                ok = False
            if right >= 0 and j > d + right:
                ok = False
            if left >= 0 and j < d - left:
                ok = False
            keep[i, j] = ok
    return keep


# ----------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq,lk", [(17, 17), (1, 9), (33, 20)])
def test_attention_matches_sdpa(gen, causal, lq, lk):
    q, k, v = rnd(gen, 2, 3, lq, 24), rnd(gen, 2, 3, lk, 24), rnd(gen, 2, 3, lk, 24)
    out = R.attention(q, k, v, causal=causal)
    if causal and lq != lk:
        # SDPA's is_causal is top-left aligned; ours is bottom-right: pass the mask explicitly.
        mask = explicit_band(lq, lk, True, None)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        empty = ~mask.any(-1)
        ref[..., empty, :] = 0.0
    else:
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_attention_masks_scale_and_gqa_match_sdpa(gen):
    q, k, v = rnd(gen, 2, 8, 13, 16), rnd(gen, 2, 2, 19, 16), rnd(gen, 2, 2, 19, 16)
    bool_mask = torch.rand(2, 1, 13, 19, generator=gen) > 0.2
    bool_mask[..., 0] = True  # every row sees a key, so SDPA's result has no NaN
    float_mask = rnd(gen, 13, 19)
    k_rep, v_rep = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)
    for mask in (bool_mask, float_mask):
        out = R.attention(q, k, v, attn_mask=mask, scale=0.37)
        ref = F.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=mask, scale=0.37)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [(4, 0), (3, 2), (-1, 1), (0, -1), (0, 0)])
@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_and_bottom_right_causal(gen, window, causal):
    lq, lk = 11, 16
    q, k, v = rnd(gen, 1, 2, lq, 8), rnd(gen, 1, 2, lk, 8), rnd(gen, 1, 2, lk, 8)
    mask = explicit_band(lq, lk, causal, window)
    out = R.attention(q, k, v, causal=causal, window_size=window)
    ref = R.attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert torch.equal(R.attention_mask(lq, lk, causal=causal, window_size=window), mask)


def test_rows_that_see_no_key_are_zero(gen):
    q, k, v = rnd(gen, 1, 2, 6, 8), rnd(gen, 1, 2, 4, 8), rnd(gen, 1, 2, 4, 8)
    # Lq > Lk with bottom-right causal: the first Lq - Lk queries see nothing.
    out, lse = R.attention(q, k, v, causal=True, return_lse=True)
    assert torch.equal(out[:, :, :2], torch.zeros_like(out[:, :, :2]))
    assert torch.isinf(lse[:, :, :2]).all() and torch.isfinite(lse[:, :, 2:]).all()
    # An all-False bool row and an all -inf float row.
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[3] = False
    additive = torch.zeros(6, 4, dtype=f64)
    additive[4] = -math.inf
    for m in (mask, additive):
        o = R.attention(q, k, v, attn_mask=m)
        row = 3 if m.dtype == torch.bool else 4
        assert torch.equal(o[:, :, row], torch.zeros_like(o[:, :, row]))
        assert torch.isfinite(o).all()
    # Gradients through fully-masked rows are zero, not NaN.
    qg = q.clone().requires_grad_()
    R.attention(qg, k, v, attn_mask=mask).sum().backward()
    assert torch.isfinite(qg.grad).all() and torch.equal(qg.grad[:, :, 3], torch.zeros_like(qg.grad[:, :, 3]))


def test_nan_propagates(gen):
    q, k, v = rnd(gen, 1, 1, 4, 8), rnd(gen, 1, 1, 5, 8), rnd(gen, 1, 1, 5, 8)
    q[0, 0, 1, 3] = float("nan")
    out = R.attention(q, k, v)
    assert torch.isnan(out[0, 0, 1]).all()
    assert torch.isfinite(out[0, 0, [0, 2, 3]]).all()


def test_lse_matches_logsumexp(gen):
    q, k, v = rnd(gen, 2, 2, 7, 8), rnd(gen, 2, 2, 9, 8), rnd(gen, 2, 2, 9, 8)
    _, lse = R.attention(q, k, v, scale=0.5, return_lse=True)
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 0.5, dim=-1))


def test_dropout_explicit_mask_and_seeded(gen):
    q, k, v = rnd(gen, 1, 2, 5, 8), rnd(gen, 1, 2, 7, 8), rnd(gen, 1, 2, 7, 8)
    keep = torch.rand(1, 2, 5, 7, generator=gen) > 0.25
    out = R.attention(q, k, v, dropout_p=0.25, dropout_mask=keep)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(out, (probs * keep / 0.75) @ v)
    torch.manual_seed(7)
    a = R.attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(7)
    b = R.attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.allclose(a, R.attention(q, k, v))


def test_attention_gradcheck(gen):
    q, k, v = (rnd(gen, 1, 2, 4, 3).requires_grad_() for _ in range(3))
    mask = torch.tensor([[True, False, True, True]] * 3 + [[False] * 4])
    assert torch.autograd.gradcheck(lambda q, k, v: R.attention(q, k, v, attn_mask=mask, causal=True), (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, (3, 1)])
def test_varlen_equals_per_sequence(gen, causal, window):
    lens_q, lens_k = [5, 0, 9, 1], [7, 3, 9, 4]
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = rnd(gen, int(cu_q[-1]), 4, 8), rnd(gen, int(cu_k[-1]), 2, 8), rnd(gen, int(cu_k[-1]), 2, 8)
    out = R.attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal, window_size=window)
    for b in range(len(lens_q)):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        ref = R.attention(q[qs].transpose(0, 1)[None], k[ks].transpose(0, 1)[None], v[ks].transpose(0, 1)[None],
                          causal=causal, window_size=window)
        torch.testing.assert_close(out[qs], ref[0].transpose(0, 1), rtol=1e-12, atol=1e-12)


def test_kvcache_equals_full_causal(gen):
    b, hq, hkv, d, lmax = 3, 4, 2, 8, 24
    total = [9, 15, 4]  # sequence lengths after this step
    lq = 3
    k_full, v_full = rnd(gen, b, hkv, lmax, d), rnd(gen, b, hkv, lmax, d)
    q = rnd(gen, b, hq, lq, d)
    k_cache, v_cache = torch.full_like(k_full, 1e9), torch.full_like(v_full, 1e9)  # garbage past the valid rows
    seqlens = torch.tensor([t - lq for t in total], dtype=torch.int32)
    k_new, v_new = torch.empty(b, hkv, lq, d, dtype=f64), torch.empty(b, hkv, lq, d, dtype=f64)
    for i, t in enumerate(total):
        k_cache[i, :, : t - lq], v_cache[i, :, : t - lq] = k_full[i, :, : t - lq], v_full[i, :, : t - lq]
        k_new[i], v_new[i] = k_full[i, :, t - lq : t], v_full[i, :, t - lq : t]
    out = R.attention_with_kvcache(q, k_cache, v_cache, seqlens, k_new=k_new, v_new=v_new, causal=True)
    for i, t in enumerate(total):
        ref = R.attention(q[i : i + 1], k_full[i : i + 1, :, :t], v_full[i : i + 1, :, :t], causal=True)
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-12, atol=1e-12)
        # the new rows were written in place; rows past them are untouched
        assert torch.equal(k_cache[i, :, :t], k_full[i, :, :t])
        assert (k_cache[i, :, t:] == 1e9).all()
    assert seqlens.tolist() == [t - lq for t in total]


def test_kvcache_not_causal_sees_whole_cache(gen):
    q, kc, vc = rnd(gen, 2, 2, 2, 8), rnd(gen, 2, 2, 10, 8), rnd(gen, 2, 2, 10, 8)
    out = R.attention_with_kvcache(q, kc, vc, torch.tensor([4, 10], dtype=torch.int32), causal=False)
    torch.testing.assert_close(out[0:1], R.attention(q[0:1], kc[0:1, :, :4], vc[0:1, :, :4]))
    torch.testing.assert_close(out[1:2], R.attention(q[1:2], kc[1:2], vc[1:2]))


# ----------------------------------------------------------------------------------------------
# norms
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 1023])
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_matches_torch(gen, n, affine):
    x = rnd(gen, 3, 5, n) * 3 + 1
    w, b = (rnd(gen, n), rnd(gen, n)) if affine else (None, None)
    torch.testing.assert_close(R.layer_norm(x, w, b, 1e-5), F.layer_norm(x, (n,), w, b, 1e-5))
    torch.testing.assert_close(R.rms_norm(x, w, 1e-6), F.rms_norm(x, (n,), w, 1e-6))


def test_norm_residual(gen):
    x, r, w, b = rnd(gen, 4, 33), rnd(gen, 4, 33), rnd(gen, 33), rnd(gen, 33)
    y, s = R.layer_norm(x, w, b, residual=r)
    torch.testing.assert_close(s, x + r)
    torch.testing.assert_close(y, F.layer_norm(x + r, (33,), w, b))
    y, s = R.rms_norm(x, w, residual=r)
    torch.testing.assert_close(y, F.rms_norm(x + r, (33,), w, 1e-6))


def test_norm_low_precision_keeps_float32_statistics(gen):
    x = rnd(gen, 8, 512, dtype=torch.float16) * 4 + 20  # a large mean: fp16 statistics would lose it
    w = rnd(gen, 512, dtype=torch.float32)  # fp32 params with fp16 activations
    y = R.layer_norm(x, w, None)
    assert y.dtype == torch.float16
    ref = F.layer_norm(x.double(), (512,), w.double())
    assert (y.double() - ref).abs().max() < 2e-2
    y, s = R.rms_norm(x, w, residual=x)
    assert y.dtype == s.dtype == torch.float16


def test_layer_norm_constant_rows_stay_finite():
    x = torch.full((3, 64), 2.5, dtype=f64)
    assert torch.equal(R.layer_norm(x), torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------
# linear and ffn
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act,fn", [(None, lambda t: t), ("relu", F.relu), ("gelu", F.gelu),
                                    ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")), ("silu", F.silu)])
def test_linear_activations(gen, act, fn):
    x, w, b = rnd(gen, 2, 17, 40), rnd(gen, 72, 40), rnd(gen, 72)
    torch.testing.assert_close(R.linear(x, w, b, activation=act), fn(x @ w.T + b))


def test_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        R.apply_activation(torch.zeros(2), "tanh")


def test_ffn_plain_and_gated(gen):
    d, h = 24, 40
    x = rnd(gen, 3, 5, d)
    seq = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.GELU(), torch.nn.Linear(h, d)).double()
    out = R.ffn(x, seq[0].weight, seq[0].bias, seq[2].weight, seq[2].bias, activation="gelu")
    torch.testing.assert_close(out, seq(x))
    wg, wu, wd = rnd(gen, h, d), rnd(gen, h, d), rnd(gen, d, h)
    out = R.ffn(x, wu, None, wd, None, activation="silu", w_gate=wg)
    torch.testing.assert_close(out, (F.silu(x @ wg.T) * (x @ wu.T)) @ wd.T)  # Llama's MLP
