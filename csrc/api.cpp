// Host side of the CUDA ops: argument checks, device guard, then the launchers in kernels.h.
#include <ATen/cuda/CUDAContext.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <ATen/ATen.h>
#include <optional>

#include <tuple>

#include "checks.h"
#include "gemm/gemm.h"
#include "kernels.h"
#include "norm/norm.h"

namespace aigc_kernels {
namespace {

void kvcache_append_cuda(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k_new,
                         const at::Tensor& v_new, const at::Tensor& cache_seqlens) {
  check_kvcache_append_args(k_cache, v_cache, k_new, v_new, cache_seqlens);
  TORCH_CHECK(k_cache.is_cuda(), "aigc_kernels::kvcache_append: expected CUDA tensors, got ", k_cache.device());
  const c10::cuda::CUDAGuard guard(k_cache.device());
  if (k_new.numel() == 0) return;
  kvcache_append_launch(k_cache, v_cache, k_new, v_new, cache_seqlens);
}

// 16-byte vectors need every row start aligned: pointers, row strides and cols multiples of
// the vector; weight/bias (dtype W) aligned to their own vector size.
bool aligned(const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

int norm_vec(const at::Tensor& x, std::initializer_list<const at::Tensor*> mats,
             std::initializer_list<const at::Tensor*> params) {
  const int64_t vec = 16 / x.element_size();
  if (x.size(1) % vec != 0) return 1;
  for (const at::Tensor* t : mats) {
    if (t == nullptr) continue;
    if (!aligned(t->data_ptr(), 16) || (t->size(0) > 1 && t->stride(0) % vec != 0)) return 1;
  }
  for (const at::Tensor* t : params) {
    if (t != nullptr && !aligned(t->data_ptr(), vec * t->element_size())) return 1;
  }
  return static_cast<int>(vec);
}

template <typename Fn>
void dispatch_norm(at::ScalarType t, at::ScalarType w, Fn&& fn) {
  // fn.template operator()<T, W>() for the (activation, parameter) dtype pair.
  if (t == at::kFloat) {
    fn(float{}, float{});
  } else if (t == at::kHalf) {
    if (w == at::kFloat) fn(__half{}, float{}); else fn(__half{}, __half{});
  } else {
    if (w == at::kFloat) fn(__nv_bfloat16{}, float{}); else fn(__nv_bfloat16{}, __nv_bfloat16{});
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_fwd_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, double eps, bool is_rms) {
  check_norm_fwd_args(x, weight, bias, residual);
  TORCH_CHECK(x.is_cuda(), "aigc_kernels::norm_fwd: expected CUDA tensors, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  const bool has_res = residual.has_value();
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto s = has_res ? at::empty_like(x, at::MemoryFormat::Contiguous) : x.new_empty({0});
  auto f32 = x.options().dtype(at::kFloat);
  auto mean = at::empty({is_rms ? 0 : rows}, f32);
  auto rstd = at::empty({rows}, f32);
  if (rows == 0 || cols == 0) return {y, s, mean, rstd};
  norm::FwdParams p{};
  p.x = x.data_ptr();
  p.res = has_res ? residual->data_ptr() : nullptr;
  p.w = weight ? weight->data_ptr() : nullptr;
  p.b = bias ? bias->data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.s = has_res ? s.data_ptr() : nullptr;
  p.mean = is_rms ? nullptr : mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.stride_x = x.stride(0);
  p.stride_res = has_res ? residual->stride(0) : 0;
  p.stride_y = y.stride(0);
  p.stride_s = has_res ? s.stride(0) : 0;
  p.rows = rows;
  p.cols = cols;
  p.eps = static_cast<float>(eps);
  p.rms = is_rms;
  p.has_res = p.store_s = has_res;
  p.has_w = weight.has_value();
  p.has_b = bias.has_value();
  const at::Tensor* w = weight ? &*weight : (bias ? &*bias : nullptr);
  const at::Tensor* b = bias ? &*bias : nullptr;
  const int vec = norm_vec(x, {&x, &y, has_res ? &*residual : nullptr, has_res ? &s : nullptr}, {w, b});
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_norm(x.scalar_type(), w ? w->scalar_type() : x.scalar_type(), [&](auto t, auto wt) {
    norm::launch_fwd<decltype(t), decltype(wt)>(p, vec, stream);
  });
  return {y, s, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_bwd_cuda(
    const at::Tensor& dy, const std::optional<at::Tensor>& ds, const at::Tensor& xs,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& rstd, bool has_bias,
    bool is_rms) {
  const char* op = "aigc_kernels::norm_bwd";
  check_norm_fwd_args(xs, weight, std::nullopt, std::nullopt);
  check_norm_matrix(op, "dy", dy, xs);
  if (ds) check_norm_matrix(op, "ds", *ds, xs);
  const int64_t rows = xs.size(0), cols = xs.size(1);
  TORCH_CHECK(rstd.dim() == 1 && rstd.size(0) == rows && rstd.scalar_type() == at::kFloat, op,
              ": expected rstd of shape (", rows, ",) and dtype Float, got ", rstd.sizes(), " ", rstd.scalar_type());
  TORCH_CHECK(is_rms || (mean.dim() == 1 && mean.size(0) == rows && mean.scalar_type() == at::kFloat), op,
              ": expected mean of shape (", rows, ",) and dtype Float, got ", mean.sizes(), " ", mean.scalar_type());
  TORCH_CHECK(xs.is_cuda(), op, ": expected CUDA tensors, got ", xs.device());
  const c10::cuda::CUDAGuard guard(xs.device());
  auto dx = at::empty_like(xs, at::MemoryFormat::Contiguous);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(rows, 2 * sms));
  auto f32 = xs.options().dtype(at::kFloat);
  const bool has_w = weight.has_value();
  auto dw_part = has_w ? at::zeros({grid, cols}, f32) : at::empty({0}, f32);
  auto db_part = has_bias ? at::zeros({grid, cols}, f32) : at::empty({0}, f32);
  if (rows > 0 && cols > 0) {
    norm::BwdParams p{};
    p.dy = dy.data_ptr();
    p.ds = ds ? ds->data_ptr() : nullptr;
    p.xs = xs.data_ptr();
    p.w = has_w ? weight->data_ptr() : nullptr;
    p.mean = is_rms ? nullptr : mean.data_ptr<float>();
    p.rstd = rstd.data_ptr<float>();
    p.dx = dx.data_ptr();
    p.dw_part = has_w ? dw_part.data_ptr<float>() : nullptr;
    p.db_part = has_bias ? db_part.data_ptr<float>() : nullptr;
    p.stride_dy = dy.stride(0);
    p.stride_ds = ds ? ds->stride(0) : 0;
    p.stride_xs = xs.stride(0);
    p.stride_dx = dx.stride(0);
    p.rows = rows;
    p.cols = cols;
    p.rms = is_rms;
    p.has_ds = ds.has_value();
    p.has_w = has_w;
    p.has_b = has_bias;
    const int vec = norm_vec(xs, {&xs, &dy, &dx, ds ? &*ds : nullptr}, {has_w ? &*weight : nullptr});
    auto stream = at::cuda::getCurrentCUDAStream();
    dispatch_norm(xs.scalar_type(), has_w ? weight->scalar_type() : xs.scalar_type(), [&](auto t, auto wt) {
      norm::launch_bwd<decltype(t), decltype(wt)>(p, vec, static_cast<int>(grid), stream);
    });
  }
  // Second pass of the deterministic reduction: a fixed-order sum over the partial rows.
  auto dw = has_w ? dw_part.sum(0) : dw_part;
  auto db = has_bias ? db_part.sum(0) : db_part;
  return {dx, dw, db};
}

// ---------------------------------------------------------------------------------------------
// linear and FFN: cuBLASLt GEMMs (bias and GELU-with-aux epilogues, bias gradients from the
// weight-gradient GEMM) plus the elementwise kernels in gemm/act_kernels.cu for the rest.
// When cuBLASLt has no algorithm for a request, the same product runs through at::mm (cuBLAS).
// ---------------------------------------------------------------------------------------------
using gemm::Act;
using gemm::Epilogue;

// out = A @ B (+ bias); A is x (M, K) or, a_t, stored (K, M); B is (K, N) or, b_t, stored (N, K).
void matmul(const at::Tensor& a, bool a_t, const at::Tensor& b, bool b_t, at::Tensor& out,
            const at::Tensor* bias, at::Tensor* row_sum_a) {
  const Epilogue epi = row_sum_a ? Epilogue::kRowSumA : (bias ? Epilogue::kBias : Epilogue::kDefault);
  if (gemm::lt_matmul(a, a_t, b, b_t, out, epi, bias, nullptr, row_sum_a)) return;
  const at::Tensor am = a_t ? a.t() : a, bm = b_t ? b.t() : b;
  if (bias) {
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
// of one GEMM over [W_in; W_gate], and h (M, H) = act(pre) or act(g) * u.
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
    const auto w_cat = at::cat({w_in, *w_gate}, 0);
    std::optional<at::Tensor> b_cat;
    if (b_in || b_gate) {
      b_cat = at::cat({b_in ? *b_in : at::zeros({hidden}, x.options()),
                       b_gate ? *b_gate : at::zeros({hidden}, x.options())});
    }
    pre = at::empty({m, 2 * hidden}, x.options());
    matmul(x, false, w_cat, true, pre, b_cat ? &*b_cat : nullptr, nullptr);
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
    gemm::gated_bwd(dh, pre, dudg, act);
    gemm::gated_fwd(pre, h, act);
    matmul(dudg, false, at::cat({w_in, *w_gate}, 0), false, dx, nullptr, nullptr);
    dw_gate = at::empty_like(*w_gate, at::MemoryFormat::Contiguous);
    // Strided halves of [du | dg] (row stride 2H) as the A operands: no copies.
    matmul(dudg.narrow(1, 0, hidden), true, xc, false, dw_in, nullptr, b_in ? &db_in : nullptr);
    matmul(dudg.narrow(1, hidden, hidden), true, xc, false, dw_gate, nullptr, b_gate ? &db_gate : nullptr);
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
  m.impl("kvcache_append", &kvcache_append_cuda);
  m.impl("norm_fwd", &norm_fwd_cuda);
  m.impl("norm_bwd", &norm_bwd_cuda);
}

}  // namespace aigc_kernels
