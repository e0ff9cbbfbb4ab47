// The KV cache append (decoding): the argument checks shared by the CPU and CUDA implementations,
// and the CUDA launcher (kvcache_append.cu), which assumes checked arguments and runs on the
// current stream.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace aigc_kernels {

// With block_table (int32 (B, max_pages)) the caches are paged, (num_pages, page_size, Hkv, D).
inline void check_kvcache_append_args(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                      const at::Tensor& k_new, const at::Tensor& v_new,
                                      const at::Tensor& cache_seqlens, const at::Tensor* block_table = nullptr) {
  const char* op = "aigc_kernels::kvcache_append";
  const bool paged = block_table != nullptr;
  TORCH_CHECK(k_cache.dim() == 4, op, ": expected k_cache of shape ",
              paged ? "(num_pages, page_size, Hkv, D)" : "(B, Hkv, Lmax, D)", ", got ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), op, ": expected v_cache of the same shape as k_cache ",
              k_cache.sizes(), ", got ", v_cache.sizes());
  const int64_t B = paged ? k_new.size(0) : k_cache.size(0), H = k_cache.size(paged ? 2 : 1), D = k_cache.size(3);
  TORCH_CHECK(k_new.dim() == 4 && k_new.size(0) == B && k_new.size(1) == H && k_new.size(3) == D, op,
              ": expected k_new of shape (", B, ", ", H, ", Lnew, ", D, "), got ", k_new.sizes());
  TORCH_CHECK(v_new.sizes() == k_new.sizes(), op, ": expected v_new of the same shape as k_new ",
              k_new.sizes(), ", got ", v_new.sizes());
  int64_t lmax = k_cache.size(2);
  if (paged) {
    TORCH_CHECK(block_table->dim() == 2 && block_table->size(0) == B && block_table->scalar_type() == at::kInt &&
                    block_table->device() == k_cache.device() && block_table->stride(1) == 1,
                op, ": expected block_table Int of shape (", B, ", max_pages) on ", k_cache.device(),
                " with unit stride along the pages, got ", block_table->scalar_type(), " ", block_table->sizes(),
                " on ", block_table->device(), " strides ", block_table->strides());
    TORCH_CHECK(k_cache.size(1) >= 1, op, ": expected page_size >= 1, got a cache ", k_cache.sizes());
    lmax = block_table->size(1) * k_cache.size(1);
  }
  TORCH_CHECK(k_new.size(2) <= lmax, op, ": Lnew = ", k_new.size(2), " new rows do not fit a cache of Lmax = ", lmax);
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

void kvcache_append_launch(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new,
                           const at::Tensor& v_new, const at::Tensor& cache_seqlens,
                           const at::Tensor* block_table = nullptr);

// The append with the rotary embedding inside: k_new rotated into the cache, v_new copied, q rotated into q_out
// (see kvcache_rotary_kernel). cos/sin (Lro, half): float32 or the caches' dtype, unit column stride.
inline void check_kvcache_rotary_args(const at::Tensor& k_new, const at::Tensor& q, const at::Tensor& cos,
                                      const at::Tensor& sin) {
  const char* op = "aigc_kernels::kvcache_append_rotary";
  const auto dt = k_new.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": expected float32, float16 or bfloat16 tensors, got ", dt);
  TORCH_CHECK(q.dim() == 4 && q.size(0) == k_new.size(0) && q.size(3) == k_new.size(3) && q.scalar_type() == dt &&
                  q.device() == k_new.device(),
              op, ": expected q (", k_new.size(0), ", Hq, Lq, ", k_new.size(3), ") of dtype ", dt, " on ",
              k_new.device(), ", got ", q.scalar_type(), " ", q.sizes(), " on ", q.device());
  TORCH_CHECK(cos.dim() == 2 && sin.sizes() == cos.sizes() && cos.size(1) >= 1 && 2 * cos.size(1) <= k_new.size(3),
              op, ": expected cos and sin of one shape (Lro, rotary_dim / 2) with 2 <= rotary_dim <= D = ",
              k_new.size(3), ", got ", cos.sizes(), " and ", sin.sizes());
  for (const at::Tensor* t : {&cos, &sin}) {
    TORCH_CHECK(t->scalar_type() == cos.scalar_type() && (t->scalar_type() == at::kFloat || t->scalar_type() == dt) &&
                    t->device() == k_new.device() && t->stride(1) == 1,
                op, ": expected cos/sin of one dtype, float32 or ", dt, ", on ", k_new.device(),
                " with unit column stride, got ", t->scalar_type(), " on ", t->device(), " strides ", t->strides());
  }
}

void kvcache_rotary_launch(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new,
                           const at::Tensor& v_new, const at::Tensor& cache_seqlens, const at::Tensor* block_table,
                           const at::Tensor& q, at::Tensor& q_out, const at::Tensor& cos, const at::Tensor& sin,
                           bool interleaved, bool causal);

}  // namespace aigc_kernels
