"""Benchmark cases: shapes from real models, the work each case does (FLOPs, bytes), the providers
that run it, and how to check a provider's output against the float64 reference.

A *provider* is one implementation of an op: the library's public API on each backend ("cuda",
"triton", "torch" = PyTorch's own calls behind the library's API, and "auto" = what the dispatch table
picks), the naive oracle ("reference"), torch.compile of it ("torch_compile"), PyTorch's own
function called directly ("eager": F.layer_norm, F.scaled_dot_product_attention, F.linear +
activation, ...: the baseline of every speedup), SDPA pinned to one backend ("sdpa_flash",
"sdpa_efficient", "sdpa_cudnn"), and third-party libraries when importable ("liger", "apex",
"flash_attn"). On a machine without a GPU the CPU-capable providers run ("torch", "auto", "eager",
"reference"): their ratios are the CPU path's, not kernel speed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import ops, reference
from ..testing import ATOL, max_abs_err

# Shapes of the models the cases come from: (d_model, heads, kv_heads, ffn hidden).
MODELS = {
    "gpt2-s": (768, 12, 12, 3072),
    "gpt2-m": (1024, 16, 16, 4096),
    "gpt2-xl": (1600, 25, 25, 6400),
    "bert-base": (768, 12, 12, 3072),
    "bert-large": (1024, 16, 16, 4096),
    "llama-7b": (4096, 32, 32, 11008),
    "llama-70b": (8192, 64, 8, 28672),
}

MODES = ("fwd", "bwd", "fwd+bwd")


@dataclasses.dataclass
class Case:
    op: str
    label: str  # e.g. "llama-7b tokens=8192"
    shape: dict  # the sizes, recorded in the JSON
    dtype: torch.dtype

    @property
    def shape_str(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.shape.items())


@dataclasses.dataclass
class Provider:
    name: str
    # make(case, inputs, mode) -> fn: the callable to time (no arguments). It may raise
    # NotImplementedError("why") when it cannot run the case.
    make: Callable
    needs_gpu: bool = True


class BenchOp:
    """One op family: cases, providers, and accounting of work."""

    name = ""
    modes: tuple[str, ...] = MODES  # decode-style ops have no backward

    def cases(self, quick: bool, device: str) -> list[Case]:
        raise NotImplementedError

    def inputs(self, case: Case, device: str, requires_grad: bool) -> dict:
        raise NotImplementedError

    def providers(self) -> list[Provider]:
        raise NotImplementedError

    def flops(self, case: Case, mode: str) -> float | None:
        return None

    def bytes(self, case: Case, mode: str) -> float | None:
        return None

    def check(self, case: Case, inputs: dict, out) -> tuple[float, float]:
        """(max error of out vs the float64 reference, the allowed bound) on a slice of the case."""
        raise NotImplementedError


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


API_BACKENDS = ("cuda", "triton", "torch", "auto")  # the public API's providers, per backend


def _backend_provider(name: str, op: str, call: Callable) -> Provider:
    """The public API on one backend (by name: it raises BackendError when it cannot run; or "auto").
    ``call(inputs, name)`` returns the callable to time: a lambda calling the public op directly, built
    like the baselines' (no wrapper frame is charged to ours)."""

    def make(case, inputs, mode):
        from ..backend import implementations

        if name != "auto" and name not in implementations(op)[op]:
            raise NotImplementedError(f"the '{name}' backend does not implement {op} yet")
        return call(inputs, name)

    return Provider(name, make, needs_gpu=name in ("cuda", "triton"))


def _api_providers(op: str, call: Callable) -> list[Provider]:
    """call(inputs, backend) -- the callable to time -- on every backend of the public API."""
    return [_backend_provider(name, op, call) for name in API_BACKENDS]


@functools.cache
def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False)


def _rand(shape, dtype, device, requires_grad, scale=1.0, gen=None):
    t = (torch.randn(shape, generator=gen, dtype=torch.float32, device="cpu") * scale).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def _bound(out_lowp_ref, out, ref64, dtype) -> tuple[float, float]:
    return max_abs_err(out, ref64), 2.0 * max_abs_err(out_lowp_ref, ref64) + ATOL[dtype]


def _pytorch_decode_step(inp: dict, attend: Callable) -> Callable:
    """PyTorch's own decoding step: ``attend()`` over the caches, after writing k_new/v_new into their last
    row when the inputs have them (the lengths are one for the batch, as a decoding loop's usually are;
    every call writes the same row, so repeated calls are one step)."""
    if "k_new" not in inp:
        return attend
    kc, vc, kn, vn = inp["k_cache"], inp["v_cache"], inp["k_new"], inp["v_new"]
    row = kc.shape[2] - 1

    def step():
        kc[:, :, row:].copy_(kn)
        vc[:, :, row:].copy_(vn)
        return attend()

    return step


# ----------------------------------------------------------------------------------------------
# layer_norm / rms_norm
# ----------------------------------------------------------------------------------------------
class NormBench(BenchOp):
    def __init__(self, name: str) -> None:
        self.name = name
        self.rms = name == "rms_norm"

    def cases(self, quick, device):
        dtypes = [torch.bfloat16, torch.float16] if device == "cuda" else [torch.float32]
        if quick == "headline" and device == "cuda":
            dtypes, dims, rows = [torch.bfloat16], [("gpt2-s", 768), ("llama-7b", 4096), ("wide", 16384)], [16384]
        elif quick or device != "cuda":
            dims = [("gpt2-s", 768), ("llama-7b", 4096)]
            rows = [512] if device != "cuda" else [4096]
        else:
            dims = [("gpt2-s", 768), ("gpt2-m", 1024), ("bert-large", 1024), ("llama-1b", 2048),
                    ("llama-7b", 4096), ("llama-70b", 8192), ("wide", 16384)]
            rows = [4096, 16384, 65536]
        out = []
        for dtype in dtypes:
            for model, hidden in dims:
                for m in rows:
                    if m * hidden > 2**30:  # keep each tensor under 2 GiB in bf16
                        continue
                    out.append(Case(self.name, f"{model} tokens={m}", {"rows": m, "hidden": hidden}, dtype))
        return out

    def inputs(self, case, device, requires_grad):
        g = torch.Generator().manual_seed(0)
        m, n = case.shape["rows"], case.shape["hidden"]
        x = _rand((m, n), case.dtype, device, requires_grad, gen=g)
        w = _rand((n,), case.dtype, device, requires_grad, gen=g)
        b = None if self.rms else _rand((n,), case.dtype, device, requires_grad, gen=g)
        return {"x": x, "weight": w, "bias": b}

    def bytes(self, case, mode):
        m, n = case.shape["rows"], case.shape["hidden"]
        e = torch.finfo(case.dtype).bits // 8
        params = n * e * (1 if self.rms else 2)
        fwd = 2 * m * n * e + params  # read x, write y (+ weight, bias)
        bwd = 3 * m * n * e + 2 * params  # read x, dy; write dx (+ read w, write dw, db)
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    def _call_ours(self, inp, backend):
        if self.rms:
            return lambda: ops.rms_norm(inp["x"], inp["weight"], 1e-6, backend=backend)
        return lambda: ops.layer_norm(inp["x"], inp["weight"], inp["bias"], 1e-5, backend=backend)

    def _ref(self, x, w, b):
        return reference.rms_norm(x, w, 1e-6) if self.rms else reference.layer_norm(x, w, b, 1e-5)

    def providers(self):
        provs = _api_providers(self.name, self._call_ours)
        rms = self.rms

        def eager(case, inp, mode):
            n = inp["x"].shape[-1]
            if rms:
                return lambda: F.rms_norm(inp["x"], (n,), inp["weight"], 1e-6)
            return lambda: F.layer_norm(inp["x"], (n,), inp["weight"], inp["bias"], 1e-5)

        provs.append(Provider("eager", eager, needs_gpu=False))
        provs.append(Provider("reference", lambda case, inp, mode: lambda: self._ref(inp["x"], inp["weight"],
                                                                                      inp["bias"]), needs_gpu=False))

        def compiled(case, inp, mode):
            fn = _compiled(reference.rms_norm if rms else reference.layer_norm)
            if rms:
                return lambda: fn(inp["x"], inp["weight"], 1e-6)
            return lambda: fn(inp["x"], inp["weight"], inp["bias"], 1e-5)

        provs.append(Provider("torch_compile", compiled))

        def liger(case, inp, mode):
            if not _have("liger_kernel"):
                raise NotImplementedError("liger-kernel is not installed")
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction

            if rms:
                return lambda: LigerRMSNormFunction.apply(inp["x"], inp["weight"], 1e-6)
            return lambda: LigerLayerNormFunction.apply(inp["x"], inp["weight"], inp["bias"], 1e-5)

        provs.append(Provider("liger", liger))

        def apex(case, inp, mode):
            if not _have("apex"):
                raise NotImplementedError("apex is not installed")
            from apex.normalization.fused_layer_norm import fused_layer_norm_affine, fused_rms_norm_affine

            n = inp["x"].shape[-1]
            if rms:
                return lambda: fused_rms_norm_affine(inp["x"], inp["weight"], (n,), 1e-6)
            return lambda: fused_layer_norm_affine(inp["x"], inp["weight"], inp["bias"], (n,), 1e-5)

        provs.append(Provider("apex", apex))
        return provs

    def check(self, case, inputs, out):
        rows = slice(0, min(256, case.shape["rows"]))
        x, w, b = inputs["x"][rows].detach(), inputs["weight"].detach(), inputs["bias"]
        b = None if b is None else b.detach()
        ref64 = self._ref(x.double(), w.double(), None if b is None else b.double())
        return _bound(self._ref(x, w, b), out[rows], ref64, case.dtype)


