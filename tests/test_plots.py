"""bench --plots: grouped bars per op and mode with the ceiling and per-bar labels, and a summary of
speedups -- rendered from a recorded-style bench JSON (synthetic numbers: no GPU run is recorded yet)."""

from __future__ import annotations

import random

import pytest

from aigc_kernels.bench import report

pytest.importorskip("matplotlib")


def synthetic_run() -> dict:
    """A bench JSON in the runner's schema with made-up GPU numbers (for rendering only)."""
    rng = random.Random(0)
    env = {"device": "NVIDIA H200 (synthetic numbers)", "torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0",
           "commit": "test", "python": "3.12", "created": "2026-12-02T00:00:00+00:00",
           "ceilings": {"hbm_copy_gbps": 4300.0, "bf16_gemm_tflops": 790.0}}
    rows = []

    def row(op, provider, mode, label, **kw):
        base = dict(op=op, provider=provider, mode=mode, dtype="bfloat16", shape=label, label=label, median_ms=1.0,
                    p20_ms=0.9, p80_ms=1.1, tflops=None, gbps=None, pct_of_ceiling=None, speedup_vs_eager=None,
                    peak_mem_mb=None, tokens_per_s=None, correct=True, max_err=0.0, err_bound=1.0, status="ok",
                    note="")
        base.update(kw)
        rows.append(base)

    for mode in ("fwd", "bwd"):
        for label in ("d=64 seq=4096", "d=128 seq=4096 causal", "d=128 seq=16384"):
            for prov, scale in (("eager", 1.0), ("triton", 1.1), ("cuda", 0.9), ("auto", 1.1), ("sdpa_flash", 0.95)):
                tf = 450 * scale * rng.uniform(0.9, 1.1)
                row("attention", prov, mode, label, tflops=round(tf, 1), pct_of_ceiling=round(100 * tf / 790, 1),
                    speedup_vs_eager=round(scale, 2))
    for label in ("gpt2-s tokens=4096", "llama-7b tokens=16384"):
        for prov, scale in (("eager", 1.0), ("triton", 1.6), ("torch", 1.0), ("liger", 1.5)):
            gb = 2000 * scale
            row("layer_norm", prov, "fwd", label, gbps=gb, pct_of_ceiling=round(100 * gb / 4300, 1),
                speedup_vs_eager=scale)
    for prov, tps in (("hf_sdpa", 4e5), ("hf_patched_auto", 4.4e5), ("triton", 4.6e5)):
        row("model_train", prov, "fwd+bwd", "gpt2-s batch=16 seq=1024", tokens_per_s=tps,
            speedup_vs_eager=round(tps / 4e5, 2))
    for prov, us in (("eager", 6.0), ("torch", 8.0), ("auto", 8.5)):
        row("dispatch", prov, "fwd", "layer_norm 4x64", median_ms=us / 1e3, speedup_vs_eager=round(6.0 / us, 2))
    return {"schema": 1, "env": env, "results": rows}


def test_plots_render_grouped_bars_and_a_summary(tmp_path):
    paths = report.plots(synthetic_run(), tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["attention-bwd.png", "attention-fwd.png", "dispatch-fwd.png", "layer_norm-fwd.png",
                     "model_train-fwd_bwd.png", "summary.png"]
    for p in paths:
        assert p.stat().st_size > 15_000, p  # a real picture, not an empty canvas
