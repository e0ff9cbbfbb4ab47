// Host side of kvcache_append: checks, device guard, the launcher (CUDA); and a CPU implementation,
// so the schema, the fake impl and opcheck run end to end on machines without a GPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kvcache/kvcache.h"

namespace aigc_kernels {
namespace {

void kvcache_append_cuda(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k_new,
                         const at::Tensor& v_new, const at::Tensor& cache_seqlens,
                         const std::optional<at::Tensor>& block_table) {
  const at::Tensor* bt = block_table.has_value() ? &*block_table : nullptr;
  check_kvcache_append_args(k_cache, v_cache, k_new, v_new, cache_seqlens, bt);
  TORCH_CHECK(k_cache.is_cuda(), "aigc_kernels::kvcache_append: expected CUDA tensors, got ", k_cache.device());
  const c10::cuda::CUDAGuard guard(k_cache.device());
  if (k_new.numel() == 0) return;
  kvcache_append_launch(k_cache, v_cache, k_new, v_new, cache_seqlens, bt);
}

void kvcache_append_cpu(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k_new,
                        const at::Tensor& v_new, const at::Tensor& cache_seqlens,
                        const std::optional<at::Tensor>& block_table) {
  check_kvcache_append_args(k_cache, v_cache, k_new, v_new, cache_seqlens,
                            block_table.has_value() ? &*block_table : nullptr);
  const auto lens = cache_seqlens.accessor<int32_t, 1>();
  if (block_table.has_value()) {  // paged: row t of batch b in page block_table[b, t / page_size]
    const auto bt = block_table->accessor<int32_t, 2>();
    const int64_t page = k_cache.size(1), num_pages = k_cache.size(0), width = block_table->size(1);
    for (int64_t b = 0; b < k_new.size(0); ++b) {
      for (int64_t i = 0; i < k_new.size(2); ++i) {
        const int64_t t = static_cast<int64_t>(lens[b]) + i;
        TORCH_CHECK(t >= 0 && t < width * page, "aigc_kernels::kvcache_append: batch ", b, " row ", t,
                    " is outside its block table (", width, " pages of ", page, ")");
        const int64_t pg = bt[b][t / page];
        TORCH_CHECK(pg >= 0 && pg < num_pages, "aigc_kernels::kvcache_append: batch ", b, " row ", t,
                    " names page ", pg, ", outside [0, ", num_pages, ")");
        k_cache[pg][t % page].copy_(k_new[b].select(1, i));
        v_cache[pg][t % page].copy_(v_new[b].select(1, i));
      }
    }
    return;
  }
  const int64_t lnew = k_new.size(2), lmax = k_cache.size(2);
  for (int64_t b = 0; b < k_cache.size(0); ++b) {
    const int64_t start = lens[b];
    TORCH_CHECK(start >= 0 && start + lnew <= lmax, "aigc_kernels::kvcache_append: batch ", b,
                " has cache_seqlens = ", start, "; appending ", lnew, " rows needs 0 <= cache_seqlens <= ",
                lmax - lnew, " (Lmax = ", lmax, ")");
    k_cache[b].narrow(1, start, lnew).copy_(k_new[b]);
    v_cache[b].narrow(1, start, lnew).copy_(v_new[b]);
  }
}

at::Tensor kvcache_append_rotary_cuda(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k_new,
                                      const at::Tensor& v_new, const at::Tensor& cache_seqlens,
                                      const std::optional<at::Tensor>& block_table, const at::Tensor& q,
                                      const at::Tensor& cos, const at::Tensor& sin, bool interleaved, bool causal) {
  const at::Tensor* bt = block_table.has_value() ? &*block_table : nullptr;
  check_kvcache_append_args(k_cache, v_cache, k_new, v_new, cache_seqlens, bt);
  check_kvcache_rotary_args(k_new, q, cos, sin);
  TORCH_CHECK(k_cache.is_cuda(), "aigc_kernels::kvcache_append_rotary: expected CUDA tensors, got ",
              k_cache.device());
  const c10::cuda::CUDAGuard guard(k_cache.device());
  at::Tensor q_out = at::empty_like(q, at::MemoryFormat::Contiguous);
  kvcache_rotary_launch(k_cache, v_cache, k_new, v_new, cache_seqlens, bt, q, q_out, cos, sin, interleaved, causal);
  return q_out;
}

// x (B, H, L, D) rotated at positions pos (B, L) (int64) by the first half columns of cos/sin, in float32.
at::Tensor rotate_rows_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& pos,
                           bool interleaved) {
  const int64_t half = cos.size(1), b = x.size(0), l = x.size(2);
  TORCH_CHECK(pos.numel() == 0 || (pos.min().item<int64_t>() >= 0 && pos.max().item<int64_t>() < cos.size(0)),
              "aigc_kernels::kvcache_append_rotary: a position is past rotary_cos's ", cos.size(0), " rows");
  const at::Tensor c = cos.index_select(0, pos.flatten()).to(at::kFloat).view({b, 1, l, half});
  const at::Tensor s = sin.index_select(0, pos.flatten()).to(at::kFloat).view({b, 1, l, half});
  const at::Tensor r = x.narrow(3, 0, 2 * half).to(at::kFloat);
  const at::Tensor pairs = interleaved ? r.unflatten(3, {half, 2}) : r.unflatten(3, {2, half});
  const at::Tensor x1 = pairs.select(interleaved ? 4 : 3, 0), x2 = pairs.select(interleaved ? 4 : 3, 1);
  const at::Tensor o1 = x1 * c - x2 * s, o2 = x1 * s + x2 * c;
  at::Tensor out = x.contiguous().clone();
  out.narrow(3, 0, 2 * half).copy_(at::stack({o1, o2}, interleaved ? 4 : 3).flatten(3));
  return out;
}

at::Tensor kvcache_append_rotary_cpu(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k_new,
                                     const at::Tensor& v_new, const at::Tensor& cache_seqlens,
                                     const std::optional<at::Tensor>& block_table, const at::Tensor& q,
                                     const at::Tensor& cos, const at::Tensor& sin, bool interleaved, bool causal) {
  check_kvcache_append_args(k_cache, v_cache, k_new, v_new, cache_seqlens,
                            block_table.has_value() ? &*block_table : nullptr);
  check_kvcache_rotary_args(k_new, q, cos, sin);
  const at::Tensor start = cache_seqlens.to(at::kLong).unsqueeze(1);
  const at::Tensor pos_k = start + at::arange(k_new.size(2), start.options());
  const at::Tensor pos_q = causal ? start + at::arange(q.size(2), start.options()) : start.expand({-1, q.size(2)});
  kvcache_append_cpu(k_cache, v_cache, rotate_rows_cpu(k_new, cos, sin, pos_k, interleaved), v_new, cache_seqlens,
                     block_table);
  return rotate_rows_cpu(q, cos, sin, pos_q.contiguous(), interleaved);
}

}  // namespace

TORCH_LIBRARY_IMPL(aigc_kernels, CUDA, m) {
  m.impl("kvcache_append", &kvcache_append_cuda);
  m.impl("kvcache_append_rotary", &kvcache_append_rotary_cuda);
}
TORCH_LIBRARY_IMPL(aigc_kernels, CPU, m) {
  m.impl("kvcache_append", &kvcache_append_cpu);
  m.impl("kvcache_append_rotary", &kvcache_append_rotary_cpu);
}

}  // namespace aigc_kernels
