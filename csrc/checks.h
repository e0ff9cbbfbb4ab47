// Argument checks shared by the CPU and CUDA registrations. Every message says what was
// expected and what was given.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace aigc_kernels {

inline void check_kvcache_append_args(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                      const at::Tensor& k_new, const at::Tensor& v_new,
                                      const at::Tensor& cache_seqlens) {
  const char* op = "aigc_kernels::kvcache_append";
  TORCH_CHECK(k_cache.dim() == 4, op, ": expected k_cache of shape (B, Hkv, Lmax, D), got ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), op, ": expected v_cache of the same shape as k_cache ",
              k_cache.sizes(), ", got ", v_cache.sizes());
  const int64_t B = k_cache.size(0), H = k_cache.size(1), D = k_cache.size(3);
  TORCH_CHECK(k_new.dim() == 4 && k_new.size(0) == B && k_new.size(1) == H && k_new.size(3) == D, op,
              ": expected k_new of shape (", B, ", ", H, ", Lnew, ", D, "), got ", k_new.sizes());
  TORCH_CHECK(v_new.sizes() == k_new.sizes(), op, ": expected v_new of the same shape as k_new ",
              k_new.sizes(), ", got ", v_new.sizes());
  TORCH_CHECK(k_new.size(2) <= k_cache.size(2), op, ": Lnew = ", k_new.size(2),
              " new rows do not fit a cache of Lmax = ", k_cache.size(2));
  for (const at::Tensor* t : {&v_cache, &k_new, &v_new}) {
    TORCH_CHECK(t->scalar_type() == k_cache.scalar_type(), op, ": expected every tensor in dtype ",
                k_cache.scalar_type(), " (k_cache's), got ", t->scalar_type());
    TORCH_CHECK(t->device() == k_cache.device(), op, ": expected every tensor on ", k_cache.device(),
                " (k_cache's device), got ", t->device());
  }
  TORCH_CHECK(cache_seqlens.dim() == 1 && cache_seqlens.size(0) == B, op,
              ": expected cache_seqlens of shape (", B, ",), got ", cache_seqlens.sizes());
  TORCH_CHECK(cache_seqlens.scalar_type() == at::kInt, op, ": expected cache_seqlens of dtype int32, got ",
              cache_seqlens.scalar_type());
  TORCH_CHECK(cache_seqlens.device() == k_cache.device(), op, ": expected cache_seqlens on ",
              k_cache.device(), ", got ", cache_seqlens.device());
}

// norm_fwd / norm_bwd: (rows, cols) activations with unit column stride, params (cols,).
inline void check_norm_matrix(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 2 && t.sizes() == like.sizes(), op, ": expected ", name, " of shape ", like.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": expected ", name, " of dtype ", like.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": expected ", name, " on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, op, ": expected ", name,
              " with contiguous rows (stride(1) == 1), got strides ", t.strides());
}

inline void check_norm_param(const char* op, const char* name, const at::Tensor& p, const at::Tensor& x) {
  TORCH_CHECK(p.dim() == 1 && p.size(0) == x.size(1), op, ": expected ", name, " of shape (", x.size(1),
              ",), got ", p.sizes());
  TORCH_CHECK(p.scalar_type() == x.scalar_type() || p.scalar_type() == at::kFloat, op, ": expected ", name,
              " in x's dtype ", x.scalar_type(), " or Float, got ", p.scalar_type());
  TORCH_CHECK(p.device() == x.device(), op, ": expected ", name, " on ", x.device(), ", got ", p.device());
  TORCH_CHECK(p.is_contiguous(), op, ": expected ", name, " contiguous");
}

inline void check_norm_fwd_args(const at::Tensor& x, const std::optional<at::Tensor>& weight,
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

// linear_fwd / ffn_fwd: activations (M, K) and weights in nn.Linear layout, one dtype, one device.
inline void check_gemm_operand(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                               int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": expected ", name, " to be ", dim, "-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": expected ", name, " of dtype ", x.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": expected ", name, " on ", x.device(), ", got ", t.device());
}

inline void check_linear_args(const char* op, const at::Tensor& x, const at::Tensor& w,
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

}  // namespace aigc_kernels
