// Hopper (sm_90a) warpgroup MMA support for the flash forward: shared-memory matrix descriptors
// for the no-swizzle canonical layouts (flash_common.cuh: KMajorLayout, MNMajorLayout), the
// fence / commit / wait protocol, and the wgmma wrappers generated into wgmma_ops.cuh.
#pragma once
#include <cstdint>

#include "flash_common.cuh"
#include "wgmma_ops.cuh"

namespace aigc_kernels {
namespace flash {

// Matrix descriptor (PTX ISA, "warpgroup-level matrix shared memory layout"): start address,
// leading (K-direction) and stride (M/N-direction) byte offsets between core matrices, all >> 4;
// base offset 0 and swizzle mode 0 (none).
__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  const uint64_t addr = smem_addr(p);
  return ((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32);
}

#if defined(AIGC_EMULATE)
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b) {
  ::emu::wgmma_ss<T, N>(d, desc_a, desc_b);
}
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  ::emu::wgmma_rs<T, N>(d, a, desc_b);
}
// (emulate.h models the protocol: pending accumulators, the fences' checks)
__device__ __forceinline__ void wgmma_fence() { ::emu::wgmma_fence(); }
__device__ __forceinline__ void wgmma_commit() { ::emu::wgmma_commit(); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { ::emu::wgmma_wait(N); }
__device__ __forceinline__ void fence_proxy_async() { ::emu::fence_proxy_async(); }
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// cp.async writes shared memory through the generic proxy; wgmma reads it through the async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
#endif

// Keep registers that an asynchronous wgmma reads or writes live and unmoved across the
// fence / wait (the compiler does not know the instruction is asynchronous).
#ifdef AIGC_EMULATE
template <int R, int C, typename V>
__device__ __forceinline__ void fence_regs(V (&)[R][C]) {}
#else
template <int R, int C>
__device__ __forceinline__ void fence_regs(float (&x)[R][C]) {
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int j = 0; j < C; ++j) asm volatile("" : "+f"(x[i][j])::"memory");
  }
}
template <int R, int C>
__device__ __forceinline__ void fence_regs(uint32_t (&x)[R][C]) {
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int j = 0; j < C; ++j) asm volatile("" : "+r"(x[i][j])::"memory");
  }
}
#endif

}  // namespace flash
}  // namespace aigc_kernels
