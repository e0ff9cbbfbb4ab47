"""What every autotuned Triton kernel of the library shares: the config modes, the bucketed tuning
keys, reading arguments inside a prune, and the registry the audit and the tests walk.

Config modes. Each autotuned kernel has a function ``configs(mode)``:
    "interpret"  one small config (Triton's CPU interpreter; tests),
    "default"    the best single static choice per kernel (AIGC_KERNELS_AUTOTUNE=0), which is what
                 runs when autotuning is off, so it must fit every arch the prune allows it on,
    "autotune"   the candidates timed on first use of each tuning key.
The prune of each kernel then drops, per call, the configs that cannot fit the target GPU
(shared memory) or that spill registers there, plus those far larger than the problem.

Tuning keys hold *buckets* of the sizes that vary from call to call (sequence lengths, token
counts): next powers of two. Exact sizes would re-run the whole autotuning (compiles and timings
of every config) for each new length, stalling a training run with variable lengths or a server
with varying prompts.

Prune functions. Triton hands a prune the kernel's *positional* arguments as ``named_args`` and
its keyword arguments as ``**kwargs`` (constexprs passed by keyword land there): ``arg`` reads
either, so a launcher may pass an argument either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import triton

from .. import _device

INTERPRET = _device.interpreter()
# AIGC_KERNELS_AUTOTUNE=0: one config per kernel ("default") instead of autotuning.
AUTOTUNE = os.environ.get("AIGC_KERNELS_AUTOTUNE", "1") != "0"
MODE = "interpret" if INTERPRET else ("autotune" if AUTOTUNE else "default")
MODES = ("interpret", "default", "autotune")
_mode = MODE  # the mode the registered kernels' configs are in now (use_mode changes it)

# What the prunes plan for under the interpreter, where there is no GPU to fit (and tests force the
# autotuning configs): the Hopper tables, with no shared-memory limit.
INTERPRETER_GPU = _device.GPU((9, 0), 4, 1 << 30)

# (autotuned kernel, its configs(mode) function): walked by the audit and the tests, which swap
# the configs of a mode in and out.
TUNED: list[tuple[object, Callable[[str], list]]] = []


def bucket(n: int) -> int:
    """The tuning bucket of a size that varies between calls: the next power of two (at least 16)."""
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def arg(named_args: dict, kwargs: dict, name: str):
    """A kernel argument inside a prune function, passed positionally or by keyword."""
    if name in named_args:
        return named_args[name]
    if name in kwargs:
        return kwargs[name]
    raise KeyError(f"prune: kernel argument {name!r} is neither among the positional arguments "
                   f"{sorted(named_args)} nor the keywords {sorted(kwargs)}")


def device_of(named_args: dict):
    """The device of the first tensor (or tensor descriptor) argument."""
    for value in named_args.values():
        base = getattr(value, "base", value)  # a TensorDescriptor holds its tensor as .base
        if hasattr(base, "device") and hasattr(base, "data_ptr"):
            return base.device
    raise ValueError("prune: no tensor argument to take the device from")


def target_gpu(named_args: dict) -> _device.GPU:
    """The GPU a prune is choosing configs for (INTERPRETER_GPU for CPU tensors under the interpreter)."""
    device = device_of(named_args)
    if _device.simulated() is None and device.type != "cuda":
        return INTERPRETER_GPU
    return _device.gpu(device)


def arch_class(gpu: _device.GPU) -> str:
    """The config tables' arch: "sm90" (Hopper and newer: wgmma, 227 KB shared memory) or "sm80"."""
    return "sm90" if gpu.capability[0] >= 9 else "sm80"


def dtype_class(dtype) -> str:
    import torch

    return "fp32" if dtype == torch.float32 else "half"


def dim_class(d: int) -> int:
    """Head dims in the tables: 32 (<= 32), 64, 128, 256 (the padded BLOCK_D)."""
    return max(32, triton.next_power_of_2(int(d)))


def shape_of(config) -> tuple:
    """A config as its table entry: (BLOCK_M, BLOCK_N[, BLOCK_K], num_warps, num_stages)."""
    kw = config.kwargs
    block = (kw["BLOCK_M"], kw["BLOCK_N"]) + ((kw["BLOCK_K"],) if "BLOCK_K" in kw else ())
    return (*block, config.num_warps, config.num_stages)


def pick(configs: list, wanted: list[tuple], fits=None) -> list:
    """The configs among ``configs`` whose shapes are in ``wanted`` (in ``wanted``'s order, best
    first), that ``fits(config)`` -- only the first in "default" mode (the static choice)."""
    by_shape = {shape_of(c): c for c in configs}
    chosen = [by_shape[w] for w in wanted if w in by_shape and (fits is None or fits(by_shape[w]))]
    if _mode == "default":
        return chosen[:1]
    return chosen


def mode() -> str:
    return _mode


def autotune(configs: Callable[[str], list], key: list[str], prune: Callable):
    """triton.autotune with the library's config modes and prune, registered for the audit."""

    def wrap(fn):
        kernel = triton.autotune(configs=configs(MODE), key=key, prune_configs_by={"early_config_prune": prune})(fn)
        TUNED.append((kernel, configs))
        return kernel

    return wrap


def use_mode(mode: str) -> None:  # noqa: F811 - the parameter shadows mode() on purpose
    """Swap every registered kernel's configs to ``mode`` and forget what it tuned (audit, tests)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"expected a config mode in {MODES}, got {mode!r}")
    _mode = mode
    for kernel, configs in TUNED:
        kernel.configs = configs(mode)
        kernel.cache.clear()
