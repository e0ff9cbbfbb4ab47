// A CPU emulation of the few device features our CUDA kernels use (shared memory, __syncthreads,
// warp shuffles, and for flash attention ldmatrix, mma.sync and wgmma with no-swizzle
// descriptors), so the kernels' own source runs on a machine without a GPU (tests/emulation/*.cpp,
// compiled by a host C++ compiler with AIGC_EMULATE defined; launches written with AIGC_LAUNCH).
//
// Each CUDA thread of a block is a fiber (ucontext) in one OS thread; warp-collective operations
// (ldmatrix, mma.sync, shfl) and __syncthreads are barriers that switch fibers, so the emulated
// block runs deterministically. The collectives follow the PTX ISA fragment layouts:
//   ldmatrix .x4: lanes 8i..8i+7 give the row addresses of matrix i; lane L receives, for each i,
//                 row L/4, columns 2(L%4), 2(L%4)+1 (.trans: the transposed matrix's)
//   mma.m16n8k16: A a0..a3 = (g, 2t), (g+8, 2t), (g, 2t+8), (g+8, 2t+8); B b0, b1 = (k 2t, n g),
//                 (k 2t+8, n g); C c0..c3 = (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1); lane = 4g + t
// This checks the kernels' index arithmetic, masking, pipelining order and reductions against a
// float64 reference; it cannot check the hardware's own semantics (those are what the PTX ISA
// says, which is also what this file encodes). cp.async copies complete immediately.
#pragma once
#ifndef AIGC_EMULATE
#error "emulate.h is for host builds with AIGC_EMULATE"
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

namespace emu {

struct Slot {
  const unsigned char* ptr;
  uint32_t a[4];
  uint32_t b[2];
  float f;
};

struct Block {
  std::vector<ucontext_t> ctx;
  std::vector<std::vector<char>> stacks;
  std::vector<char> done;
  ucontext_t sched;
  int cur = 0, nthreads = 0;
  size_t stack_bytes = 0;
  dim3 block_idx, grid_dim;
  std::vector<unsigned char> smem;
  int cta_arrived = 0;
  long cta_gen = 0;
  std::vector<int> warp_arrived;
  std::vector<long> warp_gen;
  std::vector<std::array<Slot, 32>> slots;
  std::function<void()> body;
};

inline Block*& block() {
  static Block* b = nullptr;
  return b;
}

inline void yield() {
  Block* b = block();
  swapcontext(&b->ctx[b->cur], &b->sched);
}

inline int tid() { return block()->cur; }

inline void sync_threads() {
  Block* b = block();
  const long gen = b->cta_gen;
  if (++b->cta_arrived == b->nthreads) {
    b->cta_arrived = 0;
    ++b->cta_gen;
    return;
  }
  while (b->cta_gen == gen) yield();
}

inline void sync_warp() {
  Block* b = block();
  const int w = tid() / 32;
  const long gen = b->warp_gen[w];
  if (++b->warp_arrived[w] == 32) {
    b->warp_arrived[w] = 0;
    ++b->warp_gen[w];
    return;
  }
  while (b->warp_gen[w] == gen) yield();
}

inline Slot& my_slot() { return block()->slots[tid() / 32][tid() % 32]; }
inline std::array<Slot, 32>& warp_slots() { return block()->slots[tid() / 32]; }

inline void fiber_entry() {
  Block* b = block();
  b->body();
  b->done[b->cur] = 1;
  // returning switches to uc_link (the scheduler)
}

// Run body() as every thread of one block.
inline void run_block(dim3 block_idx, dim3 grid_dim, int nthreads, size_t smem_bytes, std::function<void()> body) {
  Block b;
  b.nthreads = nthreads;
  b.block_idx = block_idx;
  b.grid_dim = grid_dim;
  b.smem.assign(smem_bytes + 16, 0xAB);  // poisoned: reads of never-written shared memory show up
  b.ctx.resize(nthreads);
  b.stacks.resize(nthreads);
  b.done.assign(nthreads, 0);
  b.warp_arrived.assign((nthreads + 31) / 32, 0);
  b.warp_gen.assign((nthreads + 31) / 32, 0);
  b.slots.resize((nthreads + 31) / 32);
  b.body = std::move(body);
  block() = &b;
  for (int t = 0; t < nthreads; ++t) {
    b.stacks[t].resize(nthreads > 256 ? 64 * 1024 : 256 * 1024);
    getcontext(&b.ctx[t]);
    b.ctx[t].uc_stack.ss_sp = b.stacks[t].data();
    b.ctx[t].uc_stack.ss_size = b.stacks[t].size();
    b.ctx[t].uc_link = &b.sched;
    makecontext(&b.ctx[t], fiber_entry, 0);
  }
  for (;;) {
    bool all_done = true;
    for (int t = 0; t < nthreads; ++t) {
      if (b.done[t]) continue;
      all_done = false;
      b.cur = t;
      swapcontext(&b.sched, &b.ctx[t]);
    }
    if (all_done) break;
  }
  block() = nullptr;
}

// Run a kernel body over a grid, block after block.
inline void launch(dim3 grid, int nthreads, size_t smem_bytes, const std::function<void()>& body) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) run_block(dim3(x, y, z), grid, nthreads, smem_bytes, body);
}

