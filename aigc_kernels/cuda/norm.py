"""The "cuda" LayerNorm / RMSNorm (csrc/norm): fake impls, autograd and entry points, through the
contract both norm backends share (aigc_kernels.contracts.norm)."""

from __future__ import annotations

import torch

from ..contracts import norm as contract

torch.library.register_fake("aigc_kernels::norm_fwd")(contract.fake_fwd)
torch.library.register_fake("aigc_kernels::norm_bwd")(contract.fake_bwd)
contract.register_autograd("aigc_kernels::norm_fwd", torch.ops.aigc_kernels.norm_bwd)

# The entry points, with the signatures of ak.layer_norm / ak.rms_norm.
layer_norm, rms_norm = contract.entry_points(torch.ops.aigc_kernels.norm_fwd)
