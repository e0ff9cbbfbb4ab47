"""Build the anchors our CUDA attention kernels are measured against -- FA2's own kernels from the flash-attn
2.8.3.post2 source distribution (it carries cutlass) -- for sm_90, read their SASS with aigc_kernels/sass.py, and
record the kernel variant each of ours is compared with in benchmarks/model/anchor_figures.json.

    python scripts/anchors.py          # (make anchors) download, compile (cached), read, write the JSON
    python scripts/anchors.py --list   # the kernels each compiled file holds, with their main-loop figures

The sources are downloaded by pip (`pip download --no-deps --no-binary :all: --no-build-isolation
flash-attn==2.8.3.post2`, FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE so its metadata step needs no GPU) and compiled by
nvcc with FA2's own flags (setup.py: -O3, --use_fast_math, the half/bf16 operator undefines, relaxed constexpr,
extended lambdas; -std=c++20 for torch 2.14's headers) for sm_90 into one cubin per file, cached under
$AIGC_ANCHORS_DIR (default ~/.cache/aigc-kernels/anchors) by a hash of the file and the command. Nothing of FA2
enters the project: only the figures of its compiled code. About 6-10 minutes a file on 2 cores; CI does not
rebuild them -- it checks the tables made from the recorded JSON (scripts/sass_figures.py --check).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JSON_PATH = ROOT / "benchmarks" / "model" / "anchor_figures.json"
CACHE = Path(os.environ.get("AIGC_ANCHORS_DIR", Path.home() / ".cache" / "aigc-kernels" / "anchors"))
FA2_VERSION = "2.8.3.post2"
ARCH = "sm_90"
FLAGS = ["-O3", "-std=c++20", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
         "-U__CUDA_NO_HALF2_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "--expt-relaxed-constexpr",
         "--expt-extended-lambda", "--use_fast_math", "-DNDEBUG"]

# label -> (FA2 source file, the kernel variant compared: a substring of the demangled name with spaces removed).
# FA2 on an H100 (not sm8x): forward d64 and d128 use 128 x 128 and 128 x 64 tiles with 4 warps; the variant with
# no dropout, causal mask, window, alibi or softcap, with even M/N and K (the steady state of a long sequence), not
# returning the softmax. Decode: the split-KV kernel (64 x 128 tiles at d128), keys not a multiple of the block,
# split, no append. Backward (flash_bwd_launch_template.h with >= 144 KB of shared memory, no dropout): the
# seqk-parallel dQ/dK/dV kernel, d64 128 x 128 tiles, d128 64 query rows x 128 keys, 8 warps, same flags.
ANCHORS = {
    "FA2 forward bf16 d=64": ("flash_fwd_hdim64_bf16_sm80.cu",
                              "Flash_kernel_traits<64,128,128,4,cutlass::bfloat16_t>>,false,false,false,false,true,"
                              "true,false,false>"),
    "FA2 forward bf16 d=128": ("flash_fwd_hdim128_bf16_sm80.cu",
                               "Flash_kernel_traits<128,128,64,4,cutlass::bfloat16_t>>,false,false,false,false,true,"
                               "true,false,false>"),
    "FA2 split-KV decode bf16 d=128": ("flash_fwd_split_hdim128_bf16_sm80.cu",
                                       "Flash_kernel_traits<128,64,128,4,cutlass::bfloat16_t>>,false,false,false,"
                                       "false,true,false,true,false>"),
    "FA2 backward bf16 d=64": ("flash_bwd_hdim64_bf16_sm80.cu",
                               "seqk_parallel_kernel<Flash_bwd_kernel_traits<64,128,128,8,4,4,4,false,false,"),
    "FA2 backward bf16 d=128": ("flash_bwd_hdim128_bf16_sm80.cu",
                                "seqk_parallel_kernel<Flash_bwd_kernel_traits<128,64,128,8,2,4,2,false,false,"),
}
# the backward variant: no dropout/causal/local/alibi, even M/N and K, no softcap (the flags end the name)
BWD_FLAGS = ">,false,false,false,false,true,true,false>"
# label -> the flags that end the kernel's name, where the substring above does not pin one variant
NAME_ENDS = {label: BWD_FLAGS for label in ANCHORS if label.startswith("FA2 backward")}

# FA2's csrc/layer_norm (Apex's persistent LayerNorm: a grid of occupancy x SMs CTAs walks the rows; RMSNorm by a
# runtime flag, the residual add by a pointer, so one kernel serves every norm problem of the model), compiled with
# its own flags (its setup.py: FLAGS plus the bf16 operator undefines). The variant: bf16 weights, input, residual and
# output, float32 statistics, no dropout, column scale or subset, the width a multiple of the kernel's
# (ln_{fwd,bwd}_kernel<..., Is_dropout, Has_colscale, Has_subset, Is_even_cols>); the backward's second kernel sums
# the per-CTA partial weight/bias gradients.
LN_FLAGS = [*FLAGS, "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT162_OPERATORS__",
            "-U__CUDA_NO_BFLOAT162_CONVERSIONS__"]
LN_TYPES = "__nv_bfloat16,__nv_bfloat16,__nv_bfloat16,__nv_bfloat16,float,unsignedint"
LN_WIDTHS = (1024, 4096, 8192)
for _n in LN_WIDTHS:
    for _d in ("fwd", "bwd"):
        _label = f"FA2 LayerNorm {'forward' if _d == 'fwd' else 'backward'} bf16 {_n}"
        ANCHORS[_label] = (f"ln_{_d}_{_n}.cu",
                           f"layer_norm::ln_{_d}_kernel<layer_norm::Kernel_traits<{LN_TYPES},{_n}u,")
        NAME_ENDS[_label] = ">,false,false,false,true>"
    _label = f"FA2 LayerNorm backward finalize bf16 {_n}"
    ANCHORS[_label] = (f"ln_bwd_{_n}.cu",
                       f"layer_norm::ln_bwd_finalize_kernel<layer_norm::Kernel_traits_finalize<{_n}u,{LN_TYPES},false,")
    NAME_ENDS[_label] = ">,false,true>"


def ln_traits(kernel: str) -> dict | None:
    """{threads, warps_m, warps_n, dynamic_shared} of an ln_fwd/ln_bwd kernel from its template arguments
    (Kernel_traits<..., HIDDEN, CTAS_PER_ROW, WARPS_M, WARPS_N, BYTES_PER_LDG>) and ln_kernel_traits.h /
    ln_utils.cuh's shared-memory sizes, which the launcher passes as dynamic shared memory: the forward's statistics
    reducer (WARPS_M x WARPS_N x 8 bytes x 2 where WARPS_N > 1), the backward's the same plus the CTA's
    weight-gradient rows (ROWS_PER_CTA x HIDDEN x 4 bytes)."""
    import re

    m = re.search(r"ln_(fwd|bwd)_kernel<layer_norm::Kernel_traits<[^>]*?,unsignedint,(\d+)u,(\d+)u,(\d+)u,(\d+)u,",
                  kernel.replace(" ", ""))
    if m is None:
        return None
    direction, hidden, _ctas_per_row, wm, wn = m.group(1), *map(int, m.groups()[1:])
    reducer = wm * wn * 8 * 2 if wn > 1 else 0
    shared = reducer + (wm * hidden * 4 if direction == "bwd" else 0)
    return {"threads": wm * wn * 32, "warps_m": wm, "warps_n": wn, "dynamic_shared": shared}


def _sass_module():
    spec = importlib.util.spec_from_file_location("_ak_sass", ROOT / "aigc_kernels" / "sass.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _tool(name: str) -> str:
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / name
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"anchors: {name} not found")
    return found


def fa2_source() -> Path:
    src = CACHE / f"flash_attn-{FA2_VERSION}"
    if (src / "csrc" / "flash_attn" / "src").is_dir():
        return src
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"flash_attn-{FA2_VERSION}.tar.gz"
    if not tarball.exists():
        env = {**os.environ, "FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE"}
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", f"flash-attn=={FA2_VERSION}", "-d", str(CACHE)], check=True, env=env)
    with tarfile.open(tarball) as tar:
        tar.extractall(CACHE, filter="data")
    return src


def _includes() -> list[str]:
    import torch

    inc = Path(torch.__file__).parent / "include"
    after = []
    for entry in sys.path:  # the NVIDIA wheels' headers, after the toolkit's (as setup.py does for _C)
        base = Path(entry) / "nvidia"
        if base.is_dir():
            after += [f"-Xcompiler=-idirafter,{d}" for d in sorted(base.glob("*/include")) if d.is_dir()]
    return [f"-I{inc}", f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}", *after]


def _command(src: Path, name: str) -> tuple[list[str], Path]:
    """nvcc's command for one FA2 file (attention or layer_norm, by its name) and the file itself."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit("anchors: nvcc not found")
    if name.startswith("ln_"):
        ln = src / "csrc" / "layer_norm"
        return [nvcc, "-cubin", "-gencode", f"arch=compute_{ARCH[3:]},code={ARCH}", *LN_FLAGS, f"-I{ln}",
                *_includes(), str(ln / name)], ln / name
    fa = src / "csrc" / "flash_attn"
    return [nvcc, "-cubin", "-gencode", f"arch=compute_{ARCH[3:]},code={ARCH}", *FLAGS, f"-I{fa}", f"-I{fa / 'src'}",
            f"-I{src / 'csrc' / 'cutlass' / 'include'}", *_includes(), str(fa / "src" / name)], fa / "src" / name


