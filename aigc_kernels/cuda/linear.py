"""The "cuda" linear and FFN (csrc/gemm: cuBLASLt + elementwise kernels): fake impls, autograd and entry
points, through the contract both GEMM backends share (aigc_kernels.contracts.linear)."""

from __future__ import annotations

import torch

from ..contracts import linear as contract

torch.library.register_fake("aigc_kernels::linear_fwd")(contract.fake_linear_fwd)
torch.library.register_fake("aigc_kernels::linear_bwd")(contract.fake_linear_bwd)
torch.library.register_fake("aigc_kernels::ffn_bwd")(contract.fake_ffn_bwd)


@torch.library.register_fake("aigc_kernels::ffn_fwd")
def _ffn_fwd_fake(x, w_in, b_in, w_out, b_out, activation, w_gate, b_gate, save):
    m, h = x.shape[0], w_in.shape[0]
    width = 2 * h if w_gate is not None else h  # gated: [u | g] of the one GEMM over [W_in; W_gate]
    return x.new_empty(m, w_out.shape[0]), (x.new_empty(m, width) if save else x.new_empty(0)), x.new_empty(0)


contract.register_linear_autograd("aigc_kernels::linear_fwd", torch.ops.aigc_kernels.linear_bwd)
contract.register_ffn_autograd("aigc_kernels::ffn_fwd", torch.ops.aigc_kernels.ffn_bwd)

# The entry points, with the signatures of ak.linear / ak.ffn.
linear, ffn = contract.entry_points(torch.ops.aigc_kernels.linear_fwd, torch.ops.aigc_kernels.ffn_fwd)
