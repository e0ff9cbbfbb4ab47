"""The functional API: backend selection, argument checks, empty inputs, torch.compile."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import backend as B
from aigc_kernels import reference as R


def qkv(b=2, hq=4, hkv=2, lq=5, lk=7, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, hq, lq, d, generator=g, dtype=dtype), torch.randn(b, hkv, lk, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, lk, d, generator=g, dtype=dtype))


# ----------------------------------------------------------------------------------------------
# backend selection
# ----------------------------------------------------------------------------------------------
def test_default_and_precedence(monkeypatch):
    monkeypatch.delenv("AIGC_KERNELS_BACKEND", raising=False)
    assert ak.get_backend() == "auto"
    monkeypatch.setenv("AIGC_KERNELS_BACKEND", "torch")
    assert ak.get_backend() == "torch"
    ak.set_backend("triton")
    assert ak.get_backend() == "triton"
    with ak.use_backend("cuda"):
        assert ak.get_backend() == "cuda"
        with ak.use_backend("AUTO"):
            assert ak.get_backend() == "auto"
        assert ak.get_backend() == "cuda"
    assert ak.get_backend() == "triton"
    ak.set_backend(None)
    assert ak.get_backend() == "torch"


def test_invalid_backend_names(monkeypatch):
    with pytest.raises(ValueError, match=r"set_backend: expected a backend in .*got 'cudnn'"):
        ak.set_backend("cudnn")
    with pytest.raises(ValueError, match="use_backend"):
        with ak.use_backend("fast"):
            pass
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"ak.attention\(backend=...\): expected a backend"):
        ak.attention(q, k, v, backend="xla")
    monkeypatch.setenv("AIGC_KERNELS_BACKEND", "nope")
    with pytest.raises(ValueError, match=r"\$AIGC_KERNELS_BACKEND: expected a backend"):
        ak.attention(q, k, v)


def test_available_backends_are_truthful():
    avail = ak.available_backends()
    status = B.backend_status()
    assert "torch" in avail
    assert ("cuda" in avail) == (torch.cuda.is_available() and status["cuda"][0])
    if not torch.cuda.is_available():
        assert "cuda" not in avail
        import os

        assert ("triton" in avail) == (os.environ.get("TRITON_INTERPRET") == "1")


def test_available_backends_without_interpreter_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("on a GPU triton is available without the interpreter")
    code = "import aigc_kernels as ak; print(ak.available_backends())"
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['torch', 'reference']"


def test_explicit_backend_never_falls_back(monkeypatch):
    # a backend that cannot run the call (here: CUDA kernels, CPU tensors, or no GPU at all) raises, never
    # falls back to the reference
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(ak.BackendError, match=r"ak.attention\(backend='cuda'\): the 'cuda' backend"):
        ak.attention(q, q, q, backend="cuda")
    # an op a backend does not implement (every public op has all four today: a registry with one that has not)
    monkeypatch.setitem(ak.backend._REGISTRY, "kvcache_append", {
        b: impl for b, impl in ak.backend._REGISTRY["kvcache_append"].items() if b != "triton"})
    kc = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ak.BackendError, match="the 'triton' backend has no implementation of kvcache_append"):
        ak.kvcache_append(kc, kc.clone(), kc[:, :, :1].clone(), kc[:, :, :1].clone(), torch.zeros(1, dtype=torch.int32),
                          backend="triton")
    # a kernel that exists but cannot take the inputs (head dim 8 < 16) raises too
    q, k, v = qkv()
    with pytest.raises(ak.BackendError, match="head dims 16 to 256, got 8|needs CUDA tensors|not available"):
        ak.attention(q, k, v, backend="triton")
    with ak.use_backend("cuda"):
        with pytest.raises(ak.BackendError):
            ak.layer_norm(torch.randn(3, 8))


def test_cuda_backend_on_cpu_tensors_names_the_reason():
    kc = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ak.BackendError, match="needs CUDA tensors, got tensors on cpu"):
        ak.kvcache_append(kc, kc.clone(), kc[:, :, :1].clone(), kc[:, :, :1].clone(),
                          torch.zeros(1, dtype=torch.int32), backend="cuda")


def test_auto_uses_torch_on_cpu_and_logs_why(caplog, monkeypatch):
    x = torch.randn(4, 8)
    monkeypatch.setattr(B, "_CPU_AUTO", {})  # (a fresh process: no op has run on CPU yet)
    with caplog.at_level("DEBUG", logger="aigc_kernels.backend"):
        kc = torch.zeros(1, 1, 4, 8)
        for name in ("auto", "auto", "AUTO"):  # ("AUTO" goes through select(): the same memo)
            ak.kvcache_append(kc, kc.clone(), torch.ones(1, 1, 1, 8), torch.ones(1, 1, 1, 8),
                              torch.zeros(1, dtype=torch.int32), backend=name)
    assert kc[0, 0, 0].eq(1).all()
    assert "auto chose 'torch'" in caplog.text and "tensors on cpu" in caplog.text
    assert caplog.text.count("ak.kvcache_append: auto chose") == 1  # once per op, not per call
    torch.testing.assert_close(ak.layer_norm(x, backend="auto"), R.layer_norm(x))
    why = ak.explain("layer_norm", x)
    assert why.backend == "torch" and "tensors on cpu" in why.reason
    # a "torch" implementation registered later is what auto runs on CPU from then on
    monkeypatch.setitem(B._REGISTRY, "layer_norm", dict(B._REGISTRY["layer_norm"]))
    ak.layer_norm(x, backend="auto")
    B.register("layer_norm", "torch", lambda: lambda *call: "registered")
    assert ak.layer_norm(x, backend="auto") == "registered"


def test_registered_implementation_is_used_and_checked(monkeypatch):
    """A kernel registered for a backend runs when named, and its check's reason is reported."""
    calls = []

    def fake_rms(x, weight, eps, residual):  # fn(*call): the normalized call's fields, in order
        calls.append(x.shape)
        return R.rms_norm(x, weight, eps, residual=residual)

    def only_even(call):  # the check takes the normalized call
        return None if call.x.shape[-1] % 2 == 0 else f"hidden size {call.x.shape[-1]} is odd"

    monkeypatch.setitem(B._REGISTRY, "rms_norm", dict(B._REGISTRY["rms_norm"]))
    B.register("rms_norm", "triton", lambda: fake_rms, only_even)
    monkeypatch.setattr(B, "_available", lambda name: True)
    ak.rms_norm(torch.randn(3, 8), backend="triton")
    assert calls == [torch.Size([3, 8])]
    with pytest.raises(ak.BackendError, match="hidden size 7 is odd"):
        ak.rms_norm(torch.randn(3, 7), backend="triton")
    # auto on CPU runs PyTorch's own call; explicit naming is the only way onto the kernel there
    ak.rms_norm(torch.randn(3, 8), backend="auto")
    assert len(calls) == 1