# ----------------------------------------------------------------------------------------------
# attention (training shapes) and attention_decode (KV-cache reads)
# ----------------------------------------------------------------------------------------------
def _sdpa_provider(name: str, backend_name: str) -> Provider:
    def make(case, inp, mode):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        be = getattr(SDPBackend, backend_name)
        causal = case.shape["causal"]
        mask = inp.get("attn_mask")
        if mask is not None and backend_name == "FLASH_ATTENTION":
            raise NotImplementedError("SDPA's flash kernel takes no attn_mask")

        def run():
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(inp["q"], inp["k"], inp["v"], attn_mask=mask, is_causal=causal)

        return run

    return Provider(name, make)


class AttentionBench(BenchOp):
    name = "attention"

    def cases(self, quick, device):
        dtypes = [torch.bfloat16] if device == "cuda" else [torch.float32]
        if device != "cuda":
            grid = [(64, 256), (64, 512)]
        elif quick == "headline":
            grid = [(d, seq) for d in (64, 128) for seq in (4096, 8192)]
        elif quick:
            grid = [(64, 2048), (128, 4096)]
        else:
            grid = [(d, seq) for d in (64, 128) for seq in (512, 1024, 2048, 4096, 8192, 16384)]
        tokens = 16384 if device == "cuda" else 1024
        out = []
        for dtype in dtypes:
            for d, seq in grid:
                heads = 2048 // d  # a 2048-wide model (16 x 128 or 32 x 64)
                if device != "cuda":
                    heads = 4
                batch = max(1, tokens // seq)
                for causal in (False, True):
                    shape = {"batch": batch, "heads": heads, "seq": seq, "head_dim": d, "causal": causal}
                    out.append(Case(self.name, f"d={d} seq={seq}{' causal' if causal else ''}", shape, dtype))
                if quick != "headline" and (device != "cuda" or not quick):
                    # an encoder's padded batch, as transformers' sdpa passes it: a (B, 1, L, L) bool keep-mask
                    shape = {"batch": max(2, batch), "heads": heads, "seq": seq, "head_dim": d, "causal": False,
                             "padded": True}
                    out.append(Case(self.name, f"d={d} seq={seq} padding mask", shape, dtype))
        return out

    @staticmethod
    def padding_mask(batch: int, seq: int, device) -> torch.Tensor:
        """(B, 1, L, L) bool: batch b keeps its first L - b * L // (2 B) keys (every row sees a key)."""
        lens = torch.tensor([seq - b * seq // (2 * batch) for b in range(batch)], device=device)
        keep = torch.arange(seq, device=device)[None, :] < lens[:, None]
        return keep[:, None, None, :].expand(batch, 1, seq, seq).contiguous()

    def inputs(self, case, device, requires_grad):
        g = torch.Generator().manual_seed(0)
        s = case.shape
        shape = (s["batch"], s["heads"], s["seq"], s["head_dim"])
        inp = {n: _rand(shape, case.dtype, device, requires_grad, gen=g) for n in ("q", "k", "v")}
        if s.get("padded"):
            inp["attn_mask"] = self.padding_mask(s["batch"], s["seq"], device)
        return inp

    def flops(self, case, mode):
        s = case.shape
        fwd = 4 * s["batch"] * s["heads"] * s["seq"] ** 2 * s["head_dim"] / (2 if s["causal"] else 1)
        return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]

    def _ours(self, inp, backend, causal):
        return lambda: ops.attention(inp["q"], inp["k"], inp["v"], causal=causal, attn_mask=inp.get("attn_mask"),
                                     backend=backend)

    def providers(self):
        provs = []
        for name in API_BACKENDS:
            def make(case, inp, mode, name=name):
                if name == "cuda" and case.shape.get("padded"):
                    raise NotImplementedError("the cuda attention takes no attn_mask ('auto' routes masked calls)")
                return self._ours(inp, name, case.shape["causal"])

            provs.append(Provider(name, make, needs_gpu=name in ("cuda", "triton")))

        def triton_pointer(case, inp, mode):
            # the Ampere-compatible pointer kernel, for a side-by-side with the TMA forward on Hopper
            if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
                raise NotImplementedError("same as 'triton' below compute capability 9 (no TMA path)")
            from ..triton import attention as tri

            def run():
                saved, tri.TMA_MODE = tri.TMA_MODE, "0"
                try:
                    return self._ours(inp, "triton", case.shape["causal"])
                finally:
                    tri.TMA_MODE = saved

            return run

        provs.append(Provider("triton_no_tma", triton_pointer))

        def cuda_wgmma(case, inp, mode):
            # the sm_90a wgmma forward of the CUDA backend (opt-in: AIGC_KERNELS_CUDA_WGMMA=1)
            if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
                raise NotImplementedError("the wgmma forward runs on compute capability 9.0")
            if case.shape["head_dim"] not in (64, 128) or case.shape.get("padded"):
                raise NotImplementedError("the wgmma forward covers head dims 64 and 128, without a mask")

            def run():
                saved = os.environ.get("AIGC_KERNELS_CUDA_WGMMA")
                os.environ["AIGC_KERNELS_CUDA_WGMMA"] = "1"
                try:
                    return self._ours(inp, "cuda", case.shape["causal"])
                finally:
                    if saved is None:
                        del os.environ["AIGC_KERNELS_CUDA_WGMMA"]
                    else:
                        os.environ["AIGC_KERNELS_CUDA_WGMMA"] = saved

            return run

        provs.append(Provider("cuda_wgmma", cuda_wgmma))
        provs.append(Provider("eager", lambda case, inp, mode: lambda: F.scaled_dot_product_attention(
            inp["q"], inp["k"], inp["v"], attn_mask=inp.get("attn_mask"), is_causal=case.shape["causal"]),
            needs_gpu=False))
        provs += [_sdpa_provider("sdpa_flash", "FLASH_ATTENTION"),
                  _sdpa_provider("sdpa_efficient", "EFFICIENT_ATTENTION"),
                  _sdpa_provider("sdpa_cudnn", "CUDNN_ATTENTION")]

        def torch_ref(case, inp, mode):
            s = case.shape
            if s["batch"] * s["heads"] * s["seq"] ** 2 * 4 > 8 * 2**30:
                raise NotImplementedError("the naive reference would materialize > 8 GiB of scores")
            return lambda: reference.attention(inp["q"], inp["k"], inp["v"], causal=case.shape["causal"],
                                               attn_mask=inp.get("attn_mask"))

        provs.append(Provider("reference", torch_ref, needs_gpu=False))

        def compiled(case, inp, mode):
            s = case.shape
            if s["batch"] * s["heads"] * s["seq"] ** 2 * 4 > 8 * 2**30:
                raise NotImplementedError("the compiled reference would materialize > 8 GiB of scores")
            fn = _compiled(functools.partial(reference.attention, causal=case.shape["causal"]))
            return lambda: fn(inp["q"], inp["k"], inp["v"], attn_mask=inp.get("attn_mask"))

        provs.append(Provider("torch_compile", compiled))

        def flex(case, inp, mode):
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            s = case.shape
            if s.get("padded"):
                raise NotImplementedError("not set up here: a padding mask would be a block mask over the lengths")
            fn = _compiled(flex_attention)
            mask = None
            if s["causal"]:
                mask = create_block_mask(lambda b, h, q, k: q >= k, None, None, s["seq"], s["seq"],
                                         device=inp["q"].device)
            return lambda: fn(inp["q"], inp["k"], inp["v"], block_mask=mask)

        provs.append(Provider("flex_attention", flex))

        def flash_attn(case, inp, mode):
            if not _have("flash_attn"):
                raise NotImplementedError("flash-attn is not installed")
            from flash_attn import flash_attn_func

            if case.shape.get("padded"):
                raise NotImplementedError("flash_attn_func takes no mask (padding goes through its varlen API)")
            q, k, v = (t.transpose(1, 2) for t in (inp["q"], inp["k"], inp["v"]))
            return lambda: flash_attn_func(q, k, v, causal=case.shape["causal"])

        provs.append(Provider("flash_attn", flash_attn))
        return provs

    def check(self, case, inputs, out):
        # The last 128 queries of batch 0, head 0 against every key: bottom-right causal alignment
        # is the same for that slice as for the whole sequence.
        q, k, v = (inputs[n][:1, :1].detach() for n in ("q", "k", "v"))
        if out.shape[1] != inputs["q"].shape[1]:  # flash_attn layout (B, L, H, D)
            out = out.transpose(1, 2)
        tail = slice(max(0, q.shape[2] - 128), q.shape[2])
        causal = case.shape["causal"]
        mask = inputs.get("attn_mask")
        mask = None if mask is None else mask[:1, :, tail]
        ref64 = reference.attention(q[:, :, tail].double(), k.double(), v.double(), causal=causal, attn_mask=mask)
        lowp = reference.attention(q[:, :, tail], k, v, causal=causal, attn_mask=mask)
        return _bound(lowp, out[:1, :1, tail], ref64, case.dtype)


class DecodeBench(BenchOp):
    """attention_with_kvcache at Lq = 1: a memory-bound read of the KV cache; the "append" cases write the
    step's new key/value row first, as a decoding loop does (PyTorch's own: a slice copy, then SDPA)."""

    name = "attention_decode"
    modes = ("fwd",)

    def cases(self, quick, device):
        dtypes = [torch.bfloat16] if device == "cuda" else [torch.float32]
        if device != "cuda":
            grid = [(1, 1024), (8, 1024)]
        elif quick == "headline":
            grid = [(1, 16384), (32, 8192)]
        elif quick:
            grid = [(1, 8192), (32, 4096)]
        else:
            grid = [(b, c) for b in (1, 8, 32, 64) for c in (1024, 4096, 16384, 32768) if b * c <= 64 * 16384]
        heads, kv_heads, d = (32, 8, 128) if device == "cuda" else (8, 2, 64)
        cases = [Case(self.name, f"batch={b} cache={c}", {"batch": b, "heads": heads, "kv_heads": kv_heads,
                                                            "cache": c, "head_dim": d}, dtype)
                 for dtype in dtypes for b, c in grid]
        b, c = grid[0]
        return cases + [Case(self.name, f"batch={b} cache={c} append", {"batch": b, "heads": heads,
                                                                         "kv_heads": kv_heads, "cache": c,
                                                                         "head_dim": d, "append": 1}, dtype)
                        for dtype in dtypes]

    def inputs(self, case, device, requires_grad):
        g = torch.Generator().manual_seed(0)
        s = case.shape
        b, h, hk, c, d = s["batch"], s["heads"], s["kv_heads"], s["cache"], s["head_dim"]
        inp = {"q": _rand((b, h, 1, d), case.dtype, device, False, gen=g),
               "k_cache": _rand((b, hk, c, d), case.dtype, device, False, gen=g),
               "v_cache": _rand((b, hk, c, d), case.dtype, device, False, gen=g),
               "cache_seqlens": torch.full((b,), c - s.get("append", 0), dtype=torch.int32, device=device)}
        if s.get("append"):  # every call writes the same last row: repeated calls are the same step
            inp["k_new"] = _rand((b, hk, 1, d), case.dtype, device, False, gen=g)
            inp["v_new"] = _rand((b, hk, 1, d), case.dtype, device, False, gen=g)
        return inp

    def bytes(self, case, mode):
        s = case.shape
        return 2 * s["batch"] * s["kv_heads"] * s["cache"] * s["head_dim"] * (torch.finfo(case.dtype).bits // 8)

    def providers(self):
        def ours(inp, name):
            return lambda: ops.attention_with_kvcache(inp["q"], inp["k_cache"], inp["v_cache"], inp["cache_seqlens"],
                                                      k_new=inp.get("k_new"), v_new=inp.get("v_new"), backend=name)

        def eager(case, inp, mode):
            groups = case.shape["heads"] // case.shape["kv_heads"]
            q, kc, vc = inp["q"], inp["k_cache"], inp["v_cache"]
            return _pytorch_decode_step(inp, lambda: F.scaled_dot_product_attention(q, kc, vc, enable_gqa=groups > 1))

        def packed(case, inp, mode):
            # SDPA over the query heads of each key head packed as rows (what the torch backend does on
            # CPU): recorded beside SDPA's enable_gqa so a GPU run can tell whether to do it there too
            groups = case.shape["heads"] // case.shape["kv_heads"]
            if groups == 1:
                raise NotImplementedError("no GQA in this case: nothing to pack")
            q, kc, vc = inp["q"], inp["k_cache"], inp["v_cache"]
            b, h, _, d = q.shape
            hk = kc.shape[1]

            def attend():  # the packing (two views) inside the timed call, as the backend pays it
                return F.scaled_dot_product_attention(q.reshape(b, hk, groups, d), kc, vc).reshape(b, h, 1, d)

            return _pytorch_decode_step(inp, attend)

        def torch_ref(case, inp, mode):
            return lambda: reference.attention_with_kvcache(inp["q"], inp["k_cache"], inp["v_cache"],
                                                            inp["cache_seqlens"], k_new=inp.get("k_new"),
                                                            v_new=inp.get("v_new"), causal=True)

        return [*_api_providers("attention_with_kvcache", ours), Provider("eager", eager, needs_gpu=False),
                Provider("sdpa_packed_gqa", packed, needs_gpu=False), Provider("reference", torch_ref, needs_gpu=False)]

    def check(self, case, inputs, out):
        q, kc, vc = inputs["q"][:1], inputs["k_cache"][:1], inputs["v_cache"][:1]
        lens = inputs["cache_seqlens"][:1]
        # the append cases' caches already hold the new row (same row, same values): appending it again is exact
        new = {k: inputs[k][:1] for k in ("k_new", "v_new") if k in inputs}
        ref64 = reference.attention_with_kvcache(q.double(), kc.double(), vc.double(), lens,
                                                 **{k: t.double() for k, t in new.items()})
        lowp = reference.attention_with_kvcache(q, kc.clone(), vc.clone(), lens, **new)
        return _bound(lowp, out[:1], ref64, case.dtype)


class PagedDecodeBench(DecodeBench):
    """attention_with_kvcache at Lq = 1 on a paged cache (``block_table``; pages of 16 and 64 tokens, shuffled) beside
    the same call on the same keys laid out contiguously (``contiguous``: ours, auto), PyTorch's own call for a
    paged cache (``eager``: the pages gathered by index_select, then SDPA) and FA2's paged split-KV kernel where
    flash-attn is installed (it takes pages of a multiple of 256 tokens only)."""

    name = "attention_decode_paged"

    def cases(self, quick, device):
        dtypes = [torch.bfloat16] if device == "cuda" else [torch.float32]
        if device != "cuda":
            grid = [(1, 1024, 16), (8, 1024, 64)]
        elif quick:
            grid = [(1, 16384, 16), (8, 4096, 64), (64, 4096, 16)]
        else:
            grid = [(b, c, p) for b in (1, 8, 64) for c in (4096, 32768) for p in (16, 64, 256) if b * c <= 64 * 8192]
        heads, kv_heads, d = (32, 8, 128) if device == "cuda" else (8, 2, 64)
        return [Case(self.name, f"batch={b} cache={c} page={p}", {"batch": b, "heads": heads, "kv_heads": kv_heads,
                                                                 "cache": c, "head_dim": d, "page": p}, dtype)
                for dtype in dtypes for b, c, p in grid]

    def inputs(self, case, device, requires_grad):
        inp = super().inputs(case, device, requires_grad)
        b, hk, c, d = inp["k_cache"].shape
        page = case.shape["page"]
        per_seq = c // page
        g = torch.Generator().manual_seed(1)
        order = torch.randperm(b * per_seq, generator=g)  # page i of sequence s lives at order[s * per_seq + i]
        table = order.view(b, per_seq).to(torch.int32)

        def paged(cache):
            pages = cache.permute(0, 2, 1, 3).reshape(b * per_seq, page, hk, d)  # (B, L, Hkv, D) cut into pages
            out = torch.empty_like(pages)
            out[order.to(cache.device)] = pages
            return out

        inp["k_pages"], inp["v_pages"] = paged(inp["k_cache"]), paged(inp["v_cache"])
        inp["block_table"] = table.to(device)
        return inp

    def providers(self):
        def ours(inp, name):
            return lambda: ops.attention_with_kvcache(inp["q"], inp["k_pages"], inp["v_pages"], inp["cache_seqlens"],
                                                      block_table=inp["block_table"], backend=name)

        def contiguous(case, inp, mode):
            return lambda: ops.attention_with_kvcache(inp["q"], inp["k_cache"], inp["v_cache"], inp["cache_seqlens"])

        def gathered(case, inp, mode):
            groups = case.shape["heads"] // case.shape["kv_heads"]
            q, table, kp, vp = inp["q"], inp["block_table"].long(), inp["k_pages"], inp["v_pages"]
            b, hk = q.shape[0], kp.shape[2]

            flat = table.reshape(-1)

            def attend():  # the gather inside the timed call: what a paged cache costs PyTorch's own call
                kc = kp.index_select(0, flat).view(b, -1, hk, kp.shape[-1]).transpose(1, 2)  # (faster than kp[table])
                vc = vp.index_select(0, flat).view(b, -1, hk, vp.shape[-1]).transpose(1, 2)
                return F.scaled_dot_product_attention(q, kc, vc, enable_gqa=groups > 1)

            return attend

        def flash_attn(case, inp, mode):
            if not _have("flash_attn"):
                raise NotImplementedError("flash-attn is not installed")
            if case.shape["page"] % 256:
                raise NotImplementedError("FA2's paged kernel takes pages of a multiple of 256 tokens")
            from flash_attn import flash_attn_with_kvcache

            q = inp["q"].transpose(1, 2).contiguous()
            kp, vp, lens, table = inp["k_pages"], inp["v_pages"], inp["cache_seqlens"], inp["block_table"]
            return lambda: flash_attn_with_kvcache(q, kp, vp, cache_seqlens=lens, block_table=table,
                                                   causal=True).transpose(1, 2)

        return [*_api_providers("attention_with_kvcache", ours), Provider("contiguous", contiguous, needs_gpu=False),
                Provider("eager", gathered, needs_gpu=False), Provider("flash_attn", flash_attn)]

    def check(self, case, inputs, out):
        q, kc, vc, lens = inputs["q"][:1], inputs["k_cache"][:1], inputs["v_cache"][:1], inputs["cache_seqlens"][:1]
        ref64 = reference.attention_with_kvcache(q.double(), kc.double(), vc.double(), lens)
        return _bound(reference.attention_with_kvcache(q, kc, vc, lens), out[:1], ref64, case.dtype)


# ----------------------------------------------------------------------------------------------
# linear + activation, and the FFN block
# ----------------------------------------------------------------------------------------------
class LinearBench(BenchOp):
    name = "linear"

    def cases(self, quick, device):
        dtypes = [torch.bfloat16] if device == "cuda" else [torch.float32]
        if device != "cuda":
            grid = [("gpt2-s", 256, 768, 3072)]
        elif quick == "headline":  # a GPT-2 MLP, the small-M shape of GPU.md's cuBLASLt anchor, a big square
            grid = [("gpt2-s", 16384, 768, 3072), ("small-M", 512, 3072, 12288), ("square", 8192, 8192, 8192)]
        elif quick:
            grid = [("gpt2-s", 8192, 768, 3072), ("square", 8192, 8192, 8192)]
        else:
            grid = [(model, m, d, h) for model, (d, _, _, h) in MODELS.items() if model != "bert-base"
                    for m in (4096, 16384)] + [("square", 8192, 8192, 8192)]
        return [Case(self.name, f"{model} M={m}", {"M": m, "K": k, "N": n, "activation": "gelu"}, dtype)
                for dtype in dtypes for model, m, k, n in grid]

    def inputs(self, case, device, requires_grad):
        g = torch.Generator().manual_seed(0)
        s = case.shape
        return {"x": _rand((s["M"], s["K"]), case.dtype, device, requires_grad, gen=g),
                "weight": _rand((s["N"], s["K"]), case.dtype, device, requires_grad, scale=s["K"] ** -0.5, gen=g),
                "bias": _rand((s["N"],), case.dtype, device, requires_grad, gen=g)}

    def flops(self, case, mode):
        s = case.shape
        fwd = 2 * s["M"] * s["N"] * s["K"]
        return {"fwd": fwd, "bwd": 2 * fwd, "fwd+bwd": 3 * fwd}[mode]

    def providers(self):
        def ours(inp, name):
            return lambda: ops.linear(inp["x"], inp["weight"], inp["bias"], activation="gelu", backend=name)

        def eager(case, inp, mode):
            return lambda: F.gelu(F.linear(inp["x"], inp["weight"], inp["bias"]))

        def addmm_act(case, inp, mode):
            if mode != "fwd":
                raise NotImplementedError("torch._addmm_activation has no backward")
            wt = inp["weight"].detach().t()
            return lambda: torch._addmm_activation(inp["bias"].detach(), inp["x"].detach(), wt, use_gelu=True)

        def compiled(case, inp, mode):
            fn = _compiled(functools.partial(reference.linear, activation="gelu"))
            return lambda: fn(inp["x"], inp["weight"], inp["bias"])

        torch_ref = Provider("reference", lambda case, inp, mode: lambda: reference.linear(
            inp["x"], inp["weight"], inp["bias"], activation="gelu"), needs_gpu=False)
        return [*_api_providers("linear", ours), Provider("eager", eager, needs_gpu=False),
                Provider("torch_addmm_act", addmm_act), torch_ref, Provider("torch_compile", compiled)]

    def check(self, case, inputs, out):
        rows = slice(0, min(64, case.shape["M"]))
        x, w, b = inputs["x"][rows].detach(), inputs["weight"].detach(), inputs["bias"].detach()
        ref64 = reference.linear(x.double(), w.double(), b.double(), activation="gelu")
        return _bound(reference.linear(x, w, b, activation="gelu"), out[rows], ref64, case.dtype)


class FfnBench(BenchOp):
    name = "ffn"

    def cases(self, quick, device):
        dtypes = [torch.bfloat16] if device == "cuda" else [torch.float32]
        if device != "cuda":
            grid = [("gpt2-s", 256, 768, 3072, False)]
        elif quick == "headline":
            grid = [("llama-7b", 8192, 4096, 11008, True)]
        elif quick:
            grid = [("gpt2-s", 8192, 768, 3072, False), ("llama-7b", 4096, 4096, 11008, True)]
        else:
            grid = [("gpt2-s", m, 768, 3072, False) for m in (4096, 16384, 32768)]
            grid += [("gpt2-m", m, 1024, 4096, False) for m in (4096, 16384)]
            grid += [("llama-7b", m, 4096, 11008, True) for m in (4096, 8192)]
        return [Case(self.name, f"{model} M={m}{' swiglu' if gated else ''}",
                     {"M": m, "D": d, "H": h, "gated": gated}, dtype)
                for dtype in dtypes for model, m, d, h, gated in grid]

    def inputs(self, case, device, requires_grad):
        g = torch.Generator().manual_seed(0)
        s = case.shape
        d, h = s["D"], s["H"]
        rg = requires_grad
        inp = {"x": _rand((s["M"], d), case.dtype, device, rg, gen=g),
               "w_in": _rand((h, d), case.dtype, device, rg, scale=d**-0.5, gen=g), "b_in": None,
               "w_out": _rand((d, h), case.dtype, device, rg, scale=h**-0.5, gen=g), "b_out": None,
               "w_gate": None}
        if s["gated"]:
            inp["w_gate"] = _rand((h, d), case.dtype, device, rg, scale=d**-0.5, gen=g)
        else:
            inp["b_in"] = _rand((h,), case.dtype, device, rg, gen=g)
            inp["b_out"] = _rand((d,), case.dtype, device, rg, gen=g)
        return inp

    def flops(self, case, mode):
        s = case.shape
        fwd = 2 * s["M"] * s["D"] * s["H"] * (3 if s["gated"] else 2)
        return {"fwd": fwd, "bwd": 2 * fwd, "fwd+bwd": 3 * fwd}[mode]

    @staticmethod
    def _act(case):
        return "silu" if case.shape["gated"] else "gelu"

    def _ref(self, case, inp, fn=reference.ffn):
        return fn(inp["x"], inp["w_in"], inp["b_in"], inp["w_out"], inp["b_out"], activation=self._act(case),
                  w_gate=inp["w_gate"])

    def providers(self):
        def compiled(case, inp, mode):
            fn = _compiled(reference.ffn)
            return lambda: self._ref(case, inp, fn)

        def liger(case, inp, mode):
            if not case.shape["gated"]:
                raise NotImplementedError("Liger's SwiGLU covers the gated FFN only")
            if not _have("liger_kernel"):
                raise NotImplementedError("liger-kernel is not installed")
            from liger_kernel.ops.swiglu import LigerSiLUMulFunction

            def run():
                gate, up = F.linear(inp["x"], inp["w_gate"]), F.linear(inp["x"], inp["w_in"])
                return F.linear(LigerSiLUMulFunction.apply(gate, up), inp["w_out"])

            return run

        torch_ref = Provider("reference", lambda case, inp, mode: lambda: self._ref(case, inp), needs_gpu=False)
        # The reference is written as eager PyTorch for the FFN (F.linear + activation + F.linear).
        eager = Provider("eager", lambda case, inp, mode: lambda: self._ref(case, inp), needs_gpu=False)
        def api(name):
            def make(case, inp, mode):
                return lambda: self._ref(case, inp, functools.partial(ops.ffn, backend=name))

            return Provider(name, make, needs_gpu=name in ("cuda", "triton"))

        return [*(api(name) for name in API_BACKENDS), eager, torch_ref, Provider("torch_compile", compiled),
                Provider("liger", liger)]

    def check(self, case, inputs, out):
        rows = slice(0, min(64, case.shape["M"]))
        sub = {k: (None if v is None else v.detach()) for k, v in inputs.items()}
        sub["x"] = sub["x"][rows]
        to64 = {k: (None if v is None else v.double()) for k, v in sub.items()}
        return _bound(self._ref(case, sub), out[rows], self._ref(case, to64), case.dtype)


# ----------------------------------------------------------------------------------------------
# end-to-end: a GPT-2 training step and generation
# ----------------------------------------------------------------------------------------------
GPT2_SIZES = {"gpt2-s": (768, 12, 12), "gpt2-m": (1024, 16, 24), "tiny": (64, 4, 2)}


class _ModelBench(BenchOp):
    """GPT-2 models sharing one set of weights across providers: our GPT on each backend ("torch":
    PyTorch's own calls, "reference": the naive oracle), torch.compile of it on "torch", and Hugging
    Face GPT-2 with SDPA, plain ("hf_sdpa", the baseline) and patched with each of our backends
    ("hf_patched_<backend>", "auto" included). A provider's callable is the whole step (timed as is)."""

    whole_step = True

    def _sizes(self, quick, device):
        if device != "cuda":
            return ["tiny"]
        return ["gpt2-s"] if quick else ["gpt2-s", "gpt2-m"]

    def inputs(self, case, device, requires_grad):
        import transformers

        from ..models import gpt_from_hf

        d, h, n = GPT2_SIZES[case.shape["model"]]
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(n_embd=d, n_head=h, n_layer=n, n_positions=max(1024, case.shape["seq"] * 2),
                                      vocab_size=50304 if device == "cuda" else 512, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")
        hf = transformers.GPT2LMHeadModel(cfg).to(device=device, dtype=case.dtype)
        ours = gpt_from_hf(hf).to(device=device, dtype=case.dtype)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, cfg.vocab_size, (case.shape["batch"], case.shape["seq"] + 1), generator=g).to(device)
        # The references for the check, from the initial weights (a training step changes them).
        first = ids[:1, :-1]
        with torch.no_grad():
            ref64 = _with_backend(copy.deepcopy(ours).double(), "reference")(first)
            lowp = _with_backend(copy.deepcopy(ours), "reference")(first)
        _with_backend(ours, None)
        return {"hf": hf, "ours": ours, "ids": ids, "ref64": ref64, "ref_lowp": lowp}

    def check(self, case, inputs, out):
        # the provider's logits for the first sequence vs our model in float64 (the same weights)
        n = inputs["ref64"].shape[1]
        return _bound(inputs["ref_lowp"], out[:1, :n], inputs["ref64"], case.dtype)


def _with_backend(model, backend):
    from ..nn import set_backend

    set_backend(model, backend)
    return model


def _ours_on(model, name):
    """Our model on a backend: "torch" / "reference" set as is, a kernel backend through ak.patch (which
    runs the ops that backend lacks on "auto" and says so)."""
    if name in ("torch", "reference"):
        return _with_backend(model, name)
    from ..patch import patch

    patch(model, backend=name)
    return model


def _hf_patched(name):
    def make(case, inp, mode, name=name):
        from ..backend import available_backends
        from ..patch import patch

        if name != "auto" and name not in available_backends():
            raise NotImplementedError(f"the '{name}' backend is not available here")
        model = inp["hf"]
        if getattr(model, "_aigc_kernels_patch", None) is None:
            patch(model, backend=name)
        return model
    return make


class ModelTrainBench(_ModelBench):
    name = "model_train"
    modes = ("fwd+bwd",)

    def cases(self, quick, device):
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        batch, seq = (16, 1024) if device == "cuda" else (2, 32)
        return [Case(self.name, f"{m} batch={batch} seq={seq}", {"model": m, "batch": batch, "seq": seq}, dtype)
                for m in self._sizes(quick, device)]

    def tokens(self, case):
        return case.shape["batch"] * case.shape["seq"]

    def providers(self):
        def step_fn(model, inp, hf=False):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            ids = inp["ids"]

            def step():
                if hf:
                    out = model(ids[:, :-1], labels=ids[:, :-1])
                    loss, logits = out.loss, out.logits
                else:
                    logits, loss = model(ids[:, :-1], ids[:, 1:])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return logits.detach()

            return step

        def ours(name):
            def make(case, inp, mode):
                from ..backend import available_backends

                if name not in available_backends():
                    raise NotImplementedError(f"the '{name}' backend is not available here")
                return step_fn(_ours_on(inp["ours"], name), inp)

            return Provider(name, make, needs_gpu=name in ("cuda", "triton"))

        def compiled(case, inp, mode):
            model = _with_backend(inp["ours"], "torch")
            return step_fn(torch.compile(model), inp)

        provs = [ours("cuda"), ours("triton"), ours("torch"), ours("reference"), Provider("torch_compile", compiled),
                 Provider("hf_sdpa", lambda case, inp, mode: step_fn(inp["hf"], inp, hf=True), needs_gpu=False)]
        for name in ("cuda", "triton", "auto"):
            provs.append(Provider(f"hf_patched_{name}", lambda case, inp, mode, name=name: step_fn(
                _hf_patched(name)(case, inp, mode), inp, hf=True), needs_gpu=name != "auto"))
        return provs


class ModelDecodeBench(_ModelBench):
    name = "model_decode"
    modes = ("fwd",)

    def cases(self, quick, device):
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        prompt, new = (128, 128) if device == "cuda" else (8, 8)
        batches = (1, 32) if device == "cuda" else (1, 4)
        return [Case(self.name, f"{m} batch={b} prompt={prompt} new={new}",
                     {"model": m, "batch": b, "seq": prompt, "new_tokens": new}, dtype)
                for m in self._sizes(quick, device) for b in batches]

    def tokens(self, case):
        return case.shape["batch"] * case.shape["new_tokens"]

    def providers(self):
        def gen_ours(name):
            def make(case, inp, mode):
                from ..backend import available_backends

                if name not in available_backends():
                    raise NotImplementedError(f"the '{name}' backend is not available here")
                model = _ours_on(inp["ours"].eval(), name)
                prompt = inp["ids"][:, :-1]
                return lambda: _last_logits_then_generate(model, prompt, case.shape["new_tokens"])

            return Provider(name, make, needs_gpu=name in ("cuda", "triton"))

        def gen_hf(patched):
            def make(case, inp, mode):
                model = (_hf_patched(patched)(case, inp, mode) if patched else inp["hf"]).eval()
                prompt = inp["ids"][:, :-1]
                return lambda: _last_logits_then_generate(model, prompt, case.shape["new_tokens"], hf=True)

            return make

        return [gen_ours("cuda"), gen_ours("triton"), gen_ours("torch"), gen_ours("reference"),
                Provider("hf_sdpa", gen_hf(None), needs_gpu=False), Provider("hf_patched_cuda", gen_hf("cuda")),
                Provider("hf_patched_triton", gen_hf("triton")),
                Provider("hf_patched_auto", gen_hf("auto"), needs_gpu=False)]


@torch.no_grad()
def _last_logits_then_generate(model, prompt, new_tokens, hf=False):
    """Greedy generation of new_tokens; returns the prompt's logits (what the check compares)."""
    if hf:
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=0, attention_mask=torch.ones_like(prompt))
        return model(prompt).logits
    model.generate(prompt, new_tokens)
    return model(prompt)


# ----------------------------------------------------------------------------------------------
# dispatch: the eager overhead of a call, on inputs too small for the kernel to matter
# ----------------------------------------------------------------------------------------------
class DispatchBench(BenchOp):
    """Wall-clock time per call of tiny ops, back to back (the runner times these on the host,
    with one synchronize after many calls): what validation, backend selection, the torch.ops
    dispatcher and the launch cost, against PyTorch's own call ("eager"). The runner records each
    provider's ``overhead_us`` over eager."""

    name = "dispatch"
    modes = ("fwd",)
    wall_clock = True

    def cases(self, quick, device):
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        return [Case(self.name, "layer_norm 4x64", {"op": "layer_norm", "rows": 4, "hidden": 64}, dtype),
                Case(self.name, "rms_norm 4x64", {"op": "rms_norm", "rows": 4, "hidden": 64}, dtype),
                Case(self.name, "attention decode 1x2x1x32, 16 keys",
                     {"op": "attention", "heads": 2, "seq_q": 1, "seq_k": 16, "head_dim": 32}, dtype),
                Case(self.name, "kv-cache step 1x4/2x1x32 + append, 16 keys",
                     {"op": "attention_with_kvcache", "heads": 4, "kv_heads": 2, "seq_k": 16, "head_dim": 32},
                     dtype),
                Case(self.name, "kv-cache append 1x2x1x32 into 16 rows",
                     {"op": "kvcache_append", "heads": 2, "kv_heads": 2, "seq_k": 16, "head_dim": 32}, dtype),
                Case(self.name, "linear 4x64x64 gelu", {"op": "linear", "rows": 4, "hidden": 64}, dtype)]

    def inputs(self, case, device, requires_grad):
        g = torch.Generator().manual_seed(0)
        s = case.shape
        if s["op"] in ("layer_norm", "rms_norm", "linear"):
            n = s["hidden"]
            return {"x": _rand((s["rows"], n), case.dtype, device, False, gen=g),
                    "weight": _rand((n, n) if s["op"] == "linear" else (n,), case.dtype, device, False, gen=g),
                    "bias": _rand((n,), case.dtype, device, False, gen=g)}
        if s["op"] in ("attention_with_kvcache", "kvcache_append"):  # every call writes the same last row:
            # repeated calls are one step
            hk, lk, d = s["kv_heads"], s["seq_k"], s["head_dim"]
            return {"q": _rand((1, s["heads"], 1, d), case.dtype, device, False, gen=g),
                    **{n: _rand((1, hk, lk, d), case.dtype, device, False, gen=g) for n in ("k_cache", "v_cache")},
                    **{n: _rand((1, hk, 1, d), case.dtype, device, False, gen=g) for n in ("k_new", "v_new")},
                    "cache_seqlens": torch.full((1,), lk - 1, dtype=torch.int32, device=device)}
        return {"q": _rand((1, s["heads"], s["seq_q"], s["head_dim"]), case.dtype, device, False, gen=g),
                **{n: _rand((1, s["heads"], s["seq_k"], s["head_dim"]), case.dtype, device, False, gen=g)
                   for n in ("k", "v")}}

    @staticmethod
    def _call(case, inp, module, **kw):
        op = case.shape["op"]
        if op == "layer_norm":
            return lambda: module.layer_norm(inp["x"], inp["weight"], inp["bias"], 1e-5, **kw)
        if op == "rms_norm":
            return lambda: module.rms_norm(inp["x"], inp["weight"], 1e-6, **kw)
        if op == "linear":
            return lambda: module.linear(inp["x"], inp["weight"], inp["bias"], activation="gelu", **kw)
        if op == "attention_with_kvcache":
            return lambda: module.attention_with_kvcache(inp["q"], inp["k_cache"], inp["v_cache"], inp["cache_seqlens"],
                                                         k_new=inp["k_new"], v_new=inp["v_new"], **kw)
        if op == "kvcache_append":
            def append():  # (returns the caches, which the correctness check compares)
                module.kvcache_append(inp["k_cache"], inp["v_cache"], inp["k_new"], inp["v_new"], inp["cache_seqlens"],
                                      **kw)
                return inp["k_cache"], inp["v_cache"]

            return append
        return lambda: module.attention(inp["q"], inp["k"], inp["v"], causal=True, **kw)

    def providers(self):
        def ours(name):
            def make(case, inp, mode):
                return self._call(case, inp, ops, backend=name)

            return Provider(name, make, needs_gpu=name in ("cuda", "triton"))

        def cuda_op(case, inp, mode):  # the C++ op straight, without the Python API in front
            from .. import cuda  # noqa: F401  (loads the extension and its fake impls)

            op = case.shape["op"]
            if op in ("layer_norm", "rms_norm"):
                rms = op == "rms_norm"
                return lambda: torch.ops.aigc_kernels.norm_fwd(inp["x"], inp["weight"], None if rms else inp["bias"],
                                                               None, 1e-5, rms)
            if op == "linear":
                return lambda: torch.ops.aigc_kernels.linear_fwd(inp["x"], inp["weight"], inp["bias"], "gelu")
            if op == "kvcache_append":
                def append():
                    torch.ops.aigc_kernels.kvcache_append(inp["k_cache"], inp["v_cache"], inp["k_new"], inp["v_new"],
                                                          inp["cache_seqlens"])
                    return inp["k_cache"], inp["v_cache"]

                return append
            if op == "attention_with_kvcache":
                q, kc, vc, lens = inp["q"], inp["k_cache"], inp["v_cache"], inp["cache_seqlens"]

                def step():
                    torch.ops.aigc_kernels.kvcache_append(kc, vc, inp["k_new"], inp["v_new"], lens)
                    return torch.ops.aigc_kernels.flash_decode(q, kc, vc, lens, 1, True, q.shape[-1] ** -0.5, 0)

                return step
            q = inp["q"]
            return lambda: torch.ops.aigc_kernels.flash_fwd(q, inp["k"], inp["v"], None, None, q.shape[2],
                                                            inp["k"].shape[2], q.shape[-1] ** -0.5, True, -1, -1)

        def eager(case, inp, mode):
            op = case.shape["op"]
            n = inp["x"].shape[-1] if "x" in inp else None
            if op == "layer_norm":
                return lambda: F.layer_norm(inp["x"], (n,), inp["weight"], inp["bias"], 1e-5)
            if op == "rms_norm":
                return lambda: F.rms_norm(inp["x"], (n,), inp["weight"], 1e-6)
            if op == "linear":
                return lambda: F.gelu(F.linear(inp["x"], inp["weight"], inp["bias"]))
            if op == "kvcache_append":  # PyTorch's own write: a slice copy per cache
                return _pytorch_decode_step(inp, lambda: (inp["k_cache"], inp["v_cache"]))
            if op == "attention_with_kvcache":  # PyTorch's own step: the new row written, then SDPA over the cache
                return _pytorch_decode_step(inp, lambda: F.scaled_dot_product_attention(
                    inp["q"], inp["k_cache"], inp["v_cache"], enable_gqa=True))
            # decoding: one query sees every key (bottom-right causal), which is SDPA without a mask
            return lambda: F.scaled_dot_product_attention(inp["q"], inp["k"], inp["v"])

        return [*(ours(name) for name in API_BACKENDS), Provider("cuda_op", cuda_op),
                Provider("reference", lambda case, inp, mode: self._call(case, inp, reference), needs_gpu=False),
                Provider("eager", eager, needs_gpu=False)]

    def check(self, case, inputs, out):
        def copy(t, dtype=None):  # copies: the KV-cache step writes into its caches
            t = t.detach().clone()
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        ref = self._call(case, {k: copy(v) for k, v in inputs.items()}, reference)
        ref64 = self._call(case, {k: copy(v, torch.float64) for k, v in inputs.items()}, reference)
        if case.shape["op"] == "kvcache_append":  # what counts is both caches after the write (the runner hands
            out = (inputs["k_cache"], inputs["v_cache"])  # over the first output only)
        return _bound(ref(), out, ref64(), case.dtype)


# ----------------------------------------------------------------------------------------------
# drop-in: a Hugging Face model's forward, unpatched vs patched (the promise: never slower)
# ----------------------------------------------------------------------------------------------
class HfForwardBench(BenchOp):
    """A padded batch through a Hugging Face BERT and GPT-2 (6 layers, hidden 384, 12 heads), as
    transformers runs it ("hf_sdpa", the baseline), with the library's attention registered
    ("hf_registered_auto") and after ``ak.patch`` on each backend ("hf_patched_<backend>")."""

    name = "hf_forward"
    modes = ("fwd",)
    whole_step = True

    def cases(self, quick, device):
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        batch, seq = (32, 512) if device == "cuda" else (8, 256)
        return [Case(self.name, f"{m} 6x384 batch={batch} seq={seq} padded", {"model": m, "batch": batch, "seq": seq},
                     dtype) for m in ("bert", "gpt2")]

    def tokens(self, case):
        return case.shape["batch"] * case.shape["seq"]

    def inputs(self, case, device, requires_grad):
        import transformers

        torch.manual_seed(0)
        s = case.shape
        if s["model"] == "bert":
            cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                                          num_attention_heads=12, intermediate_size=1536, attn_implementation="sdpa")
            model = transformers.BertModel(cfg, add_pooling_layer=False)
        else:
            cfg = transformers.GPT2Config(vocab_size=50257, n_embd=384, n_layer=6, n_head=12,
                                          n_positions=max(1024, s["seq"]), attn_implementation="sdpa")
            model = transformers.GPT2Model(cfg)
        model = model.to(device=device, dtype=case.dtype).eval()
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, cfg.vocab_size, (s["batch"], s["seq"]), generator=g).to(device)
        mask = torch.ones_like(ids)
        lengths = torch.randint(s["seq"] // 2, s["seq"] + 1, (s["batch"],), generator=g)
        for i, n in enumerate(lengths.tolist()):
            mask[i, n:] = 0  # right padding
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        return {"model": model, "ids": ids, "mask": mask, "ref": ref}

    def providers(self):
        def forward(inp):
            with torch.no_grad():
                return inp["model"](input_ids=inp["ids"], attention_mask=inp["mask"]).last_hidden_state

        def plain(case, inp, mode):
            return lambda: forward(inp)

        def registered(case, inp, mode):
            from ..patch import register_hf

            register_hf()
            inp["model"].set_attn_implementation("aigc_kernels")
            return lambda: forward(inp)

        def patched(name):
            def make(case, inp, mode):
                from ..backend import available_backends
                from ..patch import patch

                if name != "auto" and name not in available_backends():
                    raise NotImplementedError(f"the '{name}' backend is not available here")
                if getattr(inp["model"], "_aigc_kernels_patch", None) is None:
                    patch(inp["model"], backend=name)
                return lambda: forward(inp)

            return Provider(f"hf_patched_{name}", make, needs_gpu=name in ("cuda", "triton"))

        return [Provider("hf_sdpa", plain, needs_gpu=False),
                Provider("hf_registered_auto", registered, needs_gpu=False),
                patched("auto"), patched("triton"), patched("cuda")]

    def check(self, case, inputs, out):
        # the same model's own forward (sdpa) is the reference here; pads excluded
        keep = inputs["mask"].bool()
        err = float((out.float() - inputs["ref"].float())[keep].abs().max())
        return err, (1e-3 if case.dtype == torch.float32 else 5e-2)


# ----------------------------------------------------------------------------------------------
# rotary
# ----------------------------------------------------------------------------------------------
def _hf_rotary(x, cos, sin, position_ids):
    """Hugging Face Llama's apply_rotary_pos_emb on one tensor: cos/sin gathered per token and doubled to the
    head dim, then q * cos + rotate_half(q) * sin (what ak.patch replaces)."""
    c = torch.cat((cos, cos), dim=-1)[position_ids].unsqueeze(1)
    s = torch.cat((sin, sin), dim=-1)[position_ids].unsqueeze(1)
    half = x.shape[-1] // 2
    return x * c + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * s


class RotaryBench(BenchOp):
    name = "rotary"

    def cases(self, quick, device):
        dtypes = [torch.bfloat16] if device == "cuda" else [torch.float32]
        if device != "cuda":
            grid = [("gpt2-s", 1, 12, 256, 64)]
        elif quick:
            grid = [("llama-7b", 4, 32, 4096, 128)]
        else:
            grid = [("llama-7b", 4, 32, 4096, 128), ("llama-7b", 1, 32, 16384, 128), ("gpt2-s", 8, 12, 4096, 64),
                    ("llama-70b kv", 4, 8, 8192, 128)]
        return [Case(self.name, f"{model} B={b} L={length}", {"B": b, "H": h, "L": length, "D": d}, dtype)
                for dtype in dtypes for model, b, h, length, d in grid]

    def inputs(self, case, device, requires_grad):
        g = torch.Generator().manual_seed(0)
        s = case.shape
        half = s["D"] // 2
        t = torch.arange(s["L"], dtype=torch.float32)[:, None] * 10000.0 ** (-torch.arange(half) / half)
        return {"x": _rand((s["B"], s["H"], s["L"], s["D"]), case.dtype, device, requires_grad, gen=g),
                "cos": t.cos().to(device, case.dtype), "sin": t.sin().to(device, case.dtype),
                "position_ids": torch.arange(s["L"], device=device).expand(s["B"], s["L"])}

    def bytes(self, case, mode):
        s = case.shape
        e = torch.finfo(case.dtype).bits // 8
        x = s["B"] * s["H"] * s["L"] * s["D"] * e
        angles = 2 * s["L"] * (s["D"] // 2) * e + s["B"] * s["L"] * 8  # cos, sin rows; int64 positions
        fwd, bwd = 2 * x + angles, 2 * x + angles  # read x (dout), write out (dx)
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    def providers(self):
        def ours(inp, name):
            return lambda: ops.rotary(inp["x"], inp["cos"], inp["sin"], position_ids=inp["position_ids"],
                                      backend=name)

        def eager(case, inp, mode):
            return lambda: _hf_rotary(inp["x"], inp["cos"], inp["sin"], inp["position_ids"])

        def compiled(case, inp, mode):
            fn = _compiled(_hf_rotary)
            return lambda: fn(inp["x"], inp["cos"], inp["sin"], inp["position_ids"])

        ref = Provider("reference", lambda case, inp, mode: lambda: reference.rotary(
            inp["x"], inp["cos"], inp["sin"], inp["position_ids"]), needs_gpu=False)
        return [*_api_providers("rotary", ours), Provider("eager", eager, needs_gpu=False), ref,
                Provider("torch_compile", compiled)]

    def check(self, case, inputs, out):
        x, cos, sin, pos = (inputs[k] for k in ("x", "cos", "sin", "position_ids"))
        x, pos = x[:1, :4].detach(), pos[:1]
        ref64 = reference.rotary(x.double(), cos.double(), sin.double(), pos)
        return _bound(reference.rotary(x, cos, sin, pos), out[:1, :4], ref64, case.dtype)


def bench_ops() -> dict[str, BenchOp]:
    ops_ = [NormBench("layer_norm"), NormBench("rms_norm"), AttentionBench(), DecodeBench(), PagedDecodeBench(),
            LinearBench(),
            FfnBench(), RotaryBench(), ModelTrainBench(), ModelDecodeBench(), DispatchBench(), HfForwardBench()]
    return {o.name: o for o in ops_}


__all__ = ["MODES", "MODELS", "BenchOp", "Case", "Provider", "bench_ops"]
