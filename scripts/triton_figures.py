"""Record what the performance model reads of the Triton kernels -- ours, and Liger-Kernel's norms and SwiGLU (the
anchors, from its wheel: a dev dependency) -- compiled here for sm_90a by Triton's own compiler through the audit's
compile-only driver (no GPU): per kernel its launch (warps, stages, registers, shared memory), every tl.dot's MMA
version and shape read from the TTGIR (3 = wgmma, 2 = mma.sync), and the SASS instruction mix of the kernel and its
main loop (aigc_kernels/sass.py), at the performance model's problem sizes. Static figures, not times.

    python scripts/triton_figures.py           # rewrites benchmarks/model/triton_figures.json
    python scripts/triton_figures.py --check   # exit 1 if it is stale (tests/test_perf.py runs it)

The configs are the launchers' defaults (what runs before `aigc-kernels tune` has measured anything).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, not the interpreter

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from aigc_kernels.audit import _t  # noqa: E402  (the audit's unfilled inputs: nothing is launched)

JSON_PATH = ROOT / "benchmarks" / "model" / "triton_figures.json"
ARCH = "90a"
LIGER_VERSION = "0.8.5"
ROWS = 4096  # the model's norm problems: 4096 rows x 1k / 4k / 8k
WIDTHS = (1024, 4096, 8192)
# Our attention cases, by the audit's labels (aigc_kernels/audit.py attention_cases)
ATTENTION = ("bf16 d=64 L=1024 fwd+bwd", "bf16 d=128 L=1024 fwd+bwd", "bf16 d=128 causal L=1024 fwd+bwd",
             "decode bf16 d=128 GQA 4 B=1 cache=16384")
NOTE = ("Triton's sm_90a compile of each kernel at the launcher's default config, read statically (TTGIR dots, "
        "SASS counts); not times.")


def ours_norm(fn: str, n: int, residual: bool):
    from aigc_kernels.triton import norm as N

    def run():
        x, w = _t(ROWS, n, grad=True), _t(n, grad=True)
        r = _t(ROWS, n, grad=True) if residual else None
        out = N.layer_norm(x, w, _t(n, grad=True), 1e-5, residual=r) if fn == "LayerNorm" else \
            N.rms_norm(x, w, 1e-6, residual=r)
        y = out[0] if isinstance(out, tuple) else out
        y.backward(torch.empty_like(y))

    return run


def liger_norm(fn: str, n: int):
    def run():
        from liger_kernel.ops import layer_norm as L
        from liger_kernel.ops import rms_norm as R

        x, w = _t(ROWS, n), _t(n)
        if fn == "LayerNorm":
            y, x2, mean, rstd = L.layer_norm_forward(x, w, _t(n), 1e-5)[:4]
            L.layer_norm_backward(torch.empty_like(y), x2, w, _t(n), mean, rstd)
        else:
            y, x2, rstd, block, warps, mode = R.rms_norm_forward(x, w, 1e-6, 0.0, "llama", False)
            R.rms_norm_backward(torch.empty_like(y), x2, w, rstd, 0.0, mode, block, warps, False, False)

    return run


def liger_swiglu():
    def run():
        from liger_kernel.ops import swiglu as S

        a, b = _t(ROWS, 11008), _t(ROWS, 11008)
        S.swiglu_forward(a, b)
        S.swiglu_backward(a, b, torch.empty_like(a))

    return run


def cases() -> list[tuple[str, str, object]]:
    from aigc_kernels import audit

    by_label = {c.label: c.run for c in audit.attention_cases()}
    out = [("ours", f"attention {label}", by_label[label]) for label in ATTENTION]
    for fn in ("LayerNorm", "RMSNorm"):
        for n in WIDTHS:
            out.append(("ours", f"{fn} bf16 {ROWS}x{n} fwd+bwd", ours_norm(fn, n, False)))
            out.append(("Liger", f"{fn} bf16 {ROWS}x{n} fwd+bwd", liger_norm(fn, n)))
        out.append(("ours", f"{fn} bf16 {ROWS}x4096 residual fwd+bwd", ours_norm(fn, 4096, True)))
    out.append(("Liger", f"SwiGLU bf16 {ROWS}x11008 fwd+bwd", liger_swiglu()))
    return out


def measure() -> dict:
    import triton

    from aigc_kernels import audit
    from aigc_kernels.triton import _tuning

    try:
        import liger_kernel  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"triton_figures: Liger-Kernel is not installed ({exc}); `make setup` installs the dev "
                         f"extras (liger-kernel=={LIGER_VERSION})") from exc
    from importlib.metadata import version

    if version("liger-kernel") != LIGER_VERSION:
        raise SystemExit(f"triton_figures: expected liger-kernel {LIGER_VERSION}, found {version('liger-kernel')}")
    target = audit.TARGETS[ARCH]
    out = []
    for who, label, run in cases():
        rec = audit.Recorder(target)
        with audit.compile_only(target, rec):
            _tuning.use_mode("default")
            try:
                rec.case, rec.mode = label, "default"
                run()
            finally:
                _tuning.use_mode(_tuning.MODE)
        kernels = sorted((audit.kernel_figures(ARCH, r) for r in rec.records.values()),
                         key=lambda k: (k["kernel"], k["config"], k["specialization"]))
        out.append({"who": who, "case": label, "kernels": kernels})
    return {"note": NOTE, "arch": f"sm_{ARCH}", "triton": triton.__version__, "liger_kernel": LIGER_VERSION,
            "cases": out}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the recorded figures are stale")
    args = parser.parse_args(argv)
    text = json.dumps(measure(), indent=1) + "\n"
    if args.check:
        if not JSON_PATH.exists() or JSON_PATH.read_text() != text:
            print(f"stale: {JSON_PATH.relative_to(ROOT)} (run python scripts/triton_figures.py)")
            return 1
        return 0
    JSON_PATH.parent.mkdir(parents=True, exist_ok=True)
    JSON_PATH.write_text(text)
    print(f"wrote {JSON_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