def test_implementations_table():
    table = B.implementations()
    assert set(table) == set(ak.ops.PUBLIC_OPS)
    assert all("torch" in backends and "reference" in backends for backends in table.values())
    assert "cuda" in table["kvcache_append"]


# ----------------------------------------------------------------------------------------------
# bad input: every message names what was expected and what was given
# ----------------------------------------------------------------------------------------------
def bad_attention_calls():
    q, k, v = qkv()
    yield (lambda: ak.attention(q[0], k, v)), ValueError, \
        r"expected q to be 4-D \(B, Hq, Lq, D\), got shape \(4, 5, 8\)"
    yield (lambda: ak.attention(q, k.half(), v)), TypeError, \
        r"expected k to have the dtype of q \(float32\), got float16"
    yield (lambda: ak.attention(q.int(), k, v)), TypeError, \
        "expected q of dtype float16, bfloat16, float32, float64, got int32"
    yield (lambda: ak.attention(q, k[..., :4], v)), ValueError, r"expected k of shape \(2, \*, \*, 8\)"
    yield (lambda: ak.attention(q, k, v[:, :, :3])), ValueError, r"expected v of shape \(2, 2, 7, 8\)"
    q3, k3, v3 = qkv(hq=3, hkv=2)
    yield (lambda: ak.attention(q3, k3, v3)), ValueError, "Hq=3 to be a multiple of the key/value heads Hkv=2"
    yield (lambda: ak.attention(q, k, v, attn_mask=torch.ones(3, 7, dtype=torch.bool))), ValueError, \
        r"attn_mask broadcastable to \(B, Hq, Lq, Lk\) = \(2, 4, 5, 7\), got shape \(3, 7\)"
    yield (lambda: ak.attention(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.int64))), TypeError, \
        "attn_mask of dtype bool"
    yield (lambda: ak.attention(q, k, v, dropout_p=1.0)), ValueError, r"dropout_p in \[0.0, 1.0\), got 1.0"
    yield (lambda: ak.attention(q, k, v, window_size=(2,))), TypeError, "window_size=\\(left, right\\)"
    yield (lambda: ak.attention(q, k, v, window_size=(-2, 0))), ValueError, "entries >= -1"
    yield (lambda: ak.attention(q, k, v, causal=1)), TypeError, "causal to be a bool"
    yield (lambda: ak.attention(q, [1], v)), TypeError, "expected k to be a torch.Tensor, got list"
    yield (lambda: ak.attention(q, k, v, scale="x")), TypeError, "scale to be a number"


