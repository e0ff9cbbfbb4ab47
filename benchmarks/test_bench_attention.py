"""pytest-benchmark: attention (cases and providers from aigc_kernels.bench)."""

import pytest
from conftest import params


@pytest.mark.parametrize("op,case,provider,mode", [p for m in ("fwd", "fwd+bwd",) for p in params("attention", m)])
def test_attention(timed, op, case, provider, mode):
    timed(op, case, provider, mode)
