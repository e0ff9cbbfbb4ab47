"""The "torch" backend (PyTorch's own calls, aigc_kernels.native) against the float64 reference, for
every case the reference has, plus the places where the library's contract and PyTorch's functions
differ: bottom-right causal alignment, rows that see no key, GQA, windows, varlen, the KV cache,
residual norms, float32 parameters, recompute, dropout statistics."""

from __future__ import annotations

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import native, testing
from aigc_kernels import reference as R
from aigc_kernels.ops import PUBLIC_OPS
from aigc_kernels.testing import check_fwd_bwd

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", PUBLIC_OPS)
def test_every_reference_case(op, dtype):
    ran = 0
    for case in testing.cases(op, dtype, "cpu", seed=3):
        r = testing.check_case(op, "torch", case, dtype)
        assert r.unsupported is None, r.unsupported
        assert r.error is None, f"{case.name}: {r.error}"
        assert r.passed, f"{op} {case.name} {dtype}: fwd {r.fwd_err:.3g} > {r.fwd_bound:.3g} or grad {r.grad_err} > " \
                         f"{r.grad_bound}"
        ran += 1
    assert ran > 0


def _f64(kw: dict) -> dict:
    return {n: (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for n, t in kw.items()}


def attn(**kw):
    return (lambda q, k, v: ak.attention(q, k, v, backend="torch", **kw),
            lambda q, k, v: R.attention(q, k, v, **_f64(kw)))


@pytest.mark.parametrize("lq,lk", [(5, 5), (3, 9), (9, 3), (1, 7), (7, 1), (16, 16)])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (6, 1)])
def test_causal_is_bottom_right_with_gqa(lq, lk, hq, hkv):
    q, k, v = rand(2, hq, lq, 16), rand(2, hkv, lk, 16, seed=1), rand(2, hkv, lk, 16, seed=2)
    check_fwd_bwd(*attn(causal=True), [q, k, v], torch.float32)


@pytest.mark.parametrize("window,causal", [((2, 0), True), ((1, 3), False), ((-1, 2), False), ((0, -1), False),
                                           ((4, 1), True)])
def test_windows(window, causal):
    q, k, v = rand(1, 2, 11, 16), rand(1, 2, 14, 16, seed=1), rand(1, 2, 14, 16, seed=2)
    check_fwd_bwd(*attn(causal=causal, window_size=window), [q, k, v], torch.float32)


def test_rows_that_see_no_key_are_zero_with_finite_grads():
    q, k, v = rand(1, 2, 6, 8), rand(1, 2, 5, 8, seed=1), rand(1, 2, 5, 8, seed=2)
    keep = torch.rand(1, 1, 6, 5, generator=torch.Generator().manual_seed(4)) > 0.4
    keep[..., 2, :] = False
    additive = torch.randn(6, 5)
    additive[3] = float("-inf")
    for kwargs in (dict(attn_mask=keep), dict(attn_mask=additive), dict(attn_mask=additive, causal=True),
                   dict(causal=True), dict(window_size=(0, 0))):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        qq = leaves[0] if "attn_mask" in kwargs else leaves[0].expand(1, 2, 6, 8)
        kk, vv = leaves[1], leaves[2]
        if "attn_mask" not in kwargs:  # Lq > Lk with causal or a zero window: rows with no key
            kk, vv = kk[:, :, :3], vv[:, :, :3]
        out = ak.attention(qq, kk, vv, backend="torch", **kwargs)
        ref = R.attention(qq.detach().double(), kk.detach().double(), vv.detach().double(), **_f64(kwargs))
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
        out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in leaves), kwargs
    assert torch.equal(out[..., :3, :], torch.zeros_like(out[..., :3, :]))


def test_no_keys_at_all_and_empty_batches():
    q = rand(2, 2, 3, 8).requires_grad_()
    k = torch.zeros(2, 2, 0, 8)
    out = ak.attention(q, k, k, backend="torch")
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))
    q = rand(2, 2, 3, 8)
    q[0, 0, 0, 0] = float("nan")
    assert torch.equal(ak.attention(q, k, k, backend="torch"), torch.zeros(2, 2, 3, 8))  # no key: 0 even for NaN q