inline uint3 thread_idx() { return make_uint3(static_cast<unsigned>(tid()), 0, 0); }
inline uint3 block_dim() { return make_uint3(static_cast<unsigned>(block()->nthreads), 1, 1); }
inline uint3 grid_dim() {
  const dim3 g = block()->grid_dim;
  return make_uint3(g.x, g.y, g.z);
}
inline uint3 block_idx() {
  const dim3 b = block()->block_idx;
  return make_uint3(b.x, b.y, b.z);
}
inline unsigned char* dynamic_smem() {
  // 16-byte aligned, like the real thing
  auto p = reinterpret_cast<uintptr_t>(block()->smem.data());
  return reinterpret_cast<unsigned char*>((p + 15) & ~uintptr_t(15));
}

// ---- collectives --------------------------------------------------------------------------
inline float shfl_xor(float v, int mask) {
  my_slot().f = v;
  sync_warp();
  const float r = warp_slots()[(tid() % 32) ^ mask].f;
  sync_warp();
  return r;
}

inline uint16_t load16(const unsigned char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  my_slot().ptr = static_cast<const unsigned char*>(p);
  sync_warp();
  const int lane = tid() % 32;
  auto& s = warp_slots();
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const unsigned char* row = s[8 * i + lane / 4].ptr;
      lo = load16(row + 2 * (2 * (lane % 4)));
      hi = load16(row + 2 * (2 * (lane % 4) + 1));
    } else {
      lo = load16(s[8 * i + 2 * (lane % 4)].ptr + 2 * (lane / 4));
      hi = load16(s[8 * i + 2 * (lane % 4) + 1].ptr + 2 * (lane / 4));
    }
    r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  sync_warp();
}

template <typename T>
inline float to_f(uint16_t bits) {
  T v;
  std::memcpy(&v, &bits, 2);
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

template <typename T>
inline void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Slot& me = my_slot();
  std::memcpy(me.a, a, sizeof(me.a));
  me.b[0] = b0;
  me.b[1] = b1;
  sync_warp();
  auto& s = warp_slots();
  auto A = [&](int row, int col) {  // 16 x 16
    const int lane = 4 * (row % 8) + (col % 8) / 2;
    const int reg = (row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0);
    const uint32_t w = s[lane].a[reg];
    return to_f<T>(static_cast<uint16_t>((col % 2) ? (w >> 16) : (w & 0xFFFF)));
  };
  auto B = [&](int k, int n) {  // 16 x 8
    const int lane = 4 * n + (k % 8) / 2;
    const uint32_t w = s[lane].b[k >= 8 ? 1 : 0];
    return to_f<T>(static_cast<uint16_t>((k % 2) ? (w >> 16) : (w & 0xFFFF)));
  };
  const int lane = tid() % 32, g = lane / 4, t = lane % 4;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
    float acc = c[e];
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    out[e] = acc;
  }
  sync_warp();
  for (int e = 0; e < 4; ++e) c[e] = out[e];
}

