"""ak.rotary on every backend: FA2's apply_rotary_emb convention (GPT-NeoX halves and GPT-J interleaved
pairs, partial rotary, positions per token), in place or not, gradients of x, cos and sin, strides, errors,
the torch ops (opcheck) and torch.compile -- against the float64 reference.

On CPU the Triton kernel runs under TRITON_INTERPRET=1 (set by conftest.py) and the CUDA ops through their
CPU implementations and fake impls; the CUDA kernel itself runs under emulation in test_kernel_emulation.py.
"""

from __future__ import annotations

import sys

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R
from aigc_kernels import testing

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS = [b for b in ("triton", "cuda") if b in ak.available_backends()]
KERNEL = pytest.mark.interpreter if DEVICE == "cpu" else pytest.mark.gpu
ALL = ["torch"] + [pytest.param(b, marks=KERNEL) for b in KERNELS]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def angles(lmax: int, half: int, dtype=torch.float32, base=10000.0):
    t = torch.arange(lmax, dtype=torch.float64)[:, None] * base ** (-torch.arange(half, dtype=torch.float64) / half)
    return t.cos().to(DEVICE, dtype), t.sin().to(DEVICE, dtype)


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ALL)
def test_every_case_against_float64(backend, dtype):
    ran = 0
    for case in testing.cases("rotary", dtype, DEVICE, seed=4):
        r = testing.check_case("rotary", backend, case, dtype)
        assert r.unsupported is None and r.error is None, (case.name, r.unsupported, r.error)
        assert r.passed, f"{case.name}: fwd {r.fwd_err:.3g} > {r.fwd_bound:.3g} or grad {r.grad_err} > {r.grad_bound}"
        ran += 1
    assert ran == 4


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("backend", ALL)
def test_rotation_invariants(backend, interleaved):
    """Each pair keeps its length, the inverse rotation (angle -t: sin negated) gives x back, and angle 0
    (position 0) is the identity."""
    x = rand(2, 3, 9, 16, seed=1)
    cos, sin = angles(12, 8)
    pos = torch.tensor([[0, 3, 3, 11, 5, 0, 7, 1, 2]], device=DEVICE)
    out = ak.rotary(x, cos, sin, position_ids=pos, interleaved=interleaved, backend=backend)
    pairs = (lambda t: t.unflatten(-1, (8, 2))) if interleaved else (lambda t: torch.stack(t.chunk(2, -1), -1))
    torch.testing.assert_close(pairs(out).norm(dim=-1), pairs(x).norm(dim=-1), atol=1e-5, rtol=1e-5)
    back = ak.rotary(out, cos, -sin, position_ids=pos, interleaved=interleaved, backend=backend)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, :, [0, 5]], x[:, :, [0, 5]], atol=0, rtol=0)


@pytest.mark.parametrize("backend", ALL)
def test_matches_transformers_rotate_half(backend):
    """Hugging Face Llama's apply_rotary_pos_emb (q * cos + rotate_half(q) * sin, cos/sin (B, L, D) gathered by
    position) is the NeoX layout with the table's first half."""
    x = rand(2, 4, 7, 32, seed=2)
    cos, sin = angles(20, 16)
    pos = torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    full_cos, full_sin = torch.cat([cos, cos], -1)[pos].unsqueeze(1), torch.cat([sin, sin], -1)[pos].unsqueeze(1)
    rotate_half = torch.cat([-x[..., 16:], x[..., :16]], -1)
    want = x * full_cos + rotate_half * full_sin
    got = ak.rotary(x, cos, sin, position_ids=pos, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ALL)
def test_inplace_writes_x_and_keeps_the_rest(backend):
    x = rand(2, 2, 5, 24, seed=3)
    cos, sin = angles(8, 8)  # 16 of 24 features rotate
    want = R.rotary(x.double(), cos.double(), sin.double()).float()
    y = x.clone()
    ptr = y.data_ptr()
    out = ak.rotary(y, cos, sin, inplace=True, backend=backend)
    assert out is y and y.data_ptr() == ptr
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(y[..., 16:], x[..., 16:])
    # a strided view (q of a (B, L, H, D) projection, seen as (B, H, L, D)) rotated in place through its strides
    buf = rand(2, 5, 2, 24, seed=3)
    view = buf.transpose(1, 2)
    ak.rotary(view, cos, sin, inplace=True, backend=backend)
    torch.testing.assert_close(view, R.rotary(rand(2, 5, 2, 24, seed=3).transpose(1, 2).double(), cos.double(),
                                              sin.double()).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ALL)