def test_masks_combined_with_causal_and_gqa():
    q, k, v = rand(2, 4, 7, 16), rand(2, 2, 7, 16, seed=1), rand(2, 2, 7, 16, seed=2)
    keep = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(5)) > 0.3
    check_fwd_bwd(*attn(causal=True, attn_mask=keep), [q, k, v], torch.float32)
    check_fwd_bwd(*attn(attn_mask=torch.randn(4, 7, 7)), [q, k, v], torch.float32)


def test_dropout_statistics():
    """With q = k = 0 the probabilities are uniform (1/Lk); v one-hot per key makes out[i, j] =
    keep_ij / (Lk (1 - p)): the kept fraction is 1 - p and the kept values are scaled by 1/(1 - p)."""
    lk, p = 32, 0.25
    q = torch.zeros(4, 8, 64, lk)
    v = torch.eye(lk).expand(4, 8, lk, lk)
    torch.manual_seed(0)
    out = ak.attention(q, torch.zeros(4, 8, lk, lk), v, dropout_p=p, backend="torch")
    kept = out > 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / (lk * (1 - p))))


def test_varlen_per_sequence_and_trailing_rows():
    cu_q = torch.tensor([0, 4, 4, 11], dtype=torch.int32)
    cu_k = torch.tensor([0, 6, 8, 13], dtype=torch.int32)
    q, k, v = rand(13, 4, 16), rand(13, 2, 16, seed=1), rand(13, 2, 16, seed=2)  # 2 trailing q rows
    for kw in (dict(), dict(causal=True), dict(window_size=(2, 1))):
        def fn(q, k, v, kw=kw):
            return ak.attention_varlen(q, k, v, cu_q, cu_k, 7, 6, backend="torch", **kw)

        def ref(q, k, v, kw=kw):
            return R.attention_varlen(q, k, v, cu_q, cu_k, 7, 6, **kw)

        check_fwd_bwd(fn, ref, [q, k, v], torch.float32)


def test_kvcache_empty_caches_and_causal_prefill():
    q = rand(3, 4, 3, 16)
    kc, vc = rand(3, 2, 10, 16, seed=1), rand(3, 2, 10, 16, seed=2)
    lens = torch.tensor([0, 4, 7], dtype=torch.int32)
    kn, vn = rand(3, 2, 3, 16, seed=3), rand(3, 2, 3, 16, seed=4)
    got_c, ref_c = (kc.clone(), vc.clone()), (kc.clone(), vc.clone())
    out = ak.attention_with_kvcache(q, *got_c, lens, k_new=kn, v_new=vn, backend="torch")
    ref = R.attention_with_kvcache(q, *ref_c, lens, k_new=kn, v_new=vn)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_c[0], ref_c[0]) and torch.equal(got_c[1], ref_c[1])
    # nothing valid in a cache and no new rows: zeros for that batch
    out = ak.attention_with_kvcache(q[:1], kc[:1], vc[:1], torch.zeros(1, dtype=torch.int32), causal=False,
                                    backend="torch")
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_norms_with_float32_params_and_residual(dtype):
    x, r = rand(6, 40, dtype=dtype), rand(6, 40, dtype=dtype, seed=1)
    w, b = rand(40, seed=2), rand(40, seed=3)
    y, s = ak.layer_norm(x, w, b, residual=r, backend="torch")
    y64, s64 = R.layer_norm(x.double(), w.double(), b.double(), residual=r.double())
    ylp, slp = R.layer_norm(x, w, b, residual=r)
    testing.assert_close_to_reference(y, y64, ylp, dtype=dtype)
    testing.assert_close_to_reference(s, s64, slp, dtype=dtype)
    y = ak.rms_norm(x, w, residual=r, backend="torch")[0]
    testing.assert_close_to_reference(y, R.rms_norm(x.double(), w.double(), residual=r.double())[0],
                                      R.rms_norm(x, w, residual=r)[0], dtype=dtype)


