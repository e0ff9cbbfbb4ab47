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

#include "../vec.cuh"

namespace aigc_kernels {

struct Strides4 {
  int64_t s[4];
};

// Element offset of cache row pos of batch b (head 0), or -1 for a page id outside [0, num_pages): contiguous
// caches {batch, head, row, feature}, paged ones {page, head, slot, feature} through the block table.
__device__ __forceinline__ int64_t cache_row(const Strides4& c, int64_t b, int64_t pos,
                                             const int32_t* block_table, int64_t bt_stride, int64_t page_size,
                                             int64_t num_pages) {
  if (block_table == nullptr) return b * c.s[0] + pos * c.s[2];
  const int64_t page = block_table[b * bt_stride + pos / page_size];
  if (page < 0 || page >= num_pages) return -1;
  return page * c.s[0] + (pos % page_size) * c.s[2];
}

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
    const int64_t kd_off = cache_row(kc, b, pos, block_table, bt_stride, page_size, num_pages);
    const int64_t vd_off = cache_row(vc, b, pos, block_table, bt_stride, page_size, num_pages);
    if (kd_off < 0 || vd_off < 0) continue;
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

// The append with the rotary embedding inside (FA2's flash_attn_with_kvcache with rotary_cos/sin): row i of
// k_new (batch b) is rotated at position cache_seqlens[b] + i and written into the cache there, v_new copied
// beside it; q is rotated into q_out at cache_seqlens[b] + i (causal) or cache_seqlens[b] (not causal). The
// first 2 * half features rotate (GPT-NeoX pairs (j, j + half), GPT-J (2j, 2j + 1)), in float32; the rest pass
// through. Rows: the B * Hkv * Lnew cache rows, then the B * Hq * Lq query rows, blockDim.x threads a row.
struct RotaryAppendParams {
  void* k_cache;
  void* v_cache;
  const void* k_new;
  const void* v_new;
  const void* q;
  void* q_out;
  const void* cos;
  const void* sin;
  const int32_t* cache_seqlens;
  const int32_t* block_table;  // nullptr: contiguous caches
  Strides4 kc, vc, kn, vn, qs, qo;  // element strides; caches as cache_row takes them
  int64_t cos_stride, sin_stride, bt_stride, page_size, num_pages;
  int64_t batch, heads_kv, heads_q, lnew, lq, D, half, lmax, lro;
  bool causal;
};

template <typename T, typename C, bool INTERLEAVED>
__device__ __forceinline__ void rotate_row(const T* x, T* out, const C* c, const C* s, int64_t half, int64_t d,
                                           int64_t x_step, int64_t o_step) {
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    const int64_t a = INTERLEAVED ? 2 * j : j, z = INTERLEAVED ? 2 * j + 1 : j + half;
    const float x1 = to_float(x[a * x_step]), x2 = to_float(x[z * x_step]);
    const float cj = to_float(c[j]), sj = to_float(s[j]);
    out[a * o_step] = from_float<T>(x1 * cj - x2 * sj);
    out[z * o_step] = from_float<T>(x1 * sj + x2 * cj);
  }
  for (int64_t j = 2 * half + threadIdx.x; j < d; j += blockDim.x) out[j * o_step] = x[j * x_step];
}

template <typename T, typename C, bool INTERLEAVED>
__global__ void kvcache_rotary_kernel(const RotaryAppendParams p) {
  const int64_t kv_rows = p.batch * p.heads_kv * p.lnew, rows = kv_rows + p.batch * p.heads_q * p.lq;
  const C* cos_t = static_cast<const C*>(p.cos);
  const C* sin_t = static_cast<const C*>(p.sin);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const bool kv = row < kv_rows;
    const int64_t r = kv ? row : row - kv_rows, len = kv ? p.lnew : p.lq, heads = kv ? p.heads_kv : p.heads_q;
    const int64_t i = r % len, h = (r / len) % heads, b = r / (len * heads);
    const int64_t start = p.cache_seqlens[b];
    const int64_t pos = start + (kv || p.causal ? i : 0);
    // Out-of-range positions are a caller bug, reported like torch's own index kernels do.
    CUDA_KERNEL_ASSERT(pos >= 0 && pos < p.lro && "attention_with_kvcache: a position is past rotary_cos's rows");
    const C* c = cos_t + pos * p.cos_stride;
    const C* s = sin_t + pos * p.sin_stride;
    if (!kv) {
      const T* x = static_cast<const T*>(p.q) + b * p.qs.s[0] + h * p.qs.s[1] + i * p.qs.s[2];
      T* o = static_cast<T*>(p.q_out) + b * p.qo.s[0] + h * p.qo.s[1] + i * p.qo.s[2];
      rotate_row<T, C, INTERLEAVED>(x, o, c, s, p.half, p.D, p.qs.s[3], p.qo.s[3]);
      continue;
    }
    CUDA_KERNEL_ASSERT(pos < p.lmax && "kvcache_append: cache_seqlens + Lnew exceeds Lmax");
    const int64_t kd = cache_row(p.kc, b, pos, p.block_table, p.bt_stride, p.page_size, p.num_pages);
    const int64_t vd = cache_row(p.vc, b, pos, p.block_table, p.bt_stride, p.page_size, p.num_pages);
    if (kd < 0 || vd < 0) continue;  // a bad page id: not written
    const T* ks = static_cast<const T*>(p.k_new) + b * p.kn.s[0] + h * p.kn.s[1] + i * p.kn.s[2];
    rotate_row<T, C, INTERLEAVED>(ks, static_cast<T*>(p.k_cache) + kd + h * p.kc.s[1], c, s, p.half, p.D,
                                  p.kn.s[3], p.kc.s[3]);
    const T* vs = static_cast<const T*>(p.v_new) + b * p.vn.s[0] + h * p.vn.s[1] + i * p.vn.s[2];
    T* vo = static_cast<T*>(p.v_cache) + vd + h * p.vc.s[1];
    for (int64_t j = threadIdx.x; j < p.D; j += blockDim.x) vo[j * p.vc.s[3]] = vs[j * p.vn.s[3]];
  }
}

}  // namespace aigc_kernels
