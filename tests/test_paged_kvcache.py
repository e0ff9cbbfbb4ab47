"""Paged KV caches (block tables): ak.attention_with_kvcache and ak.kvcache_append with ``block_table``, the
layout of vLLM and FA2 -- caches (num_pages, page_size, Hkv, D), block_table int32 (B, max_pages), row t of
sequence b in page block_table[b, t // page_size] at slot t % page_size.

Each case is compared with the same cache laid out contiguously (B, Hkv, Lmax, D) on the same backend, and
with the float64 reference. The "torch" backend (pages gathered) and the Triton kernels (the split-K decode and
the append read/write the pages in place; under the interpreter on CPU) run here; the CUDA kernels read and write
the pages in place too (their source runs under emulation in tests/test_kernel_emulation.py, their C++ CPU
implementations and fake impls here, on a GPU the gpu-marked tests).
"""

from __future__ import annotations

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R

I32 = torch.int32
KERNEL = pytest.mark.interpreter if not torch.cuda.is_available() else pytest.mark.gpu
BACKENDS = ["torch"] + [pytest.param("triton", marks=KERNEL) for b in ["triton"] if b in ak.available_backends()]


def paged_setup(page: int, lens: list[int], lnew: int, *, b_heads=(4, 2), d=16, extra_pages=3, width=None,
                share_prefix=0, seed=0, dtype=torch.float32):
    """Random paged caches holding len_b rows per sequence (pages shuffled, optionally a shared prefix of pages),
    the same rows as a contiguous cache, and what to append."""
    g = torch.Generator().manual_seed(seed)
    hq, hkv = b_heads
    b = len(lens)
    need = [-(-(n + lnew) // page) for n in lens]
    width = width or max(need) + 1
    shared = -(-share_prefix // page) if share_prefix else 0
    total = shared + sum(n - shared for n in need) + extra_pages
    perm = torch.randperm(total, generator=g).tolist()
    table = torch.full((b, width), 10**6, dtype=I32)  # padding past each sequence's pages: never read
    nxt = shared
    for i, n in enumerate(need):
        for j in range(n):
            table[i, j] = perm[j] if j < shared else perm[nxt]
            nxt += j >= shared
    kc = torch.randn(total, page, hkv, d, generator=g).to(dtype)
    vc = torch.randn(total, page, hkv, d, generator=g).to(dtype)
    lmax = width * page
    dense_k, dense_v = torch.zeros(b, hkv, lmax, d, dtype=dtype), torch.zeros(b, hkv, lmax, d, dtype=dtype)
    for i, n in enumerate(lens):
        for t in range(n):
            p = int(table[i, t // page])
            dense_k[i, :, t], dense_v[i, :, t] = kc[p, t % page], vc[p, t % page]
    q = torch.randn(b, hq, lnew or 1, d, generator=g).to(dtype)
    kn = torch.randn(b, hkv, lnew, d, generator=g).to(dtype) if lnew else None
    vn = torch.randn(b, hkv, lnew, d, generator=g).to(dtype) if lnew else None
    return dict(q=q, kc=kc, vc=vc, table=table, lens=torch.tensor(lens, dtype=I32), kn=kn, vn=vn, dk=dense_k,
                dv=dense_v)


@pytest.mark.parametrize("window,causal", [((5, -1), True), ((6, 2), False), ((0, 0), False), ((9, 4), True)])
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_kvcache_window_equals_the_reference(backend, paged, window, causal):
    """window_size on attention_with_kvcache (FA2's flash_attn_with_kvcache window): each new query sees the keys
    within (left, right) of its bottom-right diagonal (causal caps right at 0); lengths 0 and across pages."""
    s = paged_setup(16, [3, 40, 0, 17], lnew=3)
    kc, vc = (s["kc"].clone(), s["vc"].clone()) if paged else (s["dk"].clone(), s["dv"].clone())
    out = ak.attention_with_kvcache(s["q"], kc, vc, s["lens"], k_new=s["kn"], v_new=s["vn"], causal=causal,
                                    window_size=window, block_table=s["table"] if paged else None, backend=backend)
    ref_args = (s["q"].double(), s["dk"].double(), s["dv"].double(), s["lens"])
    new = dict(k_new=s["kn"].double(), v_new=s["vn"].double(), causal=causal)
    ref = R.attention_with_kvcache(*ref_args, **new, window_size=window)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    full = R.attention_with_kvcache(s["q"].double(), s["dk"].double(), s["dv"].double(), s["lens"], **new)
    assert not torch.allclose(ref, full)  # the window changes the answer


def test_kvcache_window_bad_input_is_named():
    s = paged_setup(16, [3, 4], lnew=1)
    for bad, err in (((5,), TypeError), ((-2, 0), ValueError), ("5", TypeError)):
        with pytest.raises(err, match="window_size"):
            ak.attention_with_kvcache(s["q"], s["dk"].clone(), s["dv"].clone(), s["lens"], k_new=s["kn"],
                                      v_new=s["vn"], window_size=bad)


def dense_rows(kc, table, lens, lnew, page):
    """The rows each sequence holds after the append, read through its pages: (B, Hkv, n_b, D) as a list."""
    out = []
    for i, n in enumerate((lens.long() + lnew).tolist()):
        out.append(torch.stack([kc[int(table[i, t // page]), t % page] for t in range(n)], dim=1))
    return out


@pytest.mark.parametrize("page", [1, 2, 16, 32, 64, 128, 256])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_paged_equals_contiguous_at_every_page_size(backend, page, causal):
    if backend == "triton" and page in (2, 32, 128) and causal:
        pytest.skip("kept short under the interpreter")
    s = paged_setup(page, [0, page + 3, 3 * page - 1], lnew=2)
    kc, vc = s["kc"].clone(), s["vc"].clone()
    got = ak.attention_with_kvcache(s["q"], kc, vc, s["lens"], k_new=s["kn"], v_new=s["vn"], causal=causal,
                                    block_table=s["table"], backend=backend)
    dk, dv = s["dk"].clone(), s["dv"].clone()
    want = ak.attention_with_kvcache(s["q"], dk, dv, s["lens"], k_new=s["kn"], v_new=s["vn"], causal=causal,
                                     backend=backend)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # the appended rows landed in the right pages and slots, and nothing else changed
    for i, rows in enumerate(dense_rows(kc, s["table"], s["lens"], 2, page)):
        torch.testing.assert_close(rows, dk[i, :, : rows.shape[1]], atol=0, rtol=0)
    written = torch.zeros(kc.shape[:2], dtype=torch.bool)
    for i, n in enumerate(s["lens"].tolist()):
        for t in range(n, n + 2):
            written[int(s["table"][i, t // page]), t % page] = True
    assert torch.equal(kc[~written], s["kc"][~written]) and torch.equal(vc[~written], s["vc"][~written])
    ref = R.attention_with_kvcache(s["q"].double(), s["kc"].double(), s["vc"].double(), s["lens"],
                                   s["kn"].double(), s["vn"].double(), causal, None, s["table"])
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_prefix_pages_and_decoding_without_append(backend):
    """Two sequences reading one prefix of pages (a common system prompt), no append, GQA 4/2, Lq = 1."""
    page = 16
    s = paged_setup(page, [40, 37], lnew=0, share_prefix=32)
    assert torch.equal(s["table"][0, :2], s["table"][1, :2])
    got = ak.attention_with_kvcache(s["q"], s["kc"], s["vc"], s["lens"], block_table=s["table"], backend=backend)
    want = ak.attention_with_kvcache(s["q"], s["dk"], s["dv"], s["lens"], backend=backend)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_paged_append_alone_and_with_rotary(backend):
    page = 16
    s = paged_setup(page, [5, 30], lnew=3)
    kc, vc = s["kc"].clone(), s["vc"].clone()
    ak.kvcache_append(kc, vc, s["kn"], s["vn"], s["lens"], block_table=s["table"], backend=backend)
    kr, vr = s["kc"].clone(), s["vc"].clone()
    R.kvcache_append(kr, vr, s["kn"], s["vn"], s["lens"], s["table"])
    assert torch.equal(kc, kr) and torch.equal(vc, vr)
    t = torch.arange(64, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(8) / 8)
    cos, sin = t.cos().float(), t.sin().float()
    kc, vc, dk, dv = s["kc"].clone(), s["vc"].clone(), s["dk"].clone(), s["dv"].clone()
    got = ak.attention_with_kvcache(s["q"], kc, vc, s["lens"], k_new=s["kn"], v_new=s["vn"], rotary_cos=cos,
                                    rotary_sin=sin, block_table=s["table"], backend=backend)
    want = ak.attention_with_kvcache(s["q"], dk, dv, s["lens"], k_new=s["kn"], v_new=s["vn"], rotary_cos=cos,
                                     rotary_sin=sin, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_the_cuda_kernels_take_a_paged_cache():
    """The CUDA decode and append take block tables (csrc: the K/V tile loads and the append address rows through
    the table; run under emulation in tests/test_kernel_emulation.py); the C++ append's CPU implementation writes
    the pages as the reference does, and the op's schema, fake impl and CPU kernel agree (opcheck)."""
    from aigc_kernels.backend import implementation
    from aigc_kernels.validation import make_call

    s = paged_setup(16, [5, 9], lnew=1, d=64, dtype=torch.float16)
    call = make_call("attention_with_kvcache", s["q"], s["kc"], s["vc"], s["lens"], k_new=s["kn"], v_new=s["vn"],
                     block_table=s["table"])
    assert implementation("attention_with_kvcache", "cuda").why_not(call) is None
    call = make_call("kvcache_append", s["kc"], s["vc"], s["kn"], s["vn"], s["lens"], block_table=s["table"])
    assert implementation("kvcache_append", "cuda").why_not(call) is None
    if not _have_ext():
        pytest.skip("the C++ extension is not built here")
    s = paged_setup(16, [5, 9, 0, 31], lnew=3, dtype=torch.float32)
    kc, vc = s["kc"].clone(), s["vc"].clone()
    kr, vr = s["kc"].clone(), s["vc"].clone()
    torch.ops.aigc_kernels.kvcache_append(kc, vc, s["kn"], s["vn"], s["lens"], s["table"])
    R.kvcache_append(kr, vr, s["kn"], s["vn"], s["lens"], block_table=s["table"])
    assert torch.equal(kc, kr) and torch.equal(vc, vr)
    torch.library.opcheck(torch.ops.aigc_kernels.kvcache_append.default,
                          (s["kc"].clone(), s["vc"].clone(), s["kn"], s["vn"], s["lens"], s["table"]))
    bad = s["table"].clone()
    bad[1, 0] = 10**4
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.aigc_kernels.kvcache_append(kc, vc, s["kn"], s["vn"], s["lens"], bad)


def _have_ext() -> bool:
    from aigc_kernels import _ext

    return _ext.status()[0]


@pytest.mark.gpu
@pytest.mark.parametrize("page", [1, 16, 64, 256])
def test_cuda_paged_decode_equals_contiguous_on_a_gpu(page):
    if "cuda" not in ak.available_backends():
        pytest.skip("no CUDA extension")
    s = paged_setup(page, [5, 130, 0, 300], lnew=1, b_heads=(8, 2), d=128, dtype=torch.bfloat16)
    dev = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in s.items()}
    kc, vc = dev["kc"].clone(), dev["vc"].clone()
    out = ak.attention_with_kvcache(dev["q"], kc, vc, dev["lens"], k_new=dev["kn"], v_new=dev["vn"],
                                    block_table=dev["table"], backend="cuda")
    dk, dv = dev["dk"].clone(), dev["dv"].clone()
    ref = ak.attention_with_kvcache(dev["q"], dk, dv, dev["lens"], k_new=dev["kn"], v_new=dev["vn"], backend="cuda")
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


def test_bad_paged_input_names_expected_and_given():
    s = paged_setup(4, [3, 6], lnew=1)
    q, kc, vc, table, lens, kn, vn = (s[k] for k in ("q", "kc", "vc", "table", "lens", "kn", "vn"))

    def call(**kw):
        args = dict(q=q, k_cache=kc, v_cache=vc, cache_seqlens=lens) | {k: v for k, v in kw.items()
                                                                          if k in ("q", "k_cache", "cache_seqlens")}
        rest = dict(k_new=kn, v_new=vn, block_table=table) | {k: v for k, v in kw.items() if k not in args}
        return ak.attention_with_kvcache(*args.values(), **rest)

    with pytest.raises(TypeError, match="expected block_table of dtype int32, got int64"):
        call(block_table=table.long())
    with pytest.raises(ValueError, match=r"expected block_table to be 2-D \(B, max_pages\)"):
        call(block_table=table[0])
    with pytest.raises(ValueError, match=r"expected cache_seqlens of shape \(2,\) \(B,\), block_table's B"):
        call(cache_seqlens=lens[:1])
    with pytest.raises(ValueError, match=r"cache_seqlens \+ Lnew <= max_pages \* page_size = 12"):
        call(cache_seqlens=torch.tensor([3, 12], dtype=I32))
    bad = table.clone()
    bad[1, 0] = kc.shape[0]
    with pytest.raises(ValueError, match=r"pages block_table names .* in \[0, num_pages\) = \[0, \d+\), got ids"):
        call(block_table=bad)
    with pytest.raises(ValueError, match=r"expected k_new of shape \(2, 2, \*, 16\)"):
        call(k_new=kn[:, :1], v_new=vn[:, :1])
    with pytest.raises(ValueError, match=r"expected q of shape \(2, \*, \*, 16\)"):
        call(q=q[:1])
    with pytest.raises(ValueError, match=r"cache_seqlens \+ Lnew <= max_pages \* page_size"):
        ak.kvcache_append(kc, vc, kn, vn, torch.tensor([3, 12], dtype=I32), block_table=table)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if not isinstance(b, str)])
def test_the_triton_kernels_never_touch_a_page_outside_the_cache(backend):
    """A bad table on the device (validation reads host tables only): the kernels neither read nor write a page
    id outside [0, num_pages). The append skips those rows; the decode treats them as keys no query sees."""
    from aigc_kernels.triton import attention as A

    page = 4
    s = paged_setup(page, [6, 9], lnew=2)
    bad = s["table"].clone()
    bad[1, 2] = s["kc"].shape[0] + 5  # rows 8..11 of sequence 1: its last old row (8) and both new ones (9, 10)
    kc, vc = s["kc"].clone(), s["vc"].clone()
    A.kvcache_append_op(kc, vc, s["kn"], s["vn"], s["lens"], bad)  # no validation: straight to the kernel
    want_kc, want_vc = s["kc"].clone(), s["vc"].clone()
    R.kvcache_append(want_kc, want_vc, s["kn"][:1], s["vn"][:1], s["lens"][:1], s["table"][:1])
    assert torch.equal(kc, want_kc) and torch.equal(vc, want_vc)  # sequence 1's rows were not written anywhere
    out = A.attention_decode(s["q"], kc, vc, s["lens"], 2, True, 0.25, bad)
    assert torch.isfinite(out).all()
    # sequence 1 sees its rows 0..7 only (page 2 is outside the cache): the contiguous cache cut at 8 rows
    want = ak.attention_with_kvcache(s["q"][1:], s["dk"][1:], s["dv"][1:], torch.tensor([8], dtype=I32),
                                     causal=False, scale=0.25, backend="torch")
    torch.testing.assert_close(out[1:], want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# ak.attention_varlen(block_table=..., seqused_k=...): packed queries over paged keys (chunked prefill, mixed
# prefill + decode in one launch), causal bottom-right per sequence; forward only
# ----------------------------------------------------------------------------------------------------------------
def varlen_setup(page: int, lq: list[int], lk: list[int], *, heads=(4, 2), d=16, share_prefix=0, seed=0,
                 spare_rows=2, dtype=torch.float32):
    """Paged caches holding lk[b] keys of sequence b (pages shuffled, a table wider than needed with garbage past
    each sequence's pages, optionally a shared first page), the same keys packed contiguously, packed queries."""
    s = paged_setup(page, lk, 0, b_heads=heads, d=d, share_prefix=share_prefix, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    cu_q = torch.tensor([0] + torch.tensor(lq).cumsum(0).tolist(), dtype=I32)
    cu_k = torch.tensor([0] + torch.tensor(lk).cumsum(0).tolist(), dtype=I32)
    q = torch.randn(int(cu_q[-1]) + spare_rows, heads[0], d, generator=g).to(dtype)  # rows past the last: no seq
    k_packed = torch.cat([s["dk"][i, :, :n].transpose(0, 1) for i, n in enumerate(lk)])
    v_packed = torch.cat([s["dv"][i, :, :n].transpose(0, 1) for i, n in enumerate(lk)])
    return dict(q=q, kc=s["kc"], vc=s["vc"], table=s["table"], cu_q=cu_q, cu_k=cu_k, kp=k_packed, vp=v_packed,
                used=torch.tensor(lk, dtype=I32), mq=max(lq), mk=max(lk))


MIXED = ([7, 1, 0, 16, 1, 3], [23, 40, 5, 16, 1, 3])  # chunked prefill, decode rows, an empty query, Lq = Lk


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page", [1, 16, 32, 64, 128, 256])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen_over_pages_equals_the_contiguous_keys(backend, page, causal):
    if page == 1 and backend != "torch":
        pytest.skip("page size 1: the torch backend (the kernels are checked from 16 up)")
    lq, lk = MIXED
    s = varlen_setup(page, lq, lk, share_prefix=page if page <= 16 else 0)
    kw = dict(causal=causal, backend=backend)
    paged = ak.attention_varlen(s["q"], s["kc"], s["vc"], s["cu_q"], s["cu_k"], s["mq"], s["mk"],
                                block_table=s["table"], **kw)
    dense = ak.attention_varlen(s["q"], s["kp"], s["vp"], s["cu_q"], s["cu_k"], s["mq"], s["mk"], **kw)
    ref = R.attention_varlen(s["q"].double(), s["kp"].double(), s["vp"].double(), s["cu_q"], s["cu_k"], s["mq"],
                             s["mk"], causal=causal)
    if backend == "torch":  # the torch backend gathers the same rows: the same arithmetic, bit for bit
        assert torch.equal(paged, dense)
    torch.testing.assert_close(paged.double(), ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(paged, dense, atol=2e-5, rtol=2e-5)
    assert torch.equal(paged[int(s["cu_q"][-1]):], torch.zeros_like(paged[int(s["cu_q"][-1]):]))
    by_count = ak.attention_varlen(s["q"], s["kc"], s["vc"], s["cu_q"], None, s["mq"], s["mk"],
                                   block_table=s["table"], seqused_k=s["used"], **kw)
    assert torch.equal(by_count, paged)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_paged_gqa_mqa_window_and_seqused_without_pages(backend):
    lq, lk = MIXED
    for heads in ((8, 2), (4, 1), (4, 4)):
        s = varlen_setup(16, lq, lk, heads=heads, seed=3)
        out = ak.attention_varlen(s["q"], s["kc"], s["vc"], s["cu_q"], s["cu_k"], s["mq"], s["mk"], causal=True,
                                  window_size=(5, 0), block_table=s["table"], backend=backend)
        ref = R.attention_varlen(s["q"].double(), s["kp"].double(), s["vp"].double(), s["cu_q"], s["cu_k"], s["mq"],
                                 s["mk"], causal=True, window_size=(5, 0))
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    # seqused_k on packed keys: sequence b sees the first seqused_k[b] rows of its span (FA3's semantics)
    s = varlen_setup(16, lq, lk, seed=4)
    used = torch.tensor([n // 2 + (n % 2) for n in lk], dtype=I32)
    out = ak.attention_varlen(s["q"], s["kp"], s["vp"], s["cu_q"], s["cu_k"], s["mq"], s["mk"], causal=True,
                              seqused_k=used, backend=backend)
    cu_used = torch.tensor([0] + used.cumsum(0).tolist(), dtype=I32)
    keep = torch.cat([torch.arange(int(a), int(a) + int(n)) for a, n in zip(s["cu_k"][:-1], used, strict=True)])
    ref = R.attention_varlen(s["q"].double(), s["kp"][keep].double(), s["vp"][keep].double(), s["cu_q"], cu_used,
                             s["mq"], s["mk"], causal=True)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_prefill_then_decode_through_pages_matches_one_prefill(backend):
    """A prompt written into pages chunk by chunk (kvcache_append) and attended chunk by chunk (attention_varlen
    over the pages) gives what one causal prefill over the whole prompt gives, and so do the decode rows."""
    g = torch.Generator().manual_seed(7)
    page, hq, hkv, d, n = 16, 4, 2, 16, 45
    kc, vc = torch.zeros(8, page, hkv, d), torch.zeros(8, page, hkv, d)
    table = torch.tensor([[5, 2, 7, 0]], dtype=I32)
    q, k, v = (torch.randn(n, h, d, generator=g) for h in (hq, hkv, hkv))
    full = R.attention(q.transpose(0, 1)[None].double(), k.transpose(0, 1)[None].double(),
                       v.transpose(0, 1)[None].double(), causal=True)[0]
    done, outs = 0, []
    for chunk in (20, 13, 1, 1, 10):
        kn, vn = (t[done:done + chunk].transpose(0, 1)[None] for t in (k, v))
        ak.kvcache_append(kc, vc, kn, vn, torch.tensor([done], dtype=I32), block_table=table, backend=backend)
        cu_q = torch.tensor([0, chunk], dtype=I32)
        outs.append(ak.attention_varlen(q[done:done + chunk], kc, vc, cu_q, None, chunk, done + chunk, causal=True,
                                        block_table=table, seqused_k=torch.tensor([done + chunk], dtype=I32),
                                        backend=backend))
        done += chunk
    torch.testing.assert_close(torch.cat(outs).double(), full.transpose(0, 1), atol=2e-5, rtol=2e-5)


def test_the_cuda_attention_takes_pages_and_seqused_k():
    """The CUDA forward takes packed queries over pages and seqused_k (flash_fwd's seqused_k / block_table: the
    paged fwd_kernel instantiation with packed q; run under emulation in tests/test_kernel_emulation.py); forward
    only, and the op's fake impl and autograd say so."""
    lq, lk = MIXED
    s = varlen_setup(16, lq, lk, d=64, dtype=torch.float16)
    from aigc_kernels.backend import implementation
    from aigc_kernels.validation import make_call

    for kw in (dict(block_table=s["table"]), dict(block_table=s["table"], seqused_k=s["used"])):
        call = make_call("attention_varlen", s["q"], s["kc"], s["vc"], s["cu_q"], s["cu_k"], s["mq"], s["mk"], **kw)
        assert implementation("attention_varlen", "cuda").why_not(call) is None
    call = make_call("attention_varlen", s["q"], s["kp"], s["vp"], s["cu_q"], s["cu_k"], s["mq"], s["mk"],
                     seqused_k=s["used"])
    assert implementation("attention_varlen", "cuda").why_not(call) is None
    if not _have_ext():
        pytest.skip("the C++ extension is not built here")
    import aigc_kernels.cuda  # noqa: F401  (fake impls and autograd)

    meta = {k: (v.to("meta") if torch.is_tensor(v) else v) for k, v in s.items()}
    q = meta["q"].clone().requires_grad_()
    out, lse = torch.ops.aigc_kernels.flash_fwd(q, meta["kc"], meta["vc"], meta["cu_q"], None, s["mq"], s["mk"],
                                                0.125, True, -1, -1, meta["used"], meta["table"])
    assert out.shape == q.shape and lse.shape == (q.shape[1], q.shape[0])
    with pytest.raises(RuntimeError, match="forward only"):
        out.sum().backward()


@pytest.mark.gpu
@pytest.mark.parametrize("page", [16, 64, 256])
def test_cuda_varlen_over_pages_equals_the_contiguous_keys_on_a_gpu(page):
    if "cuda" not in ak.available_backends():
        pytest.skip("no CUDA extension")
    lq, lk = MIXED
    s = varlen_setup(page, lq, lk, heads=(8, 2), d=128, dtype=torch.bfloat16,
                     share_prefix=page if page <= 16 else 0)
    dev = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in s.items()}
    args = (dev["cu_q"], dev["cu_k"], dev["mq"], dev["mk"])
    paged = ak.attention_varlen(dev["q"], dev["kc"], dev["vc"], *args, causal=True, block_table=dev["table"],
                                backend="cuda")
    by_count = ak.attention_varlen(dev["q"], dev["kc"], dev["vc"], dev["cu_q"], None, dev["mq"], dev["mk"],
                                   causal=True, block_table=dev["table"], seqused_k=dev["used"], backend="cuda")
    dense = ak.attention_varlen(dev["q"], dev["kp"], dev["vp"], *args, causal=True, backend="cuda")
    assert torch.equal(paged, by_count)
    torch.testing.assert_close(paged, dense, atol=2e-2, rtol=2e-2)


def test_bad_varlen_paged_input_names_expected_and_given():
    lq, lk = MIXED
    s = varlen_setup(16, lq, lk)
    args = (s["q"], s["kc"], s["vc"], s["cu_q"], s["cu_k"], s["mq"], s["mk"])

    def call(*a, **kw):
        return ak.attention_varlen(*(a or args), **{"block_table": s["table"], **kw})

    with pytest.raises(TypeError, match="block_table.*int32.*int64"):
        call(block_table=s["table"].long())
    with pytest.raises(ValueError, match=r"block_table \(batch, max_pages\) with batch = 6"):
        call(block_table=s["table"][:2])
    with pytest.raises(ValueError, match=r"expected k to be 4-D \(num_pages, page_size, Hkv, D\).*got shape"):
        call(s["q"], s["kp"], s["vp"], *args[3:])
    bad = s["table"].clone()
    bad[1, 1] = 10**4
    with pytest.raises(ValueError, match=r"in \[0, num_pages\)"):
        call(block_table=bad)
    with pytest.raises(ValueError, match="fit its block table"):
        call(block_table=s["table"][:, :1])
    with pytest.raises(ValueError, match="more than max_seqlen_k"):
        call(*args[:6], 4)
    with pytest.raises(ValueError, match="cu_seqlens_k, or seqused_k"):
        call(*args[:4], None, *args[5:])
    with pytest.raises(ValueError, match=r"seqused_k.*\(batch,\)"):
        call(seqused_k=s["used"][:2])
    with pytest.raises(ValueError, match="forward only"):
        call(s["q"].clone().requires_grad_(), *args[1:])
    with pytest.raises(ValueError, match="without them|packed k/v"):
        ak.attention_varlen(s["q"], s["kp"], s["vp"], s["cu_q"], None, s["mq"], s["mk"], seqused_k=s["used"])


@KERNEL
def test_the_triton_varlen_kernel_never_reads_a_page_outside_the_cache():
    """On the device validation cannot read the table: the kernel skips page ids outside [0, num_pages)."""
    if "triton" not in ak.available_backends():
        pytest.skip("no triton")
    from aigc_kernels.triton import attention as A

    lq, lk = MIXED
    s = varlen_setup(16, lq, lk)
    bad = s["table"].clone()
    bad[0, 0], bad[1, 2] = 10**6, -5
    out = A.attention_varlen_paged(s["q"], s["kc"], s["vc"], s["cu_q"], s["cu_k"], s["used"], bad, s["mq"], s["mk"],
                                   True, 0.25, -1, 0)
    assert torch.isfinite(out).all()


@KERNEL
def test_opcheck_of_the_triton_varlen_paged_op():
    if "triton" not in ak.available_backends():
        pytest.skip("no triton")
    from aigc_kernels.triton import attention as A

    lq, lk = [3, 1], [20, 5]
    s = varlen_setup(16, lq, lk)
    torch.library.opcheck(A.attention_varlen_paged, (s["q"], s["kc"], s["vc"], s["cu_q"], s["cu_k"], s["used"],
                                                     s["table"], s["mq"], s["mk"], True, 0.25, -1, 0))
