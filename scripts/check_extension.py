"""Load aigc_kernels._C beside the installed torch and check every C++ op's schema and fake (meta)
implementation with torch.library.opcheck -- what a wheel or a device bundle is checked with, with no
GPU and no nvcc. Run from a folder where the aigc_kernels to check is the first on sys.path."""

from __future__ import annotations

import sys

import torch


def main() -> int:
    import aigc_kernels as ak
    from aigc_kernels import _ext

    ok, why = _ext.status()
    print(f"torch {torch.__version__}; aigc_kernels from {ak.__file__}")
    print(f"_C: {why}")
    if not ok:
        return 1
    meta = torch.device("meta")
    x = torch.empty(8, 64, device=meta, dtype=torch.bfloat16)
    w = torch.empty(64, device=meta, dtype=torch.bfloat16)
    ops = torch.ops.aigc_kernels
    checks = {
        "norm_fwd": (ops.norm_fwd.default, (x, w, w, None, 1e-5, False)),
        "linear_fwd": (ops.linear_fwd.default, (x, torch.empty(32, 64, device=meta, dtype=torch.bfloat16), None,
                                                 "gelu")),
        "flash_fwd": (ops.flash_fwd.default, (torch.empty(1, 4, 16, 64, device=meta, dtype=torch.bfloat16),
                                               torch.empty(1, 2, 16, 64, device=meta, dtype=torch.bfloat16),
                                               torch.empty(1, 2, 16, 64, device=meta, dtype=torch.bfloat16),
                                               None, None, 16, 16, 0.125, True, -1, -1)),
    }
    failed = 0
    for name, (op, args) in checks.items():
        try:
            torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
            print(f"opcheck {name}: ok")
        except Exception as exc:  # report every op
            failed += 1
            print(f"opcheck {name}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
