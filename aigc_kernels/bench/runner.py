"""The bench runner: every op x provider x mode on this machine, timed the same way, checked for
correctness, recorded in a stable JSON schema.

JSON schema (stable; new keys may be added, none removed or renamed)::

    {"schema": 1,
     "env": {"device", "torch", "triton", "cuda", "commit", "python", "created",
             "ceilings": {"hbm_copy_gbps", "bf16_gemm_tflops"}},      # measured at the start; null on CPU
     "results": [{"op", "provider", "mode", "dtype", "shape", "label",
                  "median_ms", "p20_ms", "p80_ms",                       # CUDA events (triton.testing.do_bench)
                  "tflops", "gbps", "pct_of_ceiling",                    # null where the op has no FLOP/byte count
                  "speedup_vs_eager", "peak_mem_mb", "tokens_per_s",     # model_train, model_decode
                  "correct", "max_err", "err_bound",                     # the provider's output vs float64
                  "status", "note"}]}                                   # status: ok | skipped | error | wrong

op is one of attention, attention_decode, attention_decode_paged (the same on a paged cache, beside the
contiguous one and PyTorch's gather + SDPA), layer_norm, rms_norm, linear, ffn, rotary, model_train (a GPT-2
training step: forward, backward, AdamW), model_decode (greedy generation with the KV cache) and
dispatch (tiny calls timed by host wall clock, 200 back to back: the eager overhead per call of
the public API, the bare torch.ops op, and the math called directly).
Compute-bound ops (attention, linear, ffn) report % of the bf16 GEMM ceiling; memory-bound ones
(norms, decode) % of the copy bandwidth; the model cases report tokens/s.

On a machine without a CUDA GPU only the torch reference is timed (kernel timings there would be
interpreter or CPU timings, which say nothing about kernel speed); every other provider is
listed as skipped with the reason. There PyTorch's own call is also timed a second time, on its own
inputs, as "<provider>_again" (eager_again, hf_sdpa_again): the same code, so its speedup_vs_eager
is the run's noise floor, against which the other CPU ratios are read.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .._files import write_json
from .cases import MODES, BenchOp, Case, bench_ops

SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------------------
# environment and ceilings
# ----------------------------------------------------------------------------------------------
def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(ceilings: dict | None) -> dict:
    import importlib.metadata as md

    try:
        triton_version = md.version("triton")
    except md.PackageNotFoundError:
        triton_version = None
    gpu = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if gpu else f"CPU ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "commit": _git_commit(), "python": platform.python_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "ceilings": ceilings}


def measure_ceilings() -> dict:
    """Device-to-device copy bandwidth (bytes read + written) and dense bf16 GEMM throughput."""
    from triton.testing import do_bench

    def median_ms(fn):
        return do_bench(fn, warmup=10, rep=50, return_mode="median")

    n = 1 << 28  # 512 MiB of bf16 each way: far beyond the L2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    copy_gbps = 2 * n * 2 / (median_ms(lambda: dst.copy_(src)) * 1e-3) / 1e9
    src = dst = None  # free before the GEMM
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    gemm_tflops = 2 * 8192**3 / (median_ms(lambda: a @ b) * 1e-3) / 1e12
    return {"hbm_copy_gbps": round(copy_gbps, 1), "bf16_gemm_tflops": round(gemm_tflops, 1)}


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
def _time_gpu(fn: Callable, grad_to_none: list | None) -> tuple[float, float, float]:
    from triton.testing import do_bench

    # do_bench clears the L2 (a 256 MB write) before every run and times with CUDA events.
    p20, med, p80 = do_bench(fn, warmup=25, rep=100, quantiles=[0.2, 0.5, 0.8], grad_to_none=grad_to_none)
    return med, p20, p80


def _time_wall_gpu(fn: Callable, calls: int = 200, reps: int = 7) -> tuple[float, float, float]:
    """Host wall-clock per call over `calls` back-to-back calls (one synchronize at the end):
    the eager dispatch overhead when the kernels are tiny. (On CPU, _time_interleaved does this.)"""
    fn()
    samples = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) * 1e3 / calls)
    q = statistics.quantiles(samples, n=10)
    return statistics.median(samples), q[1], q[7]


def _first_tensor(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def timed_fn(fwd: Callable, mode: str, leaves: list[torch.Tensor]) -> Callable:
    """The callable to time for a mode: the forward, the backward of a saved forward, or both."""
    if mode == "fwd":
        return fwd
    out = _first_tensor(fwd())
    grad = torch.randn_like(out)
    if mode == "bwd":
        return lambda: out.backward(grad, retain_graph=True)
    return lambda: _first_tensor(fwd()).backward(grad)


def run(op_names: Iterable[str] | None = None, providers: Iterable[str] | None = None,
        modes: Iterable[str] | None = None, quick: bool | str = False, progress: Callable | None = None,
        cpu_reps: int = 5, checkpoint: str | Path | None = None) -> dict:
    """Run the benchmark; returns the JSON-ready report (see the module docstring).

    quick: False (every case), True (a few per op) or "headline" (the cases README's results table and
    the GPU verification pass report). checkpoint: a JSON file rewritten after every case, so a run cut
    off by a time limit still leaves what it measured."""
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    all_ops = bench_ops()
    names = list(op_names or all_ops)
    unknown = sorted(set(names) - set(all_ops))
    if unknown:
        raise ValueError(f"bench: unknown op(s) {unknown}; expected some of {sorted(all_ops)}")
    modes = list(modes or MODES)
    bad_modes = sorted(set(modes) - set(MODES))
    if bad_modes:
        raise ValueError(f"bench: unknown mode(s) {bad_modes}; expected some of {list(MODES)}")
    ceilings = measure_ceilings() if gpu else None
    report = {"schema": SCHEMA_VERSION, "env": environment(ceilings), "results": []}
    if not gpu:
        report["env"]["host_malloc"] = _steady_host_allocator()
    work = [(all_ops[n], case) for n in names for case in all_ops[n].cases(quick, device)]
    for i, (bop, case) in enumerate(work):
        if progress:
            progress(i, len(work), f"{bop.name} {case.label}")
        report["results"] += _run_case(bop, case, device, providers, modes, ceilings, cpu_reps)
        if checkpoint is not None:
            write_json(checkpoint, report)
    if progress:
        progress(len(work), len(work), "done")
    return report


def _steady_host_allocator() -> str:
    """glibc serves large blocks (a CPU op's output: megabytes) with mmap and hands them back on free,
    so a call pays page faults or not depending on what the calls before it left in the heap -- the
    providers of one case differed by up to 15 % that way. With the mmap threshold at its maximum and
    no trimming, freed blocks are reused and every provider runs on warm memory. Returns what was set."""
    import ctypes
    import ctypes.util

    if platform.system() != "Linux":
        return "unchanged (not Linux)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        return "unchanged (no glibc mallopt)"
    return "glibc mmap threshold 32 MiB, trim threshold 1 GiB" if ok else "unchanged (mallopt refused)"


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _row(case: Case, provider: str, mode: str, **fields) -> dict:
    row = {"op": case.op, "provider": provider, "mode": mode, "dtype": str(case.dtype).removeprefix("torch."),
           "shape": case.shape_str, "label": case.label, "median_ms": None, "p20_ms": None, "p80_ms": None,
           "tflops": None, "gbps": None, "pct_of_ceiling": None, "speedup_vs_eager": None, "peak_mem_mb": None,
           "tokens_per_s": None,
           "correct": None, "max_err": None, "err_bound": None, "status": "ok", "note": ""}
    row.update(fields)
    return row


_AGAIN = ("eager", "hf_sdpa")  # PyTorch's own call, timed twice on CPU


def _run_case(bop: BenchOp, case: Case, device: str, wanted: Iterable[str] | None, modes: list[str],
              ceilings: dict | None, cpu_reps: int) -> list[dict]:
    rows: list[dict | None] = []
    pending = []  # (row index, provider, mode, fn, fields): set up and checked, to be timed
    samples: dict[int, list[float]] = {}  # id(row) -> its CPU samples, one per round
    wanted = set(wanted) if wanted else None
    provs = list(bop.providers())
    if device != "cuda":  # the noise floor: PyTorch's own call once more (see the module docstring)
        provs += [dataclasses.replace(p, name=f"{p.name}_again") for p in provs if p.name in _AGAIN]
    for prov in provs:
        if wanted is not None and prov.name not in wanted and prov.name.removesuffix("_again") not in wanted:
            continue
        if device != "cuda" and prov.needs_gpu:
            for mode in (m for m in modes if m in bop.modes):
                rows.append(_row(case, prov.name, mode, status="skipped",
                                 note="kernel speed needs a CUDA GPU; not timed on CPU"))
            continue
        for mode in modes:
            if mode not in bop.modes:
                continue
            got = _prepare(bop, case, prov, mode, device)
            if isinstance(got, dict):
                rows.append(got)
            else:
                pending.append((len(rows), prov, mode, *got))
                rows.append(None)
    if device == "cuda":  # CUDA events and a cleared L2 per run: one provider after another
        for i, prov, mode, fn, fields, leaves in pending:
            rows[i] = _time_and_finish(bop, case, prov, mode, fn, fields, leaves, ceilings)
    else:  # host clocks drift (turbo, the other core's load): the providers' runs interleaved
        timings = _time_interleaved([fn for _, _, _, fn, _, _ in pending], getattr(bop, "wall_clock", False),
                                    cpu_reps)
        for (i, prov, mode, fn, fields, leaves), timing in zip(pending, timings, strict=True):
            xs = None
            if not isinstance(timing, Exception):
                timing, xs = timing[:3], timing[3]
            rows[i] = _time_and_finish(bop, case, prov, mode, fn, fields, leaves, ceilings, timing=timing)
            if xs is not None:
                samples[id(rows[i])] = xs
    rows = [r for r in rows if r is not None]
    # speedup vs PyTorch's own implementation ("eager"; the reference where PyTorch has none). On CPU it
    # is the median of the per-round ratios (see _paired), not the ratio of the medians.
    for mode in modes:
        timed = {r["provider"]: r for r in rows if r["mode"] == mode and r["median_ms"]}
        # PyTorch's own call; for the model cases transformers' own model (hf_sdpa)
        base = timed.get("eager") or timed.get("hf_sdpa") or timed.get("torch")
        for r in rows:
            if base and r["mode"] == mode and r["median_ms"]:
                xs, bs = samples.get(id(r)), samples.get(id(base))
                paired = xs is not None and bs is not None
                r["speedup_vs_eager"] = round(_paired(bs, xs, lambda b, x: b / x) if paired else
                                              base["median_ms"] / r["median_ms"], 3)
                if getattr(bop, "wall_clock", False):  # per-call overhead over PyTorch's own call
                    r["overhead_us"] = round(_paired(bs, xs, lambda b, x: (x - b) * 1e3) if paired else
                                             (r["median_ms"] - base["median_ms"]) * 1e3, 2)
    return rows


def _time_interleaved(fns: list[Callable], wall_clock: bool, reps: int) -> list[tuple | Exception]:
    """CPU timings of several callables, their samples taken in turns (in a new random order each round)
    so a slow stretch of the machine lands on all of them alike. A sample is the mean of back-to-back
    calls filling about 2 ms (200 calls for the wall_clock overhead op), after one untimed call: what ran
    just before -- a cache-thrashing neighbour such as the naive reference -- would otherwise land on
    the first timed call, which is the whole sample for calls of 2 ms or more. Per callable:
    (median, p20, p80, samples) in ms -- samples[r] taken in round r -- or the exception it raised."""
    samples: list[list[float]] = [[] for _ in fns]
    calls: list[int] = [1] * len(fns)
    failed: dict[int, Exception] = {}
    for i, fn in enumerate(fns):  # warm-up, and how many calls make a sample
        try:
            fn()
            t0 = time.perf_counter()
            fn()
            once = time.perf_counter() - t0
            calls[i] = 200 if wall_clock else max(1, min(1000, int(2e-3 / max(once, 1e-7))))
        except Exception as exc:
            failed[i] = exc
    live = [i for i in range(len(fns)) if i not in failed]
    order = random.Random(0)
    for _ in range(25 if wall_clock else reps):  # wall_clock samples are ~2 ms: 25 rounds cost < 1 s
        # a fresh order each round: in a rotation each callable would always follow the same one
        order.shuffle(live)
        for i in list(live):
            fn, n = fns[i], calls[i]
            try:
                fn()  # untimed: takes the cold caches and allocator state the previous callable left
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[i].append((time.perf_counter() - t0) * 1e3 / n)
            except Exception as exc:
                failed[i] = exc
                live.remove(i)
    out: list[tuple | Exception] = []
    for i in range(len(fns)):
        if i in failed:
            out.append(failed[i])
            continue
        xs = samples[i]
        q = statistics.quantiles(xs, n=10) if len(xs) >= 2 else xs * 9
        out.append((statistics.median(xs), q[1], q[7], xs))
    return out


def _paired(base: list[float], xs: list[float], fn: Callable[[float, float], float]) -> float:
    """The median over rounds of fn(base sample, sample): two callables sampled within milliseconds of
    each other in each round share the machine's slow and fast stretches, which cancel in the pair."""
    return statistics.median(fn(b, x) for b, x in zip(base, xs, strict=True))


def _prepare(bop: BenchOp, case: Case, prov, mode: str, device: str):
    """Set a provider up and check its output: a finished row (skipped, error, out of memory), or
    (the callable to time, the row's fields so far, the gradient leaves)."""
    needs_grad = mode != "fwd"
    try:
        inputs = bop.inputs(case, device, requires_grad=needs_grad)
        fwd = prov.make(case, inputs, mode)
    except NotImplementedError as exc:
        return _row(case, prov.name, mode, status="skipped", note=str(exc))
    except Exception as exc:  # a provider that cannot even be set up is reported, not fatal
        return _row(case, prov.name, mode, status="error", note=f"{type(exc).__name__}: {exc}"[:300])
    fields = {}
    whole = getattr(bop, "whole_step", False)  # the provider's callable is the whole step (model_*)
    try:
        with torch.set_grad_enabled(whole):
            out = _first_tensor(fwd())
        err, bound = bop.check(case, inputs, out)
        fields.update(correct=bool(err <= bound), max_err=err, err_bound=bound)
        del out
        leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
        fn = fwd if whole else timed_fn(fwd, mode, leaves)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return _row(case, prov.name, mode, status="error", note="out of memory", **fields)
    except Exception as exc:
        return _row(case, prov.name, mode, status="error", note=f"{type(exc).__name__}: {exc}"[:300], **fields)
    return fn, fields, leaves


def _time_and_finish(bop: BenchOp, case: Case, prov, mode: str, fn: Callable, fields: dict, leaves: list,
                     ceilings: dict | None, timing=None) -> dict:
    """The row of a prepared provider: timed here on a GPU, or with ``timing`` measured on CPU
    (_time_interleaved's result for it)."""
    try:
        if isinstance(timing, Exception):
            raise timing
        if timing is not None:
            med, p20, p80 = timing
        else:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            fields["peak_mem_mb"] = round((torch.cuda.max_memory_allocated() - base_mem) / 2**20, 1)
            med, p20, p80 = (_time_wall_gpu(fn) if getattr(bop, "wall_clock", False)
                             else _time_gpu(fn, leaves or None))
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return _row(case, prov.name, mode, status="error", note="out of memory", **fields)
    except Exception as exc:
        return _row(case, prov.name, mode, status="error", note=f"{type(exc).__name__}: {exc}"[:300], **fields)
    fields.update(median_ms=_sig(med, 6), p20_ms=_sig(p20, 6), p80_ms=_sig(p80, 6))
    flops, nbytes = bop.flops(case, mode), bop.bytes(case, mode)
    if flops is not None:
        fields["tflops"] = _sig(flops / (med * 1e-3) / 1e12)
        if ceilings:
            fields["pct_of_ceiling"] = round(100 * fields["tflops"] / ceilings["bf16_gemm_tflops"], 1)
    if nbytes is not None:
        fields["gbps"] = _sig(nbytes / (med * 1e-3) / 1e9)
    tokens = getattr(bop, "tokens", None)
    if tokens is not None:
        fields["tokens_per_s"] = _sig(tokens(case) / (med * 1e-3))
        if ceilings and flops is None:
            fields["pct_of_ceiling"] = round(100 * fields["gbps"] / ceilings["hbm_copy_gbps"], 1)
    if fields.get("correct") is False:
        fields["status"] = "wrong"
        fields["note"] = f"output off the float64 reference: {fields['max_err']:.3g} > {fields['err_bound']:.3g}"
    return _row(case, prov.name, mode, **fields)