def bad_other_calls():
    x = torch.randn(3, 8)
    yield (lambda: ak.layer_norm(x, torch.ones(7))), ValueError, r"expected weight of shape \(8,\)"
    yield (lambda: ak.layer_norm(x, residual=torch.randn(3, 9))), ValueError, r"expected residual of shape \(3, 8\)"
    yield (lambda: ak.layer_norm(x, residual=x.half())), TypeError, "residual to have the dtype of x"
    yield (lambda: ak.layer_norm(x, eps=-1.0)), ValueError, "eps in"
    yield (lambda: ak.rms_norm(torch.tensor(1.0))), ValueError, "at least 1 dim"
    yield (lambda: ak.rms_norm(x.long())), TypeError, "expected x of dtype"
    yield (lambda: ak.linear(x, torch.randn(4, 7))), ValueError, r"expected weight of shape \(\*, 8\)"
    yield (lambda: ak.linear(x, torch.randn(4, 8), torch.randn(5))), ValueError, r"expected bias of shape \(4,\)"
    yield (lambda: ak.linear(x, torch.randn(4, 8), activation="tanh")), ValueError, "expected activation 'relu'"
    yield (lambda: ak.linear(x, torch.randn(4, 8, dtype=torch.float64))), TypeError, "weight to have the dtype of x"
    w_in, w_out = torch.randn(16, 8), torch.randn(8, 16)
    yield (lambda: ak.ffn(x, w_in, None, w_out.T, None)), ValueError, r"expected w_out of shape \(8, 16\)"
    yield (lambda: ak.ffn(x, w_in, None, w_out, None, w_gate=torch.randn(15, 8))), ValueError, "w_gate of shape"
    yield (lambda: ak.ffn(x, w_in, None, w_out, None, b_gate=torch.randn(16))), ValueError, "b_gate without w_gate"
    yield (lambda: ak.ffn(x, w_in, None, w_out, None, activation=None, w_gate=w_in)), ValueError, "expected activation"
    cq = torch.tensor([0, 3, 5], dtype=torch.int32)
    qv = torch.randn(5, 2, 8)
    yield (lambda: ak.attention_varlen(qv, qv, qv, cq.long(), cq, 3, 3)), TypeError, "cu_seqlens_q of dtype int32"
    yield (lambda: ak.attention_varlen(qv, qv, qv, cq, cq[:2], 3, 3)), ValueError, "of one length"
    yield (lambda: ak.attention_varlen(qv, qv, qv, cq, cq, 2, 3)), ValueError, "more than max_seqlen_q=2"
    yield (lambda: ak.attention_varlen(qv, qv, qv, torch.tensor([0, 4, 9], dtype=torch.int32), cq, 5, 5)), \
        ValueError, "rise from 0 to at most 5"
    q, kc = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 6, 8)
    lens = torch.tensor([2, 5], dtype=torch.int32)
    new = torch.randn(2, 2, 1, 8)
    yield (lambda: ak.attention_with_kvcache(q, kc, kc, lens, k_new=new)), ValueError, "k_new and v_new together"
    yield (lambda: ak.attention_with_kvcache(q, kc, kc, lens.long())), TypeError, "cache_seqlens of dtype int32"
    yield (lambda: ak.attention_with_kvcache(q, kc, kc, lens[:1])), ValueError, r"cache_seqlens of shape \(2,\)"
    yield (lambda: ak.attention_with_kvcache(q, kc, kc, lens + 1, k_new=new, v_new=new)), ValueError, \
        r"0 <= cache_seqlens <= Lmax - Lnew = 5 .*got values in \[3, 6\]"
    # the decoding step's fast path (with the append) hands anything it does not recognise to the full check
    yield (lambda: ak.attention_with_kvcache(q, kc, kc, lens, k_new=new, v_new=new[:, :1])), ValueError, \
        "v_new of shape"
    yield (lambda: ak.attention_with_kvcache(q, kc, kc, lens, k_new=new.double(), v_new=new.double())), TypeError, \
        "k_new to have the dtype of q"
    yield (lambda: ak.attention_with_kvcache(q, kc, kc, lens, k_new=new[:1], v_new=new[:1])), ValueError, \
        "k_new of shape"
    yield (lambda: ak.attention_with_kvcache(q, kc, kc, lens, k_new=new, v_new=new, scale=float("nan"))), \
        ValueError, "scale"
    yield (lambda: ak.kvcache_append(kc, kc, torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8), lens * 0)), \
        ValueError, "7 new rows do not fit a cache of Lmax=6"
    # the append's fast path, likewise
    yield (lambda: ak.kvcache_append(kc, kc, new, new.double(), lens)), TypeError, \
        "v_new to have the dtype of k_cache"
    yield (lambda: ak.kvcache_append(kc, kc, new, new[:, :1], lens)), ValueError, "v_new of shape"
    yield (lambda: ak.kvcache_append(kc, kc[:, :1], new, new, lens)), ValueError, "v_cache of shape"
    yield (lambda: ak.kvcache_append(kc, kc, new[..., :4], new[..., :4], lens)), ValueError, "k_new of shape"
    yield (lambda: ak.kvcache_append(kc, kc, new, new, lens.long())), TypeError, "cache_seqlens of dtype int32"
    yield (lambda: ak.kvcache_append(kc, kc, new, new, lens[:1])), ValueError, r"cache_seqlens of shape \(2,\)"
    yield (lambda: ak.kvcache_append(kc[:1], kc[:1], new[:1], new[:1], lens[1:] + 1)), ValueError, \
        r"got values in \[6, 6\]"
    yield (lambda: ak.kvcache_append(kc, kc, new, new, lens - 3)), ValueError, r"got values in \[-1, 2\]"
    # q or the cache of the wrong rank, with the new rows given (the fast path reads them after the ranks)
    yield (lambda: ak.attention_with_kvcache(torch.randn(()), kc, kc, lens, k_new=new, v_new=new)), ValueError, \
        r"expected q to be 4-D"
    yield (lambda: ak.attention_with_kvcache(q[0], kc, kc, lens, k_new=new, v_new=new)), ValueError, \
        r"expected q to be 4-D"
    yield (lambda: ak.attention_with_kvcache(q, kc[0, 0], kc[0, 0], lens, k_new=new, v_new=new)), ValueError, \
        r"expected k_cache to be 4-D"
    yield (lambda: ak.kvcache_append(kc[0], kc[0], new, new, lens)), ValueError, r"expected k_cache to be 4-D"
    # batch 1 (the fast path's one-length branch): past the end and negative
    yield (lambda: ak.attention_with_kvcache(q[:1], kc[:1], kc[:1], lens[1:] + 1, k_new=new[:1], v_new=new[:1])), \
        ValueError, r"0 <= cache_seqlens <= Lmax - Lnew = 5 .*got values in \[6, 6\]"
    yield (lambda: ak.attention_with_kvcache(q[:1], kc[:1], kc[:1], lens[1:] - 6)), ValueError, \
        r"got values in \[-1, -1\]"


