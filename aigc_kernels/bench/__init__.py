"""Benchmarks: `aigc-kernels bench` / `aigc-kernels compare` and the pytest-benchmark suites.

    from aigc_kernels.bench import run, report
    result = run(["layer_norm"], quick=True)       # the JSON-ready dict (schema in runner.py)
"""

from . import report
from .cases import MODELS, MODES, bench_ops
from .runner import SCHEMA_VERSION, environment, measure_ceilings, run

__all__ = ["MODELS", "MODES", "SCHEMA_VERSION", "bench_ops", "environment", "measure_ceilings", "report", "run"]