@pytest.fixture
def vector_norm_calls(monkeypatch):
    """How often the native rms_norm took its CPU composite (one vector_norm a call)."""
    from aigc_kernels.native import norm as native_norm
    calls = []
    real = native_norm._vector_norm

    def spy(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(native_norm, "_vector_norm", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("wdtype", ["x's", "float32", None])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_cpu_composite(dtype, wdtype, with_residual, vector_norm_calls):
    """Without autograd, a CPU rms_norm of >= 32k elements runs the one-reduction composite: the same
    result as the float64 reference (rank 3, float32 weights, residual), its inputs left untouched."""
    x, r = rand(3, 41, 300, dtype=dtype, scale=3.0), rand(3, 41, 300, dtype=dtype, seed=1)
    w = None if wdtype is None else rand(300, seed=2, dtype=dtype if wdtype == "x's" else torch.float32)
    x0, r0 = x.clone(), r.clone()
    res = r if with_residual else None
    with torch.no_grad():
        out = ak.rms_norm(x, w, residual=res, backend="torch")
    assert len(vector_norm_calls) == 1
    assert torch.equal(x, x0) and torch.equal(r, r0)
    y = out[0] if with_residual else out
    assert y.dtype == dtype and y.shape == x.shape
    w64 = None if w is None else w.double()
    r64 = r.double() if with_residual else None
    y64, ylp = R.rms_norm(x.double(), w64, residual=r64), R.rms_norm(x, w, residual=res)
    testing.assert_close_to_reference(y, y64[0] if with_residual else y64, ylp[0] if with_residual else ylp,
                                      dtype=dtype)
    if with_residual:
        assert torch.equal(out[1], x + r)


def test_rms_norm_cpu_composite_when_it_runs(vector_norm_calls):
    """The composite runs only where it was measured faster and as exact: no autograd (grad mode with an
    input that needs a gradient runs torch.rms_norm), >= 32k elements, rows of at most 16384."""
    from aigc_kernels.native.norm import _CPU_COMPOSITE_MAX_ROW, _CPU_COMPOSITE_MIN
    big, w = rand(64, 768), rand(768, seed=1)
    ak.rms_norm(big, w, backend="torch")                      # grad mode, nothing needs a gradient
    with torch.inference_mode():
        ak.rms_norm(big, w)                                   # auto on CPU is the same function
    assert len(vector_norm_calls) == 2
    ak.rms_norm(rand(_CPU_COMPOSITE_MIN // 768 - 1, 768), w, backend="torch")   # below the floor
    ak.rms_norm(rand(2, 2 * _CPU_COMPOSITE_MAX_ROW), backend="torch")            # rows too long
    wg = w.clone().requires_grad_()
    y = ak.rms_norm(big, wg, backend="torch")                  # a weight that needs its gradient
    assert y.requires_grad and len(vector_norm_calls) == 2
    with torch.no_grad():
        assert not ak.rms_norm(big, wg, backend="torch").requires_grad
        assert len(vector_norm_calls) == 3

        class Sub(torch.Tensor):  # a subclass keeps the one torch.rms_norm call its __torch_function__ sees
            pass

        y = ak.rms_norm(big.as_subclass(Sub), w, backend="torch")
    assert type(y) is Sub and len(vector_norm_calls) == 3
    # autograd through torch.rms_norm: gradients as the float64 reference's
    check_fwd_bwd(lambda a, b: ak.rms_norm(a, b, backend="torch"), R.rms_norm, [big, w], torch.float32,
                  names=("out", "dx", "dw"))
    assert len(vector_norm_calls) == 3


def test_rms_norm_cpu_composite_layouts(vector_norm_calls):
    """A transposed (non-contiguous) input, the widest row it takes, rows of zeros (eps keeps them finite),
    and the ak.nn module under no_grad."""
    with torch.no_grad():
        xt = rand(768, 64, scale=2.0).t()
        y = ak.rms_norm(xt, backend="torch")
        testing.assert_close_to_reference(y, R.rms_norm(xt.double()), R.rms_norm(xt), dtype=torch.float32)
        wide = rand(2, 16384, scale=3.0) + 1
        testing.assert_close_to_reference(ak.rms_norm(wide, backend="torch"), R.rms_norm(wide.double()),
                                          R.rms_norm(wide), dtype=torch.float32)
        zeros = torch.zeros(64, 768)
        assert torch.equal(ak.rms_norm(zeros, backend="torch"), zeros)
        m = ak.nn.RMSNorm(768)
        torch.nn.init.normal_(m.weight)
        x = rand(4, 16, 768)
        testing.assert_close_to_reference(m(x), R.rms_norm(x.double(), m.weight.double()),
                                          R.rms_norm(x, m.weight), dtype=torch.float32)
    assert len(vector_norm_calls) == 4


def test_rms_norm_cpu_composite_under_torch_func(vector_norm_calls):
    """vmap (with no fallback warning: every op has a batching rule) and jvp (forward AD) through the
    composite give torch.rms_norm's answers."""
    import warnings
    w = rand(768, seed=1)

    def ours(a):
        return ak.rms_norm(a, w, backend="torch")

    def theirs(a):
        return torch.rms_norm(a, (768,), w, 1e-6)

    xb = rand(3, 64, 768)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        torch.testing.assert_close(torch.func.vmap(ours)(xb), theirs(xb))
    x, t = rand(64, 768, seed=2), rand(64, 768, seed=3)
    for a, b in zip(torch.func.jvp(ours, (x,), (t,)), torch.func.jvp(theirs, (x,), (t,)), strict=True):
        torch.testing.assert_close(a, b)
    assert len(vector_norm_calls) == 2


def test_ffn_recompute_keeps_only_x():
    """recompute=True through activation checkpointing: the (M, H) hidden activations are not saved."""
    x = rand(64, 32).requires_grad_()
    w_in, w_out, w_gate = rand(256, 32, seed=1), rand(32, 256, seed=2), rand(256, 32, seed=3)

    weights = {t.data_ptr() for t in (w_in, w_out, w_gate)}

    def saved_bytes(recompute):
        total = []

        def pack(t):  # the weights are saved by reference: they cost no memory
            if t.data_ptr() not in weights:
                total.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = ak.ffn(x, w_in, None, w_out, None, activation="silu", w_gate=w_gate, recompute=recompute,
                         backend="torch")
        return sum(total), out

    plain, out_plain = saved_bytes(False)
    recomputed, out_re = saved_bytes(True)
    assert recomputed == x.numel() * x.element_size() < plain / 8, (recomputed, plain)
    torch.testing.assert_close(out_plain, out_re)
    g_plain = torch.autograd.grad(out_plain.sum(), x)[0]
    g_re = torch.autograd.grad(out_re.sum(), x)[0]
    torch.testing.assert_close(g_plain, g_re)


def test_fused_relu_epilogue_for_inference():
    x, w, b = rand(9, 24), rand(16, 24, seed=1), rand(16, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(native.linear(x, w, b, activation="relu"), torch.relu(x @ w.T + b))


def test_native_never_calls_the_reference(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the native backend called the reference")

    for name in PUBLIC_OPS:
        monkeypatch.setattr(R, name, boom)
    q = rand(1, 2, 4, 8)
    ak.attention(q, q, q, causal=True, backend="torch")
    ak.layer_norm(rand(3, 8), backend="torch")
    ak.ffn(rand(3, 8), rand(16, 8), None, rand(8, 16), None, backend="torch")


@pytest.mark.parametrize("kw", [dict(softcap=5.0), dict(softcap=2.0, causal=True), dict(sinks="rand"),
                                dict(sinks="rand", causal=True, window_size=(3, 0)),
                                dict(sinks="rand", softcap=3.0, attn_mask="bool")])
def test_softcap_and_sinks_with_gradients(kw):
    q, k, v = rand(2, 4, 9, 16, scale=2.0), rand(2, 2, 9, 16, seed=1, scale=2.0), rand(2, 2, 9, 16, seed=2)
    kw = dict(kw)
    tensors = [q, k, v]
    if kw.get("sinks") == "rand":
        kw.pop("sinks")
        tensors.append(rand(4, seed=3))
    if kw.get("attn_mask") == "bool":
        mask = torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(6)) > 0.4
        mask[..., 1, :] = False  # a row that sees no key: with a sink it still returns 0
        kw["attn_mask"] = mask

    def ours(q, k, v, *sinks):
        return ak.attention(q, k, v, backend="torch", sinks=sinks[0] if sinks else None, **kw)

    def ref(q, k, v, *sinks):
        return R.attention(q, k, v, sinks=sinks[0] if sinks else None, **_f64(kw))

    check_fwd_bwd(ours, ref, tensors, torch.float32, names=("out", "dq", "dk", "dv", "dsinks"))


def test_sinks_take_probability_mass():
    q, k, v = rand(1, 2, 3, 8), rand(1, 2, 5, 8, seed=1), torch.ones(1, 2, 5, 8)
    out = ak.attention(q, k, v, sinks=torch.tensor([0.0, 50.0]), backend="torch")
    assert torch.all(out[0, 0] < 1) and torch.all(out[0, 0] > 0)  # the sink takes part of the mass
    assert torch.allclose(out[0, 1], torch.zeros(3, 8), atol=1e-6)  # a huge sink takes (almost) all of it


@pytest.mark.parametrize("lens", [[5, 5, 5], [0, 7, 12], [12, 12, 12]])
@pytest.mark.parametrize("lnew", [1, 4, 48])
def test_kvcache_append_paths_equal_the_reference(lens, lnew):
    # equal host lengths take one index_copy_ (small writes) or slice copy (from 2k elements: lnew=48) per
    # cache; unequal (or device-resident) ones a scatter
    b, h, lmax, d = 3, 2, 16 + lnew, 8
    kc, vc = rand(b, h, lmax, d, seed=1), rand(b, h, lmax, d, seed=2)
    kn, vn = rand(b, h, lnew, d, seed=3), rand(b, h, lnew, d, seed=4)
    q = rand(b, 4, lnew, d, seed=5)
    seqlens = torch.tensor(lens, dtype=torch.int32)
    got, want = (kc.clone(), vc.clone()), (kc.clone(), vc.clone())
    ak.kvcache_append(*got, kn, vn, seqlens, backend="torch")
    R.kvcache_append(*want, kn, vn, seqlens)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    got, want = (kc.clone(), vc.clone()), (kc.clone(), vc.clone())
    out = ak.attention_with_kvcache(q, *got, seqlens, k_new=kn, v_new=vn, backend="torch")
    ref = R.attention_with_kvcache(q.double(), want[0].double(), want[1].double(), seqlens, k_new=kn.double(),
                                   v_new=vn.double())
    R.kvcache_append(*want, kn, vn, seqlens)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])  # appended once, exactly
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_kvcache_decoding_loop_reuses_the_rows_of_a_step_only():
    """A decoding loop over three layers' caches, token steps and then a chunk of 3 at the same start: the
    row index made for a step's first layer serves its other layers, never another start or length."""
    nat = __import__("sys").modules["aigc_kernels.native.attention"]
    b, hq, hk, lmax, d, layers = 2, 4, 2, 12, 8, 3
    caches = [(rand(b, hk, lmax, d, seed=10 + i), rand(b, hk, lmax, d, seed=20 + i)) for i in range(layers)]
    want = [(kc.clone(), vc.clone()) for kc, vc in caches]
    seed = 100
    for start, lnew in [(0, 1), (1, 1), (2, 1), (2, 3), (5, 1)]:  # (2, 3): a chunk at a start seen before
        lens = torch.full((b,), start, dtype=torch.int32)
        for (kc, vc), (kw, vw) in zip(caches, want, strict=True):
            q, kn, vn = (rand(b, n, lnew, d, seed=(seed := seed + 1)) for n in (hq, hk, hk))
            out = ak.attention_with_kvcache(q, kc, vc, lens, k_new=kn, v_new=vn, backend="torch")
            ref = R.attention_with_kvcache(q.double(), kw.double(), vw.double(), lens, k_new=kn.double(),
                                           v_new=vn.double())
            R.kvcache_append(kw, vw, kn, vn, lens)
            assert torch.equal(kc, kw) and torch.equal(vc, vw)
            torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
            assert nat._last_rows[:2] == (start, lnew)
            assert nat._last_rows[2].tolist() == list(range(start, start + lnew))


def test_kvcache_row_index_made_under_inference_mode_serves_autograd_later(monkeypatch):
    """The memoized row index is a normal tensor even when an inference-mode step made it: a later append
    at the same rows that autograd records (new rows that require grad) still works and backpropagates."""
    monkeypatch.setattr(__import__("sys").modules["aigc_kernels.native.attention"], "_last_rows", (-1, 0, None))
    lens = torch.tensor([3], dtype=torch.int32)
    with torch.inference_mode():
        ak.kvcache_append(torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 8, 4), rand(1, 2, 1, 4), rand(1, 2, 1, 4), lens,
                          backend="torch")
    w = rand(1, 2, 1, 4, seed=1).requires_grad_()
    kc, vc = torch.zeros(1, 2, 8, 4) * 1.0, torch.zeros(1, 2, 8, 4)
    ak.kvcache_append(kc, vc, w * 2, rand(1, 2, 1, 4), lens, backend="torch")
    kc.sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 2.0))