@pytest.mark.parametrize("call,exc,pattern", [*bad_attention_calls(), *bad_other_calls()])
def test_bad_input_messages(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_device_mismatch_message():
    if not torch.cuda.is_available():
        meta = torch.randn(2, 2, 5, 8, device="meta")
        q, k, v = qkv(hq=2)
        with pytest.raises(ValueError, match="expected k on q's device cpu, got meta"):
            ak.attention(q, meta, meta)
    else:
        q, k, v = qkv()
        with pytest.raises(ValueError, match="device"):
            ak.attention(q.cuda(), k, v)


@pytest.mark.parametrize("mask_shape", [(5, 7), (1, 7), (5, 1), (7,), (1,), (), (2, 1, 1, 7), (1, 4, 5, 7),
                                        (2, 4, 5, 7), (4, 1, 1), (1, 1, 1, 1, 7), (3, 7), (5, 6), (2, 2, 5, 7),
                                        (3, 1, 5, 7), (0, 7), (8,)])
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.float16])
def test_mask_fast_path_accepts_what_broadcasting_accepts(mask_shape, dtype):
    """validation's fast path for masked calls takes exactly the masks torch.broadcast_shapes says fit
    (B, Hq, Lq, Lk) = (2, 4, 5, 7), in every dtype the full check takes; the rest raise its error."""
    from aigc_kernels import validation

    q, k, v = qkv(hq=4, hkv=2, lq=5, lk=7)
    mask = torch.ones(mask_shape, dtype=dtype) if dtype == torch.bool else torch.zeros(mask_shape, dtype=dtype)
    try:
        fits = torch.broadcast_shapes(mask_shape, (2, 4, 5, 7)) == (2, 4, 5, 7)
    except RuntimeError:
        fits = False
    if fits:
        call = validation.attention_call(q, k, v, False, mask)
        assert call.attn_mask is mask
        torch.testing.assert_close(ak.attention(q, k, v, attn_mask=mask), ak.attention(q, k, v), atol=1e-6, rtol=1e-6)
    else:
        with pytest.raises(ValueError, match="broadcastable"):
            ak.attention(q, k, v, attn_mask=mask)


