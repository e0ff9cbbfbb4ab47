// Elementwise activation kernels for the CUDA linear/FFN: what cuBLASLt's epilogues lack
// (erf-GELU, SiLU, ReLU with a pre-activation output, the gated SwiGLU/GeGLU product and all
// the derivatives). Float32 math; grid-stride loops. The gated kernels walk (row, column chunk) over a 2-D grid --
// no 64-bit division per element -- and move VEC elements a thread in one access (16 bytes where the launcher
// finds the hidden size a multiple of VEC and the buffers aligned). Launched from act_kernels.cu; also run on the
// CPU by tests/emulation/act_emulate.cpp (csrc/emulate.h).
#pragma once
#ifdef AIGC_EMULATE
#include "../emulate.h"
#endif
#include <cstdint>
#include <type_traits>

#include "../smem.cuh"
#include "../vec.cuh"

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

// Calls f(std::integral_constant<int, ACT>{}) for a runtime activation id: the gated kernels take the activation as
// a template parameter, so their loops carry no switch over activations.
template <typename F>
void with_act(int act, F&& f) {
  switch (act) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
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

// ug (M, 2H) = [u | g] (row stride 2H), h (M, H): h = act(g) * u. Rows over blockIdx.y, VEC-element chunks of a row
// over blockIdx.x / threadIdx.x (hidden % VEC == 0).
template <typename T, int VEC, int ACT>
__global__ void gated_fwd_kernel(const T* __restrict__ ug, T* __restrict__ h, int64_t rows, int64_t hidden) {
  constexpr int act = ACT;
  const int64_t chunks = hidden / VEC;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* u = ug + r * 2 * hidden;
    T* out = h + r * hidden;
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < chunks;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      float uv[VEC], gv[VEC], o[VEC];
      load<T, VEC>(u + c * VEC, uv);
      load<T, VEC>(u + hidden + c * VEC, gv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) o[j] = act_f(gv[j], act) * uv[j];
      store<T, VEC>(out + c * VEC, o);
    }
  }
}

// dh (M, H), ug (M, 2H) -> dudg (M, 2H) = [dh * act(g) | dh * u * act'(g)], and (h not null) h (M, H) = act(g) * u
// again for the backward's dW_out GEMM: from the u and g this pass reads anyway, no second pass over them.
template <typename T, int VEC, int ACT>
__global__ void gated_bwd_kernel(const T* __restrict__ dh, const T* __restrict__ ug, T* __restrict__ dudg,
                                 T* __restrict__ h, int64_t rows, int64_t hidden) {
  constexpr int act = ACT;
  const int64_t chunks = hidden / VEC;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* u = ug + r * 2 * hidden;
    const T* d = dh + r * hidden;
    T* out = dudg + r * 2 * hidden;
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < chunks;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      float dv[VEC], uv[VEC], gv[VEC], du[VEC], dg[VEC], hv[VEC];
      load<T, VEC>(d + c * VEC, dv);
      load<T, VEC>(u + c * VEC, uv);
      load<T, VEC>(u + hidden + c * VEC, gv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float a = act_f(gv[j], act);
        du[j] = dv[j] * a;
        dg[j] = dv[j] * uv[j] * dact_f(gv[j], act);
        hv[j] = a * uv[j];
      }
      store<T, VEC>(out + c * VEC, du);
      store<T, VEC>(out + hidden + c * VEC, dg);
      if (h != nullptr) store<T, VEC>(h + r * hidden + c * VEC, hv);
    }
  }
}

}  // namespace gemm
}  // namespace aigc_kernels
