"""pytest-benchmark suites over the bench runner's cases:

    pytest benchmarks/ --benchmark-json out.json            # quick cases
    AIGC_KERNELS_BENCH_FULL=1 pytest benchmarks/ ...          # every case

On a GPU each timed call is followed by torch.cuda.synchronize(). On CPU only the torch
reference runs (kernel timings there would say nothing about kernel speed).
"""

from __future__ import annotations

import os

import pytest
import torch

from aigc_kernels.bench import bench_ops
from aigc_kernels.bench.runner import timed_fn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
QUICK = os.environ.get("AIGC_KERNELS_BENCH_FULL") != "1"


def params(op_name: str, mode: str = "fwd"):
    op = bench_ops()[op_name]
    out = []
    for case in op.cases(QUICK, DEVICE):
        for prov in op.providers():
            if DEVICE != "cuda" and prov.needs_gpu:
                continue
            out.append(pytest.param(op, case, prov, mode, id=f"{prov.name}-{case.label}-{case.dtype}-{mode}"))
    return out


@pytest.fixture
def timed(benchmark):
    """timed(op, case, provider, mode): benchmark one provider on one case, after checking its output."""

    def go(op, case, prov, mode):
        inputs = op.inputs(case, DEVICE, requires_grad=mode != "fwd")
        try:
            fn = prov.make(case, inputs, mode)
        except NotImplementedError as exc:
            pytest.skip(str(exc))
        with torch.no_grad():
            out = fn()
        out = out[0] if isinstance(out, tuple) else out
        err, bound = op.check(case, inputs, out)
        assert err <= bound, f"{prov.name} output off the float64 reference: {err:.3g} > {bound:.3g}"
        fn = timed_fn(fn, mode, [])  # the forward, the backward of a saved forward, or both
        if DEVICE == "cuda":
            def run():
                fn()
                torch.cuda.synchronize()
        else:
            run = fn
        benchmark.extra_info.update(op=case.op, provider=prov.name, mode=mode, dtype=str(case.dtype),
                                    shape=case.shape_str)
        benchmark.pedantic(run, rounds=20 if DEVICE == "cuda" else 3, warmup_rounds=2)

    return go
