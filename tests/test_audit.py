"""The GPU code path on CPU: autotuning with several configs, prune functions and pre_hooks fed exactly
what Triton's autotuner feeds them, the compile-only audit for sm_90a and sm_80, and bucketed tuning
keys. The audit needs Triton's real compiler, so it runs in a subprocess without TRITON_INTERPRET."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import aigc_kernels as ak
from aigc_kernels import reference as R
from aigc_kernels.testing import check_fwd_bwd

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERP or "triton" not in ak.available_backends(),
                                       reason="runs the Triton kernels under the interpreter")


def _no_interpreter_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["AIGC_KERNELS_CACHE_DIR"] = env.get("AIGC_KERNELS_CACHE_DIR", "")
    return env


def _python(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_no_interpreter_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def autotuning(monkeypatch):
    """Every Triton kernel on its autotuning configs under the interpreter, the autotuner 'timing' each
    kept config by running it once: prunes and pre_hooks get the autotuner's real arguments."""
    from aigc_kernels.triton import _tuning, attention, linear, norm  # noqa: F401  (registers their kernels)

    benched = []

    def bench(kernel_call, quantiles=None, **kw):
        benched.append(1)
        kernel_call()
        return [1.0, 1.0, 1.0] if quantiles else 1.0

    for kernel, _ in _tuning.TUNED:
        monkeypatch.setitem(kernel.__dict__, "do_bench", bench)
    _tuning.use_mode("autotune")
    try:
        yield benched
    finally:
        _tuning.use_mode(_tuning.MODE)


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


@needs_interpreter
def test_attention_with_autotuning_configs(autotuning, force_tma):
    from aigc_kernels.triton import attention as A

    q, k, v = rand(1, 2, 128, 32), rand(1, 2, 128, 32, seed=1), rand(1, 2, 128, 32, seed=2)

    def ours(q, k, v):
        return ak.attention(q, k, v, causal=True, backend="triton")

    def ref(q, k, v):
        return R.attention(q, k, v, causal=True)

    check_fwd_bwd(ours, ref, [q, k, v], torch.float32)  # pointer forward, both backward kernels
    assert len(autotuning) >= 3  # several configs were "timed": the prunes kept more than one
    calls = force_tma(A, "_fwd_tma")  # the TMA forward: HEAD_DIM passed by keyword, descriptors in the pre_hook
    h = [t.half() for t in (q, k, v)]
    check_fwd_bwd(ours, ref, h, torch.float16)
    assert calls


@needs_interpreter
def test_gemm_with_autotuning_configs(autotuning, force_tma):
    from aigc_kernels.triton import linear as L

    x, w, b = rand(64, 64), rand(128, 64, seed=1) * 0.1, rand(128, seed=2)

    def ours(x, w, b):
        return ak.linear(x, w, b, activation="gelu", backend="triton")

    def ref(x, w, b):
        return R.linear(x, w, b, activation="gelu")

    check_fwd_bwd(ours, ref, [x, w, b], torch.float32, names=("out", "dx", "dw", "db"))
    calls = force_tma(L, "_gemm_tma")
    check_fwd_bwd(ours, ref, [t.half() for t in (x, w, b)], torch.float16, names=("out", "dx", "dw", "db"))
    assert calls and autotuning


