"""Facts about the device a launcher is about to run on, in one place, looked up once per device.

Every launcher asks here (never torch.cuda directly) which GPU generation it targets and how many
SMs it can fill. ``simulate(...)`` makes CPU tensors look like tensors on a given GPU: the
compile-only audit (aigc_kernels.audit) uses it to drive the real host code -- autotune configs,
prune functions, TMA descriptors, split counts -- for sm_90a or sm_80 on a machine with no GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator

import torch


@dataclasses.dataclass(frozen=True)
class GPU:
    """What the launchers need to know of a GPU."""

    capability: tuple[int, int]
    sm_count: int
    smem_per_block: int  # bytes of shared memory one program may use (the opt-in maximum)


_simulated: GPU | None = None


def interpreter() -> bool:
    """Triton's CPU interpreter (TRITON_INTERPRET=1); read when called: tests set it before importing triton."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@contextlib.contextmanager
def simulate(gpu: GPU) -> Iterator[None]:
    """Within the block, every tensor (CPU ones included) is treated as living on ``gpu``."""
    global _simulated
    saved, _simulated = _simulated, gpu
    try:
        yield
    finally:
        _simulated = saved


def simulated() -> GPU | None:
    return _simulated


def on_gpu(t: torch.Tensor) -> bool:
    """Whether the launchers should plan for a GPU: a CUDA tensor, or any tensor under simulate()."""
    return _simulated is not None or t.is_cuda


@functools.cache
def _gpu(index: int) -> GPU:
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024
    return GPU((props.major, props.minor), props.multi_processor_count, smem)


def gpu(device: torch.device) -> GPU:
    """The GPU of ``device`` (the simulated one under simulate())."""
    if _simulated is not None:
        return _simulated
    if device.type != "cuda":
        raise ValueError(f"expected a CUDA device, got {device}")
    return _gpu(device.index if device.index is not None else torch.cuda.current_device())


def capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device (or the simulated one)."""
    return gpu(device).capability


def sm_count(device: torch.device) -> int:
    return gpu(device).sm_count
