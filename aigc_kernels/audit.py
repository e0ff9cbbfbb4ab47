"""``aigc-kernels audit``: compile every Triton kernel for a GPU target on a machine with no GPU,
through the library's own host code, and read what the compiled code costs.

How. A stand-in Triton driver reports the target (sm_90a, sm_80, sm_100a) as the current device,
``aigc_kernels._device.simulate`` makes the launchers plan for that GPU (SM count, compute
capability: TMA paths, split counts, warp specialization), and ``triton.knobs.runtime.jit_cache_hook``
receives every specialization just before Triton would compile and launch it: the audit records
it and returns True, so nothing is launched. The launchers are called on CPU tensors exactly as a
user's call would run them on that GPU -- autotune configs, prune functions, pre_hooks, tensor
descriptors -- once with the autotuning candidates (the autotuner "times" each kept config; each is
recorded) and once with the default configs (AIGC_KERNELS_AUTOTUNE=0). The recorded
specializations are then compiled with Triton's real compiler for the target (in parallel
processes), and for each: errors, shared memory against the target's per-block limit, registers,
stack frame bytes (register spills; ``cuobjdump --dump-resource-usage`` from Triton's wheel), and
which of wgmma / mma.sync / TMA the PTX uses. The CUDA extension's resource usage is read the same
way from ``aigc_kernels._C``.

What it proves: the host code a GPU user runs does not crash; every config the prune can keep
compiles for the target and fits its shared memory; which configs spill. What it cannot prove:
speed, races, or the hardware's own semantics (use a GPU: tests, compute-sanitizer, the bench).

Exit status 1 on any host error, compile error, kept config over the shared-memory limit, or a
spill in a default config or in a kept config where the library promises none (attention with
head dims <= 128, GEMMs with K >= 64).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib
import importlib.util
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from . import _device, _files, sass


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # "90a"
    arch: int  # 90
    gpu: _device.GPU

    @property
    def sm(self) -> str:
        return f"sm_{self.name}"


# Per-block shared memory is the opt-in maximum of each generation's flagship (H100/H200, A100, B200).
TARGETS = {
    "90a": Target("90a", 90, _device.GPU((9, 0), 132, 232448)),
    "80": Target("80", 80, _device.GPU((8, 0), 108, 166912)),
    "100a": Target("100a", 100, _device.GPU((10, 0), 148, 232448)),
}


def _gpu_target(target: Target):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", target.arch, 32)


class CompileOnlyDriver:
    """The parts of a Triton driver the JIT and the autotuner ask for, answering for ``target``."""

    def __init__(self, target: Target) -> None:
        self.target = _gpu_target(target)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        def bench(kernel_call, quantiles=None, **kwargs):
            kernel_call()  # the config's pre_hook and launch: recorded by the cache hook, not run
            return [1.0, 1.0, 1.0] if quantiles else 1.0

        return bench

    def get_empty_cache_for_benchmark(self):
        return torch.empty(0)

    def clear_cache(self, cache) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# recording
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Record:
    """One compiled specialization of one kernel (a config, for autotuned kernels) on one target."""

    arch: str
    kernel: str
    module: str
    config: str  # block sizes, warps, stages
    specialization: str  # the other constexprs (dtype flags, head dim, features)
    num_warps: int
    num_stages: int
    spec_data: str = dataclasses.field(repr=False)
    cases: list[str] = dataclasses.field(default_factory=list)
    modes: list[str] = dataclasses.field(default_factory=list)  # "default" / "autotune"
    strict: bool = False  # a case promises no spills here
    status: str = "pending"  # ok | error
    error: str = ""
    shared: int | None = None
    registers: int | None = None
    stack: int | None = None  # stack frame bytes (cuobjdump)
    spill: int | None = None  # of which register spill stores (ptxas -v; -1 when it did not say)
    uses: list[str] = dataclasses.field(default_factory=list)  # wgmma, mma.sync, tma
    compile_s: float | None = None

    @property
    def default(self) -> bool:
        return "default" in self.modes

    @property
    def spills(self) -> bool:
        """A stack frame that ptxas says holds spilled registers (or that it could not account for)."""
        return (self.stack or 0) > 0 and self.spill != 0


@dataclasses.dataclass
class HostError:
    arch: str
    mode: str
    case: str
    error: str


_TUNED_NAMES = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "BLOCK_R", "BLOCK_S")


class Recorder:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.records: dict[tuple, Record] = {}
        self.case = ""
        self.mode = ""
        self.strict = False

    def hook(self, key, repr, fn, compile, is_manual_warmup, already_compiled) -> bool:
        jit = fn.jit_function
        names = jit.arg_names
        constants = {}
        for path, value in compile["constants"].items():
            if len(path) == 1 and names[path[0]] not in ("dummy",):
                constants[names[path[0]]] = getattr(value, "value", value)
        dtypes = sorted({ty.lstrip("*") for ty in compile["signature"].values()
                         if isinstance(ty, str) and ty.startswith("*")})
        tuned = {k: v for k, v in constants.items() if k in _TUNED_NAMES}
        # The features of this specialization: named flags that are on, sizes that matter (the rest
        # are Triton's own specializations of ints equal to 1 and unit strides).
        rest = {k: v for k, v in constants.items() if k not in _TUNED_NAMES and k.isupper() and k != "NUM_PROGS"
                and (k in ("HEAD_DIM", "BLOCK_D") or v is True
                     or (not isinstance(v, bool) and v not in (0, -1, 1, None)))}
        config = " ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in tuned.items())
        config = f"{config} w{compile['num_warps']} s{compile['num_stages']}".strip()
        spec = " ".join([",".join(dtypes)] + [f"{k}={_short(v)}" for k, v in rest.items()])
        rkey = (fn.name, str(key))
        rec = self.records.get(rkey)
        if rec is None:
            rec = Record(self.target.name, fn.name, fn.module, config, spec, compile["num_warps"],
                         compile["num_stages"], compile["specialization_data"])
            self.records[rkey] = rec
        if self.case not in rec.cases:
            rec.cases.append(self.case)
        if self.mode not in rec.modes:
            rec.modes.append(self.mode)
        rec.strict = rec.strict or self.strict
        return True  # handled: Triton compiles and launches nothing


def _short(v) -> str:
    if isinstance(v, bool):
        return "T" if v else "F"
    return str(v)


def _active_driver():
    """The driver set active now, or None (without a GPU, asking for the default one raises)."""
    from triton.runtime.driver import driver

    return getattr(driver, "_active", None)


# Every module of aigc_kernels/triton (one per op family; _tuning holds configs): a new family is audited and
# has its per-target caches cleared without being listed here.
KERNEL_MODULES = tuple(sorted(f"aigc_kernels.triton.{p.stem}" for p in (Path(__file__).parent / "triton").glob("*.py")
                              if not p.stem.startswith("__")))


def _jit_function(obj):
    """The JITFunction behind a kernel object (an Autotuner wraps one, possibly through heuristics)."""
    from triton.runtime.jit import JITFunction

    while not isinstance(obj, JITFunction):
        obj = obj.fn
    return obj


def _launchable_kernels() -> list:
    """The JIT functions of the library's kernel modules (triton 3.6 has no registry of them)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    out = []
    for name in KERNEL_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, (JITFunction, Autotuner)):
                out.append(_jit_function(value))
    return out


