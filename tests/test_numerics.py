"""Numerical edge cases equal to the reference, determinism, CUDA-graph safety and int64 offsets.

CPU: the Triton kernels under the interpreter. GPU-only checks carry the gpu marker.
"""

from __future__ import annotations

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R
from aigc_kernels.validation import make_call

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS = [b for b in ("triton", "cuda") if b in ak.available_backends()]
pytestmark = pytest.mark.skipif(not KERNELS, reason="no kernel backend here")
ON = pytest.mark.interpreter if DEVICE == "cpu" else pytest.mark.gpu


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)


def attention_backends(q):
    """The kernel backends whose attention takes q's dtype and head dim (CUDA: fp16/bf16 only)."""
    out = []
    for b in KERNELS:
        impl = ak.backend.implementation("attention", b)
        if impl is not None and impl.why_not(make_call("attention", q, q, q)) is None:
            out.append(b)
    return out


@ON
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else []))
def test_huge_scores_do_not_overflow(dtype):
    # scores of about +-1e4: exp() would overflow in half precision without the running max
    q = rand(1, 2, 16, 32, dtype=dtype, scale=18.0)
    k = rand(1, 2, 16, 32, dtype=dtype, seed=1, scale=18.0)
    v = rand(1, 2, 16, 32, dtype=dtype, seed=2)
    scores = (q.float() @ k.float().transpose(-1, -2)) / 32**0.5
    assert scores.abs().max() > 1e3
    backends = attention_backends(q)
    assert backends
    for backend in backends:
        out = ak.attention(q, k, v, backend=backend)
        assert torch.isfinite(out).all()
        ref = R.attention(q.double(), k.double(), v.double())
        assert (out.double() - ref).abs().max() < 0.05


@ON
def test_nan_and_inf_propagate_like_the_reference():
    dtype = torch.float32 if DEVICE == "cpu" else torch.bfloat16  # (the CUDA kernel takes half types only)
    backends = attention_backends(rand(1, 1, 16, 32, dtype=dtype))
    assert backends
    for backend in backends:
        q, k, v = (rand(1, 1, 16, 32, dtype=dtype, seed=s) for s in range(3))
        q[0, 0, 3, 5] = float("nan")
        out, ref = ak.attention(q, k, v, backend=backend), R.attention(q, k, v)
        assert torch.equal(torch.isnan(out), torch.isnan(ref)), backend
        assert torch.isnan(out[0, 0, 3]).all() and not torch.isnan(out[0, 0, [0, 1, 2, 4]]).any()
    for backend in KERNELS:
        x = rand(4, 32)
        x[1, 7] = float("nan")
        x[2, 3] = float("inf")
        out, ref = ak.layer_norm(x, backend=backend), R.layer_norm(x)
        assert torch.equal(torch.isnan(out), torch.isnan(ref)), backend
        torch.testing.assert_close(out[[0, 3]], ref[[0, 3]], atol=1e-5, rtol=1e-5)


@ON
def test_attention_backward_is_bitwise_deterministic():
    """No atomics anywhere: dK/dV are reduced by the program that owns the key block, dQ by the one
    that owns the query block (GQA groups too), so two runs give identical bits."""
    dtype = torch.float32 if DEVICE == "cpu" else torch.bfloat16
    backends = attention_backends(rand(1, 1, 16, 32, dtype=dtype))
    assert backends
    for backend in backends:
        q, k, v = rand(2, 4, 33, 32, dtype=dtype), rand(2, 2, 41, 32, dtype=dtype, seed=1), \
            rand(2, 2, 41, 32, dtype=dtype, seed=2)

        def grads(q=q, k=k, v=v, backend=backend):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            ak.attention(*leaves, causal=True, backend=backend).sum().backward()
            return [t.grad for t in leaves]

        first, second = grads(), grads()
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True)), backend


@pytest.mark.gpu
def test_cuda_graph_capture_of_a_training_step():
    """A GPT forward + backward captured in a CUDA graph replays with the eager results."""
    if DEVICE != "cuda":
        pytest.skip("needs a CUDA GPU")
    from aigc_kernels.models import GPT, TransformerConfig

    for backend in KERNELS:
        torch.manual_seed(0)
        model = GPT(TransformerConfig(vocab_size=128, d_model=64, n_heads=4, n_layers=2, max_seq_len=64)).cuda()
        ak.patch(model, backend=backend)
        ids = torch.randint(0, 128, (4, 33), device="cuda")
        static_ids = ids.clone()

        def step(model=model, static_ids=static_ids):
            _, loss = model(static_ids[:, :-1], static_ids[:, 1:])
            loss.backward()
            return loss

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (autotuning, lazy init) outside the capture
            for _ in range(3):
                model.zero_grad(set_to_none=False)
                step()
        torch.cuda.current_stream().wait_stream(side)
        model.zero_grad(set_to_none=False)
        eager_loss = step().detach().clone()
        eager_grads = [p.grad.clone() for p in model.parameters()]
        graph = torch.cuda.CUDAGraph()
        model.zero_grad(set_to_none=False)
        with torch.cuda.graph(graph):
            static_loss = step()
        model.zero_grad(set_to_none=False)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(static_loss, eager_loss)
        for p, g in zip(model.parameters(), eager_grads, strict=True):
            torch.testing.assert_close(p.grad, g)


@pytest.mark.gpu
@pytest.mark.slow
def test_int64_offsets_past_2_31_elements():
    if DEVICE != "cuda":
        pytest.skip("needs a CUDA GPU")
    rows, cols = 2**31 // 4096 + 8, 4096  # just past 2^31 elements (4 GiB in bf16)
    x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
    for backend in KERNELS:
        y = ak.rms_norm(x, backend=backend)
        tail = slice(rows - 4, rows)
        torch.testing.assert_close(y[tail].float(), R.rms_norm(x[tail].float()), atol=2e-2, rtol=2e-2)
        del y


@pytest.mark.gpu
@pytest.mark.slow
def test_attention_int64_offsets_past_2_31_elements():
    """Decoding from the second of two caches that each hold more than 2^31 elements."""
    if DEVICE != "cuda":
        pytest.skip("needs a CUDA GPU")
    lmax, d = 2**31 // 128 + 64, 128
    kc = torch.randn(2, 1, lmax, d, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    lens = torch.tensor([3, 100], dtype=torch.int32, device="cuda")
    q = torch.randn(2, 4, 1, d, device="cuda", dtype=torch.bfloat16)
    ref = R.attention_with_kvcache(q[1:].double(), kc[1:, :, :128].double(), vc[1:, :, :128].double(), lens[1:])
    backends = attention_backends(q)
    assert backends
    for backend in backends:
        out = ak.attention_with_kvcache(q, kc, vc, lens, backend=backend)
        torch.testing.assert_close(out[1:].double(), ref, atol=2e-2, rtol=2e-2)
