// Append k_new/v_new into the KV caches at per-batch offsets: a strided row copy.
//
// The copy is dtype-agnostic: rows move as 16-byte vectors when the last dim is contiguous and
// every row start is 16-byte aligned, else element by element through the strides.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/macros/Macros.h>

#include <cstdint>

#include "kvcache.h"
#include "kvcache_kernels.cuh"

namespace aigc_kernels {
namespace {

inline Strides4 strides_of(const at::Tensor& t, int64_t elems_per_word, bool paged = false) {
  // Strides in units of the copied word; callers guarantee divisibility for the vector path. A paged cache
  // (num_pages, page_size, Hkv, D) as {page, head, slot, word}: the kernel's {batch, head, row, word} roles.
  const int64_t h = paged ? 2 : 1, r = paged ? 1 : 2;
  return {{t.stride(0) / elems_per_word, t.stride(h) / elems_per_word, t.stride(r) / elems_per_word,
           t.stride(3)}};
}

bool vectorizable(const at::Tensor& t, int64_t elems_per_vec) {
  const auto ptr = reinterpret_cast<uintptr_t>(t.data_ptr());
  return t.stride(3) == 1 && t.size(3) % elems_per_vec == 0 && t.stride(0) % elems_per_vec == 0 &&
         t.stride(1) % elems_per_vec == 0 && t.stride(2) % elems_per_vec == 0 && ptr % 16 == 0;
}

template <typename Word>
void launch(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
            const at::Tensor& cache_seqlens, int64_t elems_per_word, const at::Tensor* block_table) {
  const bool paged = block_table != nullptr;
  const int64_t heads = k_new.size(1), lnew = k_new.size(2);
  const int64_t lmax = paged ? block_table->size(1) * k_cache.size(1) : k_cache.size(2);
  const int64_t rows = k_new.size(0) * heads * lnew;
  const int64_t words_per_row = k_new.size(3) / elems_per_word;
  const int threads = words_per_row >= 128 ? 128 : 32 * static_cast<int>((words_per_row + 31) / 32);
  const int blocks = static_cast<int>(rows < 65536 ? rows : 65536);
  auto stream = at::cuda::getCurrentCUDAStream();
  kvcache_append_kernel<Word><<<blocks, threads, 0, stream>>>(
      static_cast<Word*>(k_cache.data_ptr()), static_cast<Word*>(v_cache.data_ptr()),
      static_cast<const Word*>(k_new.data_ptr()), static_cast<const Word*>(v_new.data_ptr()),
      cache_seqlens.data_ptr<int32_t>(), strides_of(k_cache, elems_per_word, paged),
      strides_of(v_cache, elems_per_word, paged), strides_of(k_new, elems_per_word), strides_of(v_new, elems_per_word),
      heads, lnew, lmax, words_per_row, rows, paged ? block_table->data_ptr<int32_t>() : nullptr,
      paged ? block_table->stride(0) : 0, paged ? k_cache.size(1) : 1, paged ? k_cache.size(0) : 0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void kvcache_append_launch(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new,
                           const at::Tensor& v_new, const at::Tensor& cache_seqlens, const at::Tensor* block_table) {
  const int64_t esize = k_cache.element_size();
  const int64_t per_vec = 16 / esize;
  const bool vec = 16 % esize == 0 && vectorizable(k_cache, per_vec) && vectorizable(v_cache, per_vec) &&
                   vectorizable(k_new, per_vec) && vectorizable(v_new, per_vec);
  if (vec) {
    launch<uint4>(k_cache, v_cache, k_new, v_new, cache_seqlens, per_vec, block_table);
    return;
  }
  switch (esize) {
    case 1: launch<uint8_t>(k_cache, v_cache, k_new, v_new, cache_seqlens, 1, block_table); break;
    case 2: launch<uint16_t>(k_cache, v_cache, k_new, v_new, cache_seqlens, 1, block_table); break;
    case 4: launch<uint32_t>(k_cache, v_cache, k_new, v_new, cache_seqlens, 1, block_table); break;
    case 8: launch<uint64_t>(k_cache, v_cache, k_new, v_new, cache_seqlens, 1, block_table); break;
    default: TORCH_CHECK(false, "aigc_kernels::kvcache_append: unsupported element size ", esize, " bytes");
  }
}

}  // namespace aigc_kernels
