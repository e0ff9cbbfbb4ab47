// The rotary kernel: p.tpr threads per token row of one head (blockDim.x / p.tpr rows a block), VEC rotary
// pairs per thread.
// Included by rotary.cu; also run on the CPU by tests/emulation/rotary_emulate.cpp (csrc/emulate.h).
//
// GPT-NeoX (half-split) pairs features (i, i + half): a thread reads VEC consecutive elements of each half;
// GPT-J (interleaved) pairs (2i, 2i + 1): a thread reads 2 * VEC consecutive elements. With VEC > 1 every
// access is one aligned vector (the launcher checks the alignment) and a warp's accesses are consecutive,
// so x is read once and out written once in full sectors; cos/sin rows are read once per (row, head) from
// L2. Arithmetic in float32.
#pragma once
#include <cstdint>

#include "../launch.h"
#include "../vec.cuh"
#include "rotary.h"

namespace aigc_kernels {
namespace rotary {

// T: x/out; C: cos/sin; P: positions. No __restrict__: out is x in place.
template <typename T, typename C, typename P, bool INTERLEAVED, int VEC>
__global__ void rotary_kernel(Params p) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const C* cos_t = static_cast<const C*>(p.cos);
  const C* sin_t = static_cast<const C*>(p.sin);
  const P* pos_t = static_cast<const P*>(p.pos);
  const int64_t rows = p.B * p.H * p.L, vecs = p.half / VEC;
  const int lane = static_cast<int>(threadIdx.x) % p.tpr, rows_per_block = static_cast<int>(blockDim.x) / p.tpr;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block + static_cast<int>(threadIdx.x) / p.tpr;
       row < rows; row += static_cast<int64_t>(gridDim.x) * rows_per_block) {
    const int64_t l = row % p.L, bh = row / p.L;
    const int64_t h = bh % p.H, b = bh / p.H;
    const int64_t pos = pos_t == nullptr ? l : static_cast<int64_t>(pos_t[b * p.pos_sb + l * p.pos_sl]);
    // An out-of-range position is a caller bug, reported like torch's own index kernels do.
    CUDA_KERNEL_ASSERT(pos >= 0 && pos < p.lmax && "rotary: a position is outside [0, Lmax) (cos/sin rows)");
    const T* xr = x + b * p.x_sb + h * p.x_sh + l * p.x_sl;
    T* orow = out + b * p.o_sb + h * p.o_sh + l * p.o_sl;
    const C* cr = cos_t + pos * p.cos_s;
    const C* sr = sin_t + pos * p.sin_s;
    for (int64_t v = lane; v < vecs; v += p.tpr) {
      const int64_t i = v * VEC;
      float c[VEC], s[VEC];
      load<C, VEC>(cr + i, c);
      load<C, VEC>(sr + i, s);
      if (p.conj) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) s[j] = -s[j];
      }
      if constexpr (INTERLEAVED) {
        float e[2 * VEC], o[2 * VEC];
        load<T, 2 * VEC>(xr + 2 * i, e);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          o[2 * j] = e[2 * j] * c[j] - e[2 * j + 1] * s[j];
          o[2 * j + 1] = e[2 * j] * s[j] + e[2 * j + 1] * c[j];
        }
        store<T, 2 * VEC>(orow + 2 * i, o);
      } else {
        float a[VEC], z[VEC], o1[VEC], o2[VEC];
        load<T, VEC>(xr + i, a);
        load<T, VEC>(xr + p.half + i, z);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          o1[j] = a[j] * c[j] - z[j] * s[j];
          o2[j] = a[j] * s[j] + z[j] * c[j];
        }
        store<T, VEC>(orow + i, o1);
        store<T, VEC>(orow + p.half + i, o2);
      }
    }
    if (p.copy_rest) {  // the features past the rotary ones pass through
      for (int64_t j = 2 * p.half + lane; j < p.D; j += p.tpr) orow[j] = xr[j];
    }
  }
}

// Threads per row: enough for one vector each, at most a warp; 128-thread blocks.
constexpr int kThreads = 128;

inline int threads_per_row(int64_t half, int vec) {
  int t = 1;
  while (t < 32 && t * vec < half) t *= 2;
  return t;
}

template <typename T, typename C, typename P, bool INTERLEAVED, int VEC>
void run(Params p, int max_blocks, cudaStream_t stream) {
  p.tpr = threads_per_row(p.half, VEC);
  const int64_t rows = p.B * p.H * p.L, per_block = kThreads / p.tpr;
  const int64_t need = (rows + per_block - 1) / per_block;
  const int blocks = static_cast<int>(need < max_blocks ? need : max_blocks);  // the row loop covers the rest
  AIGC_LAUNCH(blocks, kThreads, 0, stream, (p), rotary_kernel<T, C, P, INTERLEAVED, VEC>);
}

}  // namespace rotary
}  // namespace aigc_kernels
