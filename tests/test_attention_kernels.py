"""Attention kernels against the float64 reference, with the FlashAttention error rule.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (fp32 and fp16, small shapes); on a GPU
the compiled kernels run (bf16 too, and long sequences checked in chunks).
"""

from __future__ import annotations

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R
from aigc_kernels.testing import assert_close_to_reference, fwd_bwd
from aigc_kernels.testing import check_fwd_bwd as check

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
KERNEL = pytest.mark.interpreter if DEVICE == "cpu" else pytest.mark.gpu
BACKENDS = [b for b in ("triton",) if b in ak.available_backends()]
pytestmark = [KERNEL, pytest.mark.skipif(not BACKENDS, reason="the triton backend is not available here")]


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)


def attn(**kw):
    return (lambda q, k, v: ak.attention(q, k, v, backend="triton", **kw),
            lambda q, k, v: R.attention(q, k, v, **{k_: (v_.double() if isinstance(v_, torch.Tensor) and
                                                          v_.is_floating_point() else v_) for k_, v_ in kw.items()}))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq,lk,causal", [(37, 45, False), (37, 45, True), (45, 37, True), (1, 33, True),
                                          (64, 64, True), (17, 1, False)])
def test_lengths_and_causal(dtype, lq, lk, causal):
    q, k, v = rand(2, 4, lq, 32, dtype=dtype), rand(2, 4, lk, 32, dtype=dtype, seed=1), rand(2, 4, lk, 32, dtype=dtype,
                                                                                              seed=2)
    check(*attn(causal=causal), [q, k, v], dtype)


@pytest.mark.parametrize("hq,hkv", [(8, 2), (6, 1)])  # GQA, MQA
def test_gqa_mqa(hq, hkv):
    q, k, v = rand(2, hq, 19, 32), rand(2, hkv, 23, 32, seed=1), rand(2, hkv, 23, 32, seed=2)
    check(*attn(causal=True), [q, k, v], torch.float32)


@pytest.mark.parametrize("d", [16, 24, 32, 64, 96, 128, 256])
def test_head_dims(d):
    dtype = torch.float16
    q, k, v = rand(1, 2, 21, d, dtype=dtype), rand(1, 2, 18, d, dtype=dtype, seed=1), rand(1, 2, 18, d, dtype=dtype,
                                                                                           seed=2)
    check(*attn(causal=True), [q, k, v], dtype)


@pytest.mark.parametrize("window,causal", [((4, 0), True), ((3, 2), False), ((-1, 1), False), ((0, -1), False),
                                           ((2, 5), True)])
def test_sliding_window(window, causal):
    q, k, v = rand(1, 2, 33, 16), rand(1, 2, 40, 16, seed=1), rand(1, 2, 40, 16, seed=2)
    check(*attn(causal=causal, window_size=window), [q, k, v], torch.float32)


@pytest.mark.parametrize("shape", [(19, 23), (2, 1, 19, 23), (1, 4, 1, 23), (2, 4, 19, 23)])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_broadcast(shape, kind):
    q, k, v = rand(2, 4, 19, 16), rand(2, 4, 23, 16, seed=1), rand(2, 4, 23, 16, seed=2)
    g = torch.Generator().manual_seed(3)
    if kind == "bool":
        mask = (torch.rand(shape, generator=g) > 0.3).to(DEVICE)
        if len(shape) == 4 and shape[2] > 1:
            mask[..., 4, :] = False  # a query row that sees no key
    else:
        mask = torch.randn(shape, generator=g).to(DEVICE)
        mask[..., :3] = float("-inf")
    check(*attn(attn_mask=mask, causal=kind == "float"), [q, k, v], torch.float32)


def test_rows_that_see_no_key_are_zero_with_finite_grads():
    q, k, v = rand(1, 2, 12, 16), rand(1, 2, 5, 16, seed=1), rand(1, 2, 5, 16, seed=2)
    out, dq, dk, dv = fwd_bwd(lambda q, k, v: ak.attention(q, k, v, causal=True, backend="triton"), [q, k, v])
    assert torch.equal(out[:, :, :7], torch.zeros_like(out[:, :, :7]))  # Lq - Lk = 7 rows see nothing
    assert torch.equal(dq[:, :, :7], torch.zeros_like(dq[:, :, :7]))
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))
    empty_keys = ak.attention(q, k[:, :, :0], v[:, :, :0], backend="triton")
    assert torch.equal(empty_keys, torch.zeros_like(empty_keys))


