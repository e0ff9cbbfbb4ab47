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
    import aigc_kernels.cuda  # noqa: F401  (the fake impls and autograd of the C++ ops)

    bf16, f32 = torch.bfloat16, torch.float32

    def t(*shape, dtype=bf16):
        return torch.empty(*shape, device="meta", dtype=dtype)

    ops = torch.ops.aigc_kernels
    x, w = t(8, 64), t(64)
    y, xs, mean, rstd = ops.norm_fwd(x, w, w, x, 1e-5, False)
    wl = t(32, 64)
    yl, z = ops.linear_fwd(x, wl, None, "gelu")
    w_in, w_gate, w_out = t(96, 64), t(96, 64), t(64, 96)
    yf, z1, z2 = ops.ffn_fwd(x, w_in, None, w_out, None, "silu", w_gate, None, True)
    q, k, v = t(1, 4, 16, 64), t(1, 2, 16, 64), t(1, 2, 16, 64)
    fa = (q, k, v, None, None, 16, 16, 0.125, True, -1, -1)
    out, lse = ops.flash_fwd(*fa)
    kc, vc, lens = t(2, 2, 32, 64), t(2, 2, 32, 64), t(2, dtype=torch.int32)
    kp, vp = t(6, 16, 2, 64), t(6, 16, 2, 64)
    table = t(2, 2, dtype=torch.int32)
    checks = {  # every op of torch.ops.aigc_kernels, backward ops fed by their forward's fake outputs
        "norm_fwd": (ops.norm_fwd.default, (x, w, w, x, 1e-5, False)),
        "norm_bwd": (ops.norm_bwd.default, (y, y, xs, w, mean, rstd, True, False)),
        "linear_fwd": (ops.linear_fwd.default, (x, wl, None, "gelu")),
        "linear_bwd": (ops.linear_bwd.default, (yl, x, wl, z, "gelu", False)),
        "ffn_fwd": (ops.ffn_fwd.default, (x, w_in, None, w_out, None, "silu", w_gate, None, True)),
        "ffn_bwd": (ops.ffn_bwd.default, (yf, x, w_in, None, w_out, "silu", w_gate, None, z1, z2, False)),
        "flash_fwd": (ops.flash_fwd.default, fa),
        "flash_bwd": (ops.flash_bwd.default, (out, q, k, v, out, lse, *fa[3:])),
        "flash_decode": (ops.flash_decode.default, (t(2, 4, 1, 64), kc, vc, lens, 1, True, 0.125, 0)),
        "kvcache_append": (ops.kvcache_append.default, (kc, vc, t(2, 2, 1, 64), t(2, 2, 1, 64), lens)),
        # paged caches (num_pages, page_size, Hkv, D) through a block table
        "flash_decode (paged)": (ops.flash_decode.default, (t(2, 4, 1, 64), kp, vp, lens, 1, True, 0.125, 0, table)),
        "flash_decode (window)": (ops.flash_decode.default, (t(2, 4, 1, 64), kc, vc, lens, 1, True, 0.125, 0, None,
                                                             7, -1)),
        "kvcache_append (paged)": (ops.kvcache_append.default, (kp, vp, t(2, 2, 1, 64), t(2, 2, 1, 64), lens,
                                                               table)),
        # the append with the rotary embedding inside (returns q rotated)
        "kvcache_append_rotary": (ops.kvcache_append_rotary.default, (kp, vp, t(2, 2, 1, 64), t(2, 2, 1, 64), lens,
                                                                      table, t(2, 4, 1, 64), t(64, 16, dtype=f32),
                                                                      t(64, 16, dtype=f32), False, True)),
        # packed queries over the paged caches (seqused_k, no cu_seqlens_k), and seqused_k over packed keys
        "flash_fwd (paged varlen)": (ops.flash_fwd.default, (t(7, 4, 64), kp, vp, t(3, dtype=torch.int32), None, 5,
                                                             32, 0.125, True, -1, -1, lens, table)),
        "flash_fwd (seqused_k)": (ops.flash_fwd.default, (t(7, 4, 64), t(9, 2, 64), t(9, 2, 64),
                                                          t(3, dtype=torch.int32), t(3, dtype=torch.int32), 5, 6,
                                                          0.125, False, -1, -1, lens)),
        "rotary_fwd": (ops.rotary_fwd.default, (q, t(16, 32), t(16, 32), t(1, 16, dtype=torch.int64), False, False)),
        "rotary_inplace": (ops.rotary_inplace.default, (q, t(16, 32, dtype=torch.float32),
                                                        t(16, 32, dtype=torch.float32), None, True, True)),
    }
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("aigc_kernels::")}
    missing = registered - set(checks)
    if missing:
        print(f"ops registered but not checked here: {sorted(missing)}")
        return 1
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