def test_gradients_in_place_and_out_of_place_agree(backend):
    """In place on a non-leaf, the gradients of x, cos and sin equal those of the out-of-place call (and the
    reference's); positions repeat, so cos/sin rows gather several tokens' gradients."""
    x = rand(2, 3, 6, 16, seed=5)
    cos, sin = angles(9, 8)
    pos = torch.tensor([[1, 1, 4, 8, 0, 1], [2, 2, 2, 3, 8, 7]], device=DEVICE)
    g = rand(2, 3, 6, 16, seed=6)

    def grads(fn):
        xs, c, s = (t.clone().requires_grad_() for t in (x, cos, sin))
        (fn(xs, c, s) * g).sum().backward()
        return xs.grad, c.grad, s.grad

    want = grads(lambda a, c, s: R.rotary(a.double(), c.double(), s.double(), position_ids=pos).float())
    out_of_place = grads(lambda a, c, s: ak.rotary(a, c, s, position_ids=pos, backend=backend))
    in_place = grads(lambda a, c, s: ak.rotary(a * 1.0, c, s, position_ids=pos, inplace=True, backend=backend))
    for got in (out_of_place, in_place):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ALL)
def test_strided_inputs_and_expanded_gradients(backend):
    """x with a non-unit last-dim stride, cos/sin as column slices of a wider table, int32 (1, L) positions,
    and the stride-0 gradient of out.sum()."""
    base = rand(2, 3, 7, 32, seed=7)
    x = base[..., ::2]  # (2, 3, 7, 16), last-dim stride 2
    table_c, table_s = angles(10, 12)
    cos, sin = table_c[:, :8], table_s[:, :8]  # row stride 12
    pos = torch.tensor([[9, 0, 3, 3, 1, 2, 8]], dtype=torch.int32, device=DEVICE)
    xs = x.clone().requires_grad_()
    out = ak.rotary(xs, cos, sin, position_ids=pos, interleaved=True, backend=backend)
    out.sum().backward()
    xr = x.double().requires_grad_()
    ref = R.rotary(xr, cos.double(), sin.double(), position_ids=pos, interleaved=True)
    ref.sum().backward()
    torch.testing.assert_close(out, ref.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xs.grad, xr.grad.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ALL)
def test_empty_inputs(backend):
    cos, sin = angles(4, 4)
    for shape in [(0, 2, 3, 8), (2, 0, 3, 8), (2, 2, 0, 8)]:
        x = rand(*shape)
        assert ak.rotary(x, cos, sin, backend=backend).shape == shape
        assert ak.rotary(x, cos, sin, inplace=True, backend=backend) is x


def bad_calls():
    x, (cos, sin) = rand(2, 3, 5, 8), angles(6, 4)
    c5, s5 = angles(6, 5)
    long = dict(dtype=torch.long, device=DEVICE)
    return [
        (dict(x=x[0]), ValueError, r"expected x to be 4-D \(B, H, L, D\), got shape \(3, 5, 8\)"),
        (dict(x=x.long()), TypeError, "expected x of dtype .*, got int64"),
        (dict(cos=cos[:, None]), ValueError, "expected cos to be 2-D"),
        (dict(sin=sin[:5]), ValueError, r"expected sin of cos's shape \(6, 4\).*got \(5, 4\)"),
        (dict(sin=sin.double()), TypeError, "expected sin to have the dtype of cos"),
        (dict(cos=c5, sin=s5), ValueError, "rotary_dim <= D = 8.*rotary_dim = 10"),
        (dict(cos=cos[:4], sin=sin[:4]), ValueError, "expected L = 5 <= Lmax = 4"),
        (dict(position_ids=torch.zeros(2, 5, device=DEVICE)), TypeError, "position_ids of dtype int32, int64"),
        (dict(position_ids=torch.zeros(3, 5, **long)), ValueError, r"position_ids of shape \(2, 5\) or \(1, 5\)"),
        (dict(interleaved=1), TypeError, "expected interleaved to be a bool"),
        (dict(inplace="yes"), TypeError, "expected inplace to be a bool"),
    ] + ([  # host positions are read (free); on a GPU the CUDA kernel asserts on the device instead
        (dict(position_ids=torch.full((1, 5), 6, **long)), ValueError, r"position_ids in \[0, Lmax\) = \[0, 6\)"),
    ] if DEVICE == "cpu" else [])