def dropout_keep_mask(q, k, p, seed, causal=False):
    """The keep-mask the kernel draws, read back through v = identity (out = P * keep / (1 - p));
    needs head dim >= Lk."""
    lk = k.shape[2]
    assert k.shape[3] >= lk
    eye = torch.zeros(k.shape, device=q.device, dtype=q.dtype)
    eye[..., torch.arange(lk), torch.arange(lk)] = 1
    torch.manual_seed(seed)
    probe = ak.attention(q, k, eye, dropout_p=p, causal=causal, backend="triton")
    return probe[..., :lk] != 0


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_matches_reference_with_the_same_mask(causal):
    p = 0.3
    q, k, v = rand(2, 4, 20, 32), rand(2, 2, 20, 32, seed=1), rand(2, 2, 20, 32, seed=2)
    keep = dropout_keep_mask(q, k, p, seed=11, causal=causal)
    visible = R.attention_mask(20, 20, causal=causal)
    frac = keep[..., visible].float().mean().item() if visible is not None else keep.float().mean().item()
    assert 0.6 < frac < 0.8  # about 1 - p of the visible entries kept
    torch.manual_seed(11)  # the same seed: the kernel draws the same mask, forward and backward
    got = fwd_bwd(lambda q, k, v: ak.attention(q, k, v, dropout_p=p, causal=causal, backend="triton"), [q, k, v])
    ref = fwd_bwd(lambda q, k, v: R.attention(q, k, v, dropout_p=p, causal=causal, dropout_mask=keep),
                  [t.double() for t in (q, k, v)])
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4)


def test_dropout_is_seeded():
    q, k, v = rand(1, 2, 16, 16), rand(1, 2, 16, 16, seed=1), rand(1, 2, 16, 16, seed=2)
    torch.manual_seed(3)
    a = ak.attention(q, k, v, dropout_p=0.5, backend="triton")
    torch.manual_seed(3)
    b = ak.attention(q, k, v, dropout_p=0.5, backend="triton")
    c = ak.attention(q, k, v, dropout_p=0.5, backend="triton")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_strided_inputs():
    # (B, L, H, D) storage viewed as (B, H, L, D), as a fused QKV projection produces
    q = rand(2, 21, 4, 32).transpose(1, 2)
    k = rand(2, 21, 4, 32, seed=1).transpose(1, 2)
    v = rand(2, 21, 4, 32, seed=2).transpose(1, 2)
    assert not q.is_contiguous()
    check(*attn(causal=True), [q, k, v], torch.float32)


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, (3, 0))])
def test_varlen(causal, window):
    cu_q = torch.tensor([0, 5, 5, 18, 19], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 7, 9, 22, 30], dtype=torch.int32, device=DEVICE)
    q, k, v = rand(19, 4, 16), rand(30, 2, 16, seed=1), rand(30, 2, 16, seed=2)

    def kernel(q, k, v):
        return ak.attention_varlen(q, k, v, cu_q, cu_k, 13, 13, causal=causal, window_size=window, backend="triton")

    def ref(q, k, v):
        return R.attention_varlen(q, k, v, cu_q, cu_k, 13, 13, causal=causal, window_size=window)

    check(kernel, ref, [q, k, v], torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq,causal,hq,hkv", [(1, True, 4, 2), (3, True, 8, 2), (2, False, 4, 4), (1, True, 8, 1),
                                              (40, True, 4, 2)])
def test_kvcache_decode(dtype, lq, causal, hq, hkv):
    lens = torch.tensor([5, 17, 0], dtype=torch.int32, device=DEVICE)
    q = rand(3, hq, lq, 32, dtype=dtype)
    kc, vc = rand(3, hkv, 64, 32, dtype=dtype, seed=1), rand(3, hkv, 64, 32, dtype=dtype, seed=2)
    kn, vn = rand(3, hkv, lq, 32, dtype=dtype, seed=3), rand(3, hkv, lq, 32, dtype=dtype, seed=4)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    out = ak.attention_with_kvcache(q, kc, vc, lens, k_new=kn, v_new=vn, causal=causal, backend="triton")
    ref64 = R.attention_with_kvcache(q.double(), kc_ref.double(), vc_ref.double(), lens, k_new=kn.double(),
                                     v_new=vn.double(), causal=causal)
    lowp = R.attention_with_kvcache(q, kc_ref, vc_ref, lens, k_new=kn, v_new=vn, causal=causal)
    assert_close_to_reference(out, ref64, lowp, dtype=dtype)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)  # appended in place, exactly
    assert lens.tolist() == [5, 17, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("lnew,d", [(1, 32), (7, 24), (40, 8)])
def test_kvcache_append_kernel(dtype, lnew, d):
    # strided caches and new rows (views), lengths at both ends of the cache: a copy, so exactly equal
    b, h, lmax = 3, 2, 48
    kc = rand(b, lmax, h, d, dtype=dtype, seed=1).transpose(1, 2)  # (B, H, Lmax, D) view, row stride H*D
    vc = rand(b, h, lmax, d, dtype=dtype, seed=2)
    kn = rand(b, lnew, h, d, dtype=dtype, seed=3).transpose(1, 2)
    vn = rand(b, h, d, lnew, dtype=dtype, seed=4).transpose(2, 3)
    lens = torch.tensor([0, 5, lmax - lnew], dtype=torch.int32, device=DEVICE)
    kr, vr = kc.clone(), vc.clone()
    ak.kvcache_append(kc, vc, kn, vn, lens, backend="triton")
    R.kvcache_append(kr, vr, kn, vn, lens)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)
    assert lens.tolist() == [0, 5, lmax - lnew]
    ak.kvcache_append(kc, vc, kn[:, :, :0], vn[:, :, :0], lens, backend="triton")  # nothing new: nothing written
    assert torch.equal(kc, kr)


