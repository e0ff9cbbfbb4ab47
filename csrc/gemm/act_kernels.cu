// Elementwise activation kernels for the CUDA linear/FFN: what cuBLASLt's epilogues lack
// (erf-GELU, SiLU, ReLU with a pre-activation output, the gated SwiGLU/GeGLU product and all
// the derivatives). Float32 math; one grid-stride loop each.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "gemm.h"

namespace aigc_kernels {
namespace gemm {
namespace {

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

inline int blocks_for(int64_t n) {
  const int64_t b = (n + 255) / 256;
  return static_cast<int>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

}  // namespace

void act_fwd(const at::Tensor& z, at::Tensor& y, Act act) {
  const int64_t n = z.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "aigc_act_fwd", [&] {
    act_fwd_kernel<scalar_t><<<blocks_for(n), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n, static_cast<int>(act));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void act_bwd(const at::Tensor& dy, const at::Tensor& z, at::Tensor& dz, Act act) {
  const int64_t n = z.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "aigc_act_bwd", [&] {
    act_bwd_kernel<scalar_t><<<blocks_for(n), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        dy.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(), n, static_cast<int>(act));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void gated_fwd(const at::Tensor& ug, at::Tensor& h, Act act) {
  const int64_t n = h.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ug.scalar_type(), "aigc_gated_fwd", [&] {
    gated_fwd_kernel<scalar_t><<<blocks_for(n), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        ug.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), n, h.size(1), static_cast<int>(act));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void gated_bwd(const at::Tensor& dh, const at::Tensor& ug, at::Tensor& dudg, Act act) {
  const int64_t n = dh.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ug.scalar_type(), "aigc_gated_bwd", [&] {
    gated_bwd_kernel<scalar_t><<<blocks_for(n), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        dh.data_ptr<scalar_t>(), ug.data_ptr<scalar_t>(), dudg.data_ptr<scalar_t>(), n, dh.size(1),
        static_cast<int>(act));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace gemm
}  // namespace aigc_kernels
