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


def target_gpu(named_args: dict) -> _device.GPU | None:
    """The GPU a prune is choosing configs for (None under the interpreter: nothing to fit)."""
    if INTERPRET and _device.simulated() is None:
        return None
    device = device_of(named_args)
    if _device.simulated() is None and device.type != "cuda":
        return None
    return _device.gpu(device)


def autotune(configs: Callable[[str], list], key: list[str], prune: Callable):
    """triton.autotune with the library's config modes and prune, registered for the audit."""

    def wrap(fn):
        kernel = triton.autotune(configs=configs(MODE), key=key, prune_configs_by={"early_config_prune": prune})(fn)
        TUNED.append((kernel, configs))
        return kernel

    return wrap


def use_mode(mode: str) -> None:
    """Swap every registered kernel's configs to ``mode`` and forget what it tuned (audit, tests)."""
    if mode not in MODES:
        raise ValueError(f"expected a config mode in {MODES}, got {mode!r}")
    for kernel, configs in TUNED:
        kernel.configs = configs(mode)
        kernel.cache.clear()