def compile_file(src: Path, name: str) -> Path:
    cmd, path = _command(src, name)
    version = subprocess.run([cmd[0], "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(path.read_bytes() + " ".join(cmd).encode() + version.encode()).hexdigest()
    out = CACHE / "cubin" / f"{Path(name).stem}-{key[:16]}.cubin"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"anchors: compiling {name} for {ARCH} (minutes)", flush=True)
        res = subprocess.run([*cmd, "-o", str(out) + ".tmp"], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"anchors: nvcc failed on {name}:\n{res.stderr[-3000:]}")
        os.replace(str(out) + ".tmp", out)
    return out


def kernels(cubin: Path) -> list[tuple[str, dict]]:
    sass = _sass_module()
    fns = {name: ins for (arch, name), ins in sass.parse(sass.dump(str(cubin), _tool("cuobjdump"))).items()}
    return [(name, sass.figures(ins)) for name, ins in zip(sass.demangle(list(fns)), fns.values(), strict=True)]


def _registers(cubin: Path) -> dict[str, int]:
    """Registers per demangled kernel name."""
    sass = _sass_module()
    rows = sass.resource_usage(str(cubin), _tool("cuobjdump"))
    return dict(zip(sass.demangle([r["function"] for r in rows]), (r["registers"] for r in rows), strict=True))


def select(label: str, found: list[tuple[str, dict]]) -> tuple[str, dict]:
    name_part, end = ANCHORS[label][1], NAME_ENDS.get(label, "")
    hits = [(n, f) for n, f in found if name_part in n.replace(" ", "")
            and n.replace(" ", "").split("(", 1)[0].endswith(end)]
    if len(hits) != 1:
        raise SystemExit(f"anchors: {label}: {len(hits)} kernels match {name_part!r}")
    return hits[0]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print every kernel of each compiled file")
    parser.add_argument("--only", nargs="*", help="labels to build (default: all)")
    args = parser.parse_args(argv)
    src = fa2_source()
    labels = args.only or list(ANCHORS)
    recorded = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {"anchors": {}}
    for label in labels:
        cubin = compile_file(src, ANCHORS[label][0])
        found = kernels(cubin)
        if args.list:
            for name, fig in found:
                loop = fig["main_loop"]
                print(name.replace(" ", "")[:200], "->", None if loop is None else
                      {k: loop[k] for k in ("instructions", "mma", "ldsm", "instructions_per_mma", "mma_per_ldsm")})
            continue
        name, fig = select(label, found)
        regs = _registers(cubin).get(name)
        kernel = name.split("(", 1)[0].removeprefix("void ")
        recorded["anchors"][label] = {"file": ANCHORS[label][0], "kernel": kernel, "registers": regs,
                                      "instructions": fig["kernel"]["instructions"], "main_loop": fig["main_loop"]}
        if ln_traits(kernel):
            recorded["anchors"][label]["traits"] = ln_traits(kernel)
    if args.list:
        return 0
    nvcc = subprocess.run([shutil.which("nvcc") or "nvcc", "--version"], capture_output=True, text=True).stdout
    recorded.update(source=f"flash-attn {FA2_VERSION} sdist (pip), compiled here for {ARCH} with FA2's flags",
                    nvcc=nvcc.strip().splitlines()[-1] if nvcc.strip() else "unknown")
    recorded["anchors"] = dict(sorted(recorded["anchors"].items()))
    JSON_PATH.parent.mkdir(parents=True, exist_ok=True)
    JSON_PATH.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {JSON_PATH.relative_to(ROOT)} ({len(recorded['anchors'])} anchors)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