@pytest.mark.parametrize("i", range(len(bad_calls())))
def test_bad_input_names_expected_and_given(i):
    x, (cos, sin) = rand(2, 3, 5, 8), angles(6, 4)
    kw, exc, msg = bad_calls()[i]
    args = dict(x=x, cos=cos, sin=sin) | {k: v for k, v in kw.items() if k in ("x", "cos", "sin")}
    rest = {k: v for k, v in kw.items() if k not in ("x", "cos", "sin")}
    with pytest.raises(exc, match=msg):
        ak.rotary(*args.values(), **rest)


def test_a_backend_named_that_cannot_run_says_why():
    x, (cos, sin) = rand(1, 1, 3, 8, dtype=torch.float64), angles(4, 4, torch.float64)
    with pytest.raises(ak.BackendError, match="rotary takes x in float32, float16 or bfloat16.*got float64"):
        ak.rotary(x, cos, sin, backend="triton")
    if DEVICE == "cpu":
        with pytest.raises(ak.BackendError, match="'cuda' backend needs CUDA tensors"):
            ak.rotary(x.float(), cos.float(), sin.float(), backend="cuda")
    assert ak.explain("rotary", x, cos, sin).backend == "torch"  # auto: PyTorch's own ops here


@pytest.mark.parametrize("backend", ALL)
def test_compile_fullgraph(backend):
    x, (cos, sin) = rand(2, 3, 5, 16), angles(8, 8)
    pos = torch.tensor([[3, 1, 0, 7, 2]], device=DEVICE)

    def f(x, cos, sin):
        q = ak.rotary(x, cos, sin, position_ids=pos, backend=backend)
        k = ak.rotary(x * 2, cos, sin, interleaved=True, inplace=True, backend=backend)
        return q.sum() + k.sum()

    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x, cos, sin), f(x, cos, sin))


@KERNEL
def test_opcheck_triton_ops():
    if "triton" not in KERNELS:
        pytest.skip("the triton backend is not available here")
    from aigc_kernels.triton import rotary  # noqa: F401  (defines the ops)

    x, (cos, sin) = rand(2, 3, 5, 12), angles(8, 4)
    pos = torch.tensor([[3, 1, 0, 7, 2]], device=DEVICE)
    for args in [(x, cos, sin, None, False, False), (x, cos, sin, pos, True, True)]:
        torch.library.opcheck(torch.ops.aigc_kernels.rotary_fwd_triton.default, args)
        torch.library.opcheck(torch.ops.aigc_kernels.rotary_inplace_triton.default, (x.clone(), *args[1:]))


def test_cuda_ops_on_cpu_and_meta(cuda_ops):
    """The C++ ops: schema, their CPU implementations against the reference, fake impls (opcheck), and the
    C++ checks' messages."""
    ops = torch.ops.aigc_kernels
    assert torch._C._dispatch_has_kernel_for_dispatch_key("aigc_kernels::rotary_fwd", "CUDA")
    assert "Tensor(a!) x" in str(ops.rotary_inplace.default._schema)
    x, (cos, sin) = rand(2, 3, 5, 12, dtype=torch.float32), angles(8, 4)
    x, cos, sin = x.cpu(), cos.cpu(), sin.cpu()
    pos = torch.tensor([[3, 1, 0, 7, 2]])
    for args in [(x, cos, sin, None, False, False), (x, cos, sin, pos, True, True)]:
        torch.library.opcheck(ops.rotary_fwd.default, args)
        torch.library.opcheck(ops.rotary_inplace.default, (x.clone(), *args[1:]))
    want = R.rotary(x.double(), cos.double(), -sin.double(), position_ids=pos, interleaved=True).float()
    torch.testing.assert_close(ops.rotary_fwd(x, cos, sin, pos, True, True), want, atol=1e-6, rtol=1e-6)
    y = x.clone()
    ops.rotary_inplace(y, cos, sin, pos, True, True)
    torch.testing.assert_close(y, want, atol=1e-6, rtol=1e-6)
    meta = [t.to("meta") for t in (x, cos, sin)]
    torch.library.opcheck(ops.rotary_fwd.default, (*meta, None, False, False), test_utils=("test_schema",
                                                                                          "test_faketensor"))
    assert ops.rotary_fwd(*meta, None, False, False).shape == x.shape
    with pytest.raises(RuntimeError, match=r"expected 2 <= rotary_dim <= D = 12, got rotary_dim = 16"):
        ops.rotary_fwd(x, *angles(8, 8)[0].cpu()[None].expand(2, 8, 8), None, False, False)
    with pytest.raises(RuntimeError, match=r"positions in \[0, Lmax\) = \[0, 8\), got values in \[0, 9\]"):
        ops.rotary_fwd(x, cos, sin, torch.tensor([[0, 1, 2, 3, 9]]), False, False)
    with pytest.raises(RuntimeError, match="cos/sin in x's dtype .* or float32, got Double"):
        ops.rotary_fwd(x, cos.double(), sin.double(), None, False, False)