@pytest.mark.parametrize("kw,packed", [
    (dict(), True),                                                   # non-causal GQA, Lq > 1
    (dict(causal=True), False),                                       # rows differ by position: SDPA's GQA
    (dict(attn_mask="keys"), True),                                   # (B, 1, 1, Lk): one mask for every row
    (dict(attn_mask="keys_float"), True),
    (dict(attn_mask="rows"), False),                                  # (B, 1, Lq, Lk) with Lq > 1
    (dict(attn_mask="heads"), False),                                 # a mask per head
    (dict(scale=0.3), True),
])
@pytest.mark.parametrize("transposed", [False, True])
def test_gqa_packs_query_heads_into_rows(monkeypatch, kw, packed, transposed):
    """On CPU, GQA without a causal or per-row mask runs as one SDPA per key head over the packed query
    rows: the same values and gradients as the float64 reference, for (B, H, L, D) and (B, L, H, D)
    layouts; the mask shapes that would differ per row or head take SDPA's own GQA."""
    nat = __import__("sys").modules["aigc_kernels.native.attention"]
    calls = []
    real = nat._sdpa_packed
    monkeypatch.setattr(nat, "_sdpa_packed", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(nat, "_PACK_MIN_REPEATED", 0)  # small shapes: packing is timed only from 32k repeats
    b, hq, hk, lq, lk, d = 2, 6, 2, 5, 9, 16
    q = rand(b, lq, hq, d).transpose(1, 2) if transposed else rand(b, hq, lq, d)
    k, v = rand(b, hk, lk, d, seed=1), rand(b, hk, lk, d, seed=2)
    kw = dict(kw)
    g = torch.Generator().manual_seed(7)
    masks = {"keys": lambda: torch.rand(b, 1, 1, lk, generator=g) > 0.3,
             "keys_float": lambda: torch.randn(b, 1, 1, lk, generator=g),
             "rows": lambda: torch.rand(b, 1, lq, lk, generator=g) > 0.3,
             "heads": lambda: torch.rand(b, hq, 1, lk, generator=g) > 0.3}
    if "attn_mask" in kw:
        kw["attn_mask"] = masks[kw["attn_mask"]]()
    check_fwd_bwd(*attn(**kw), [q, k, v], torch.float32)
    assert bool(calls) == packed, (kw, calls)


def test_gqa_decoding_step_packs_with_equal_and_unequal_lengths(monkeypatch):
    nat = __import__("sys").modules["aigc_kernels.native.attention"]
    calls = []
    real = nat._sdpa_packed
    monkeypatch.setattr(nat, "_sdpa_packed", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(nat, "_PACK_MIN_REPEATED", 0)
    b, hq, hk, lmax, d = 3, 8, 2, 20, 16
    q = rand(b, hq, 1, d)
    kc, vc = rand(b, hk, lmax, d, seed=1), rand(b, hk, lmax, d, seed=2)
    kn, vn = rand(b, hk, 1, d, seed=3), rand(b, hk, 1, d, seed=4)
    for lens in ([11, 11, 11], [0, 4, 19]):
        seqlens = torch.tensor(lens, dtype=torch.int32)
        got, want = (kc.clone(), vc.clone()), (kc.clone(), vc.clone())
        out = ak.attention_with_kvcache(q, *got, seqlens, k_new=kn, v_new=vn, backend="torch")
        ref = R.attention_with_kvcache(q.double(), want[0].double(), want[1].double(), seqlens, k_new=kn.double(),
                                       v_new=vn.double())
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert len(calls) == 2


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_mask_rows_memo_follows_in_place_writes(monkeypatch, kind):
    """On CPU a mask whose rows all see a key is read once, not once per call (transformers hands one
    mask to every layer); writing to it in place (its version changes) makes the next call read it
    again, so a row emptied then gives 0 whatever SDPA itself does with such rows."""
    nat = __import__("sys").modules["aigc_kernels.native.attention"]
    name = "_empty_bool_rows" if kind == "bool" else "_empty_float_rows"
    reads = []
    real = getattr(nat, name)
    monkeypatch.setattr(nat, name, lambda m: reads.append(1) or real(m))
    q, k, v = rand(2, 2, 4, 8), rand(2, 2, 6, 8, seed=1), rand(2, 2, 6, 8, seed=2)
    mask = torch.ones(2, 1, 4, 6, dtype=torch.bool) if kind == "bool" else torch.zeros(2, 1, 4, 6)
    for _ in range(3):
        out = ak.attention(q, k, v, attn_mask=mask, backend="torch")
    assert len(reads) == 1
    torch.testing.assert_close(out, ak.attention(q, k, v, backend="torch"))
    if kind == "bool":
        mask[1, 0, 2] = False
    else:
        mask[1, 0, 2] = float("-inf")
    out = ak.attention(q, k, v, attn_mask=mask, backend="torch")
    assert len(reads) > 1
    assert torch.equal(out[1, :, 2], torch.zeros_like(out[1, :, 2]))
    ref = R.attention(q.double(), k.double(), v.double(), attn_mask=mask if kind == "bool" else mask.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_made_under_inference_mode(kind):
    """Inference tensors have no version counter: their rows are read on every call (no memo), and a row
    emptied in place between calls still gives 0."""
    with torch.inference_mode():
        q, k, v = rand(2, 4, 4, 8), rand(2, 2, 6, 8, seed=1), rand(2, 2, 6, 8, seed=2)
        mask = torch.ones(2, 1, 4, 6, dtype=torch.bool) if kind == "bool" else torch.zeros(2, 1, 4, 6)
        torch.testing.assert_close(ak.attention(q, k, v, attn_mask=mask, backend="torch"),
                                   ak.attention(q, k, v, backend="torch"))
        if kind == "bool":
            mask[0, 0, 1] = False
        else:
            mask[0, 0, 1] = float("-inf")
        out = ak.attention(q, k, v, attn_mask=mask, backend="torch")
        ref = R.attention(q.double(), k.double(), v.double(), attn_mask=mask if kind == "bool" else mask.double())
    assert torch.equal(out[0, :, 1], torch.zeros_like(out[0, :, 1]))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("op", PUBLIC_OPS)
def test_every_reference_case_under_inference_mode(op):
    """The forward of every case with inference tensors (transformers' pipelines run under
    torch.inference_mode): no version counters, no autograd; the same outputs as the reference."""
    import copy

    ref = getattr(R, op)
    for case in testing.cases(op, torch.float32, "cpu", seed=5):
        with torch.inference_mode():
            args = {n: (t.clone() if isinstance(t, torch.Tensor) else t) for n, t in case.args.items()}
            want_args = copy.deepcopy(case.args)
            out = getattr(ak, op)(*args.values(), backend="torch", **case.kwargs)
            want = ref(*want_args.values(), **case.kwargs)
        got, expect = (out, want) if isinstance(out, tuple) else ((out,), (want,))
        for g, w in zip(got, expect, strict=True):
            if g is None:
                assert w is None
                continue
            torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5, msg=lambda m, c=case: f"{op} {c.name}: {m}")
        for name in case.mutates:
            torch.testing.assert_close(args[name], want_args[name], msg=lambda m, n=name: f"{op} {n}: {m}")


def test_gqa_packs_only_where_the_repeat_it_saves_is_large(monkeypatch):
    """Packing costs two views (~2 us); it runs only when SDPA's enable_gqa would copy >= 32k elements."""
    nat = __import__("sys").modules["aigc_kernels.native.attention"]
    calls = []
    real = nat._sdpa_packed
    monkeypatch.setattr(nat, "_sdpa_packed", lambda *a: calls.append(1) or real(*a))
    for lk, packs in ((16, False), (128, True)):  # (8/2 heads - 1) x 2 x lk x 64: 6k and 49k elements
        q, k, v = rand(1, 8, 1, 64), rand(1, 2, lk, 64, seed=1), rand(1, 2, lk, 64, seed=2)
        calls.clear()
        out = ak.attention(q, k, v, backend="torch")
        assert bool(calls) == packs, lk
        torch.testing.assert_close(out.double(), R.attention(q.double(), k.double(), v.double()), atol=1e-5,
                                   rtol=1e-5)
