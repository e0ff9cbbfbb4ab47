"""GPU tests (``pytest -m gpu``): the CUDA ops and the API on a real device."""

from __future__ import annotations

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R
from aigc_kernels import testing

pytestmark = pytest.mark.gpu


def test_cuda_backend_available():
    assert "cuda" in ak.available_backends(), ak.backend.backend_status()["cuda"]
    assert "triton" in ak.available_backends()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("d,lnew", [(128, 1), (64, 7), (6, 3)])  # 16-byte vector path and the scalar path
def test_kvcache_append_cuda(dtype, d, lnew):
    g = torch.Generator().manual_seed(0)
    b, h, lmax = 3, 4, 50
    kc = torch.randn(b, h, lmax, d, generator=g).to("cuda", dtype)
    vc = torch.randn(b, h, lmax, d, generator=g).to("cuda", dtype)
    kn = torch.randn(b, h, lnew, d, generator=g).to("cuda", dtype)
    vn = torch.randn(b, h, lnew, d, generator=g).to("cuda", dtype)
    lens = torch.tensor([0, 17, lmax - lnew], dtype=torch.int32, device="cuda")
    kr, vr = kc.clone(), vc.clone()
    ak.kvcache_append(kc, vc, kn, vn, lens, backend="cuda")
    R.kvcache_append(kr, vr, kn, vn, lens)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)


def test_kvcache_append_cuda_strided_and_side_stream():
    kc = torch.randn(2, 8, 32, 64, device="cuda").transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, L, D) view
    vc = torch.randn(2, 8, 32, 64, device="cuda")
    kn = torch.randn(2, 5, 8, 64, device="cuda").transpose(1, 2)  # non-contiguous new rows
    vn = torch.randn(2, 8, 5, 64, device="cuda")
    lens = torch.tensor([3, 27], dtype=torch.int32, device="cuda")
    kr, vr = kc.clone(), vc.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ak.kvcache_append(kc, vc, kn, vn, lens, backend="cuda")
    torch.cuda.current_stream().wait_stream(stream)
    R.kvcache_append(kr, vr, kn, vn, lens)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)


def test_opcheck_cuda():
    args = [torch.randn(2, 2, 16, 32, device="cuda") for _ in range(2)]
    args += [torch.randn(2, 2, 3, 32, device="cuda") for _ in range(2)]
    args.append(torch.tensor([0, 9], dtype=torch.int32, device="cuda"))
    torch.library.opcheck(torch.ops.aigc_kernels.kvcache_append.default, args)


@pytest.mark.parametrize("op", ["attention", "attention_varlen", "attention_with_kvcache", "kvcache_append",
                                "layer_norm", "rms_norm", "linear", "ffn", "rotary"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_op_and_backend_on_gpu(op, dtype):
    impls = [b for b in ak.backend.implementations(op)[op] if b != "reference"]
    assert impls
    for name in impls:
        ran = 0
        for case in testing.cases(op, dtype, "cuda"):
            r = testing.check_case(op, name, case, dtype)
            assert r.status != "fail", r
            ran += r.status == "pass"
        assert ran > 0, f"{op} on '{name}' in {dtype}: every case was n/a -- nothing ran"


def test_gpt_generate_on_gpu_bf16():
    from aigc_kernels.models import GPT, TransformerConfig

    torch.manual_seed(0)
    model = GPT(TransformerConfig(vocab_size=101, d_model=64, n_heads=4, n_layers=2, max_seq_len=64)).cuda().eval()
    prompt = torch.randint(0, 101, (4, 7), device="cuda")
    assert torch.equal(model.generate(prompt, 12), model.generate(prompt, 12, use_cache=False))
    model.bfloat16()
    assert model.generate(prompt, 12).shape == (4, 19)