# ----------------------------------------------------------------------------------------------
# rotary inside the KV-cache append (FA2's flash_attn_with_kvcache(rotary_cos=..., rotary_sin=...))
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", ALL)
def test_kvcache_append_rotates_new_keys_and_queries_at_their_positions(backend, causal, interleaved, monkeypatch):
    b, hq, hkv, lmax, d = 2, 4, 2, 24, 16
    q, kc, vc = rand(b, hq, 3, d, seed=1), rand(b, hkv, lmax, d, seed=2), rand(b, hkv, lmax, d, seed=3)
    kn, vn = rand(b, hkv, 3, d, seed=4), rand(b, hkv, 3, d, seed=5)
    lens = torch.tensor([4, 19], dtype=torch.int32, device=DEVICE)
    cos, sin = angles(30, 6)  # 12 of 16 features rotate
    got_kc, got_vc = kc.clone(), vc.clone()
    if backend in ("triton", "cuda"):  # inside the append kernel: the rotary op itself never runs
        rotary_op = sys.modules["aigc_kernels.ops.rotary"]  # (the package's `rotary` is the function)
        monkeypatch.setattr(rotary_op, "select", lambda *a: pytest.fail("rotated outside the append"))
    out = ak.attention_with_kvcache(q, got_kc, got_vc, lens, k_new=kn, v_new=vn, causal=causal, rotary_cos=cos,
                                    rotary_sin=sin, rotary_interleaved=interleaved, backend=backend)
    monkeypatch.undo()
    # what FA2 does, spelled out with ak.rotary: keys at cache_seqlens + i; queries there too when causal, else
    # every query row at cache_seqlens
    pos_k = lens.long()[:, None] + torch.arange(3, device=DEVICE)
    pos_q = pos_k if causal else lens.long()[:, None].expand(b, 3)
    want_kc = kc.clone()
    for i in range(b):
        want_kc[i, :, lens[i]:lens[i] + 3] = ak.rotary(kn, cos, sin, position_ids=pos_k, interleaved=interleaved,
                                                       backend="reference")[i]
    torch.testing.assert_close(got_kc, want_kc, atol=1e-6, rtol=1e-6)
    assert torch.equal(got_kc[0, :, :4], kc[0, :, :4])  # rows before the append untouched (not rotated again)
    # and the output: attention of the rotated queries over that cache
    want_vc = vc.clone()
    for i in range(b):
        want_vc[i, :, lens[i]:lens[i] + 3] = vn[i]
    keep = torch.arange(lmax, device=DEVICE)[None, :] < (lens.long() + 3)[:, None]  # (B, Lmax) valid rows
    if causal:
        keep = keep[:, None, :] & (torch.arange(lmax, device=DEVICE)[None, None, :] <= pos_k[:, :, None])
    else:
        keep = keep[:, None, :].expand(b, 3, lmax)
    rq = ak.rotary(q, cos, sin, position_ids=pos_q, interleaved=interleaved, backend="reference")
    want = R.attention(rq.double(), want_kc.double(), want_vc.double(), attn_mask=keep[:, None])
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("paged", [False, True])
def test_cuda_append_rotary_op_on_cpu_and_meta(cuda_ops, paged):
    """The C++ kvcache_append_rotary (the CUDA append with the rotation inside; its kernel runs under emulation
    in tests/test_kernel_emulation.py): its CPU implementation against the reference, contiguous and paged, its
    fake impl (opcheck), and its checks' messages."""
    ops = torch.ops.aigc_kernels
    b, hq, hkv, d, page = 2, 4, 2, 16, 4
    q, kn, vn = rand(b, hq, 2, d, seed=1).cpu(), rand(b, hkv, 3, d, seed=2).cpu(), rand(b, hkv, 3, d, seed=3).cpu()
    lens = torch.tensor([1, 9], dtype=torch.int32)
    cos, sin = (t.cpu() for t in angles(16, 5))  # 10 of 16 features rotate
    if paged:
        kc, table = rand(7, page, hkv, d, seed=4).cpu(), torch.tensor([[6, 0, 3], [2, 5, 1]], dtype=torch.int32)
    else:
        kc, table = rand(b, hkv, 12, d, seed=4).cpu(), None
    vc = kc.clone() + 1
    got_k, got_v, want_k, want_v = kc.clone(), vc.clone(), kc.clone(), vc.clone()
    q_rot = ops.kvcache_append_rotary(got_k, got_v, kn, vn, lens, table, q, cos, sin, True, False)
    pos_k = lens.long()[:, None] + torch.arange(3)
    R.kvcache_append(want_k, want_v, R.rotary(kn, cos, sin, position_ids=pos_k, interleaved=True), vn, lens,
                     block_table=table)
    torch.testing.assert_close(got_k, want_k, atol=1e-6, rtol=1e-6)
    assert torch.equal(got_v, want_v)
    want_q = R.rotary(q.double(), cos.double(), sin.double(), position_ids=lens.long()[:, None].expand(b, 2),
                      interleaved=True)
    torch.testing.assert_close(q_rot.double(), want_q, atol=1e-6, rtol=1e-6)
    torch.library.opcheck(ops.kvcache_append_rotary.default,
                          (kc.clone(), vc.clone(), kn, vn, lens, table, q, cos, sin, False, True))
    with pytest.raises(RuntimeError, match=r"expected cos and sin of one shape \(Lro, rotary_dim / 2\) with "
                                           r"2 <= rotary_dim <= D = 16"):
        ops.kvcache_append_rotary(kc.clone(), vc.clone(), kn, vn, lens, table, q, *angles(16, 9), False, True)
    with pytest.raises(RuntimeError, match="expected q"):
        ops.kvcache_append_rotary(kc.clone(), vc.clone(), kn, vn, lens, table, q.half(), cos, sin, False, True)
    with pytest.raises(RuntimeError, match="a position is past rotary_cos's 11 rows"):
        ops.kvcache_append_rotary(kc.clone(), vc.clone(), kn, vn, lens, table, q, cos[:11], sin[:11], False, True)


