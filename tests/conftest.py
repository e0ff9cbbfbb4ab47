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
def _fresh_backend_state():
    """Each test starts from the default backend, whatever an earlier test set."""
    import aigc_kernels as ak

    ak.set_backend(None)
    yield
    ak.set_backend(None)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