def test_kvcache_append_out_of_range_is_refused_on_the_host():
    kc = torch.zeros(1, 1, 4, 8, device=DEVICE)
    lens = torch.tensor([3], dtype=torch.int32)  # 3 + 2 rows > Lmax = 4
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="cache_seqlens"):
            ak.kvcache_append(kc, kc.clone(), kc[:, :, :2].clone() + 1, kc[:, :, :2].clone(), lens, backend="triton")
        assert not kc.any()


def test_kvcache_matches_full_causal_attention():
    q = rand(2, 4, 1, 32)
    kc, vc = rand(2, 2, 48, 32, seed=1), rand(2, 2, 48, 32, seed=2)
    lens = torch.tensor([47, 20], dtype=torch.int32, device=DEVICE)
    out = ak.attention_with_kvcache(q, kc, vc, lens, causal=True, backend="triton")
    for b, n in enumerate(lens.tolist()):
        full = ak.attention(q[b:b + 1], kc[b:b + 1, :, :n], vc[b:b + 1, :, :n], causal=True, backend="triton")
        torch.testing.assert_close(out[b:b + 1], full, atol=1e-5, rtol=1e-4)


def test_opcheck():
    from aigc_kernels.triton import attention as A

    q, k, v = rand(1, 2, 17, 16), rand(1, 1, 19, 16, seed=1), rand(1, 1, 19, 16, seed=2)
    mask = torch.ones(17, 19, dtype=torch.bool, device=DEVICE)
    sinks = rand(2, seed=3)
    for softcap, sk in ((0.0, None), (2.0, sinks)):
        args = (q, k, v, mask, None, None, 17, 19, True, 0.25, -1, -1, 0.0, None, softcap, sk)
        torch.library.opcheck(A.attention_fwd, args)
        out, lse = A.attention_fwd(*args)
        torch.library.opcheck(A.attention_bwd, (torch.randn_like(out), q, k, v, out, lse, mask, None, None, 17, 19,
                                                True, 0.25, -1, -1, 0.0, None, softcap, sk))
    lens = torch.tensor([5], dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(A.attention_decode, (q[:, :, :1], k, v, lens, 0, True, 0.25, None))
    torch.library.opcheck(A.kvcache_append_op, (k.clone(), v.clone(), k[:, :, :2].clone(), v[:, :, :2].clone(), lens,
                                                None))
    # a paged cache: pages of 4 rows, (num_pages, page_size, Hkv, D), two pages in reverse order
    kp, vp = k[0, :, :8].reshape(1, 2, 4, 16).permute(1, 2, 0, 3).contiguous(), rand(2, 4, 1, 16, seed=4)
    table = torch.tensor([[1, 0]], dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(A.attention_decode, (q[:, :, :1], kp, vp, lens, 0, True, 0.25, table))
    torch.library.opcheck(A.kvcache_append_op, (kp.clone(), vp.clone(), k[:, :, :2].clone(), v[:, :, :2].clone(),
                                                lens, table))


def test_compile_fullgraph():
    q, k, v = rand(1, 2, 17, 16), rand(1, 2, 17, 16, seed=1), rand(1, 2, 17, 16, seed=2)

    def f(q, k, v):
        return ak.attention(q, k, v, causal=True, backend="triton").sum()

    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v), f(q, k, v))


