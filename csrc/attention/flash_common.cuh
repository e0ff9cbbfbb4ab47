// Device building blocks of the flash attention kernels: tensor-core MMA (mma.sync m16n8k16,
// fp32 accumulate), ldmatrix fragment loads, cp.async tile copies, and the visibility rule.
//
// Fragment layouts (PTX ISA, mma.m16n8k16; lane = 4 * g + t):
//   A (16 x 16, row): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16 x 8, col):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C (16 x 8, f32):  c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// Shared-memory tiles are row-major with rows padded by 8 elements (16 bytes), so the 8 row
// addresses of one ldmatrix phase fall in distinct banks.
#pragma once
#ifdef AIGC_EMULATE
#include "../emulate.h"  // CPU emulation of the device features below (tests/emulation)
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "../smem.cuh"
#include "flash.h"

namespace aigc_kernels {
namespace flash {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
struct Pad {
  static constexpr int kStride = D + 8;  // elements per smem row
};

// The wgmma forward is compiled for sm_90a, and for the CPU emulation.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(AIGC_EMULATE)
#define AIGC_HAS_WGMMA 1
#else
#define AIGC_HAS_WGMMA 0
#endif

#ifdef AIGC_EMULATE
#define AIGC_DYNAMIC_SMEM(name) unsigned char* name = ::emu::dynamic_smem()
__device__ __forceinline__ uint32_t smem_addr(const void* p) {  // an offset into the block's shared memory
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - ::emu::dynamic_smem());
}
#else
#define AIGC_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// ---- tensor cores ---------------------------------------------------------------------------
#ifdef AIGC_EMULATE
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  ::emu::mma<T>(c, a, b0, b1);
}
// (the emulator counts bank conflicts per call site: the caller's function, file and line)
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p, const char* file = __builtin_FILE(),
                                            int line = __builtin_LINE(), const char* func = __builtin_FUNCTION()) {
  ::emu::ldmatrix_x4(r, p, false, file, line, func);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p,
                                                  const char* file = __builtin_FILE(), int line = __builtin_LINE(),
                                                  const char* func = __builtin_FUNCTION()) {
  ::emu::ldmatrix_x4(r, p, true, file, line, func);
}
#else
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
#endif

// A fragment of the 16 x 16 block at (row0, col0) of a row-major smem tile.
template <typename T, int STRIDE>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int row0, int col0, int lane) {
  ldmatrix_x4(a, tile + (row0 + (lane & 15)) * STRIDE + col0 + (lane >> 4) * 8);
}

// B fragments of two n8 tiles (n0..n0+15) x k16 (k0..k0+15) from a tile stored [n][k] (K for
// S = Q K^T): b[0], b[1] for n tile n0, b[2], b[3] for n tile n0 + 8.
template <typename T, int STRIDE>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* tile, int n0, int k0, int lane) {
  ldmatrix_x4(b, tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * STRIDE + k0 + ((lane >> 3) & 1) * 8);
}

// The same from a tile stored [k][n] (V for O = P V), through the transposing ldmatrix.
template <typename T, int STRIDE>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* tile, int k0, int n0, int lane) {
  ldmatrix_x4_trans(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * STRIDE + n0 + (lane >> 4) * 8);
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half22float2(*reinterpret_cast<__half2*>(&v));
  } else {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&v));
  }
}

// The A fragment of k-step s (keys 16s..16s+15) from two accumulator n-tiles 2s and 2s+1:
// a probability (or dS) tile produced by one MMA becomes the A operand of the next.
template <typename T>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack2<T>(c0[0], c0[1]);
  a[1] = pack2<T>(c0[2], c0[3]);
  a[2] = pack2<T>(c1[0], c1[1]);
  a[3] = pack2<T>(c1[2], c1[3]);
}

