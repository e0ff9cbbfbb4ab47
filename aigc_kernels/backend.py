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

Kernel modules register their implementations with :func:`register`, as loader functions, so
nothing heavy (triton, the compiled extension) is imported until an op first runs on that
backend.
"""

from __future__ import annotations

import contextlib
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
    from . import _availability as here

    status: dict[str, tuple[bool, str]] = {}
    if not here.EXT_LOADED:
        status["cuda"] = (False, here.EXT_WHY)
    elif not here.GPU:
        status["cuda"] = (False, "the extension aigc_kernels._C is built, but no CUDA GPU is visible")
    else:
        status["cuda"] = (True, f"aigc_kernels._C on {here.GPU_NAME}")
    if not here.TRITON_INSTALLED:
        status["triton"] = (False, "triton is not installed")
    elif here.GPU:
        status["triton"] = (True, f"triton on {here.GPU_NAME}")
    elif triton_interpreter():
        status["triton"] = (True, "triton interpreter on CPU (TRITON_INTERPRET=1; slow, for testing)")
    else:
        status["triton"] = (False, "no CUDA GPU (set TRITON_INTERPRET=1 to run Triton kernels on CPU)")
    status["torch"] = (True, "naive PyTorch (aigc_kernels.reference), any device")
    return status


def _available(name: str) -> bool:
    from . import _availability as here

    if name == "cuda":
        return here.EXT_LOADED and here.GPU
    if name == "triton":
        return here.TRITON_INSTALLED and (here.GPU or triton_interpreter())
    return True


def available_backends() -> list[str]:
    """The backends that can run here, in auto's order of preference."""
    return [name for name, (ok, _) in backend_status().items() if ok]


# ----------------------------------------------------------------------------------------------
# implementations
# ----------------------------------------------------------------------------------------------
@dataclass
class Implementation:
    """One backend's implementation of one op.

    ``load`` returns the function that runs the op (same signature as the public function minus
    ``backend``); it imports the kernel module with an import statement, which torch.compile
    executes eagerly, so the first call may happen inside a compiled region. ``check`` returns
    None when the implementation accepts the arguments, else the reason it does not.
    """

    op: str
    backend: str
    load: Callable[[], Callable]
    check: Callable[..., str | None] | None = None
    _fn: Callable | None = field(default=None, repr=False)

    def fn(self) -> Callable:
        if self._fn is None:
            self._fn = self.load()
        return self._fn

    def why_not(self, *args, **kwargs) -> str | None:
        return None if self.check is None else self.check(*args, **kwargs)


_REGISTRY: dict[str, dict[str, Implementation]] = {}


def register(op: str, backend: str, load: Callable[[], Callable],
             check: Callable[..., str | None] | None = None) -> None:
    """Declare that ``backend`` implements the public op ``op`` (see Implementation)."""
    if backend not in BACKENDS:
        raise ValueError(f"register: expected a backend in {BACKENDS}, got {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = Implementation(op, backend, load, check)


def implementation(op: str, backend: str) -> Implementation | None:
    """The registered implementation of ``op`` on ``backend``, or None."""
    return _REGISTRY.get(op, {}).get(backend)


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
        if reason is None and not _available(name):
            reason = f"the '{name}' backend is not available here: {backend_status()[name][1]}"
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
        if reason is None and not _available(candidate):
            reason = backend_status()[candidate][1]
        if reason is None:
            reason = impl.why_not(*args, **kwargs)
        if reason is None:
            if skipped and not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
                log.debug("ak.%s: auto chose '%s'; skipped %s", op, candidate, "; ".join(skipped))
            return impl.fn()
        skipped.append(f"{candidate}: {reason}")
    raise BackendError(f"ak.{op}: no backend can run these inputs ({'; '.join(skipped) or 'none registered'})")
