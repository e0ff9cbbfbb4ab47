"""Loading the compiled extension aigc_kernels._C, lazily and at most once.

Importing _C runs its static TORCH_LIBRARY registrations (the schemas under
torch.ops.aigc_kernels and their CPU/CUDA kernels); the "cuda" backend (aigc_kernels.cuda) then adds the
fake (meta) implementations and autograd. status() checks _C without importing that backend. Nothing
imports _C until an op or `info` asks.
"""

from __future__ import annotations

import functools
import importlib
import re


def minor_version(version: str | None) -> str | None:
    """'2.11.0+cu130' -> '2.11' (None stays None; a string with no X.Y is returned as it is)."""
    if not version:
        return None
    m = re.match(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else version


def torch_mismatch() -> str | None:
    """Why _C cannot load with this torch (built against another minor version), before importing it:
    a mismatched _C fails with an undefined-symbol trace that names neither version."""
    import torch

    built = build_info().get("torch_version")
    want, have = minor_version(built), minor_version(torch.__version__)
    if built and want != have:
        return (f"aigc_kernels._C was built against torch {built}, but torch {torch.__version__} is installed: "
                f"install torch=={want}.* or rebuild (pip install --no-build-isolation -e ., or a wheel "
                f"built for torch {have})")
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
        importlib.import_module("aigc_kernels._C")
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
                  f"(requires torch=={minor_version(info.get('torch_version', '?'))}.*)")


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
