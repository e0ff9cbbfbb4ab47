// Elementwise activation kernels for the CUDA linear/FFN: what cuBLASLt's epilogues lack
// (erf-GELU, SiLU, ReLU with a pre-activation output, the gated SwiGLU/GeGLU product and all
// the derivatives). Float32 math; one grid-stride loop each. Launched from act_kernels.cu; also
// run on the CPU by tests/emulation/act_emulate.cpp (csrc/emulate.h).
#pragma once
#ifdef AIGC_EMULATE
#include "../emulate.h"
#endif
#include <cstdint>

namespace aigc_kernels {
namespace gemm {

// act: 0 none, 1 relu, 2 gelu (erf), 3 gelu_tanh, 4 silu (gemm.h's Act)
__device__ __forceinline__ float act_f(float x, int act) {
  switch (act) {
    case 1: return x > 0.f ? x : 0.f;
    case 2: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case 3: return x / (1.f + __expf(-1.5957691216057308f * (x + 0.044715f * x * x * x)));
    case 4: return x / (1.f + __expf(-x));
    default: return x;
  }
}

__device__ __forceinline__ float dact_f(float x, int act) {
  switch (act) {
    case 1: return x > 0.f ? 1.f : 0.f;
    case 2: return 0.5f * (1.f + erff(x * 0.70710678118654752f)) + x * __expf(-0.5f * x * x) * 0.3989422804014327f;
    case 3: {
      const float s = 1.f / (1.f + __expf(-1.5957691216057308f * (x + 0.044715f * x * x * x)));
      return s + x * s * (1.f - s) * 1.5957691216057308f * (1.f + 0.134145f * x * x);
    }
    case 4: {
      const float s = 1.f / (1.f + __expf(-x));
      return s * (1.f + x * (1.f - s));
    }
    default: return 1.f;
  }
}

template <typename T>
__global__ void act_fwd_kernel(const T* __restrict__ z, T* __restrict__ y, int64_t n, int act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = static_cast<T>(act_f(static_cast<float>(z[i]), act));
  }
}

template <typename T>
__global__ void act_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ z, T* __restrict__ dz, int64_t n,
                               int act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dz[i] = static_cast<T>(static_cast<float>(dy[i]) * dact_f(static_cast<float>(z[i]), act));
  }
}

// ug (M, 2H) = [u | g]; element i of the (M, H) output is (row r, col c) = (i / H, i % H).
template <typename T>
__global__ void gated_fwd_kernel(const T* __restrict__ ug, T* __restrict__ h, int64_t n, int64_t hidden, int act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = (i / hidden) * 2 * hidden + i % hidden;
    h[i] = static_cast<T>(act_f(static_cast<float>(ug[base + hidden]), act) * static_cast<float>(ug[base]));
  }
}

template <typename T>
__global__ void gated_bwd_kernel(const T* __restrict__ dh, const T* __restrict__ ug, T* __restrict__ dudg,
                                 int64_t n, int64_t hidden, int act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = (i / hidden) * 2 * hidden + i % hidden;
    const float d = static_cast<float>(dh[i]), u = static_cast<float>(ug[base]), g = static_cast<float>(ug[base + hidden]);
    dudg[base] = static_cast<T>(d * act_f(g, act));
    dudg[base + hidden] = static_cast<T>(d * u * dact_f(g, act));
  }
}

}  // namespace gemm
}  // namespace aigc_kernels
