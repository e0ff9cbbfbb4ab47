"""Loading the compiled extension aigc_kernels._C, lazily and at most once.

Importing _C runs its static TORCH_LIBRARY registrations (the schemas under
torch.ops.aigc_kernels and their CPU/CUDA kernels); the Python side then adds the fake (meta)
implementations in aigc_kernels.ops.cuda_ops. Nothing imports _C until an op or `info` asks.
"""

from __future__ import annotations

import functools
import importlib


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def torch_mismatch() -> str | None:
    """Why _C cannot load with this torch (built against another minor version), before importing it:
    a mismatched _C fails with an undefined-symbol trace that names neither version."""
    import torch

    built = build_info().get("torch_version")
    if built and _minor(built) != _minor(torch.__version__):
        return (f"aigc_kernels._C was built against torch {built}, but torch {torch.__version__} is installed: "
                f"install torch=={_minor(built)}.* or rebuild (pip install --no-build-isolation -e ., or a wheel "
                f"built for torch {_minor(torch.__version__)})")
    return None


@functools.cache
def status() -> tuple[bool, str]:
    """(loaded, description): whether aigc_kernels._C is built and loads, and why not."""
    import importlib.util

    if importlib.util.find_spec("aigc_kernels._C") is not None:
        why = torch_mismatch()
        if why is not None:
            return False, why
    try:
        # cuda_ops imports _C, then registers the fake impls of the C++ ops.
        importlib.import_module("aigc_kernels.ops.cuda_ops")
    except ModuleNotFoundError as exc:
        if exc.name != "aigc_kernels._C":
            raise
        return False, ("the CUDA extension aigc_kernels._C is not built (install with a CUDA toolkit and a CUDA "
                       "build of torch: pip install --no-build-isolation -e .)")
    except (ImportError, OSError) as exc:  # e.g. built against another torch: undefined symbols
        return False, f"the CUDA extension aigc_kernels._C failed to load ({exc}); rebuild it against this torch"
    info = build_info()
    archs = info.get("archs", "unknown archs")
    return True, (f"aigc_kernels._C built for {archs} against torch {info.get('torch_version', '?')} "
                  f"(requires torch=={_minor(info.get('torch_version', '?'))}.*)")


def build_info() -> dict[str, str]:
    """What setup.py recorded when it built _C (empty if it did not)."""
    try:
        mod = importlib.import_module("aigc_kernels._build_info")
    except ModuleNotFoundError:
        return {}
    return {k: v for k, v in vars(mod).items() if not k.startswith("_") and isinstance(v, str)}


def load() -> None:
    """Import _C or raise RuntimeError saying why it cannot be used."""
    ok, why = status()
    if not ok:
        raise RuntimeError(why)
