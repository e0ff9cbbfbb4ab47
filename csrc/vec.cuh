// Float32 views of the activation dtypes, and aligned vector loads/stores of N elements into float32
// registers: what the elementwise-style kernels (norm, rotary) share. Also compiled on the CPU under
// csrc/emulate.h (AIGC_EMULATE).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "smem.cuh"

namespace aigc_kernels {

template <typename T>  // any other type that converts through float (double, c10::Half, c10::BFloat16)
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// N consecutive elements moved as one access (the caller guarantees sizeof(T) * N alignment).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Global memory only: under emulation each is one access of the sector counter, at the caller's line.
template <typename T, int N>
__device__ __forceinline__ void load(const T* p, float (&out)[N] AIGC_SITE_PARAMS) {
  const Pack<T, N> pk = ld_global(reinterpret_cast<const Pack<T, N>*>(p) AIGC_SITE_ARGS);
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = to_float(pk.v[j]);
}

template <typename T, int N>
__device__ __forceinline__ void store(T* p, const float (&in)[N] AIGC_SITE_PARAMS) {
  Pack<T, N> pk;
#pragma unroll
  for (int j = 0; j < N; ++j) pk.v[j] = from_float<T>(in[j]);
  st_global(reinterpret_cast<Pack<T, N>*>(p), pk AIGC_SITE_ARGS);
}

}  // namespace aigc_kernels
