"""Build script for aigc-kernels.

The package is pure Python plus one optional CUDA extension, ``aigc_kernels._C``, which is
compiled with nvcc whenever a CUDA toolkit and a CUDA build of torch are present -- a GPU is
not needed to compile. Install torch first, then build against it:

    pip install torch
    pip install --no-build-isolation -e ".[dev]"

Environment variables:
    AIGC_KERNELS_SKIP_CUDA_BUILD=1   never build the extension (pure-Python install)
    AIGC_KERNELS_FORCE_CUDA_BUILD=1  fail instead of warning when the extension cannot be built
    AIGC_KERNELS_CUDA_ARCHS          ';'-separated archs, default "8.0;9.0a;compute_90" (SASS for sm_80 and
                                     sm_90a, PTX of compute_90 that newer GPUs JIT); "9.0a" in CI
    MAX_JOBS                         parallel compile jobs (ninja)
    AIGC_KERNELS_CCACHE=0            do not compile through ccache even when it is installed
    CUDA_HOME                        the toolkit folder; found from nvcc on PATH when unset

The extension uses Python's limited API (no pybind11; a plain PyInit__C), so one build serves every
Python >= 3.10 (an abi3 wheel). It is tied to the torch it was built against: a build with _C
requires ``torch==X.Y.*`` of that torch (`make wheel` builds one; see README).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "8.0;9.0a;compute_90"
PY_LIMITED = "0x030A0000"  # the limited API of Python 3.10: the abi3 floor


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _toolkit_from_nvcc(nvcc: str) -> str | None:
    """The toolkit folder behind an nvcc executable.

    Some machines put a one-line wrapper script named nvcc on PATH
    (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``); torch would then guess CUDA_HOME from the
    wrapper's folder, which has no headers. Follow the script to the real compiler.
    """
    path = Path(nvcc).resolve()
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return None
    if head.startswith(b"#!"):
        match = re.search(rb"(/\S+/bin/nvcc)\b", head)
        if match:
            return _toolkit_from_nvcc(match.group(1).decode())
        return None
    toolkit = path.parent.parent
    return str(toolkit) if (toolkit / "include" / "cuda_runtime.h").exists() else None


def find_cuda_home() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and (Path(value) / "bin" / "nvcc").exists():
            return value
    nvcc = shutil.which("nvcc")
    if nvcc:
        found = _toolkit_from_nvcc(nvcc)
        if found:
            return found
    for candidate in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        if (Path(candidate) / "bin" / "nvcc").exists():
            return candidate
    return None


def wheel_cuda_include_dirs() -> list[str]:
    """Header folders shipped by the NVIDIA pip wheels that torch depends on.

    A minimal toolkit may lack library headers that torch's own headers include (cusparse.h,
    cublas_v2.h, ...); the CUDA build of torch installs them under site-packages/nvidia.
    They are searched *after* the toolkit's own headers (-idirafter), so the toolkit wins.
    """
    dirs: list[str] = []
    for entry in sys.path:
        base = Path(entry) / "nvidia"
        if not base.is_dir():
            continue
        for inc in sorted(base.glob("*/include")):
            if inc.is_dir() and str(inc) not in dirs:
                dirs.append(str(inc))
    return dirs


def find_cublaslt(cuda_home: str) -> str:
    """The cuBLASLt shared library to link: the one of the NVIDIA wheels torch runs with (so one
    copy is loaded), else the toolkit's. Linked by path: the wheels ship only libcublasLt.so.N."""
    candidates = []
    for entry in sys.path:
        candidates += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib", "libcublasLt.so*")))
    candidates += sorted(glob.glob(os.path.join(cuda_home, "lib64", "libcublasLt.so*")))
    candidates += sorted(glob.glob(os.path.join(cuda_home, "targets", "*", "lib", "libcublasLt.so*")))
    if not candidates:
        raise RuntimeError(f"libcublasLt not found (looked in the nvidia wheels on sys.path and {cuda_home})")
    return candidates[0]


def gencode_flags(archs: str) -> list[str]:
    flags = []
    for arch in [a.strip() for a in archs.replace(",", ";").split(";") if a.strip()]:
        if arch.startswith("compute_"):  # PTX only, JIT-compiled by the driver on newer GPUs
            num = arch.removeprefix("compute_")
            if not re.fullmatch(r"\d+a?", num):
                raise ValueError(f"AIGC_KERNELS_CUDA_ARCHS: expected entries like 'compute_90', got {arch!r}")
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
            continue
        ptx = arch.endswith("+PTX")
        arch = arch.removesuffix("+PTX")
        if not re.fullmatch(r"\d+\.\d+a?", arch):
            raise ValueError(f"AIGC_KERNELS_CUDA_ARCHS: expected entries like '8.0' or '9.0a', got {arch!r}")
        num = arch.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    if not flags:
        raise ValueError("AIGC_KERNELS_CUDA_ARCHS is empty")
    return flags


def write_build_info(**facts: str) -> None:
    """Record what the extension is built for; `aigc-kernels info` reports it."""
    lines = ['"""Written by setup.py when it builds aigc_kernels._C; not tracked by git."""', ""]
    lines += [f"{key} = {value!r}" for key, value in facts.items()]
    (ROOT / "aigc_kernels" / "_build_info.py").write_text("\n".join(lines) + "\n")