def test_tuning_keys_are_bucketed():
    """20 sequence lengths on the compile-only driver: the forward autotunes at most once per bucket."""
    res = _python("""
        import torch
        from aigc_kernels import audit
        from aigc_kernels.triton import attention as A, _tuning
        rec = audit.Recorder(audit.TARGETS["90a"])
        lengths = [33 + 29 * i for i in range(20)]
        with audit.compile_only(audit.TARGETS["90a"], rec):
            _tuning.use_mode("autotune")
            for n in lengths:
                q = torch.empty(1, 4, n, 64, dtype=torch.bfloat16)
                with audit._tma("0"):
                    A.attention(q, q, q, causal=True)
        buckets = {_tuning.bucket(n) for n in lengths}
        print(len(A._attn_fwd_kernel.cache), len(buckets))
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    tuned, buckets = map(int, res.stdout.split())
    assert 0 < tuned <= buckets < 20


@pytest.mark.parametrize("bug", ["keyword"])
def test_the_audit_catches_a_prune_reading_a_keyword_positionally(bug):
    """The crash every Hopper user would have met: a prune reading a keyword argument from named_args."""
    res = _python("""
        from aigc_kernels import audit
        from aigc_kernels.triton import attention as A

        def broken(configs, named_args, **kwargs):
            return configs[:1] if named_args["HEAD_DIM"] else configs

        A._attn_fwd_tma_kernel.early_config_prune = broken
        cases = [c for c in audit.attention_cases() if c.label.startswith("bf16 d=64 causal L=1024")]
        report = audit.run(["90a"], cases=cases, modes=("autotune",), jobs=1)
        print(len(report.host_errors), report.host_errors[0].error if report.host_errors else "")
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    n, msg = res.stdout.split(" ", 1)
    assert int(n) == 1 and "KeyError" in msg and "HEAD_DIM" in msg


@pytest.mark.slow
def test_audit_passes_for_sm90a_and_sm80(tmp_path):
    """Every Triton kernel, driven through the library's host code for sm_90a and sm_80, compiles; every
    config the prune can keep fits the shared memory; no default config spills, nor any kept config
    of attention up to head dim 128 or of GEMMs with K >= 64."""
    out = tmp_path / "audit.json"
    res = subprocess.run([sys.executable, "-m", "aigc_kernels.cli", "audit", "--arch", "90a,80", "--json", str(out)],
                         env=_no_interpreter_env(), capture_output=True, text=True, timeout=1800)
    data = json.loads(out.read_text()) if out.exists() else {}
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert data["ok"] and not data["host_errors"]
    from aigc_kernels.triton import _tuning  # noqa: F401  (imports the kernel modules: their TUNED registry)

    kernels = {(r["arch"], r["kernel"]) for r in data["records"]}
    for arch in ("90a", "80"):
        for name in ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel", "_decode_split_kernel",
                     "_norm_fwd_kernel", "_norm_bwd_kernel", "_gemm_kernel", "_rotary_kernel"):
            assert (arch, name) in kernels, (arch, name)
    assert ("90a", "_attn_fwd_tma_kernel") in kernels and ("90a", "_gemm_tma_kernel") in kernels
    # on sm_90a the half-precision configs of 64+ rows (the ones the tables prefer; smaller ones serve tiny
    # problems) run on wgmma
    hopper_half = [r for r in data["records"] if r["arch"] == "90a" and "bf16" in r["specialization"]
                   and r["kernel"] in ("_attn_fwd_tma_kernel", "_gemm_tma_kernel", "_attn_fwd_kernel", "_gemm_kernel")
                   and int(r["config"].split()[0].removeprefix("M=")) >= 64]
    assert hopper_half and all("wgmma" in r["uses"] for r in hopper_half), \
        [(r["kernel"], r["config"]) for r in hopper_half if "wgmma" not in r["uses"]]
    assert data["extension"] or "not built" in data["extension_note"]
    # the grid `aigc-kernels tune` times on a GPU: every case reaches a kernel on both targets
    from aigc_kernels import tune

    for arch in ("90a", "80"):
        reached = {c for r in data["records"] if r["arch"] == arch for c in r["cases"] if c.startswith("tune ")}
        assert reached == {f"tune {c.op} bf16 {c.label}" for c in tune.cases(tune.TUNE_OPS)}, arch


def test_the_cli_lists_every_audit_family():
    from aigc_kernels import audit, cli

    assert cli.AUDIT_FAMILIES == list(audit.FAMILIES)


def test_resource_usage_reads_the_extension():
    from aigc_kernels import audit

    rows, note = audit.extension_usage()
    if not rows:
        pytest.skip(note)
    assert all(r["registers"] > 0 and r["arch"].startswith("sm_") for r in rows)
    assert any("flash" in r["function"] or "norm" in r["function"] for r in rows)


def test_the_warm_stage_fills_the_cache_the_jit_reads(tmp_path):
    """scripts/gpu_run.sh's warm stage compiles, in parallel, what the run will launch: that saves GPU time
    only if the audit's compiles land in Triton's cache under the keys the JIT computes when the library
    launches the same calls. Warm a fresh cache with the audit; then launch the same calls through the JIT
    (the compile-only driver's target, compiling for real): every compile must be a cache hit."""
    env = dict(_no_interpreter_env(), TRITON_CACHE_DIR=str(tmp_path / "cache"))
    code = textwrap.dedent("""
        import sys
        from triton import knobs
        from aigc_kernels import audit
        from aigc_kernels.triton import _tuning

        labels = {"layer_norm bf16 64x768", "linear bf16 512x1024x4096 gelu fwd+bwd",
                  "bf16 d=128 causal L=1024 fwd+bwd"}
        families = (audit.norm_cases, audit.gemm_cases, audit.attention_cases)
        cases = [c for f in families for c in f() if c.label in labels]
        assert len(cases) == 3
        if sys.argv[1] == "warm":
            print(len(audit.run(["90a"], cases=cases, modes=("default",), jobs=2).records))
        else:
            compiled = []

            def compile_it(*args, **kwargs):  # the JIT goes on to triton.compile (a cache hit or a compile)
                compiled.append(1)
                return False

            with audit.compile_only(audit.TARGETS["90a"], audit.Recorder(audit.TARGETS["90a"])):
                knobs.runtime.jit_cache_hook = compile_it
                _tuning.use_mode("default")
                for case in cases:
                    try:
                        case.run()
                    except Exception:  # the first launch of each call: no GPU to run on
                        pass
            print(len(compiled))
    """)
    cache = tmp_path / "cache"

    def run(stage):
        res = subprocess.run([sys.executable, "-c", code, stage], env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        return int(res.stdout.split()[-1])

    assert run("warm") >= 3
    warmed = set(os.listdir(cache))
    assert run("jit") == 3  # each call's first kernel reached triton.compile ...
    assert set(os.listdir(cache)) == warmed  # ... and found it compiled: no new cache entry