def _mixed_device_calls():
    """Every tensor argument of every op in turn on the meta device (and x on meta with the rest on the
    CPU): the fast paths of validation must send each to the full check's device error."""
    def m(t):
        return t.to("meta")

    x, w, b = torch.randn(3, 8), torch.randn(8), torch.randn(8)
    w_in, w_out = torch.randn(16, 8), torch.randn(8, 16)
    q, kc, lens = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 6, 8), torch.tensor([2, 3], dtype=torch.int32)
    kn = torch.randn(2, 2, 1, 8)
    yield "layer_norm weight", lambda: ak.layer_norm(x, m(w), b)
    yield "layer_norm bias", lambda: ak.layer_norm(x, w, m(b))
    yield "layer_norm residual", lambda: ak.layer_norm(x, w, b, residual=m(x))
    yield "layer_norm x", lambda: ak.layer_norm(m(x), w, b)
    yield "rms_norm weight", lambda: ak.rms_norm(x, m(w))
    yield "rms_norm residual", lambda: ak.rms_norm(x, w, residual=m(x))
    yield "linear weight", lambda: ak.linear(x, m(w_in))
    yield "linear bias", lambda: ak.linear(x, w_in, m(torch.randn(16)))
    yield "linear x", lambda: ak.linear(m(x), w_in, torch.randn(16))
    yield "ffn w_in", lambda: ak.ffn(x, m(w_in), None, w_out, None)
    yield "ffn b_out", lambda: ak.ffn(x, w_in, None, w_out, m(b))
    yield "ffn w_gate", lambda: ak.ffn(x, w_in, None, w_out, None, activation="silu", w_gate=m(w_in))
    yield "kvcache k_cache", lambda: ak.attention_with_kvcache(q, m(kc), kc, lens)
    yield "kvcache seqlens", lambda: ak.attention_with_kvcache(q, kc, kc, m(lens))
    yield "kvcache k_new", lambda: ak.attention_with_kvcache(q, kc, kc, lens, k_new=m(kn), v_new=kn)
    yield "kvcache empty v_new", lambda: ak.attention_with_kvcache(q, kc, kc, lens, k_new=kn[:, :, :0],
                                                                    v_new=m(kn[:, :, :0]))
    yield "kvcache_append v_new", lambda: ak.kvcache_append(kc, kc, kn, m(kn), lens)
    yield "kvcache_append k_cache", lambda: ak.kvcache_append(m(kc), kc, kn, kn, lens)
    yield "kvcache_append seqlens", lambda: ak.kvcache_append(kc, kc, kn, kn, m(lens))


@pytest.mark.parametrize("name,call", list(_mixed_device_calls()), ids=[n for n, _ in _mixed_device_calls()])
def test_every_op_refuses_mixed_devices(name, call):
    with pytest.raises(ValueError, match="device|on cpu, got meta"):
        call()


# ----------------------------------------------------------------------------------------------
# empty inputs and torch.compile
# ----------------------------------------------------------------------------------------------
def test_empty_inputs_give_empty_or_zero_results():
    q, k, v = qkv(b=0)
    assert ak.attention(q, k, v).shape == (0, 4, 5, 8)
    q, k, v = qkv(lq=0)
    assert ak.attention(q, k, v).shape == (2, 4, 0, 8)
    q, k, v = qkv(lk=0)
    out = ak.attention(q, k, v)
    assert out.shape == (2, 4, 5, 8) and torch.equal(out, torch.zeros_like(out))  # no key: zeros
    assert ak.layer_norm(torch.randn(0, 16)).shape == (0, 16)
    assert ak.linear(torch.randn(0, 16), torch.randn(4, 16)).shape == (0, 4)


def test_torch_compile_fullgraph_over_the_functional_api():
    q, k, v = qkv()
    x, w, b = torch.randn(3, 8), torch.randn(8), torch.randn(8)
    wl = torch.randn(8, 8)
    lens = torch.tensor([1, 3], dtype=torch.int32)

    def step(q, k, v, x, w, b, kc, vc):
        o = ak.attention(q, k, v, causal=True, window_size=(3, 0))
        y, s = ak.layer_norm(x, w, b, residual=x)
        z = ak.ffn(y, wl, b, wl, None, activation="silu", w_gate=wl)
        d = ak.attention_with_kvcache(q[:, :, :1], kc, vc, lens, k_new=k[:, :, :1], v_new=v[:, :, :1])
        return o.sum() + z.sum() + ak.rms_norm(s, w).sum() + d.sum() + ak.linear(x, wl, activation="gelu").sum()

    kc, vc = torch.zeros(2, 2, 6, 8), torch.zeros(2, 2, 6, 8)
    eager = step(q, k, v, x, w, b, kc.clone(), vc.clone())
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(q, k, v, x, w, b, kc, vc)
    torch.testing.assert_close(compiled, eager)
    assert torch.equal(kc[:, :, 1:2].squeeze(2)[0], k[0, :, 0])  # the in-place cache write survived compile


@pytest.mark.parametrize("triton_v,numpy_v,broken", [("3.6.0", "2.4.6", True), ("3.6.0", "2.3.5", False),
                                                     ("3.8.0", "2.4.6", False), ("3.5.1", "2.4.0", True)])
def test_triton_interpreter_numpy_incompatibility_named(monkeypatch, triton_v, numpy_v, broken):
    import importlib.metadata

    from aigc_kernels import _availability

    monkeypatch.setattr(importlib.metadata, "version", {"triton": triton_v, "numpy": numpy_v}.__getitem__)
    why = _availability._interpreter_problem()
    assert (why is not None) == broken
    if broken:
        assert f"triton {triton_v}" in why and f"numpy {numpy_v}" in why and "numpy<2.4" in why