def test_kvcache_rotary_bad_input():
    q, kc = rand(1, 2, 1, 8), rand(1, 2, 10, 8)
    lens = torch.tensor([8], dtype=torch.int32, device=DEVICE)
    cos, sin = angles(9, 4)
    kn = rand(1, 2, 1, 8)
    with pytest.raises(ValueError, match="rotary_cos and rotary_sin together"):
        ak.attention_with_kvcache(q, kc, kc.clone(), lens, k_new=kn, v_new=kn, rotary_cos=cos)
    with pytest.raises(ValueError, match="expected k_new and v_new with them"):
        ak.attention_with_kvcache(q, kc, kc.clone(), lens, rotary_cos=cos, rotary_sin=sin)
    with pytest.raises(ValueError, match="rotary_cos and rotary_sin together"):
        ak.attention_with_kvcache(q, kc, kc.clone(), lens, rotary_interleaved=True)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match=r"reaches position 9, past rotary_cos's 9 rows"):
            ak.attention_with_kvcache(q, kc, kc.clone(), lens + 1, k_new=kn, v_new=kn, rotary_cos=cos, rotary_sin=sin)
    with pytest.raises(ValueError, match=r"2 <= rotary_dim <= D = 8"):
        ak.attention_with_kvcache(q, kc, kc.clone(), lens, k_new=kn, v_new=kn, rotary_cos=angles(9, 5)[0],
                                  rotary_sin=angles(9, 5)[1])
