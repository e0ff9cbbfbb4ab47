"""Facts about this process that decide which backends can run, computed once at import.

backend.py imports this module inside its functions: an import statement is executed eagerly
even while torch.compile traces, so the checks below (which import the extension) never end up
in a traced graph. Tests may patch these attributes to simulate other machines.
"""

from __future__ import annotations

import importlib.util

import torch

from . import _ext

GPU: bool = torch.cuda.is_available()
GPU_NAME: str | None = torch.cuda.get_device_name() if GPU else None
TRITON_INSTALLED: bool = importlib.util.find_spec("triton") is not None
EXT_LOADED, EXT_WHY = _ext.status()


def _interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run our kernels with these package versions, if it cannot.

    Triton <= 3.6's interpreter turns loop bounds computed from program ids into 1-element numpy
    arrays and calls int() on them, which numpy >= 2.4 refuses ("only 0-dimensional arrays can be
    converted to Python scalars"); triton 3.7 fixed it. Seen with torch 2.11 / triton 3.6.0 / numpy 2.4.6.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        tv, nv = version("triton"), version("numpy")
    except PackageNotFoundError:
        return None

    def release(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("+")[0].split(".")[:2] if p.isdigit())

    if release(tv) < (3, 7) and release(nv) >= (2, 4):
        return (f"triton {tv}'s interpreter fails with numpy {nv} (size-1 arrays no longer convert to Python "
                f"scalars): install numpy<2.4 or triton>=3.7 to run Triton kernels on CPU")
    return None


INTERPRETER_PROBLEM: str | None = _interpreter_problem() if TRITON_INSTALLED and not GPU else None
