"""Which implementation runs an op: "cuda" | "triton" | "torch" | "auto".

The active backend is, from strongest to weakest: the ``backend=`` argument of a call, the
innermost ``use_backend(...)`` block, ``set_backend(...)``, the environment variable
``AIGC_KERNELS_BACKEND``, and finally "auto".

* A backend asked for by name must run the call or raise :class:`BackendError` saying why; it
  never falls back silently.
* "auto" takes the first of cuda > triton > torch that is available here, implements the op
  and accepts the inputs, and logs (at DEBUG, logger ``aigc_kernels.backend``) why it skipped
  the others. On CPU tensors "auto" runs the torch reference: the Triton interpreter is a
  debugging tool, not a fast path.

Kernel modules register their implementations with :func:`register`, naming them as
"module:function" strings so nothing heavy (triton, the compiled extension) is imported until
an op first runs on that backend.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

__all__ = [
    "BACKENDS",
    "BackendError",
    "available_backends",
    "backend_status",
    "get_backend",
    "implementations",
    "register",
    "select",
    "set_backend",
    "use_backend",
]

log = logging.getLogger("aigc_kernels.backend")

BACKENDS = ("cuda", "triton", "torch")  # also the preference order of "auto"
_CHOICES = (*BACKENDS, "auto")
ENV_VAR = "AIGC_KERNELS_BACKEND"


class BackendError(RuntimeError):
    """A backend asked for by name cannot run this call (not available, op missing, inputs unsupported)."""


def _normalize(name: str | None, where: str) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or name.strip().lower() not in _CHOICES:
        raise ValueError(f"{where}: expected a backend in {_CHOICES}, got {name!r}")
    return name.strip().lower()


_global_backend: str | None = None
_scoped_backends: list[str] = []


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend; None goes back to $AIGC_KERNELS_BACKEND or "auto"."""
    global _global_backend
    _global_backend = _normalize(name, "set_backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the block with ``name`` as the default backend (nests; restores on exit)."""
    _scoped_backends.append(_normalize(name, "use_backend"))
    try:
        yield
    finally:
        _scoped_backends.pop()


def get_backend() -> str:
    """The backend a call with ``backend=None`` uses now."""
    if _scoped_backends:
        return _scoped_backends[-1]
    if _global_backend is not None:
        return _global_backend
    env = os.environ.get(ENV_VAR)
    if env:
        return _normalize(env, f"${ENV_VAR}")
    return "auto"


# ----------------------------------------------------------------------------------------------
# availability
# ----------------------------------------------------------------------------------------------
def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_status() -> dict[str, tuple[bool, str]]:
    """For each backend: (available here, why or why not)."""
    return dict(_backend_status(triton_interpreter()))


@functools.lru_cache(maxsize=None)
def _backend_status(interpreter: bool) -> tuple[tuple[str, tuple[bool, str]], ...]:
    from . import _ext

    status: dict[str, tuple[bool, str]] = {}
    gpu = torch.cuda.is_available()
    ext_ok, ext_why = _ext.status()
    if not ext_ok:
        status["cuda"] = (False, ext_why)
    elif not gpu:
        status["cuda"] = (False, "the extension aigc_kernels._C is built, but no CUDA GPU is visible")
    else:
        status["cuda"] = (True, f"aigc_kernels._C on {torch.cuda.get_device_name()}")
    if importlib.util.find_spec("triton") is None:
        status["triton"] = (False, "triton is not installed")
    elif gpu:
        status["triton"] = (True, f"triton on {torch.cuda.get_device_name()}")
    elif interpreter:
        status["triton"] = (True, "triton interpreter on CPU (TRITON_INTERPRET=1; slow, for testing)")
    else:
        status["triton"] = (False, "no CUDA GPU (set TRITON_INTERPRET=1 to run Triton kernels on CPU)")
    status["torch"] = (True, "naive PyTorch (aigc_kernels.reference), any device")
    return tuple(status.items())


def available_backends() -> list[str]:
    """The backends that can run here, in auto's order of preference."""
    return [name for name, (ok, _) in backend_status().items() if ok]


# ----------------------------------------------------------------------------------------------
# implementations
# ----------------------------------------------------------------------------------------------
@dataclass
class Implementation:
    op: str
    backend: str
    target: str  # "module:function" running the op, same signature as the public function
    check: str | None = None  # "module:function" -> None if it can run these args, else the reason
    _fn: Callable | None = field(default=None, repr=False)
    _check_fn: Callable | None = field(default=None, repr=False)

    @staticmethod
    def _load(target: str) -> Callable:
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)

    def fn(self) -> Callable:
        if self._fn is None:
            self._fn = self._load(self.target)
        return self._fn

    def why_not(self, *args, **kwargs) -> str | None:
        if self.check is None:
            return None
        if self._check_fn is None:
            self._check_fn = self._load(self.check)
        return self._check_fn(*args, **kwargs)


