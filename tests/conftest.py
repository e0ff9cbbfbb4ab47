"""Test configuration.

Without a CUDA GPU, Triton kernels run through the interpreter: TRITON_INTERPRET=1 must be set
before triton is imported, so it is set here, before any test module imports the library.
Markers: gpu (skipped without CUDA), interpreter (Triton on CPU), slow.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HAS_GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _per_test_timeout():
    """AIGC_KERNELS_TEST_TIMEOUT=seconds: fail a test that runs longer (the GPU pass runs the suite in a
    time window; one hung test must not take the rest with it). Unix, main thread."""
    import signal

    seconds = int(os.environ.get("AIGC_KERNELS_TEST_TIMEOUT", "0") or 0)
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"test ran over AIGC_KERNELS_TEST_TIMEOUT={seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def _fresh_backend_state():
    """Each test starts from the default backend, whatever an earlier test set."""
    import aigc_kernels as ak

    ak.set_backend(None)
    yield
    ak.set_backend(None)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def cuda_ops():
    """The "cuda" backend's entry points (aigc_kernels.cuda.<family>.<op>: the compiled extension's Python
    side, with its fake impls and autograd registered); a skip where the extension is not built, an error
    under AIGC_KERNELS_REQUIRE_EXT=1."""
    from aigc_kernels import _ext

    ok, why = _ext.status()
    if not ok:
        if os.environ.get("AIGC_KERNELS_REQUIRE_EXT") == "1":
            raise RuntimeError(why)
        pytest.skip(why)
    import types

    from aigc_kernels.cuda import attention, kvcache, linear, norm, rotary

    return types.SimpleNamespace(**{name: getattr(module, name) for module, names in (
        (attention, ("attention", "attention_varlen", "attention_with_kvcache")), (kvcache, ("kvcache_append",)),
        (linear, ("linear", "ffn")), (norm, ("layer_norm", "rms_norm")), (rotary, ("rotary",))) for name in names})


@pytest.fixture
def force_tma(monkeypatch):
    """force(module, launcher): turn a Triton module's TMA path on wherever the call qualifies
    (its TMA_MODE = "1", so the interpreter runs it too) and return the list each launch of
    module.<launcher> appends to; a skip where triton has no host-side TensorDescriptor."""

    def force(module, launcher: str) -> list:
        if module.TensorDescriptor is None:
            pytest.skip("this triton has no host-side TensorDescriptor")
        monkeypatch.setattr(module, "TMA_MODE", "1")
        calls = []
        real = getattr(module, launcher)
        monkeypatch.setattr(module, launcher, lambda *a: calls.append(1) or real(*a))
        return calls

    return force
