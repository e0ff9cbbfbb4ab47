"""pytest-benchmark: attention_decode (cases and providers from aigc_kernels.bench)."""

import pytest
from conftest import params


@pytest.mark.parametrize("op,case,provider,mode", [p for m in ("fwd",) for p in params("attention_decode", m)])
def test_attention_decode(timed, op, case, provider, mode):
    timed(op, case, provider, mode)
