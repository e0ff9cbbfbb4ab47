"""``aigc-kernels tune``: measure, on this GPU, which backend is fastest for each op over bucketed
shapes, and write the dispatch table that "auto" reads (aigc_kernels.dispatch).

Every backend that "auto" may choose ("cuda", "triton", "torch") and that accepts a case is timed
on it -- the forward alone, and the forward plus backward for the training keys -- with CUDA events
(median of ``triton.testing.do_bench``). A kernel backend wins a key only when it beats PyTorch's
own call by more than ``margin`` (default 3 %): inside that, the difference is noise and "auto"
keeps "torch", so it is never slower than PyTorch where it was measured.

The grid is the dispatch keys a Transformer meets most: bf16 (and fp16) attention at head dims 64
and 128, causal or not, 1k-16k tokens, decoding over 1k-32k cached keys; LayerNorm/RMSNorm at
768-8192 columns; linear + activation and the FFN at GPT-2 / Llama sizes. ``--quick`` keeps a few
keys per op (seconds). Keys that are not measured fall back to the nearest measured size.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterable

import torch

from . import dispatch
from .backend import AUTO_CANDIDATES, _available, _why_not, implementation
from .validation import make_call

TUNE_OPS = ("attention", "attention_with_kvcache", "layer_norm", "rms_norm", "linear", "ffn", "rotary")


@dataclasses.dataclass
class TuneCase:
    op: str
    label: str
    make: Callable[[torch.device, torch.dtype], tuple[tuple, dict]]  # -> (args, kwargs) of the public op
    grad: bool  # time forward + backward (the "grad" keys) instead of the forward


def _randn(shape, device, dtype, grad=False, scale=1.0):
    return (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(dtype).requires_grad_(grad)


def cases(ops: Iterable[str], quick: bool = False) -> list[TuneCase]:
    """The cases to time, most valuable first: the ``quick`` keys, then (unless ``quick``) the rest of the
    grid, each tier taking the ops in turn (one case of each op, then the next) -- so a run stopped by its
    time budget has measured the commonest keys of every op, not every key of the first op."""
    ops = list(ops)
    for op in ops:
        if op not in TUNE_OPS:
            raise ValueError(f"tune: expected ops among {TUNE_OPS}, got {op!r}")
    first = [[c for grad in (False, True) for c in _op_cases(op, True, grad)] for op in ops]
    tiers = [first]
    if not quick:
        seen = {(c.op, c.label) for per_op in first for c in per_op}
        tiers.append([[c for grad in (False, True) for c in _op_cases(op, False, grad) if (c.op, c.label) not in seen]
                      for op in ops])
    return [per_op[i] for tier in tiers for i in range(max(map(len, tier), default=0)) for per_op in tier
            if i < len(per_op)]


def _op_cases(op: str, quick: bool, grad: bool) -> list[TuneCase]:
    cs: list[TuneCase] = []
    tag = " fwd+bwd" if grad else " fwd"
    if op == "attention":
        lengths = (1024, 4096) if quick else (512, 1024, 2048, 4096, 8192, 16384)
        for d in (64, 128):
            for causal in (False, True):
                for seq in lengths:
                    def make(dev, dt, d=d, causal=causal, seq=seq, grad=grad):
                        heads, batch = 2048 // d, max(1, 16384 // seq)
                        q, k, v = (_randn((batch, heads, seq, d), dev, dt, grad) for _ in range(3))
                        return (q, k, v), {"causal": causal}
                    cs.append(TuneCase(op, f"d={d} seq={seq}{' causal' if causal else ''}{tag}", make, grad))
    elif op == "attention_with_kvcache" and not grad:
        caches = (4096,) if quick else (1024, 4096, 16384, 32768)
        for batch in ((1, 32) if quick else (1, 8, 32)):
            for cache in caches:
                def make(dev, dt, batch=batch, cache=cache):
                    q = _randn((batch, 32, 1, 128), dev, dt)
                    kc, vc = _randn((batch, 8, cache, 128), dev, dt), _randn((batch, 8, cache, 128), dev, dt)
                    lens = torch.full((batch,), cache, dtype=torch.int32, device=dev)
                    return (q, kc, vc, lens), {}
                cs.append(TuneCase(op, f"batch={batch} cache={cache} GQA 32/8{tag}", make, grad))
        # paged caches (the "paged" dispatch key): pages of 16 and 64 rows, in table order
        for batch, cache, page in (((8, 4096, 64),) if quick else ((1, 4096, 16), (8, 4096, 64), (8, 32768, 16))):
            def make(dev, dt, batch=batch, cache=cache, page=page):
                q = _randn((batch, 32, 1, 128), dev, dt)
                pages = batch * cache // page
                kc, vc = _randn((pages, page, 8, 128), dev, dt), _randn((pages, page, 8, 128), dev, dt)
                table = torch.arange(pages, dtype=torch.int32, device=dev).view(batch, cache // page)
                lens = torch.full((batch,), cache, dtype=torch.int32, device=dev)
                return (q, kc, vc, lens), {"block_table": table}
            cs.append(TuneCase(op, f"batch={batch} cache={cache} paged (page {page}) GQA 32/8{tag}", make, grad))
    elif op in ("layer_norm", "rms_norm"):
        widths = (768, 4096) if quick else (768, 1024, 2048, 4096, 8192)
        for n in widths:
            for rows in ((4096,) if quick else (1024, 4096, 16384)):
                def make(dev, dt, n=n, rows=rows, grad=grad):
                    x, w = _randn((rows, n), dev, dt, grad), _randn((n,), dev, dt, grad)
                    if op == "rms_norm":
                        return (x, w), {}
                    return (x, w, _randn((n,), dev, dt, grad)), {}
                cs.append(TuneCase(op, f"{rows}x{n}{tag}", make, grad))
    elif op == "linear":
        shapes = ((4096, 768, 3072),) if quick else ((4096, 768, 3072), (16384, 768, 3072), (4096, 4096, 11008),
                                                      (512, 3072, 12288))
        for m, k, n in shapes:
            for act in ("gelu", None):
                def make(dev, dt, m=m, k=k, n=n, act=act, grad=grad):
                    x, w, b = _randn((m, k), dev, dt, grad), _randn((n, k), dev, dt, grad, k**-0.5), \
                        _randn((n,), dev, dt, grad)
                    return (x, w, b), {"activation": act}
                cs.append(TuneCase(op, f"{m}x{k}x{n} {act}{tag}", make, grad))
    elif op == "ffn":
        shapes = ((4096, 768, 3072, False),) if quick else ((4096, 768, 3072, False), (16384, 768, 3072, False),
                                                            (4096, 4096, 11008, True), (8192, 4096, 11008, True))
        for m, d, h, gated in shapes:
            def make(dev, dt, m=m, d=d, h=h, gated=gated, grad=grad):
                x = _randn((m, d), dev, dt, grad)
                w_in, w_out = _randn((h, d), dev, dt, grad, d**-0.5), _randn((d, h), dev, dt, grad, h**-0.5)
                if gated:
                    return (x, w_in, None, w_out, None), {"activation": "silu",
                                                          "w_gate": _randn((h, d), dev, dt, grad, d**-0.5)}
                return (x, w_in, _randn((h,), dev, dt, grad), w_out, _randn((d,), dev, dt, grad)), \
                    {"activation": "gelu"}
            cs.append(TuneCase(op, f"{m}x{d}x{h}{' swiglu' if gated else ''}{tag}", make, grad))
    elif op == "rotary":
        for tokens in ((4096,) if quick else (1024, 4096, 16384)):
            for heads in ((32,) if quick else (8, 32)):
                def make(dev, dt, tokens=tokens, heads=heads, grad=grad):
                    batch, length = max(1, tokens // 4096), min(tokens, 4096)
                    x = _randn((batch, heads, length, 128), dev, dt, grad)
                    cos, sin = _randn((length, 64), dev, dt), _randn((length, 64), dev, dt)
                    pos = torch.arange(length, device=dev).expand(batch, length)
                    return (x, cos, sin), {"position_ids": pos}
                cs.append(TuneCase(op, f"tokens={tokens} heads={heads} d=128{tag}", make, grad))
    return cs


def _time_ms(fn: Callable, device: torch.device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))
    fn()
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _callable(op: str, backend: str, args: tuple, kwargs: dict, grad: bool) -> Callable:
    from . import ops

    fn = getattr(ops, op)
    if not grad:
        def run():
            with torch.no_grad():
                fn(*args, backend=backend, **kwargs)
        return run
    out = fn(*args, backend=backend, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    dout = torch.randn_like(out)
    leaves = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]

    def step():
        o = fn(*args, backend=backend, **kwargs)
        o = o[0] if isinstance(o, tuple) else o
        torch.autograd.grad(o, leaves, dout)

    return step


def candidates(call) -> list[str]:
    """The backends "auto" may choose that can run this normalized call here."""
    out = []
    for name in AUTO_CANDIDATES:
        impl = implementation(call.op, name)
        if impl is None or not _available(name):
            continue
        if name == "torch" or _why_not(impl, call) is None:
            out.append(name)
    return out


def run(ops: Iterable[str] = TUNE_OPS, dtypes: Iterable[torch.dtype] = (torch.bfloat16,), quick: bool = False,
        device: torch.device | None = None, margin: float = 0.03, timer: Callable | None = None,
        progress: Callable[[str, int, int], None] | None = None, budget_s: float | None = None,
        checkpoint: Callable[[dispatch.Table], None] | None = None,
        clock: Callable[[], float] = time.monotonic) -> dispatch.Table:
    """Time every candidate backend on every case; returns the table (not yet written).

    ``budget_s``: start no new case once this many seconds have passed (the table then holds the cases
    measured, most valuable first, and says how many were left: ``table.meta``). A backend that raises on a
    case is not timed there (``table.meta["failures"]`` says why) and the run goes on. ``checkpoint(table)``
    is called after every case with the table so far, so a run killed mid-way keeps what it measured."""
    device = device or torch.device("cuda", torch.cuda.current_device())
    timer = timer or _time_ms
    dtypes = list(dtypes)
    work = [(c, dt) for c in cases(ops, quick) for dt in dtypes]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
    versions = dispatch.current_versions()
    entries: dict[dispatch.Key, dispatch.Entry] = {}
    failures: list[dict] = []
    start = clock()

    def table(done: int, stopped: str | None = None) -> dispatch.Table:
        meta = {"cases": done, "of": len(work), "seconds": round(clock() - start, 1), "margin": margin,
                "dtypes": [str(dt).removeprefix("torch.") for dt in dtypes]}
        if stopped:
            meta["stopped"] = stopped
        if failures:
            meta["failures"] = list(failures)
        return dispatch.Table(name, tuple(cap), versions, list(entries.values()), "tuned here", meta)

    for i, (case, dt) in enumerate(work):
        if budget_s is not None and clock() - start >= budget_s:
            why = f"time budget of {budget_s:g} s spent: {len(work) - i} of {len(work)} cases not measured"
            if progress:
                progress(why, i, len(work))
            return table(i, why)
        what = f"{case.op} {str(dt).removeprefix('torch.')} {case.label}"
        if progress:
            progress(what, i, len(work))
        args, kwargs = case.make(device, dt)
        with torch.set_grad_enabled(case.grad):
            call = make_call(case.op, *args, **kwargs)
            key = dispatch.key(call)
        ms: dict[str, float] = {}
        for backend in candidates(call):
            try:
                ms[backend] = round(timer(_callable(case.op, backend, args, kwargs, case.grad), device), 5)
            except Exception as exc:  # noqa: BLE001 -- a backend that fails a case (a refusal, out of memory, a
                # compile error) is not timed there, so "auto" never picks it for that key; the run goes on
                ms[backend] = float("inf")
                failures.append({"case": what, "backend": backend, "error": f"{type(exc).__name__}: {exc}"[:300]})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if progress:
                    progress(f"{case.op} {backend}: {type(exc).__name__}", i, len(work))
        best = choose(ms, margin)
        entries[key] = dispatch.Entry(key, best, {k: v for k, v in ms.items() if v != float("inf")})
        del args, kwargs
        if checkpoint:
            checkpoint(table(i + 1))
    if progress:
        progress("done", len(work), len(work))
    return table(len(work))


def choose(ms: dict[str, float], margin: float) -> str:
    """The fastest backend, unless PyTorch's own call is within ``margin`` of it (then "torch")."""
    timed = {k: v for k, v in ms.items() if v != float("inf")}
    if not timed:
        return "torch"
    best = min(timed, key=timed.get)
    base = timed.get("torch")
    if best != "torch" and base is not None and timed[best] > base * (1 - margin):
        return "torch"
    return best
