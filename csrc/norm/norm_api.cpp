// Host side of norm_fwd / norm_bwd (LayerNorm, RMSNorm): argument checks, device guard, the
// vector width, then the launchers of norm.h.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "norm/norm.h"

namespace aigc_kernels {
namespace {

// norm_fwd / norm_bwd: (rows, cols) activations with unit column stride, params (cols,).
void check_norm_matrix(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 2 && t.sizes() == like.sizes(), op, ": expected ", name, " of shape ", like.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": expected ", name, " of dtype ", like.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": expected ", name, " on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, op, ": expected ", name,
              " with contiguous rows (stride(1) == 1), got strides ", t.strides());
}

void check_norm_param(const char* op, const char* name, const at::Tensor& p, const at::Tensor& x) {
  TORCH_CHECK(p.dim() == 1 && p.size(0) == x.size(1), op, ": expected ", name, " of shape (", x.size(1),
              ",), got ", p.sizes());
  TORCH_CHECK(p.scalar_type() == x.scalar_type() || p.scalar_type() == at::kFloat, op, ": expected ", name,
              " in x's dtype ", x.scalar_type(), " or Float, got ", p.scalar_type());
  TORCH_CHECK(p.device() == x.device(), op, ": expected ", name, " on ", x.device(), ", got ", p.device());
  TORCH_CHECK(p.is_contiguous(), op, ": expected ", name, " contiguous");
}

void check_norm_fwd_args(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual) {
  const char* op = "aigc_kernels::norm_fwd";
  TORCH_CHECK(x.dim() == 2, op, ": expected x of shape (rows, cols), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              op, ": expected x of dtype Float, Half or BFloat16, got ", x.scalar_type());
  check_norm_matrix(op, "x", x, x);
  if (residual) check_norm_matrix(op, "residual", *residual, x);
  if (weight) check_norm_param(op, "weight", *weight, x);
  if (bias) check_norm_param(op, "bias", *bias, x);
  if (weight && bias) {
    TORCH_CHECK(weight->scalar_type() == bias->scalar_type(), op, ": expected weight and bias of one dtype, got ",
                weight->scalar_type(), " and ", bias->scalar_type());
  }
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

// The backward's grid: SMs x k CTAs, k = the bytes HBM needs in flight (Little's law, ~2 MiB on an H100) over one
// row's bytes per SM, rounded down, 1 to max_per_sm -- enough rows in flight, and no more float32 partial-gradient
// rows than that (aigc_kernels/contracts/tables.py's norm_bwd_grid says why; a test holds the two equal).
constexpr int64_t kNormBwdBytesInFlight = int64_t{2} << 20;

int64_t norm_bwd_grid(int64_t rows, int64_t row_bytes, int sms, int max_per_sm) {
  const int64_t per_sm = std::clamp<int64_t>(kNormBwdBytesInFlight / std::max<int64_t>(row_bytes, 1) / sms, 1,
                                             max_per_sm);
  return std::max<int64_t>(1, std::min<int64_t>(rows, per_sm * sms));
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
  const int64_t row_bytes = cols * xs.element_size() * (ds ? 4 : 3);  // xs, dy, dx (+ ds) of one row
  const int64_t grid = norm_bwd_grid(rows, row_bytes, sms, /*max_per_sm=*/2);
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

}  // namespace

TORCH_LIBRARY_IMPL(aigc_kernels, CUDA, m) {
  m.impl("norm_fwd", &norm_fwd_cuda);
  m.impl("norm_bwd", &norm_bwd_cuda);
}

}  // namespace aigc_kernels
