"""The "cuda" rotary embedding (csrc/rotary): fake impls, autograd and the entry point, through the
contract both rotary backends share (aigc_kernels.contracts.rotary)."""

from __future__ import annotations

import torch

from ..contracts import rotary as contract

torch.library.register_fake("aigc_kernels::rotary_fwd")(contract.fake_fwd)
torch.library.register_fake("aigc_kernels::rotary_inplace")(contract.fake_inplace)

# The entry point, with the signature of ak.rotary.
rotary = contract.entry_point(torch.ops.aigc_kernels.rotary_fwd, torch.ops.aigc_kernels.rotary_inplace)
