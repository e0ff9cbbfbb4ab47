// Host side of linear_fwd/bwd and ffn_fwd/bwd: argument checks, device guard, then cuBLASLt GEMMs
// and the activation kernels of gemm.h.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "gemm/gemm.h"

namespace aigc_kernels {
namespace {

// linear_fwd / ffn_fwd: activations (M, K) and weights in nn.Linear layout, one dtype, one device.
void check_gemm_operand(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                               int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": expected ", name, " to be ", dim, "-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": expected ", name, " of dtype ", x.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": expected ", name, " on ", x.device(), ", got ", t.device());
}

void check_linear_args(const char* op, const at::Tensor& x, const at::Tensor& w,
                              const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, op, ": expected x of shape (M, K), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
              ": expected x of dtype Float, Half or BFloat16, got ", x.scalar_type());
  check_gemm_operand(op, "weight", w, x, 2);
  TORCH_CHECK(w.size(1) == x.size(1), op, ": expected weight of shape (N, ", x.size(1), "), got ", w.sizes());
  if (bias) {
    check_gemm_operand(op, "bias", *bias, x, 1);
    TORCH_CHECK(bias->size(0) == w.size(0), op, ": expected bias of shape (", w.size(0), ",), got ", bias->sizes());
  }
}

// ---------------------------------------------------------------------------------------------
// linear and FFN: cuBLASLt GEMMs (bias and GELU-with-aux epilogues, bias gradients from the
// weight-gradient GEMM) plus the elementwise kernels in gemm/act_kernels.cu for the rest.
// When cuBLASLt has no algorithm for a request, the same product runs through at::mm (cuBLAS).
// ---------------------------------------------------------------------------------------------
using gemm::Act;
using gemm::Epilogue;

// out = A @ B (+ bias) (accumulate: out += A @ B); A is x (M, K) or, a_t, stored (K, M); B is (K, N) or, b_t,
// stored (N, K). out may be a strided view with unit column stride (one half of a wider tensor).
void matmul(const at::Tensor& a, bool a_t, const at::Tensor& b, bool b_t, at::Tensor& out,
            const at::Tensor* bias, at::Tensor* row_sum_a, bool accumulate = false) {
  const Epilogue epi = row_sum_a ? Epilogue::kRowSumA : (bias ? Epilogue::kBias : Epilogue::kDefault);
  if (gemm::lt_matmul(a, a_t, b, b_t, out, epi, bias, nullptr, row_sum_a, accumulate)) return;
  const at::Tensor am = a_t ? a.t() : a, bm = b_t ? b.t() : b;
  if (accumulate) {
    TORCH_CHECK(!bias && !row_sum_a, "aigc_kernels: an accumulating GEMM takes no bias or row sum");
    out.addmm_(am, bm);
  } else if (bias) {
    at::addmm_out(out, *bias, am, bm);
  } else {
    at::mm_out(out, am, bm);
  }
  if (row_sum_a) row_sum_a->copy_(am.to(at::kFloat).sum(1));
}

std::tuple<at::Tensor, at::Tensor> linear_fwd_cuda(const at::Tensor& x, const at::Tensor& w,
                                                   const std::optional<at::Tensor>& bias,
                                                   std::optional<c10::string_view> activation) {
  check_linear_args("aigc_kernels::linear_fwd", x, w, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  const Act act = gemm::parse_act(activation);
  const int64_t m = x.size(0), n = w.size(0);
  auto y = at::empty({m, n}, x.options());
  auto z = act == Act::kNone ? x.new_empty({0}) : at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return {y, z};
  const at::Tensor* b = bias ? &*bias : nullptr;
  if (act == Act::kNone) {
    matmul(x, false, w, true, y, b, nullptr);
  } else if (act == Act::kGeluTanh && x.size(1) > 0 &&
             gemm::lt_matmul(x, false, w, true, y, Epilogue::kGeluAux, b, &z, nullptr)) {
    // one GEMM: cuBLASLt's GELU (tanh form) epilogue, storing the pre-activation as its aux output
  } else {
    matmul(x, false, w, true, z, b, nullptr);
    gemm::act_fwd(z, y, act);
  }
  return {y, z};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_bwd_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                              const at::Tensor& w, const at::Tensor& z,
                                                              std::optional<c10::string_view> activation,
                                                              bool has_bias) {
  check_linear_args("aigc_kernels::linear_bwd", x, w, std::nullopt);
  const c10::cuda::CUDAGuard guard(x.device());
  const Act act = gemm::parse_act(activation);
  at::Tensor dz = dy.contiguous();
  if (act != Act::kNone) {
    auto tmp = at::empty_like(dz);
    gemm::act_bwd(dz, z, tmp, act);
    dz = tmp;
  }
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto dw = at::empty_like(w, at::MemoryFormat::Contiguous);
  auto db = at::zeros({has_bias ? w.size(0) : 0}, x.options().dtype(at::kFloat));
  if (x.numel() == 0 || w.numel() == 0) {
    dx.zero_();
    dw.zero_();
    return {dx, dw, db};
  }
  matmul(dz, false, w, false, dx, nullptr, nullptr);                // dx = dz @ W
  matmul(dz, true, x.contiguous(), false, dw, nullptr, has_bias ? &db : nullptr);  // dW = dz^T @ x, db
  return {dx, dw, db};
}

// The FFN's first layer: (pre, h) with pre the (M, H) pre-activation, or gated the (M, 2H) [u | g]
// written by two GEMMs into its halves (no concatenated weight), and h (M, H) = act(pre) or act(g) * u.
std::pair<at::Tensor, at::Tensor> ffn_first_layer(const at::Tensor& x, const at::Tensor& w_in,
                                                  const std::optional<at::Tensor>& b_in, Act act,
                                                  const std::optional<at::Tensor>& w_gate,
                                                  const std::optional<at::Tensor>& b_gate) {
  const int64_t m = x.size(0), hidden = w_in.size(0);
  at::Tensor h = at::empty({m, hidden}, x.options()), pre;
  if (!w_gate) {
    pre = at::empty({m, hidden}, x.options());
    matmul(x, false, w_in, true, pre, b_in ? &*b_in : nullptr, nullptr);
    gemm::act_fwd(pre, h, act);
  } else {
    pre = at::empty({m, 2 * hidden}, x.options());
    auto u = pre.narrow(1, 0, hidden), g = pre.narrow(1, hidden, hidden);  // row stride 2H
    matmul(x, false, w_in, true, u, b_in ? &*b_in : nullptr, nullptr);
    matmul(x, false, *w_gate, true, g, b_gate ? &*b_gate : nullptr, nullptr);
    gemm::gated_fwd(pre, h, act);
  }
  return {pre, h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ffn_fwd_cuda(
    const at::Tensor& x, const at::Tensor& w_in, const std::optional<at::Tensor>& b_in, const at::Tensor& w_out,
    const std::optional<at::Tensor>& b_out, c10::string_view activation, const std::optional<at::Tensor>& w_gate,
    const std::optional<at::Tensor>& b_gate, bool save) {
  const char* op = "aigc_kernels::ffn_fwd";
  check_linear_args(op, x, w_in, b_in);
  check_gemm_operand(op, "w_out", w_out, x, 2);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto [pre, h] = ffn_first_layer(x, w_in, b_in, gemm::parse_act(activation), w_gate, b_gate);
  auto out = at::empty({x.size(0), w_out.size(0)}, x.options());
  matmul(h, false, w_out, true, out, b_out ? &*b_out : nullptr, nullptr);
  return {out, save ? pre : x.new_empty({0}), x.new_empty({0})};
}

std::vector<at::Tensor> ffn_bwd_cuda(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& w_in,
                                     const std::optional<at::Tensor>& b_in, const at::Tensor& w_out,
                                     c10::string_view activation, const std::optional<at::Tensor>& w_gate,
                                     const std::optional<at::Tensor>& b_gate, const at::Tensor& z1,
                                     const at::Tensor& /*z2*/, bool has_b_out) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Act act = gemm::parse_act(activation);
  const int64_t m = x.size(0), hidden = w_in.size(0);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor pre = z1;
  if (pre.numel() == 0 && m * hidden > 0) {  // recompute=True: the first layer again
    pre = ffn_first_layer(x, w_in, b_in, act, w_gate, b_gate).first;
  }
  const auto dout_c = dout.contiguous();
  auto dh = at::empty({m, hidden}, x.options());
  const bool fused_dgelu = !w_gate && act == Act::kGeluTanh;  // dh is not needed on its own then
  if (!fused_dgelu) matmul(dout_c, false, w_out, false, dh, nullptr, nullptr);  // dh = dout @ W_out
  auto h = at::empty({m, hidden}, x.options());
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto dw_out = at::empty_like(w_out, at::MemoryFormat::Contiguous);
  auto db_out = at::zeros({has_b_out ? w_out.size(0) : 0}, f32);
  auto db_in = at::zeros({b_in ? hidden : 0}, f32);
  auto db_gate = at::zeros({b_gate ? hidden : 0}, f32);
  auto dw_in = at::empty_like(w_in, at::MemoryFormat::Contiguous);
  at::Tensor dw_gate = x.new_empty({0});
  const auto xc = x.contiguous();
  if (!w_gate) {
    auto dz = at::empty_like(dh);
    // gelu_tanh (cuBLASLt's GELU): dz = (dout @ W_out) * gelu'(pre) in the GEMM's epilogue; the
    // other activations (and a missing cuBLASLt algorithm) take the elementwise pass.
    at::Tensor pre_c = pre.contiguous();
    if (!(act == Act::kGeluTanh &&
          gemm::lt_matmul(dout_c, false, w_out, false, dz, Epilogue::kDGeluAux, nullptr, &pre_c, nullptr))) {
      if (fused_dgelu) matmul(dout_c, false, w_out, false, dh, nullptr, nullptr);  // no algorithm: unfused
      gemm::act_bwd(dh, pre, dz, act);
    }
    gemm::act_fwd(pre, h, act);
    matmul(dz, false, w_in, false, dx, nullptr, nullptr);
    matmul(dz, true, xc, false, dw_in, nullptr, b_in ? &db_in : nullptr);
  } else {
    auto dudg = at::empty({m, 2 * hidden}, x.options());
    gemm::gated_bwd(dh, pre, dudg, act, &h);  // and h = act(g) * u for dW_out, in the same pass
    // Strided halves of [du | dg] (row stride 2H) as the A operands: no copies, no concatenated weight.
    const auto du = dudg.narrow(1, 0, hidden), dg = dudg.narrow(1, hidden, hidden);
    matmul(du, false, w_in, false, dx, nullptr, nullptr);                                   // dx = du W_in
    matmul(dg, false, *w_gate, false, dx, nullptr, nullptr, /*accumulate=*/true);           //    + dg W_gate
    dw_gate = at::empty_like(*w_gate, at::MemoryFormat::Contiguous);
    matmul(du, true, xc, false, dw_in, nullptr, b_in ? &db_in : nullptr);
    matmul(dg, true, xc, false, dw_gate, nullptr, b_gate ? &db_gate : nullptr);
  }
  matmul(dout_c, true, h, false, dw_out, nullptr, has_b_out ? &db_out : nullptr);  // dW_out = dout^T @ h
  return {dx, dw_in, db_in, dw_out, db_out, dw_gate, db_gate};
}

}  // namespace

TORCH_LIBRARY_IMPL(aigc_kernels, CUDA, m) {
  m.impl("linear_fwd", &linear_fwd_cuda);
  m.impl("linear_bwd", &linear_bwd_cuda);
  m.impl("ffn_fwd", &ffn_fwd_cuda);
  m.impl("ffn_bwd", &ffn_bwd_cuda);
}

}  // namespace aigc_kernels
