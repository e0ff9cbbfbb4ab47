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