def test_unsupported_inputs_raise_when_named_and_route_under_auto():
    q = rand(1, 2, 8, 8)
    with pytest.raises(ak.BackendError, match="head dims 16 to 256, got 8"):
        ak.attention(q, q, q, backend="triton")
    mask = rand(8, 8).requires_grad_()
    q16 = rand(1, 2, 8, 16)
    with pytest.raises(ak.BackendError, match="gradient of attn_mask"):
        ak.attention(q16, q16, q16, attn_mask=mask, backend="triton")


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("seq", [4096, 16384])
def test_long_sequences_bf16_in_chunks(seq):
    if DEVICE != "cuda":
        pytest.skip("needs a CUDA GPU")
    dtype = torch.bfloat16
    q, k, v = rand(1, 2, seq, 128, dtype=dtype), rand(1, 2, seq, 128, dtype=dtype, seed=1), \
        rand(1, 2, seq, 128, dtype=dtype, seed=2)
    out = ak.attention(q, k, v, causal=True, backend="triton")
    # the reference for query chunks (bottom-right causal keeps each chunk's alignment)
    for start in range(0, seq, seq // 4):
        rows = slice(start, start + 256)
        keys = slice(0, start + 256)
        ref64 = R.attention(q[:, :, rows].double(), k[:, :, keys].double(), v[:, :, keys].double(), causal=True)
        lowp = R.attention(q[:, :, rows], k[:, :, keys], v[:, :, keys], causal=True)
        assert_close_to_reference(out[:, :, rows], ref64, lowp, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# the Hopper forward (TMA descriptors, persistent grid), forced on so the interpreter runs it
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def tma_forced(force_tma):
    from aigc_kernels.triton import attention

    return force_tma(attention, "_fwd_tma")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq,lk,causal,window,hq,hkv,d", [
    (37, 45, False, None, 4, 2, 32), (45, 37, True, None, 2, 2, 16), (33, 40, False, (3, 2), 2, 1, 64),
    (1, 33, True, None, 4, 4, 32), (40, 40, True, (4, 0), 6, 2, 32)])
def test_tma_persistent_forward(tma_forced, dtype, lq, lk, causal, window, hq, hkv, d):
    q, k, v = rand(2, hq, lq, d, dtype=dtype), rand(2, hkv, lk, d, dtype=dtype, seed=1), \
        rand(2, hkv, lk, d, dtype=dtype, seed=2)
    check(*attn(causal=causal, window_size=window), [q, k, v], dtype)  # the backward reuses its lse
    assert tma_forced, "the TMA forward did not run"


def test_tma_path_is_not_taken_where_it_cannot_run(tma_forced):
    from aigc_kernels.triton import attention as A

    q = rand(1, 2, 9, 24)  # head dim not a power of 2
    assert not A._tma_ok(q, q, q, None, False, 0.0)
    q = rand(1, 2, 9, 32)
    assert not A._tma_ok(q, q, q, torch.ones(9, 9, dtype=torch.bool), False, 0.0)  # user mask: pointer kernel
    assert not A._tma_ok(q, q, q, None, False, 0.1)  # dropout
    odd = rand(1, 2, 9, 33)[..., :32]  # row stride 33 elements: not a 16-byte multiple
    assert not A._tma_ok(odd, q, q, None, False, 0.0)
    assert not A._tma_ok(q, q[:, :, :0], q[:, :, :0], None, False, 0.0)  # no keys: descriptors need sizes > 0
    ak.attention(rand(1, 2, 9, 24), rand(1, 2, 9, 24), rand(1, 2, 9, 24), backend="triton")
    empty = ak.attention(q, q[:, :, :0], q[:, :, :0], backend="triton")
    assert torch.equal(empty, torch.zeros_like(empty))
    assert not tma_forced


@pytest.mark.parametrize("kw", [dict(softcap=3.0), dict(softcap=1.5, causal=True, window_size=(5, 0)), dict(sinks=1),
                                dict(sinks=1, causal=True), dict(sinks=1, softcap=2.0, attn_mask="bool")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_softcap_and_sinks(kw, dtype):
    """Gemma-2's soft-capping and GPT-OSS's attention sinks: forward and gradients (the sinks' too)."""
    q, k, v = (rand(2, 4, 21, 32, dtype=dtype, scale=2.0), rand(2, 2, 19, 32, dtype=dtype, seed=1, scale=2.0),
               rand(2, 2, 19, 32, dtype=dtype, seed=2))
    kw = dict(kw)
    tensors = [q, k, v]
    if kw.pop("sinks", None):
        tensors.append(rand(4, seed=3))
    if kw.get("attn_mask") == "bool":
        mask = (torch.rand(2, 1, 21, 19, generator=torch.Generator().manual_seed(7)) > 0.4).to(DEVICE)
        mask[..., 3, :] = False  # a row that sees no key: with a sink its output is 0
        kw["attn_mask"] = mask
    f64 = {n: (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for n, t in kw.items()}

    def ours(q, k, v, *sinks):
        return ak.attention(q, k, v, backend="triton", sinks=sinks[0] if sinks else None, **kw)

    def ref(q, k, v, *sinks):
        return R.attention(q, k, v, sinks=sinks[0] if sinks else None, **(f64 if q.dtype == torch.float64 else kw))

    check(ours, ref, tensors, dtype, names=("out", "dq", "dk", "dv", "dsinks"))
