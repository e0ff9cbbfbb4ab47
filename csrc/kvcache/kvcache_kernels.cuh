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

template <typename Word>
__global__ void kvcache_append_kernel(Word* __restrict__ k_cache, Word* __restrict__ v_cache,
                                      const Word* __restrict__ k_new, const Word* __restrict__ v_new,
                                      const int32_t* __restrict__ cache_seqlens, Strides4 kc, Strides4 vc,
                                      Strides4 kn, Strides4 vn, int64_t heads, int64_t lnew, int64_t lmax,
                                      int64_t words_per_row, int64_t rows) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t i = row % lnew;
    const int64_t h = (row / lnew) % heads;
    const int64_t b = row / (lnew * heads);
    const int64_t pos = static_cast<int64_t>(cache_seqlens[b]) + i;
    // Out-of-range appends are a caller bug, reported like torch's own index kernels do.
    CUDA_KERNEL_ASSERT(pos >= 0 && pos < lmax && "kvcache_append: cache_seqlens + Lnew exceeds Lmax");
    Word* kd = k_cache + b * kc.s[0] + h * kc.s[1] + pos * kc.s[2];
    Word* vd = v_cache + b * vc.s[0] + h * vc.s[1] + pos * vc.s[2];
    const Word* ks = k_new + b * kn.s[0] + h * kn.s[1] + i * kn.s[2];
    const Word* vs = v_new + b * vn.s[0] + h * vn.s[1] + i * vn.s[2];
    for (int64_t w = threadIdx.x; w < words_per_row; w += blockDim.x) {
      kd[w * kc.s[3]] = ks[w * kn.s[3]];
      vd[w * vc.s[3]] = vs[w * vn.s[3]];
    }
  }
}

}  // namespace aigc_kernels
