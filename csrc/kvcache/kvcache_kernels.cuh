// The KV-cache append kernel: rows of k_new/v_new copied into the caches at per-batch offsets,
// as Word-sized units (16-byte vectors or single elements) through the strides. Launched from
// kvcache_append.cu; also run on the CPU by tests/emulation/kvcache_emulate.cpp (csrc/emulate.h).
#pragma once
#ifdef AIGC_EMULATE
#include "../emulate.h"
#else
#include <c10/macros/Macros.h>
#endif
#include <cstdint>

namespace aigc_kernels {

struct Strides4 {
  int64_t s[4];
};

// Paged caches (block_table non-null, int32 (B, max_pages), bt_stride apart): row pos of batch b goes to slot
// pos % page_size of page block_table[b, pos / page_size]; the cache strides are then {page, head, slot, word}.
// A page id outside [0, num_pages) (a bad table: validation reads host tables only) is skipped, never written.
template <typename Word>
__global__ void kvcache_append_kernel(Word* __restrict__ k_cache, Word* __restrict__ v_cache,
                                      const Word* __restrict__ k_new, const Word* __restrict__ v_new,
                                      const int32_t* __restrict__ cache_seqlens, Strides4 kc, Strides4 vc,
                                      Strides4 kn, Strides4 vn, int64_t heads, int64_t lnew, int64_t lmax,
                                      int64_t words_per_row, int64_t rows,
                                      const int32_t* __restrict__ block_table = nullptr, int64_t bt_stride = 0,
                                      int64_t page_size = 1, int64_t num_pages = 0) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t i = row % lnew;
    const int64_t h = (row / lnew) % heads;
    const int64_t b = row / (lnew * heads);
    const int64_t pos = static_cast<int64_t>(cache_seqlens[b]) + i;
    // Out-of-range appends are a caller bug, reported like torch's own index kernels do.
    CUDA_KERNEL_ASSERT(pos >= 0 && pos < lmax && "kvcache_append: cache_seqlens + Lnew exceeds Lmax");
    int64_t kd_off = b * kc.s[0] + pos * kc.s[2], vd_off = b * vc.s[0] + pos * vc.s[2];
    if (block_table != nullptr) {
      const int64_t page = block_table[b * bt_stride + pos / page_size];
      if (page < 0 || page >= num_pages) continue;
      kd_off = page * kc.s[0] + (pos % page_size) * kc.s[2];
      vd_off = page * vc.s[0] + (pos % page_size) * vc.s[2];
    }
    Word* kd = k_cache + kd_off + h * kc.s[1];
    Word* vd = v_cache + vd_off + h * vc.s[1];
    const Word* ks = k_new + b * kn.s[0] + h * kn.s[1] + i * kn.s[2];
    const Word* vs = v_new + b * vn.s[0] + h * vn.s[1] + i * vn.s[2];
    for (int64_t w = threadIdx.x; w < words_per_row; w += blockDim.x) {
      kd[w * kc.s[3]] = ks[w * kn.s[3]];
      vd[w * vc.s[3]] = vs[w * vn.s[3]];
    }
  }
}

}  // namespace aigc_kernels
