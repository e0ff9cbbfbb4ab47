"""pytest-benchmark: ffn (cases and providers from aigc_kernels.bench)."""

import pytest
from conftest import params


@pytest.mark.parametrize("op,case,provider,mode", [p for m in ("fwd", "fwd+bwd",) for p in params("ffn", m)])
def test_ffn(timed, op, case, provider, mode):
    timed(op, case, provider, mode)