def test_every_implementation_takes_the_normalized_call_in_order():
    """impl(*call): each backend's function has the call's fields as its positional parameters, in order."""
    import importlib.util
    import inspect

    from aigc_kernels import _ext
    from aigc_kernels.contracts.calls import CALLS

    loadable = {"torch", "reference"}
    if importlib.util.find_spec("triton") is not None:
        loadable.add("triton")
    if _ext.status()[0]:
        loadable.add("cuda")
    checked = 0
    for op, call_type in CALLS.items():
        for backend in ak.backend.implementations(op)[op]:
            if backend not in loadable:
                continue
            fn = B.implementation(op, backend).fn()
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            assert tuple(p.name for p in params) == call_type._fields, (op, backend)
            checked += 1
    assert checked >= 16  # at least torch and reference for all eight ops


def test_make_call_resolves_and_checks():
    from aigc_kernels.validation import make_call

    q = torch.randn(1, 2, 3, 16)
    call = make_call("attention", q, q, q, dropout_p=0)
    assert call.scale is None and call.softmax_scale == 0.25 and call.op == "attention"
    assert call.dropout_p == 0.0 and isinstance(call.dropout_p, float)
    given = make_call("attention", q, q, q, scale=2)
    assert given.scale == 2.0 and isinstance(given.scale, float) and given.softmax_scale == 2.0
    assert isinstance(make_call("layer_norm", q, eps=0).eps, float)
    with pytest.raises(TypeError, match="expected causal to be a bool"):
        make_call("attention_with_kvcache", q, q, q, torch.zeros(1, dtype=torch.int32), causal=1)
    with pytest.raises(ValueError, match="expected an op in"):
        make_call("softmax", q)


def _norm_calls():
    """Good and bad norm arguments for the one-frame CPU auto path and the general one."""
    x, w, b = torch.randn(3, 8), torch.randn(8), torch.randn(8)
    m = torch.device("meta")
    good = [dict(), dict(weight=w), dict(weight=w, bias=b), dict(residual=torch.randn(3, 8)),
            dict(weight=w.double()), dict(x=x.bfloat16(), weight=w, bias=b), dict(x=torch.randn(2, 3, 8), weight=w)]
    bad = [dict(weight=torch.ones(7)), dict(weight=w.view(2, 4)), dict(weight=w.long()), dict(weight=w.to(m)),
           dict(bias=b.to(m)), dict(bias=[1.0]), dict(residual=torch.randn(3, 9)), dict(residual=x.half()),
           dict(residual=x.to(m)), dict(eps=-1.0), dict(eps="1"), dict(eps=1), dict(x=torch.tensor(1.0)),
           dict(x=x.long()), dict(x=x.to(m)), dict(x=[1.0]), dict(eps=float("nan"))]
    for kw in good + bad:  # (eps=1 is good, but an int: the general path converts it)
        inline = any(kw is g for g in good)
        kw = {"x": x, **kw}
        yield "layer_norm", kw, inline
        if "bias" not in kw:
            yield "rms_norm", kw, inline


@pytest.mark.parametrize("op, kw, inline", list(_norm_calls()), ids=lambda v: v if isinstance(v, str) else None)
def test_norms_one_frame_cpu_path_as_the_general_one(op, kw, inline, monkeypatch):
    """ak.layer_norm / ak.rms_norm under auto on CPU take a one-frame path (no validation or selection
    calls) for plain arguments: it gives what the general path gives, and anything else -- every argument
    the general path refuses -- goes to that path and its error."""
    from aigc_kernels import validation
    fn = getattr(ak, op)
    getattr(ak, op)(torch.randn(2, 4))  # (the op's first CPU call memoizes auto's choice)
    builder = getattr(validation, f"{op}_call")
    seen = []

    def spy(*a, **k):
        seen.append(1)
        return builder(*a, **k)

    monkeypatch.setattr(validation, f"{op}_call", spy)
    kw = dict(kw)
    x = kw.pop("x")

    def outcome(**extra):
        try:
            return fn(x, **kw, **extra)
        except Exception as exc:  # noqa: BLE001 (compared below)
            return exc
    one = outcome()
    assert len(seen) == (0 if inline else 1)  # plain arguments: no validation call
    general = outcome(backend="AUTO")  # (normalized in select: the general path)
    if isinstance(general, Exception):
        assert type(one) is type(general) and str(one) == str(general)
    else:
        torch.testing.assert_close(one, general, rtol=0, atol=0)


