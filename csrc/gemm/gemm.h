// GEMMs through cuBLASLt (with its epilogues) and the elementwise activation kernels that
// cuBLASLt lacks. Row-major tensors throughout; the launchers run on the current stream.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

#include "act_table.h"  // enum class Act, generated from aigc_kernels/contracts/tables.py

namespace aigc_kernels {
namespace gemm {

// Parse an activation name of kActNames, or none; raises on anything else.
Act parse_act(const std::optional<c10::string_view>& name);

enum class Epilogue : int { kDefault = 0, kBias = 1, kGeluAux = 2, kRowSumA = 3, kDGeluAux = 4 };

// out (M, N) row-major = A (M, K) @ B (K, N), with A and B given by their row-major storage (row
// stride = leading dimension) and whether they are transposed: a_t means A is stored as (K, M),
// b_t means B is stored as (N, K).
//   kBias:        out += bias (N,)
//   kGeluAux:     aux = A @ B (+ bias) (the pre-activation, (M, N)); out = gelu_tanh(aux)
//   kRowSumA:     also bias_grad (M,) float32 = A summed over K (a bias gradient, from the dW GEMM)
//   kDGeluAux:    out = (A @ B) * gelu_tanh'(aux), aux the forward's pre-activation (M, N): the
//                 activation's derivative fused into the gradient GEMM's epilogue
// accumulate: out = A @ B + out (beta 1; the sum in float32, one rounding). out may be a strided view
// (row stride >= N, unit column stride), e.g. one half of a wider tensor.
// The heuristic's algorithm is cached per (device, types, sizes, strides, epilogue, pointer alignments), and the
// workspace is torch's own cuBLASLt workspace of the current handle and stream.
// Returns false when cuBLASLt has no algorithm for the request (the caller falls back).
bool lt_matmul(const at::Tensor& a, bool a_t, const at::Tensor& b, bool b_t, at::Tensor& out, Epilogue epi,
               const at::Tensor* bias, at::Tensor* aux, at::Tensor* bias_grad, bool accumulate = false);

// Elementwise kernels (act_kernels.cu); all tensors contiguous (M, N) unless noted.
void act_fwd(const at::Tensor& z, at::Tensor& y, Act act);                            // y = act(z)
void act_bwd(const at::Tensor& dy, const at::Tensor& z, at::Tensor& dz, Act act);      // dz = dy * act'(z)
// ug (M, 2H) = [u | g]: h (M, H) = act(g) * u
void gated_fwd(const at::Tensor& ug, at::Tensor& h, Act act);
// dh (M, H), ug (M, 2H) -> dudg (M, 2H) = [dh * act(g) | dh * u * act'(g)]; h (M, H), when given, = act(g) * u
// (the forward's output again, from the same pass)
void gated_bwd(const at::Tensor& dh, const at::Tensor& ug, at::Tensor& dudg, Act act, at::Tensor* h = nullptr);

}  // namespace gemm
}  // namespace aigc_kernels