_REGISTRY: dict[str, dict[str, Implementation]] = {}


def register(op: str, backend: str, target: str, check: str | None = None) -> None:
    """Declare that ``backend`` implements the public op ``op`` with ``target`` ("module:function")."""
    if backend not in BACKENDS:
        raise ValueError(f"register: expected a backend in {BACKENDS}, got {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = Implementation(op, backend, target, check)


def implementations(op: str | None = None) -> dict[str, list[str]]:
    """Which backends implement which ops: {op: [backends]} (in auto's order)."""
    ops = [op] if op is not None else sorted(_REGISTRY)
    return {name: [b for b in BACKENDS if b in _REGISTRY.get(name, {})] for name in ops}


def _device_reason(backend: str, device: torch.device) -> str | None:
    if backend == "cuda" and device.type != "cuda":
        return f"the 'cuda' backend needs CUDA tensors, got tensors on {device}"
    if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpreter()):
        return (f"the 'triton' backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
                f"got tensors on {device}")
    return None


def select(op: str, device: torch.device, backend: str | None, *args, **kwargs) -> Callable:
    """The function that runs ``op`` for these arguments (see the module docstring for the rules)."""
    name = _normalize(backend, f"ak.{op}(backend=...)") or get_backend()
    impls = _REGISTRY.get(op, {})
    if name != "auto":
        impl = impls.get(name)
        if impl is None:
            have = [b for b in BACKENDS if b in impls]
            raise BackendError(f"ak.{op}: the '{name}' backend has no implementation of {op}; "
                               f"backends that implement it: {have}. Pass backend='auto' or one of those.")
        reason = _device_reason(name, device)
        if reason is None:
            ok, why = dict(_backend_status(triton_interpreter()))[name]
            reason = None if ok else f"the '{name}' backend is not available here: {why}"
        if reason is None:
            reason = impl.why_not(*args, **kwargs)
        if reason is not None:
            raise BackendError(f"ak.{op}(backend='{name}'): {reason}. "
                               "Use backend='auto' to let the library choose one that can.")
        return impl.fn()
    skipped = []
    for candidate in BACKENDS:
        impl = impls.get(candidate)
        if impl is None:
            continue
        if candidate != "torch" and device.type == "cpu":
            reason = "auto runs CPU tensors on the torch reference"
        else:
            reason = _device_reason(candidate, device)
        if reason is None and candidate != "torch":
            ok, why = dict(_backend_status(triton_interpreter()))[candidate]
            reason = None if ok else why
        if reason is None:
            reason = impl.why_not(*args, **kwargs)
        if reason is None:
            if skipped and log.isEnabledFor(logging.DEBUG) and not torch.compiler.is_compiling():
                log.debug("ak.%s: auto chose '%s'; skipped %s", op, candidate, "; ".join(skipped))
            return impl.fn()
        skipped.append(f"{candidate}: {reason}")
    raise BackendError(f"ak.{op}: no backend can run these inputs ({'; '.join(skipped) or 'none registered'})")