// ---- asynchronous copies --------------------------------------------------------------------
// 16 bytes global -> shared; src_bytes = 0 fills zeros (src must still be a valid address).
#ifdef AIGC_EMULATE  // data lands at the matching wait (emulate.h); NaN until then
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid,
                                           const char* site = __builtin_FUNCTION()) {
  ::emu::cp_async16(dst, src, valid, site);
}
__device__ __forceinline__ void cp_async_commit() { ::emu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { ::emu::cp_async_wait(N); }
#else
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
#endif

// Shared-memory tile layouts: the element offset of (row r, column c) in a ROWS x D tile.
// Padded: row-major, rows padded by 16 bytes (ldmatrix without bank conflicts; the mma.sync
// kernels). KMajor / MNMajor: the wgmma "no swizzle" canonical layouts, built from 8 x 8 core
// matrices of 128 contiguous bytes (8 rows of 16 bytes):
//   KMajor  (Q, K: the MMA's K dim is the head dim c): core matrix (r/8, c/8) at
//           ((r/8) * D/8 + c/8) * 64 elements -> LBO (next along K) 128 B, SBO (next 8 rows) D/8 * 128 B
//   MNMajor (V: the MMA's K dim is the key r, N the head dim c): core matrix (r/8, c/8) at
//           ((c/8) * ROWS/8 + r/8) * 64 elements -> LBO (next 8 keys) 128 B, SBO (next 8 columns) ROWS/8 * 128 B
struct PaddedLayout {
  template <int ROWS, int D>
  __device__ __forceinline__ static int at(int r, int c) { return r * Pad<D>::kStride + c; }
};
struct KMajorLayout {
  template <int ROWS, int D>
  __device__ __forceinline__ static int at(int r, int c) {
    return ((r >> 3) * (D / 8) + (c >> 3)) * 64 + (r & 7) * 8 + (c & 7);
  }
};
struct MNMajorLayout {
  template <int ROWS, int D>
  __device__ __forceinline__ static int at(int r, int c) {
    return ((c >> 3) * (ROWS / 8) + (r >> 3)) * 64 + (r & 7) * 8 + (c & 7);
  }
};

// Copy ROWS x D elements, rows [row0, row0 + ROWS) of a sequence starting at base with
// row_stride, into a smem tile of layout L; rows >= nrows are zero-filled. Where the threads cover whole rows
// (every tile of the kernels), the copy is unrolled: a thread keeps one 16-byte column and steps its row and
// source by constants, so a tile costs its cp.async instructions and a compare each, not a strided loop.
template <typename T, int ROWS, int D, int NTHREADS, typename L = PaddedLayout>
__device__ __forceinline__ void load_tile(T* tile, const T* base, int64_t row_stride, int row0, int nrows,
                                          int tid) {
  constexpr int kChunks = D / 8;
  if constexpr (NTHREADS % kChunks == 0 && ROWS % (NTHREADS / kChunks) == 0) {
    constexpr int kRowStep = NTHREADS / kChunks;
    const int col = (tid % kChunks) * 8, r_first = tid / kChunks;
    const T* src = base + static_cast<int64_t>(row0 + r_first) * row_stride + col;
    const int64_t src_step = static_cast<int64_t>(kRowStep) * row_stride;
#pragma unroll
    for (int it = 0; it < ROWS / kRowStep; ++it) {
      const int r = r_first + it * kRowStep;
      const bool ok = row0 + r < nrows;
      cp_async16(tile + L::template at<ROWS, D>(r, col), ok ? src : base, ok);
      src += src_step;
    }
  } else {
    for (int c = tid; c < ROWS * kChunks; c += NTHREADS) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool ok = row0 + r < nrows;
      const T* src = ok ? base + (row0 + r) * row_stride + col : base;
      cp_async16(tile + L::template at<ROWS, D>(r, col), src, ok);
    }
  }
}

// The same tile from a paged cache: row j is slot j % page_size of page pages[j / page_size] (page_stride
// apart; row_stride between slots). A page id outside [0, num_pages) is not dereferenced: its rows load as zeros.
template <typename T, int ROWS, int D, int NTHREADS, typename L>
__device__ __forceinline__ void load_tile_paged(T* tile, const T* base, int64_t row_stride, int row0, int nrows,
                                                int tid, const int* pages, int page_size, int num_pages,
                                                int64_t page_stride) {
  constexpr int kChunks = D / 8;
  for (int c = tid; c < ROWS * kChunks; c += NTHREADS) {
    const int r = c / kChunks, col = (c % kChunks) * 8, j = row0 + r;
    bool ok = j < nrows;
    const int page = ok ? pages[j / page_size] : 0;
    ok = ok && page >= 0 && page < num_pages;
    const T* src = ok ? base + page * page_stride + (j % page_size) * row_stride + col : base;
    cp_async16(tile + L::template at<ROWS, D>(r, col), src, ok);
  }
}

// ---- visibility -----------------------------------------------------------------------------
// Integer division rounding up / down, with a negative numerator giving 0 (a block index before the first).
__device__ __forceinline__ int ceil_div_nonneg(int a, int b) { return a <= 0 ? 0 : (a + b - 1) / b; }
__device__ __forceinline__ int floor_div_nonneg(int a, int b) { return a <= 0 ? 0 : a / b; }

struct Band {
  int lq, lk, off, left, right;  // off = lk - lq; left/right < 0: unbounded