def test_norms_one_frame_path_honours_backend_state(monkeypatch):
    """Every way to choose a backend still reaches the general path: backend=, a scoped or global
    backend, the environment variable, ak.explain, and a first call (memo empty: the DEBUG line)."""
    from aigc_kernels import validation
    x = torch.randn(3, 8)
    ak.layer_norm(x)
    seen = []
    real = validation.layer_norm_call
    monkeypatch.setattr(validation, "layer_norm_call", lambda *a, **k: seen.append(1) or real(*a, **k))
    ak.layer_norm(x)
    with ak.use_backend("reference"):
        ak.layer_norm(x, backend="auto")  # (an explicit "auto" -- patched modules pass it -- wins over the scope)
    assert seen == []
    ak.layer_norm(x, backend="torch")
    with ak.use_backend("reference"):
        ak.layer_norm(x)
    monkeypatch.setenv(B.ENV_VAR, "auto")
    ak.layer_norm(x)
    monkeypatch.delenv(B.ENV_VAR)
    ak.explain("layer_norm", x)
    monkeypatch.setattr(B, "_global_backend", "torch")
    ak.layer_norm(x)
    monkeypatch.setattr(B, "_global_backend", None)
    monkeypatch.setitem(B._CPU_AUTO, "layer_norm", None)
    ak.layer_norm(x)
    assert len(seen) == 6


def test_norms_one_frame_path_calls_what_auto_memoized(monkeypatch):
    """The one-frame layer_norm path calls torch.layer_norm itself only when auto's memo holds the native
    implementation; any other memoized implementation (a registered 'torch' one) is what runs."""
    x, w = torch.randn(3, 8), torch.randn(8)
    ak.layer_norm(x)
    native, calls = B._CPU_AUTO["layer_norm"], []

    def spy(*args):
        calls.append(1)
        return native(*args)

    monkeypatch.setitem(B._CPU_AUTO, "layer_norm", spy)
    out = ak.layer_norm(x, w)
    assert calls == [1]
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (8,), w), rtol=0, atol=0)


