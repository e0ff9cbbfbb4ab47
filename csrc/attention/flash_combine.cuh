// Head-dim independent kernels of flash attention: the split-K merge of decoding and the
// backward's preprocessing (delta = rowsum(dO * O)). One warp per query row. Launched from
// flash_combine.cu.
#pragma once
#include <cmath>

#include "flash_common.cuh"

namespace aigc_kernels {
namespace flash {

constexpr int kRowsPerBlock = 4;

// out = sum_s w_s o_s / sum_s w_s with w_s = exp2(lse_s - max lse); a row no split saw is 0.
template <typename T>
__global__ void __launch_bounds__(kRowsPerBlock * 32) combine_kernel(const Params p) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int i = static_cast<int>(row % p.seqlen_q);
  const int h = static_cast<int>((row / p.seqlen_q) % p.heads_q);
  const int b = static_cast<int>(row / (static_cast<int64_t>(p.seqlen_q) * p.heads_q));
  float m = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) m = fmaxf(m, ld_global(p.lse_accum + s * rows + row));
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(b) * p.o_batch_stride +
           static_cast<int64_t>(h) * p.o_head_stride + static_cast<int64_t>(i) * p.o_row_stride;
  for (int d0 = 0; d0 < p.head_dim; d0 += 64) {
    const int d = d0 + 2 * lane;
    if (d >= p.head_dim) break;
    float sum_w = 0.f, o0 = 0.f, o1 = 0.f;
    if (m != -INFINITY) {
      for (int s = 0; s < p.num_splits; ++s) {
        const float w = exp2f(ld_global(p.lse_accum + s * rows + row) - m);
        const float2 o = ld_global(reinterpret_cast<const float2*>(p.out_accum + (s * rows + row) * p.head_dim + d));
        sum_w += w;
        o0 += w * o.x;
        o1 += w * o.y;
      }
    }
    const float inv = sum_w > 0.f ? 1.f / sum_w : 0.f;
    st_global(reinterpret_cast<uint32_t*>(out + d), pack2<T>(o0 * inv, o1 * inv));
  }
}

// delta[row] = sum_d dO[row, d] * O[row, d] (float32), laid out like lse.
template <typename T>
__global__ void __launch_bounds__(kRowsPerBlock * 32) delta_kernel(const BwdParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int64_t rows = static_cast<int64_t>(p.total_q) * p.heads_q;
  if (row >= rows) return;
  int64_t o_off, do_off, l_off;
  if (p.cu_seqlens_q != nullptr) {  // rows ordered (head, packed row), like lse
    const int h = static_cast<int>(row / p.total_q);
    const int64_t r = row % p.total_q;
    o_off = r * p.o_row_stride + h * p.o_head_stride;
    do_off = r * p.do_row_stride + h * p.do_head_stride;
    l_off = h * p.lse_head_stride + r;
  } else {  // rows ordered (batch, head, query)
    const int i = static_cast<int>(row % p.seqlen_q);
    const int h = static_cast<int>((row / p.seqlen_q) % p.heads_q);
    const int64_t b = row / (static_cast<int64_t>(p.seqlen_q) * p.heads_q);
    o_off = b * p.o_batch_stride + h * p.o_head_stride + i * p.o_row_stride;
    do_off = b * p.do_batch_stride + h * p.do_head_stride + i * p.do_row_stride;
    l_off = b * p.lse_batch_stride + h * p.lse_head_stride + i;
  }
  const uint32_t* o = reinterpret_cast<const uint32_t*>(static_cast<const T*>(p.out) + o_off);
  const uint32_t* dout = reinterpret_cast<const uint32_t*>(static_cast<const T*>(p.dout) + do_off);
  float acc = 0.f;
  for (int c = lane; c < p.head_dim / 2; c += 32) {
    const float2 a = unpack2<T>(ld_global(o + c)), bb = unpack2<T>(ld_global(dout + c));
    acc += a.x * bb.x + a.y * bb.y;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) st_global(p.delta + l_off, acc);
}

}  // namespace flash
}  // namespace aigc_kernels