  __device__ __forceinline__ bool visible(int i, int j) const {
    return i < lq && j < lk && (right < 0 || j <= i + off + right) && (left < 0 || j >= i + off - left);
  }
  // Every (i, j) of [i0, i1] x [j0, j1] visible: the tile needs no per-element mask.
  __device__ __forceinline__ bool all_visible(int i0, int i1, int j0, int j1) const {
    return i1 < lq && j1 < lk && (right < 0 || j1 <= i0 + off + right) && (left < 0 || j0 >= i1 + off - left);
  }
  // Keys [lo, hi) that rows [i0, i1] may see.
  __device__ __forceinline__ int key_lo(int i0) const { return left < 0 ? 0 : max(0, i0 + off - left); }
  __device__ __forceinline__ int key_hi(int i1) const {
    return right < 0 ? lk : max(0, min(lk, i1 + off + right + 1));
  }
  // Queries [lo, hi) that may see keys [j0, j1].
  __device__ __forceinline__ int query_lo(int j0) const { return right < 0 ? 0 : max(0, j0 - off - right); }
  __device__ __forceinline__ int query_hi(int j1) const {
    return left < 0 ? lq : max(0, min(lq, j1 - off + left + 1));
  }
  // The blocks of width bn in [lo, hi) that need no per-element mask form one run [first, last): key blocks every
  // row of [i0, i1] sees whole (none when i1 >= lq), and query blocks (rows of bn) that see keys [j0, j1] whole
  // (none when j1 >= lk). Before and after the run: the window's lower edge and the causal/right edge.
  struct Run {
    int first, last;
  };
  __device__ __forceinline__ Run whole_key_blocks(int i0, int i1, int bn, int lo, int hi) const {
    if (i1 >= lq) return {hi, hi};
    int first = left < 0 ? 0 : ceil_div_nonneg(i1 + off - left, bn);
    int last = lk / bn;
    if (right >= 0) last = min(last, floor_div_nonneg(i0 + off + right + 1, bn));
    return clamp_run(first, last, lo, hi);
  }
  __device__ __forceinline__ Run whole_query_blocks(int j0, int j1, int bm, int lo, int hi) const {
    if (j1 >= lk) return {hi, hi};
    int first = right < 0 ? 0 : ceil_div_nonneg(j1 - off - right, bm);
    int last = lq / bm;
    if (left >= 0) last = min(last, floor_div_nonneg(j0 - off + left + 1, bm));
    return clamp_run(first, last, lo, hi);
  }
  __device__ __forceinline__ static Run clamp_run(int first, int last, int lo, int hi) {
    first = min(max(first, lo), hi);
    return {first, min(max(last, first), hi)};
  }
};

// Blocks [lo, hi) in three runs: masked before run.first, unmasked in the run, masked after it; step(block, tag)
// with tag std::true_type where the block needs its per-element mask.
template <typename F>
__device__ __forceinline__ void step_in_runs(int lo, Band::Run run, int hi, F&& step) {
  int nb = lo;
  for (; nb < run.first; ++nb) step(nb, std::true_type{});
  for (; nb < run.last; ++nb) step(nb, std::false_type{});
  for (; nb < hi; ++nb) step(nb, std::true_type{});
}

// Row ranges of one sequence: first row in the packed/dense tensor and its length.
struct Seq {
  int lq, lk;
  int64_t q_row0, k_row0;  // packed row index of the sequence's first row (0 when dense)
  bool packed;

  // Element offset of row 0 of this sequence in a tensor with these strides.
  __device__ __forceinline__ int64_t q_offset(int b, int64_t batch_stride, int64_t row_stride) const {
    return packed ? q_row0 * row_stride : static_cast<int64_t>(b) * batch_stride;
  }
  __device__ __forceinline__ int64_t k_offset(int b, int64_t batch_stride, int64_t row_stride) const {
    return packed ? k_row0 * row_stride : static_cast<int64_t>(b) * batch_stride;
  }
  // Offset of (batch b, head h, row 0) in lse/delta ((B, H, Lq) dense, (H, total_q) packed).
  __device__ __forceinline__ int64_t lse_offset(int b, int h, int64_t batch_stride, int64_t head_stride) const {
    return static_cast<int64_t>(b) * batch_stride + static_cast<int64_t>(h) * head_stride + q_row0;
  }
};

__device__ __forceinline__ Seq sequence(const Params& p, int b) {
  Seq s;
  s.packed = p.cu_seqlens_q != nullptr;
  // Packed q with paged k/v may come without cu_seqlens_k (seqused_k gives the key counts).
  const bool packed_k = s.packed && p.cu_seqlens_k != nullptr;
  s.q_row0 = s.packed ? p.cu_seqlens_q[b] : 0;
  s.lq = s.packed ? p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b] : p.seqlen_q;
  s.k_row0 = packed_k ? p.cu_seqlens_k[b] : 0;
  s.lk = packed_k ? p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b] : p.seqlen_k;
  if (p.seqused_k != nullptr) {
    // Never past the cache (seqlen_k: its rows, or max_pages * page_size), nor, for packed contiguous keys,
    // past the sequence's own rows.
    const int cap = packed_k && p.block_table == nullptr ? s.lk : p.seqlen_k;
    s.lk = max(0, min(p.seqused_k[b] + p.seqused_k_add, cap));
  }
  return s;
}

// Reduce over the 4 lanes of a quad (the lanes that share an accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace flash
}  // namespace aigc_kernels
