"""Which implementation runs an op: "cuda" | "triton" | "torch" | "reference" | "auto".

* "cuda", "triton": the library's kernels.
* "torch": PyTorch's own best native call for the op (SDPA, F.layer_norm, F.linear, ...), under
  the library's contract (aigc_kernels.native).
* "reference": the naive oracle (aigc_kernels.reference) -- for tests and checks; "auto" never
  picks it.
* "auto" (the default): the fastest backend for this call *as measured on this kind of GPU* (the
  dispatch table of aigc_kernels.dispatch, written by ``aigc-kernels tune`` or shipped for the
  arch), among those that can run the inputs; PyTorch's own call ("torch") wherever nothing was
  measured, on CPU tensors, and whenever the measured winner cannot take the inputs. So "auto" is
  never slower than "torch" where it was measured, and is "torch" everywhere else.

The active backend is, from strongest to weakest: the ``backend=`` argument of a call, the
innermost ``use_backend(...)`` block, ``set_backend(...)``, the environment variable
``AIGC_KERNELS_BACKEND``, and finally "auto". A backend asked for by name must run the call or
raise :class:`BackendError` saying why; it never falls back silently. ``ak.explain(op, ...)``
says which backend a call would run on and why, without running it.

Kernel modules register their implementations with :func:`register`, as loader functions, so
nothing heavy (triton, the compiled extension) is imported until an op first runs on that backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator

import torch

from .contracts.calls import Call

__all__ = [
    "AUTO_CANDIDATES",
    "BACKENDS",
    "BackendError",
    "Explanation",
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

BACKENDS = ("cuda", "triton", "torch", "reference")
AUTO_CANDIDATES = ("cuda", "triton", "torch")  # "auto" never runs the reference
_CHOICES = (*BACKENDS, "auto")
ENV_VAR = "AIGC_KERNELS_BACKEND"


class BackendError(RuntimeError):
    """A backend asked for by name cannot run this call (not available, op missing, inputs unsupported)."""


def _normalize(name: str | None, where: str) -> str | None:
    if name is None:
        return None
    if name in _CHOICES:  # the common case, without string work
        return name
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


# os.environ.get encodes the key and decodes the value on every call (~1 us); the raw mapping
# behind os.environ (updated by os.environ[...] = ..., monkeypatch.setenv, ...) is a dict lookup.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if hasattr(os.environ, "encodekey") else ENV_VAR


def _env_backend() -> str | None:
    if _ENV_DATA is None:  # pragma: no cover - a platform without os.environ._data
        return os.environ.get(ENV_VAR)
    raw = _ENV_DATA.get(_ENV_KEY)
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else raw


def get_backend() -> str:
    """The backend a call with ``backend=None`` uses now."""
    if _scoped_backends:
        return _scoped_backends[-1]
    if _global_backend is not None:
        return _global_backend
    env = _env_backend()
    if env:
        return _normalize(env, f"${ENV_VAR}")
    return "auto"


# ----------------------------------------------------------------------------------------------
# availability
# ----------------------------------------------------------------------------------------------
def triton_interpreter() -> bool:
    from . import _device

    return _device.interpreter()


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
    elif triton_interpreter() and here.INTERPRETER_PROBLEM:
        status["triton"] = (False, here.INTERPRETER_PROBLEM)
    elif triton_interpreter():
        status["triton"] = (True, "triton interpreter on CPU (TRITON_INTERPRET=1; slow, for testing)")
    else:
        status["triton"] = (False, "no CUDA GPU (set TRITON_INTERPRET=1 to run Triton kernels on CPU)")
    status["torch"] = (True, "PyTorch's own calls (SDPA, F.layer_norm, F.linear, ...), any device")
    status["reference"] = (True, "naive PyTorch (aigc_kernels.reference), the oracle of the tests; never 'auto'")
    return status


def _available(name: str) -> bool:
    from . import _availability as here

    if name == "cuda":
        return here.EXT_LOADED and here.GPU
    if name == "triton":
        return here.TRITON_INSTALLED and (here.GPU or (triton_interpreter() and not here.INTERPRETER_PROBLEM))
    return True


def available_backends() -> list[str]:
    """The backends that can run here (kernel backends first)."""
    return [name for name, (ok, _) in backend_status().items() if ok]


# ----------------------------------------------------------------------------------------------
# implementations
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Implementation:
    """One backend's implementation of one op.

    ``load`` returns the function that runs the op: it takes the op's normalized call unpacked,
    ``fn(*call)`` (aigc_kernels.contracts.calls: the public function's parameters in order, minus
    ``backend``); it imports the kernel module with an import statement, which torch.compile executes
    eagerly, so the first call may happen inside a compiled region. ``check(call)`` returns None when the
    implementation accepts the call, else the reason it does not.
    """

    op: str
    backend: str
    load: Callable[[], Callable]
    check: Callable[[Call], str | None] | None = None
    _fn: Callable | None = dataclasses.field(default=None, repr=False)

    def fn(self) -> Callable:
        if self._fn is None:
            self._fn = self.load()
        return self._fn

    def why_not(self, call: Call) -> str | None:
        return None if self.check is None else self.check(call)


_REGISTRY: dict[str, dict[str, Implementation]] = {}


def register(op: str, backend: str, load: Callable[[], Callable],
             check: Callable[[Call], str | None] | None = None) -> None:
    """Declare that ``backend`` implements the public op ``op`` (see Implementation)."""
    if backend not in BACKENDS:
        raise ValueError(f"register: expected a backend in {BACKENDS}, got {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = Implementation(op, backend, load, check)
    _CPU_AUTO.pop(op, None)  # (auto on CPU memoizes the op's "torch" implementation)


def implementation(op: str, backend: str) -> Implementation | None:
    """The registered implementation of ``op`` on ``backend``, or None."""
    return _REGISTRY.get(op, {}).get(backend)


def implementations(op: str | None = None) -> dict[str, list[str]]:
    """Which backends implement which ops: {op: [backends]}."""
    ops = [op] if op is not None else sorted(_REGISTRY)
    return {name: [b for b in BACKENDS if b in _REGISTRY.get(name, {})] for name in ops}


def _device_reason(backend: str, device: torch.device) -> str | None:
    if backend == "cuda" and device.type != "cuda":
        return f"the 'cuda' backend needs CUDA tensors, got tensors on {device}"
    if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpreter()):
        return (f"the 'triton' backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
                f"got tensors on {device}")
    return None


def _why_not(impl: Implementation, call: Call) -> str | None:
    reason = _device_reason(impl.backend, call[0].device)
    if reason is None and not _available(impl.backend):
        reason = f"the '{impl.backend}' backend is not available here: {backend_status()[impl.backend][1]}"
    if reason is None:
        reason = impl.why_not(call)
    return reason


# ----------------------------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Explanation:
    """Which backend a call runs on, and why (``ak.explain``)."""

    op: str
    requested: str  # the backend asked for ("auto" or a name)
    backend: str  # the one that runs
    reason: str
    key: str | None = None  # the dispatch key (auto on a GPU)
    timings_ms: dict[str, float] | None = None  # what the dispatch table measured for that key
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"ak.{self.op}: runs on '{self.backend}' (requested '{self.requested}'): {self.reason}"]
        if self.key:
            lines.append(f"  dispatch key: {self.key}")
        if self.timings_ms:
            lines.append("  measured: " + ", ".join(f"{b} {ms:.4g} ms" for b, ms in sorted(self.timings_ms.items())))
        lines += [f"  not {s}" for s in self.skipped]
        return "\n".join(lines)


class _Explained(Exception):
    def __init__(self, explanation: Explanation) -> None:
        self.explanation = explanation


_explaining: list[bool] = []


_DEBUG = logging.DEBUG


def fast(op: str, t: torch.Tensor, backend: str | None) -> Callable | None:
    """The implementation when the call needs no look at its arguments -- "auto" on non-CUDA tensors and
    the always-available "torch" and "reference" -- else None (then ``select`` decides). The public
    functions try this first: it is most of what a decoding step's ~150 small calls per token cost, so
    it reads as little as it can (~0.3 us)."""
    if backend is not None:
        name = backend
    elif _scoped_backends:
        name = _scoped_backends[-1]
    elif _global_backend is not None:
        name = _global_backend
    elif _ENV_DATA is not None and _ENV_KEY not in _ENV_DATA:  # (get_backend's answer without its two calls)
        name = "auto"
    else:
        name = get_backend()
    if name == "auto":
        if _explaining or t.is_cuda:
            return None
        fn = _CPU_AUTO.get(op)
        return fn if fn is not None else _first_cpu_auto(op, t)
    if (name != "torch" and name != "reference") or _explaining:
        return None
    impl = _REGISTRY[op][name]
    return impl._fn if impl._fn is not None else impl.fn()


# "auto" on non-CUDA tensors: op -> the "torch" implementation, resolved (and said at DEBUG) on the op's
# first such call. Per call, fast() then reads one dict: after a kernel has streamed its tensors through
# the caches every Python object touched is a miss, and the compile and log-level checks alone cost
# ~3 us a call in situ behind a 512x768 rms_norm (0.2 us in a tight loop).
_CPU_AUTO: dict[str, Callable] = {}


def _first_cpu_auto(op: str, t: torch.Tensor) -> Callable:
    fn = _REGISTRY[op]["torch"].fn()
    if torch.compiler.is_compiling():  # (dynamo refuses the log; the first eager call says it and memoizes)
        return fn
    log.debug("ak.%s: auto chose 'torch' (PyTorch's own call): tensors on %s (said once per op; ak.explain says "
              "it for any call)", op, t.device.type)
    _CPU_AUTO[op] = fn
    return fn


def select(call: Call, backend: str | None) -> Callable:
    """The function that runs this call (``fn(*call)``; see the module docstring for the rules)."""
    op, device = call.op, call[0].device
    name = get_backend() if backend is None else _normalize(backend, f"ak.{op}(backend=...)")
    if name == "auto" and device.type != "cuda" and not _explaining:
        # CPU tensors run PyTorch's own call (as fast() picks it: memoized, said once per op)
        return _CPU_AUTO.get(op) or _first_cpu_auto(op, call[0])
    impls = _REGISTRY[op]
    if name != "auto":
        impl = impls.get(name)
        if impl is None:
            have = [b for b in BACKENDS if b in impls]
            raise BackendError(f"ak.{op}: the '{name}' backend has no implementation of {op}; "
                               f"backends that implement it: {have}. Pass backend='auto' or one of those.")
        if name != "torch" and name != "reference":
            reason = _why_not(impl, call)
            if reason is not None:
                raise BackendError(f"ak.{op}(backend='{name}'): {reason}. "
                                   "Use backend='auto' to let the library choose one that can.")
        if _explaining:
            raise _Explained(Explanation(op, name, name, "asked for by name, and it accepts these inputs"))
        return impl.fn()
    return _auto(op, impls, device, call)


def _auto(op, impls, device, call) -> Callable:
    if (device.type == "cuda" and not _explaining and not torch.compiler.is_compiling()
            and not log.isEnabledFor(_DEBUG)):
        # what an eager GPU call pays each time: the table's entry memoized by the call's signature, the
        # winner's check (it reads strides and grad mode, which the signature does not), no explanation
        # built. Under torch.compile the choice is made once, while tracing, through the path below
        # (sizes bucketed to ints there; a signature would hash symbolic sizes).
        from . import dispatch

        table = dispatch.table_for(device)
        entry = None if table is None else table.entry_for(call)
        if entry is not None and entry.best != "torch" and entry.best in AUTO_CANDIDATES and entry.best in impls:
            impl = impls[entry.best]
            if _why_not(impl, call) is None:
                return impl.fn()
        return impls["torch"].fn()
    return _auto_explained(op, impls, device, call)


def _auto_explained(op, impls, device, call) -> Callable:
    """_auto's choice, with the reason (for ak.explain and the debug log)."""
    def done(backend: str, reason: str, **extra) -> Callable:
        if _explaining:
            raise _Explained(Explanation(op, "auto", backend, reason, **extra))
        if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
            log.debug("ak.%s: auto chose '%s': %s", op, backend, reason)
        return impls[backend].fn()

    if device.type != "cuda":
        return done("torch", f"tensors on {device}: PyTorch's own call (the library's kernels run on CUDA GPUs)")
    from . import dispatch

    table = dispatch.table_for(device)
    if table is None:
        return done("torch", "no dispatch table for this GPU (run `aigc-kernels tune`): PyTorch's own call")
    key = dispatch.key(call)
    entry = table.lookup(key)
    if entry is None:
        return done("torch", f"the dispatch table ({table.source}) has no entry for this call", key=str(key))
    extra = dict(key=str(key), timings_ms=entry.ms)
    if entry.best == "torch" or entry.best not in impls or entry.best not in AUTO_CANDIDATES:
        return done("torch", f"measured fastest at {entry.key} ({table.source})", **extra)
    reason = _why_not(impls[entry.best], call)
    if reason is not None:
        return done("torch", f"'{entry.best}' was measured fastest at {entry.key} but cannot run this call: {reason}",
                    **extra)
    return done(entry.best, f"measured fastest at {entry.key} ({table.source})", **extra)