def enable_ccache(cuda_home: str) -> None:
    """Route the C++ and CUDA compiles through ccache when it is installed (AIGC_KERNELS_CCACHE=0 disables).

    Paths under csrc/ are made relative to the build folder, which is always <checkout>/build/temp-ext
    (see ``_build_ext``), and that folder is left out of the hash: a build from a copy of the tree (the
    packaging test's wheel, `make wheel`) reuses what the editable install compiled. Paths outside csrc/
    (torch's headers in the virtual environment) stay absolute, so the environment is part of the key.
    """
    ccache = shutil.which("ccache")
    if ccache is None or os.environ.get("AIGC_KERNELS_CCACHE", "1") == "0":
        return
    os.environ.setdefault("PYTORCH_NVCC", f"{ccache} {cuda_home}/bin/nvcc")
    masquerade = Path("/usr/lib/ccache/c++")
    if "CXX" not in os.environ and masquerade.exists():
        os.environ["CXX"] = str(masquerade)
    os.environ.setdefault("CCACHE_BASEDIR", str(ROOT / "csrc"))
    os.environ.setdefault("CCACHE_NOHASHDIR", "1")
    print(f"aigc-kernels: compiling through ccache ({ccache})")


def cuda_extension():
    """Return (ext_modules, cmdclass), or raise RuntimeError saying why the build is impossible."""
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise RuntimeError("no CUDA toolkit found (no nvcc on PATH, CUDA_HOME unset)")
    # torch.utils.cpp_extension reads CUDA_HOME once, at import: set it first.
    os.environ["CUDA_HOME"] = cuda_home
    enable_ccache(cuda_home)
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            "torch is not importable in the build environment (an isolated pip build?). "
            "Install torch first, then `pip install --no-build-isolation -e .`"
        ) from exc
    if not torch.version.cuda:
        raise RuntimeError(f"torch {torch.__version__} is a CPU-only build; a CUDA build of torch is needed")
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    archs = os.environ.get("AIGC_KERNELS_CUDA_ARCHS", DEFAULT_ARCHS)
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.c[up]*") if p.suffix in (".cu", ".cpp"))
    after = []
    for inc in wheel_cuda_include_dirs():
        after += ["-idirafter", inc]
    nvcc_after = [f"-Xcompiler=-idirafter,{inc}" for inc in wheel_cuda_include_dirs()]
    cublaslt = find_cublaslt(cuda_home)
    for stale in (ROOT / "aigc_kernels").glob("_C.cpython-*.so"):  # an older per-Python build would shadow abi3
        stale.unlink()
    ext = CUDAExtension(
        name="aigc_kernels._C",
        sources=sources,
        include_dirs=[str(ROOT / "csrc")],
        extra_link_args=[cublaslt],
        py_limited_api=True,
        define_macros=[("Py_LIMITED_API", PY_LIMITED)],
        extra_compile_args={
            "cxx": ["-O3", *after],
            "nvcc": [
                "-O3",
                "--expt-relaxed-constexpr",
                "--use_fast_math",
                "-lineinfo",
                *nvcc_after,
                *gencode_flags(archs),
            ],
        },
    )
    write_build_info(archs=archs, torch_version=torch.__version__, cuda_version=torch.version.cuda,
                     cuda_home=cuda_home, python_abi="abi3 (Python >= 3.10)")
    print(f"aigc-kernels: building aigc_kernels._C with CUDA_HOME={cuda_home}, archs {archs}, "
          f"torch {torch.__version__} (CUDA {torch.version.cuda})")
    base = BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)

    class _build_ext(base):
        """One build folder inside the checkout, whatever pip asks (an editable install picks a fresh
        temporary one): the relative paths ccache hashes are then the same for every copy of the tree."""

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = str(ROOT / "build" / "temp-ext")

    return [ext], {"build_ext": _build_ext}, torch


def requirements(torch_module) -> list[str]:
    """The package's dependencies; with _C built, the torch minor version it was built against."""
    torch_req = "torch>=2.6"
    if torch_module is not None:
        major, minor = torch_module.__version__.split("+")[0].split(".")[:2]
        torch_req = f"torch=={major}.{minor}.*"
    return [torch_req, "triton>=3.4; platform_system == 'Linux'", "numpy", "rich>=13"]


def main() -> None:
    ext_modules, cmdclass, torch_module = [], {}, None
    if _env_flag("AIGC_KERNELS_SKIP_CUDA_BUILD"):
        print("aigc-kernels: AIGC_KERNELS_SKIP_CUDA_BUILD=1, installing pure Python (no aigc_kernels._C)")
    else:
        try:
            ext_modules, cmdclass, torch_module = cuda_extension()
        except RuntimeError as exc:
            if _env_flag("AIGC_KERNELS_FORCE_CUDA_BUILD"):
                raise RuntimeError(f"aigc-kernels: AIGC_KERNELS_FORCE_CUDA_BUILD=1 but {exc}") from exc
            warnings.warn(
                f"aigc-kernels: not building the CUDA extension aigc_kernels._C: {exc}. "
                "Installing pure Python: the 'torch' and 'triton' backends still work.",
                stacklevel=1,
            )
    options = {"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {}
    setup(ext_modules=ext_modules, cmdclass=cmdclass, install_requires=requirements(torch_module), options=options)


if __name__ == "__main__":
    main()