def _forget_targets() -> None:
    """Every JIT function caches its binder and target per device index on first use: drop them, so
    the next target (or the real GPU) is asked again."""
    for jit in _launchable_kernels():
        jit.device_caches.clear()


def _restore_driver(saved) -> None:
    from triton.runtime.driver import driver

    if saved is None and hasattr(driver, "_active"):
        driver._active = None  # back to "create the default driver when first asked"
    elif saved is not None:
        driver.set_active(saved)


@contextlib.contextmanager
def compile_only(target: Target, recorder: Recorder) -> Iterator[None]:
    """Within the block, Triton launches compile nothing and run nothing: they are recorded."""
    from triton import knobs
    from triton.runtime.driver import driver

    if _device.interpreter():
        raise RuntimeError("the audit drives Triton's real compiler: run it without TRITON_INTERPRET=1")
    saved_hook, saved_driver = knobs.runtime.jit_cache_hook, _active_driver()
    _forget_targets()
    driver.set_active(CompileOnlyDriver(target))
    knobs.runtime.jit_cache_hook = recorder.hook
    try:
        with _device.simulate(target.gpu):
            yield
    finally:
        knobs.runtime.jit_cache_hook = saved_hook
        _restore_driver(saved_driver)
        _forget_targets()


# ----------------------------------------------------------------------------------------------
# the calls the audit drives (what check, the tests and bench run, and the autotuned configs)
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    family: str
    label: str
    run: Callable[[], None]
    strict: bool = True  # spills in its kept configs are failures


def _t(*shape, dtype=torch.bfloat16, grad=False):
    return torch.empty(*shape, dtype=dtype).requires_grad_(grad)


def _backward(out: torch.Tensor) -> None:
    out.backward(torch.empty_like(out))


@contextlib.contextmanager
def _tma(mode: str) -> Iterator[None]:
    from .triton import attention as tri_attention
    from .triton import linear as tri_linear

    saved = tri_attention.TMA_MODE, tri_linear.TMA_MODE
    tri_attention.TMA_MODE = tri_linear.TMA_MODE = mode
    try:
        yield
    finally:
        tri_attention.TMA_MODE, tri_linear.TMA_MODE = saved


_DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def attention_cases() -> list[Case]:
    from .triton import attention as A

    def dense(dt, d, lq=1024, lk=None, hq=8, hkv=8, b=2, tma="auto", **kw):
        def run():
            dtype = _DT[dt]
            q = _t(b, hq, lq, d, dtype=dtype, grad=True)
            k = _t(b, hkv, lk or lq, d, dtype=dtype, grad=True)
            v = _t(b, hkv, lk or lq, d, dtype=dtype, grad=True)
            mask = kw.pop("mask", None)
            if mask == "bool":
                kw["attn_mask"] = torch.ones(b, 1, lq, lk or lq, dtype=torch.bool)
            elif mask == "float":
                kw["attn_mask"] = torch.zeros(lq, lk or lq, dtype=dtype)
            with _tma(tma):
                _backward(A.attention(q, k, v, **kw))

        return run

    def varlen(dt, d):
        def run():
            lens = [300, 1024, 7, 600]
            cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
            q, k, v = (_t(sum(lens), 8, d, dtype=_DT[dt], grad=True) for _ in range(3))
            _backward(A.attention_varlen(q, k, v, cu, cu, max(lens), max(lens), causal=True))

        return run

    def decode(dt, d, b, cache, hq=32, hkv=8, lq=1, append=True):
        def run():
            dtype = _DT[dt]
            kc, vc = _t(b, hkv, cache, d, dtype=dtype), _t(b, hkv, cache, d, dtype=dtype)
            lens = torch.full((b,), cache // 2, dtype=torch.int32)
            new = dict(k_new=_t(b, hkv, lq, d, dtype=dtype), v_new=_t(b, hkv, lq, d, dtype=dtype)) if append else {}
            A.attention_with_kvcache(_t(b, hq, lq, d, dtype=dtype), kc, vc, lens, **new)

        return run

    def paged_decode(dt, d, b, cache, page, hq=32, hkv=8, rotary=None):
        def run():  # rotary: (rotary_dim, interleaved) -- the append kernel with the rotation inside
            dtype = _DT[dt]
            pages = b * cache // page
            kc, vc = _t(pages, page, hkv, d, dtype=dtype), _t(pages, page, hkv, d, dtype=dtype)
            table = torch.arange(pages, dtype=torch.int32).view(b, cache // page)
            lens = torch.full((b,), cache // 2, dtype=torch.int32)
            rot = {}
            if rotary is not None:
                rot = dict(rotary_cos=_t(cache, rotary[0] // 2, dtype=torch.float32),
                           rotary_sin=_t(cache, rotary[0] // 2, dtype=torch.float32), rotary_interleaved=rotary[1])
            A.attention_with_kvcache(_t(b, hq, 1, d, dtype=dtype), kc, vc, lens, k_new=_t(b, hkv, 1, d, dtype=dtype),
                                     v_new=_t(b, hkv, 1, d, dtype=dtype), block_table=table, **rot)

        return run

    def paged_varlen(dt, d, page, seqused=False, hq=32, hkv=8):
        def run():  # chunked prefill + decode rows over a paged cache (forward only)
            dtype = _DT[dt]
            lq, lk = [512, 1, 1, 300], [4096, 2048, 17, 300]
            width = -(-max(lk) // page)
            pages = len(lk) * width
            kc, vc = _t(pages, page, hkv, d, dtype=dtype), _t(pages, page, hkv, d, dtype=dtype)
            table = torch.arange(pages, dtype=torch.int32).view(len(lk), width)
            cu_q = torch.tensor([0, *torch.tensor(lq).cumsum(0).tolist()], dtype=torch.int32)
            cu_k = torch.tensor([0, *torch.tensor(lk).cumsum(0).tolist()], dtype=torch.int32)
            used = torch.tensor(lk, dtype=torch.int32) if seqused else None
            A.attention_varlen(_t(sum(lq), hq, d, dtype=dtype), kc, vc, cu_q, None if seqused else cu_k, max(lq),
                               max(lk), causal=True, block_table=table, seqused_k=used)

        return run

    cases = []
    for dt in ("bf16", "fp16"):
        for d in (64, 128):
            for causal in (False, True):
                cases.append(Case("attention", f"{dt} d={d}{' causal' if causal else ''} L=1024 fwd+bwd",
                                  dense(dt, d, causal=causal)))
    cases += [
        Case("attention", "fp32 d=64 causal fwd+bwd", dense("fp32", 64, causal=True)),
        *(Case("attention", f"bf16 d={d} causal fwd+bwd", dense("bf16", d, causal=True), strict=d <= 128)
          for d in (16, 32, 96, 256)),
        Case("attention", "bf16 d=64 bool mask fwd+bwd", dense("bf16", 64, mask="bool")),
        Case("attention", "bf16 d=64 float mask fwd+bwd", dense("bf16", 64, mask="float")),
        Case("attention", "bf16 d=128 causal window (256, 0) fwd+bwd", dense("bf16", 128, causal=True,
                                                                             window_size=(256, 0))),
        Case("attention", "bf16 d=64 window (128, 128) fwd+bwd", dense("bf16", 64, window_size=(128, 128))),
        Case("attention", "bf16 d=64 dropout 0.1 fwd+bwd", dense("bf16", 64, dropout_p=0.1)),
        Case("attention", "bf16 d=128 GQA 32/8 causal fwd+bwd", dense("bf16", 128, hq=32, hkv=8, causal=True)),
        Case("attention", "bf16 d=64 Lq=37 Lk=45 causal fwd+bwd", dense("bf16", 64, lq=37, lk=45, causal=True)),
        Case("attention", "bf16 d=128 causal, TMA off (pointer kernel)", dense("bf16", 128, causal=True, tma="0")),
        Case("attention", "bf16 d=64, TMA off (pointer kernel)", dense("bf16", 64, tma="0")),
        Case("attention", "bf16 d=128 varlen causal fwd+bwd", varlen("bf16", 128)),
        Case("attention", "decode bf16 d=128 GQA 4 B=1 cache=16384", decode("bf16", 128, 1, 16384)),
        Case("attention", "decode bf16 d=128 GQA 4 B=8 cache=1024", decode("bf16", 128, 8, 1024)),
        Case("attention", "decode bf16 d=128 GQA 4 B=64 cache=4096 (1 split)", decode("bf16", 128, 64, 4096)),
        Case("attention", "decode bf16 d=64 MQA 16 Lq=4 no append", decode("bf16", 64, 4, 2048, hq=16, hkv=1, lq=4,
                                                                         append=False)),
        Case("attention", "decode fp16 d=128 MHA B=2 cache=4096", decode("fp16", 128, 2, 4096, hq=8, hkv=8)),
        Case("attention", "decode fp32 d=64 GQA 4 B=2 cache=1024", decode("fp32", 64, 2, 1024)),
        *(Case("attention", f"decode bf16 d=128 GQA 32/8 B=8 paged (page {page}) cache=16384",
               paged_decode("bf16", 128, 8, 16384, page)) for page in (16, 256)),
        Case("attention", "decode bf16 d=128 GQA 4 B=8 paged (page 64) rotary in the append",
             paged_decode("bf16", 128, 8, 4096, 64, rotary=(128, False))),
        Case("attention", "decode fp16 d=64 GQA 4 B=2 paged (page 16) partial GPT-J rotary in the append",
             paged_decode("fp16", 64, 2, 1024, 16, rotary=(32, True))),
        Case("attention", "decode fp16 d=64 MHA B=1 paged (page 1) cache=512", paged_decode("fp16", 64, 1, 512, 1,
                                                                                         hq=8, hkv=8)),
        *(Case("attention", f"varlen bf16 d={d} GQA 32/8 paged (page {page}) chunked prefill + decode",
               paged_varlen("bf16", d, page)) for d, page in ((128, 16), (128, 256), (64, 64))),
        Case("attention", "varlen fp16 d=128 paged (page 16) seqused_k", paged_varlen("fp16", 128, 16, seqused=True)),
    ]
    return cases


def norm_cases() -> list[Case]:
    from .triton import norm as N

    def run(fn, n, dt, residual, affine=True):
        def go():
            dtype = _DT[dt]
            x = _t(64, n, dtype=dtype, grad=True)
            w = _t(n, dtype=dtype, grad=True) if affine else None
            r = _t(64, n, dtype=dtype, grad=True) if residual else None
            if fn == "layer_norm":
                b = _t(n, dtype=dtype, grad=True) if affine else None
                out = N.layer_norm(x, w, b, 1e-5, residual=r)
            else:
                out = N.rms_norm(x, w, 1e-6, residual=r)
            y = out[0] if isinstance(out, tuple) else out
            _backward(y)

        return go

    cases = []
    for fn in ("layer_norm", "rms_norm"):
        for n in (1, 7, 768, 1023, 4096, 8192, 16384, 65536):
            cases.append(Case("norm", f"{fn} bf16 64x{n}", run(fn, n, "bf16", False)))
        cases.append(Case("norm", f"{fn} bf16 64x4096 residual", run(fn, 4096, "bf16", True)))
        cases.append(Case("norm", f"{fn} bf16 64x65536 residual", run(fn, 65536, "bf16", True)))
        cases.append(Case("norm", f"{fn} fp32 64x4096 residual", run(fn, 4096, "fp32", True)))
        cases.append(Case("norm", f"{fn} fp16 64x768 no affine", run(fn, 768, "fp16", False, affine=False)))
    return cases


def gemm_cases() -> list[Case]:
    from .triton import linear as L

    m, k, n = 512, 1024, 4096

    def linear(act, dt="bf16", k_=k, tma="auto"):
        def run():
            dtype = _DT[dt]
            x, w, b = _t(m, k_, dtype=dtype, grad=True), _t(n, k_, dtype=dtype, grad=True), _t(n, dtype=dtype,
                                                                                              grad=True)
            with _tma(tma):
                _backward(L.linear(x, w, b, activation=act))

        return run

    def ffn(act, gated, recompute=False, dt="bf16"):
        def run():
            dtype = _DT[dt]
            x = _t(m, k, dtype=dtype, grad=True)
            w_in, w_out = _t(n, k, dtype=dtype, grad=True), _t(k, n, dtype=dtype, grad=True)
            extra = dict(w_gate=_t(n, k, dtype=dtype, grad=True)) if gated else {}
            b_in = None if gated else _t(n, dtype=dtype, grad=True)
            b_out = None if gated else _t(k, dtype=dtype, grad=True)
            _backward(L.ffn(x, w_in, b_in, w_out, b_out, activation=act, recompute=recompute, **extra))

        return run

    cases = [Case("gemm", f"linear bf16 {m}x{k}x{n} {act} fwd+bwd", linear(act))
             for act in (None, "relu", "gelu", "gelu_tanh", "silu")]
    cases += [
        Case("gemm", f"linear fp16 {m}x{k}x{n} gelu fwd+bwd", linear("gelu", "fp16")),
        Case("gemm", f"linear fp32 {m}x{k}x{n} gelu fwd+bwd", linear("gelu", "fp32")),
        Case("gemm", f"linear bf16 {m}x32x{n} gelu fwd+bwd (K < 64)", linear("gelu", k_=32), strict=False),
        Case("gemm", f"linear bf16 {m}x{k}x{n} gelu, TMA off (pointer kernel)", linear("gelu", tma="0")),
        Case("gemm", f"ffn bf16 {m}x{k}x{n} gelu fwd+bwd", ffn("gelu", False)),
        Case("gemm", f"ffn bf16 {m}x{k}x{n} SwiGLU fwd+bwd", ffn("silu", True)),
        Case("gemm", f"ffn bf16 {m}x{k}x{n} GeGLU recompute fwd+bwd", ffn("gelu", True, recompute=True)),
        Case("gemm", f"ffn bf16 {m}x{k}x{n} relu recompute fwd+bwd", ffn("relu", False, recompute=True)),
    ]
    return cases


def rotary_cases() -> list[Case]:
    from .triton import rotary as T

    def run(dt, d, rotary_dim, interleaved, positions, inplace, grad, heads=32, length=4096, cos_dt=None):
        def go():
            dtype = _DT[dt]
            x = _t(2, heads, length, d, dtype=dtype, grad=grad)
            cos = _t(length, rotary_dim // 2, dtype=_DT[cos_dt or dt])
            sin = _t(length, rotary_dim // 2, dtype=_DT[cos_dt or dt])
            pos = torch.zeros(2, length, dtype=torch.int64) if positions else None
            with torch.set_grad_enabled(grad):
                out = T.rotary(x * 1 if (grad and inplace) else x, cos, sin, pos, interleaved, inplace)
                if grad:
                    _backward(out)

        return go

    cases = []
    for dt in ("bf16", "fp16", "fp32"):
        for interleaved in (False, True):
            layout = "GPT-J" if interleaved else "NeoX"
            cases.append(Case("rotary", f"rotary {dt} d128 {layout} fwd+bwd", run(dt, 128, 128, interleaved, True,
                                                                                  False, True)))
    cases.append(Case("rotary", "rotary bf16 d64 NeoX in place (decoding, 1 row)",
                      run("bf16", 64, 64, False, True, True, False, length=1)))
    cases.append(Case("rotary", "rotary bf16 d256 partial 64 (fp32 angles)",
                      run("bf16", 256, 64, False, False, False, False, cos_dt="fp32")))
    cases.append(Case("rotary", "rotary bf16 d512 rotary_dim 512", run("bf16", 512, 512, True, False, False, True,
                                                                          heads=4, length=256)))
    return cases


def tune_cases() -> list[Case]:
    """The grid ``aigc-kernels tune`` times (bf16, every key, forward and forward + backward), through the
    Triton implementation as tune calls it: the sizes a GPU's first tune run meets (32k-key decoding
    caches, 16k-token attention, 16k-row GEMMs) go through the launch planning and autotuning before a GPU
    sees them. A call the implementation refuses is one tune would not time either."""
    from . import tune
    from .backend import implementation
    from .validation import make_call

    def empty(shape, device, dtype, grad=False, scale=1.0):  # tune's inputs, unfilled: the audit launches nothing
        return torch.empty(shape, device=device, dtype=dtype).requires_grad_(grad)

    def case(tc):
        def run():
            saved, tune._randn = tune._randn, empty
            try:
                args, kwargs = tc.make(torch.device("cpu"), torch.bfloat16)
            finally:
                tune._randn = saved
            with torch.set_grad_enabled(tc.grad):
                call = make_call(tc.op, *args, **kwargs)
                impl = implementation(tc.op, "triton")
                if impl is None or impl.why_not(call) is not None:
                    return
                out = impl.fn()(*call)
                if tc.grad:
                    _backward(out[0] if isinstance(out, tuple) else out)

        return run

    return [Case("tune", f"tune {tc.op} bf16 {tc.label}", case(tc)) for tc in tune.cases(tune.TUNE_OPS)]


FAMILIES = {"attention": attention_cases, "norm": norm_cases, "gemm": gemm_cases, "rotary": rotary_cases,
            "tune": tune_cases}


# ----------------------------------------------------------------------------------------------
# compiling and reading the cubins
# ----------------------------------------------------------------------------------------------
def _tool(name: str) -> str | None:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else shutil.which(name)


def _cuobjdump() -> str:
    tool = _tool("cuobjdump")
    if tool is None:
        raise RuntimeError("cuobjdump not found (triton's wheel ships one in triton/backends/nvidia/bin)")
    return tool


def resource_usage(path: str) -> list[dict]:
    """[{arch, function, registers, stack, shared, local}] of every kernel in a cubin or fatbinary."""
    return sass.resource_usage(path, _cuobjdump())


@contextlib.contextmanager
def _cubin_file(compiled) -> Iterator[str]:
    """The path of a temporary file holding a compiled Triton kernel's cubin (cuobjdump reads files)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        yield f.name


def preload(arch: str, module: str, kernel: str, spec_data: str):
    """Triton's compiled kernel (asm: ttgir, ptx, cubin; metadata) of one recorded specialization for ``arch``."""
    from triton.runtime.driver import driver

    saved = _active_driver()
    driver.set_active(CompileOnlyDriver(TARGETS[arch]))
    try:
        jit = _jit_function(getattr(importlib.import_module(module), kernel))
        jit.device_caches.clear()  # this process may have compiled it for another target before
        return jit.preload(spec_data)
    finally:
        _restore_driver(saved)


_MMA_LAYOUT = re.compile(r"^#(\w+) = #ttg\.nvidia_mma<\{versionMajor = (\d+)")
_DOT = re.compile(r"= (tt\.dot|ttng\.warp_group_dot) .*?: (?:tensor|!ttg\.memdesc)<(\d+)x(\d+)x\w+.*"
                  r"-> tensor<(\d+)x(\d+)x\w+, #(\w+)>")


def dots(ttgir: str) -> list[dict]:
    """Every tl.dot of a kernel as Triton lowered it (its TTGIR): [{m, n, k, mma: 2 (mma.sync) | 3 (wgmma) | 0 (FMA),
    count}], from the MMA layout of its result."""
    lines = ttgir.splitlines()
    versions = {m.group(1): int(m.group(2)) for m in map(_MMA_LAYOUT.match, lines) if m}
    found: dict[tuple, int] = {}
    for line in lines:
        if m := _DOT.search(line):
            key = (int(m.group(4)), int(m.group(5)), int(m.group(3)), versions.get(m.group(6), 0))
            found[key] = found.get(key, 0) + 1
    return [dict(m=m, n=n, k=k, mma=v, count=c) for (m, n, k, v), c in sorted(found.items(), reverse=True)]


def _compile_one(arch: str, module: str, kernel: str, spec_data: str) -> dict:
    """Compile one recorded specialization for ``arch`` (in a worker process) and read its costs."""
    t0 = time.perf_counter()
    try:
        compiled = preload(arch, module, kernel, spec_data)
    except Exception as exc:  # a compile error is a finding, reported per config
        msg = f"{type(exc).__name__}: {exc}".strip()
        return dict(status="error", error=msg[-600:], compile_s=time.perf_counter() - t0)
    ptx = compiled.asm.get("ptx", "")
    uses = [name for name, pattern in (("wgmma", "wgmma.mma_async"), ("mma.sync", "mma.sync"),
                                       ("tma", "cp.async.bulk.tensor")) if pattern in ptx]
    result = dict(status="ok", shared=int(compiled.metadata.shared), uses=uses, compile_s=time.perf_counter() - t0)
    with _cubin_file(compiled) as path:
        usage = resource_usage(path)
    if usage:
        result.update(registers=usage[0]["registers"], stack=usage[0]["stack"] + usage[0]["local"], spill=0)
    if result.get("stack"):  # a stack frame: ask ptxas how much of it is register spilling
        result["spill"] = _spill_stores(arch, ptx)
    return result


def kernel_figures(arch: str, rec: Record) -> dict:
    """What the performance model reads of one Triton specialization compiled for ``arch``: its launch shape and
    resources, every tl.dot's MMA version (TTGIR), and its SASS instruction mix and main loop (aigc_kernels/sass)."""
    compiled = preload(arch, rec.module, rec.kernel, rec.spec_data)
    with _cubin_file(compiled) as path:
        usage = resource_usage(path)
        functions = sass.parse(sass.dump(path, _cuobjdump()))
    fig = sass.figures(max(functions.values(), key=len) if functions else [])
    return dict(kernel=rec.kernel, module=rec.module, config=rec.config, specialization=rec.specialization,
                num_warps=rec.num_warps, num_stages=rec.num_stages, shared=int(compiled.metadata.shared),
                registers=usage[0]["registers"] if usage else None, dots=dots(compiled.asm.get("ttgir", "")),
                mix=fig["kernel"], main_loop=fig["main_loop"])


_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores")


def _spill_stores(arch: str, ptx: str) -> int:
    """Bytes of register spill stores ptxas reports for this PTX (with Triton's own ptxas flags)."""
    tool = _tool("ptxas-blackwell" if TARGETS[arch].arch >= 100 else "ptxas") or _tool("ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([tool, "-v", "--regAllocOptLevel", "2", "--gpu-name", f"sm_{arch}", str(src), "-o",
                              str(Path(tmp) / "k.o")], capture_output=True, text=True)
    found = [int(m) for m in _PTXAS_SPILL.findall(out.stdout + out.stderr)]
    return max(found) if found else -1  # -1: ptxas did not say


def _worker_init() -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    # a worker whose audit was killed (a CI timeout, Ctrl-C twice) must not live on compiling: seen here,
    # orphaned workers kept a core busy for hours. Exit when the parent is gone.
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(2.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="aigc-audit-parent-watch", daemon=True).start()


def compile_records(records: list[Record], jobs: int, progress: Callable[[int, int], None] | None = None) -> None:
    """Compile every pending record (``jobs`` processes; 1 = in this process)."""
    todo = [r for r in records if r.status == "pending"]
    if not todo:
        return
    if jobs <= 1:
        for i, rec in enumerate(todo):
            _apply(rec, _compile_one(rec.arch, rec.module, rec.kernel, rec.spec_data))
            if progress:
                progress(i + 1, len(todo))
        return
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init) as pool:
        futures = {pool.submit(_compile_one, r.arch, r.module, r.kernel, r.spec_data): r for r in todo}
        for i, fut in enumerate(concurrent.futures.as_completed(futures)):
            try:
                _apply(futures[fut], fut.result())
            except Exception as exc:  # the worker itself died
                _apply(futures[fut], dict(status="error", error=f"worker failed: {exc}"))
            if progress:
                progress(i + 1, len(todo))


def _apply(rec: Record, result: dict) -> None:
    for k, v in result.items():
        setattr(rec, k, v)


# ----------------------------------------------------------------------------------------------
# the whole audit
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Report:
    targets: list[str]
    records: list[Record]
    host_errors: list[HostError]
    extension: list[dict]
    extension_note: str
    seconds: float
    versions: dict

    def findings(self) -> dict[str, list]:
        """What fails the audit (see the module docstring)."""
        limit = {t: TARGETS[t].gpu.smem_per_block for t in self.targets}
        return {
            "host errors": self.host_errors,
            "compile errors": [r for r in self.records if r.status == "error"],
            "over shared-memory limit": [r for r in self.records if r.shared is not None and r.shared > limit[r.arch]],
            "spills where none is allowed": [r for r in self.records if r.spills and (r.default or r.strict)],
        }

    def ok(self) -> bool:
        return not any(self.findings().values())

    def to_json(self) -> dict:
        return {
            "targets": {t: dataclasses.asdict(TARGETS[t]) for t in self.targets},
            "versions": self.versions,
            "seconds": round(self.seconds, 1),
            "ok": self.ok(),
            "summary": summary(self),
            "host_errors": [dataclasses.asdict(e) for e in self.host_errors],
            "records": [{k: v for k, v in dataclasses.asdict(r).items() if k != "spec_data"}
                        | {"default": r.default, "spills": r.spills} for r in self.records],
            "extension": self.extension,
            "extension_note": self.extension_note,
        }


def summary(report: Report) -> list[dict]:
    """Per target and kernel: compiles, errors, over-limit, spilling configs, wgmma use, maxima."""
    limit = {t: TARGETS[t].gpu.smem_per_block for t in report.targets}
    rows: dict[tuple, dict] = {}
    for r in report.records:
        row = rows.setdefault((r.arch, r.kernel), dict(arch=r.arch, kernel=r.kernel, compiles=0, errors=0,
                                                       over_limit=0, spilling=0, wgmma=0, mma_sync=0, tma=0,
                                                       max_shared=0, max_stack=0, max_registers=0))
        row["compiles"] += 1
        row["errors"] += r.status == "error"
        row["over_limit"] += r.shared is not None and r.shared > limit[r.arch]
        row["spilling"] += r.spills
        row["wgmma"] += "wgmma" in r.uses
        row["mma_sync"] += "mma.sync" in r.uses
        row["tma"] += "tma" in r.uses
        row["max_shared"] = max(row["max_shared"], r.shared or 0)
        row["max_stack"] = max(row["max_stack"], r.stack or 0)
        row["max_registers"] = max(row["max_registers"], r.registers or 0)
    for arch in report.targets:
        errs = [e for e in report.host_errors if e.arch == arch]
        if errs:
            rows[(arch, "(host code)")] = dict(arch=arch, kernel="(host code)", compiles=0, errors=len(errs),
                                               over_limit=0, spilling=0, wgmma=0, mma_sync=0, tma=0, max_shared=0,
                                               max_stack=0, max_registers=0)
    return list(rows.values())


def extension_usage() -> tuple[list[dict], str]:
    """Resource usage of the CUDA extension's kernels (empty, with the reason, where _C is not built)."""
    spec = importlib.util.find_spec("aigc_kernels._C")
    if spec is None or not spec.origin:
        return [], "aigc_kernels._C is not built"
    try:
        rows = resource_usage(spec.origin)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        return [], f"cuobjdump failed on {spec.origin}: {exc}"
    demangle = shutil.which("c++filt")
    if demangle and rows:
        names = subprocess.run([demangle], input="\n".join(r["function"] for r in rows), capture_output=True,
                               text=True).stdout.splitlines()
        if len(names) == len(rows):
            for r, name in zip(rows, names, strict=True):
                r["function"] = name
    return rows, f"{len(rows)} kernels in {Path(spec.origin).name} (shared = static only; dynamic is set at launch)"


def run(targets: list[str], families: list[str] | None = None, modes: tuple[str, ...] = ("default", "autotune"),
        jobs: int | None = None, progress: Callable[[str, int, int], None] | None = None,
        cases: list[Case] | None = None) -> Report:
    """Drive every case on every target in every config mode, then compile what was recorded."""
    import triton

    from .triton import _tuning

    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"audit: unknown target(s) {unknown}; expected some of {sorted(TARGETS)}")
    t0 = time.perf_counter()
    if cases is None:
        fams = families or list(FAMILIES)
        bad = sorted(set(fams) - set(FAMILIES))
        if bad:
            raise ValueError(f"audit: unknown kernel families {bad}; expected some of {sorted(FAMILIES)}")
        cases = [c for f in fams for c in FAMILIES[f]()]
    records: list[Record] = []
    host_errors: list[HostError] = []
    for name in targets:
        rec = Recorder(TARGETS[name])
        with compile_only(TARGETS[name], rec):
            for mode in modes:
                _tuning.use_mode(mode)
                for i, case in enumerate(cases):
                    if progress:
                        progress(f"{name} {mode}: {case.label}", i, len(cases))
                    rec.case, rec.mode, rec.strict = case.label, mode, case.strict
                    try:
                        case.run()
                    except Exception as exc:
                        tb = traceback.extract_tb(exc.__traceback__)[-1]
                        where = f"{Path(tb.filename).name}:{tb.lineno}"
                        host_errors.append(HostError(name, mode, case.label,
                                                     f"{type(exc).__name__}: {exc} (at {where})"[:400]))
        _tuning.use_mode(_tuning.MODE)
        records += rec.records.values()
    jobs = jobs or min(len(os.sched_getaffinity(0)), 8)

    def compiled(i, n):
        if progress:
            progress("compiling", i, n)

    compile_records(records, jobs, compiled)
    ext, note = extension_usage()
    versions = {"triton": triton.__version__, "torch": torch.__version__}
    return Report(list(targets), records, host_errors, ext, note, time.perf_counter() - t0, versions)


# ----------------------------------------------------------------------------------------------
# presenting
# ----------------------------------------------------------------------------------------------
def render(report: Report, console, verbose: bool = False) -> None:
    from rich.table import Table

    limit = {t: TARGETS[t].gpu.smem_per_block for t in report.targets}
    t = Table(title=f"aigc-kernels audit: Triton kernels compiled for {', '.join('sm_' + a for a in report.targets)} "
                    f"(triton {report.versions['triton']}; {len(report.records)} compiles, {report.seconds:.0f} s)")
    for col in ("target", "kernel", "compiles", "errors", "over smem", "spilling", "wgmma", "mma.sync", "tma",
                "max smem KB", "max regs", "max stack B"):
        t.add_column(col, justify="left" if col in ("target", "kernel") else "right")
    for row in summary(report):
        red = lambda v: f"[red]{v}[/]" if v else "0"  # noqa: E731
        t.add_row(f"sm_{row['arch']}", row["kernel"], str(row["compiles"]), red(row["errors"]),
                  red(row["over_limit"]), str(row["spilling"]), str(row["wgmma"]), str(row["mma_sync"]),
                  str(row["tma"]), f"{row['max_shared'] / 1024:.0f}", str(row["max_registers"]),
                  str(row["max_stack"]))
    console.print(t)
    problems = [r for r in report.records if r.status == "error" or r.spills or (r.shared or 0) > limit[r.arch]]
    shown = report.records if verbose else problems
    if shown:
        d = Table(title="every compiled config" if verbose else "configs with errors, spills or too much shared memory")
        for col in ("target", "kernel", "config", "specialization", "mode", "smem KB", "regs", "stack B", "uses",
                    "verdict", "first case"):
            d.add_column(col)
        for r in sorted(shown, key=lambda r: (r.arch, r.kernel, r.config)):
            verdict = "ok"
            if r.status == "error":
                verdict = f"[red]error[/] {r.error[:80]}"
            elif (r.shared or 0) > limit[r.arch]:
                verdict = f"[red]smem > {limit[r.arch] // 1024} KB[/]"
            elif r.spills:
                verdict = "[red]spills[/]" if (r.default or r.strict) else "[yellow]spills (allowed)[/]"
            d.add_row(f"sm_{r.arch}", r.kernel, r.config, r.specialization[:60], "+".join(r.modes),
                      "-" if r.shared is None else f"{r.shared / 1024:.0f}", str(r.registers or "-"),
                      "-" if r.stack is None else f"{r.stack} ({r.spill} spilled)", ",".join(r.uses), verdict,
                      r.cases[0][:50])
        console.print(d)
    for e in report.host_errors:
        console.print(f"[red]host error[/] sm_{e.arch} ({e.mode} configs) {e.case}: {e.error}")
    if report.extension:
        spilling = [r for r in report.extension if r["stack"] or r["local"]]
        console.print(f"CUDA extension: {report.extension_note}; max registers "
                      f"{max(r['registers'] for r in report.extension)}; "
                      f"{len(spilling)} with a stack frame"
                      + (": " + "; ".join(f"{r['arch']} {r['function'][:70]} ({r['stack']} B)" for r in spilling)
                         if spilling else ""))
    else:
        console.print(f"CUDA extension: {report.extension_note}")
    findings = report.findings()
    bad = {k: len(v) for k, v in findings.items() if v}
    if bad:
        console.print("[red]audit FAILED:[/] " + ", ".join(f"{n} {k}" for k, n in bad.items()))
    else:
        console.print("[green]audit passed[/]: no host error, no compile error, every kept config fits, "
                      "no spill where none is allowed")


def write_json(report: Report, path: str | Path) -> None:
    _files.write_json(path, report.to_json())