def _kv_calls():
    """Decoding-step arguments, good and bad, for the KV step's one-frame CPU path and the general one:
    (name, kwargs, whether the one-frame path takes them)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    q, kc, vc, kn, vn = r(2, 4, 1, 8), r(2, 2, 6, 8), r(2, 2, 6, 8), r(2, 2, 1, 8), r(2, 2, 1, 8)
    lens = torch.tensor([3, 3], dtype=torch.int32)
    base = dict(q=q, k_cache=kc, v_cache=vc, k_new=kn, v_new=vn)
    m = torch.device("meta")
    yield "step", {}, True
    yield "no append", dict(k_new=None, v_new=None), True
    yield "scale", dict(scale=0.3), True
    yield "not causal", dict(causal=False), True
    yield "two new rows", dict(k_new=r(2, 2, 2, 8), v_new=r(2, 2, 2, 8)), True
    yield "two queries", dict(q=r(2, 4, 2, 8)), True
    yield "last rows", dict(cache_seqlens=torch.tensor([5, 5], dtype=torch.int32)), True
    yield "MHA", dict(q=r(2, 2, 1, 8)), True
    yield "bf16", {n: t.bfloat16() for n, t in base.items()}, True
    yield "unequal lengths", dict(cache_seqlens=torch.tensor([1, 4], dtype=torch.int32)), False
    yield "int scale", dict(scale=1), False
    yield "past the end", dict(cache_seqlens=torch.tensor([6, 6], dtype=torch.int32)), False
    yield "negative", dict(cache_seqlens=torch.tensor([-1, -1], dtype=torch.int32)), False
    yield "int64 lengths", dict(cache_seqlens=lens.long()), False
    yield "lengths shape", dict(cache_seqlens=lens[:1]), False
    yield "k_new only", dict(v_new=None), False
    yield "new rows shape", dict(k_new=r(2, 2, 1, 4), v_new=r(2, 2, 1, 4)), False
    yield "new rows dtype", dict(k_new=kn.double(), v_new=vn.double()), False
    yield "cache dtype", dict(v_cache=vc.double()), False
    yield "cache shape", dict(v_cache=r(2, 2, 5, 8)), False
    yield "heads", dict(q=r(2, 3, 1, 8)), False
    yield "head dim", dict(q=r(2, 4, 1, 4)), False
    yield "rank", dict(q=r(4, 1, 8)), False
    yield "meta cache", dict(k_cache=kc.to(m)), False
    yield "meta lengths", dict(cache_seqlens=lens.to(m)), False
    yield "meta new rows", dict(k_new=kn.to(m)), False
    yield "causal int", dict(causal=1), False
    yield "nan scale", dict(scale=float("nan")), False
    yield "list q", dict(q=[1.0]), False


@pytest.mark.parametrize("name, kw, inline", list(_kv_calls()), ids=[c[0] for c in _kv_calls()])
def test_kv_step_one_frame_cpu_path_as_the_general_one(name, kw, inline, monkeypatch):
    """ak.attention_with_kvcache under auto on CPU takes a one-frame path (no kvcache_call, the lengths read
    once) for a plain step with equal host lengths: the same output and caches as the general path, and
    every other call -- each argument the general path refuses -- goes to that path and its error."""
    from aigc_kernels import validation
    g = torch.Generator().manual_seed(1)
    args = {n: torch.randn(*shape, generator=g) for n, shape in
            (("q", (2, 4, 1, 8)), ("k_cache", (2, 2, 6, 8)), ("v_cache", (2, 2, 6, 8)), ("k_new", (2, 2, 1, 8)),
             ("v_new", (2, 2, 1, 8)))}
    args["cache_seqlens"] = torch.tensor([3, 3], dtype=torch.int32)
    args.update(kw)
    ak.attention_with_kvcache(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4),
                              torch.zeros(1, dtype=torch.int32))  # (the op's first CPU call memoizes auto)
    real, seen = validation.kvcache_call, []
    monkeypatch.setattr(validation, "kvcache_call", lambda *a, **k: seen.append(1) or real(*a, **k))

    def outcome(**extra):
        a = {n: (t.clone() if isinstance(t, torch.Tensor) and n in ("k_cache", "v_cache") else t)
             for n, t in args.items()}
        q = a.pop("q")
        k_cache, v_cache, lens = a.pop("k_cache"), a.pop("v_cache"), a.pop("cache_seqlens")
        try:
            out = ak.attention_with_kvcache(q, k_cache, v_cache, lens, **a, **extra)
        except Exception as exc:  # noqa: BLE001 (compared below)
            return exc
        return out, k_cache, v_cache
    one = outcome()
    assert len(seen) == (0 if inline else 1)
    general = outcome(backend="AUTO")  # (normalized in select: the general path)
    if isinstance(general, Exception):
        assert type(one) is type(general) and str(one) == str(general)
    else:
        for a, b in zip(one, general, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_kv_step_one_frame_path_honours_backend_state(monkeypatch):
    """backend=, a scoped or global backend, the environment variable, and a "torch" implementation
    registered in place of the native one all reach the general path."""
    from aigc_kernels import validation
    monkeypatch.setattr(B, "_CPU_AUTO", dict(B._CPU_AUTO))  # (the registration below must not outlive the test)
    q, kc = torch.randn(1, 2, 1, 4), torch.zeros(1, 1, 3, 4)
    lens = torch.zeros(1, dtype=torch.int32)
    ak.attention_with_kvcache(q, kc, kc.clone(), lens)
    real, seen = validation.kvcache_call, []
    monkeypatch.setattr(validation, "kvcache_call", lambda *a, **k: seen.append(1) or real(*a, **k))
    ak.attention_with_kvcache(q, kc, kc.clone(), lens)
    with ak.use_backend("reference"):
        ak.attention_with_kvcache(q, kc, kc.clone(), lens, backend="auto")
    assert seen == []
    ak.attention_with_kvcache(q, kc, kc.clone(), lens, backend="torch")
    with ak.use_backend("reference"):
        ak.attention_with_kvcache(q, kc, kc.clone(), lens)
    monkeypatch.setenv(B.ENV_VAR, "auto")
    ak.attention_with_kvcache(q, kc, kc.clone(), lens)
    monkeypatch.delenv(B.ENV_VAR)
    monkeypatch.setattr(B, "_global_backend", "torch")
    ak.attention_with_kvcache(q, kc, kc.clone(), lens)
    monkeypatch.setattr(B, "_global_backend", None)
    monkeypatch.setitem(B._REGISTRY, "attention_with_kvcache", dict(B._REGISTRY["attention_with_kvcache"]))
    B.register("attention_with_kvcache", "torch", lambda: lambda *call: "registered")
    assert ak.attention_with_kvcache(q, kc, kc.clone(), lens) == "registered"
    assert ak.attention_with_kvcache(q, kc, kc.clone(), lens) == "registered"
    assert len(seen) == 6


def test_the_public_op_list_lives_below_backend_and_ops():
    """One list of public ops (issue 28 item 4): contracts/calls.py, which both backend.py and ops/ import; backend.py
    imports nothing from ops/ (the package had one import circle there)."""
    import ast
    import inspect

    from aigc_kernels import backend as backend_mod
    from aigc_kernels.contracts.calls import CALLS, PUBLIC_OPS

    assert ak.ops.PUBLIC_OPS is PUBLIC_OPS and PUBLIC_OPS == tuple(CALLS)
    assert all(callable(getattr(ak, op)) and getattr(ak, op) is getattr(ak.ops, op) for op in PUBLIC_OPS)
    tree = ast.parse(inspect.getsource(backend_mod))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add((node.level, node.module or "", tuple(a.name for a in node.names)))
    assert not [i for i in imported if i[1].split(".")[0] == "ops" or (i[1] == "" and "ops" in i[2])], imported
    assert ak.explain is ak.ops.explain