// ---- Hopper wgmma (warpgroup MMA), no-swizzle descriptors ------------------------------------
// Descriptor: start address, LBO (K-direction core-matrix step), SBO (M/N-direction step), all
// >> 4 (flash_common.cuh: smem_addr is an offset into the dynamic shared memory here). Core matrix:
// 8 rows of 16 contiguous bytes. K-major: a row is 8 K-elements; MN-major: a row is 8 M/N-elements.
struct Desc {
  const unsigned char* start;
  int lbo, sbo;
};
inline Desc decode(uint64_t d) {
  if ((d >> 62) != 0) std::abort();  // only the no-swizzle layout is emulated
  return {dynamic_smem() + ((d & 0x3FFF) << 4), static_cast<int>(((d >> 16) & 0x3FFF) << 4),
          static_cast<int>(((d >> 32) & 0x3FFF) << 4)};
}
// Element (mn, k) of a K-major operand, (k, mn) of an MN-major one.
inline uint16_t kmajor(const Desc& d, int mn, int k) {
  return load16(d.start + (mn / 8) * d.sbo + (k / 8) * d.lbo + (mn % 8) * 16 + (k % 8) * 2);
}
inline uint16_t mnmajor(const Desc& d, int k, int mn) {
  return load16(d.start + (k / 8) * d.lbo + (mn / 8) * d.sbo + (k % 8) * 16 + (mn % 8) * 2);
}

// D (64 x N, this thread's fragment) += A (64 x 16, K-major smem) B (16 x N, K-major smem).
template <typename T, int N>
inline void wgmma_ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b) {
  const Desc a = decode(desc_a), b = decode(desc_b);
  const int w = (tid() / 32) % 4, lane = tid() % 32, g = lane / 4, t = lane % 4;
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * w + g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * t + (e & 1);
      float acc = d[j][e];
      for (int k = 0; k < 16; ++k) acc += to_f<T>(kmajor(a, row, k)) * to_f<T>(kmajor(b, col, k));
      d[j][e] = acc;
    }
}

// D += A (this warp's 16 rows from registers, the mma.sync A layout) B (16 x N, MN-major smem).
template <typename T, int N>
inline void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  std::memcpy(my_slot().a, a, sizeof(my_slot().a));
  sync_warp();
  auto& s = warp_slots();
  auto A = [&](int row, int col) {
    const uint32_t wd = s[4 * (row % 8) + (col % 8) / 2].a[(row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0)];
    return to_f<T>(static_cast<uint16_t>((col % 2) ? (wd >> 16) : (wd & 0xFFFF)));
  };
  const Desc b = decode(desc_b);
  const int lane = tid() % 32, g = lane / 4, t = lane % 4;
  float out[N / 8][4];
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * t + (e & 1);
      float acc = d[j][e];
      for (int k = 0; k < 16; ++k) acc += A(row, k) * to_f<T>(mnmajor(b, k, col));
      out[j][e] = acc;
    }
  sync_warp();
  std::memcpy(d, out, sizeof(out));
}

}  // namespace emu

// The CUDA spellings the kernels use.
#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#undef __shared__
#define __shared__ static  // one copy per kernel instantiation, shared by the block's fibers
#define rsqrtf(x) (1.f / std::sqrt(x))
#define __expf(x) std::exp(x)
#define CUDA_KERNEL_ASSERT(cond) \
  do {                           \
    if (!(cond)) std::abort();   \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() (void)0
// AIGC_LAUNCH(grid, threads, smem, stream, (args...), kernel<...>): runs the kernel on the CPU.
#define AIGC_LAUNCH(grid, threads, smem, stream, args, ...) \
  ::emu::launch(dim3(grid), static_cast<int>(threads), static_cast<size_t>(smem), [&] { __VA_ARGS__ args; })
#define __syncthreads() ::emu::sync_threads()
#undef __launch_bounds__
#define __launch_bounds__(...)
#define __trap() std::abort()
inline float __shfl_xor_sync(unsigned, float v, int mask) { return ::emu::shfl_xor(v, mask); }
using std::max;
using std::min;
