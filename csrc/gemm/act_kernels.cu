// Launchers of the elementwise activation kernels (act_kernels.cuh) for ATen tensors.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "act_kernels.cuh"
#include "gemm.h"

namespace aigc_kernels {
namespace gemm {
namespace {

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
