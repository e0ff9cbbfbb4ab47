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

// The gated kernels' (column chunks, rows) grid for 256 threads, and their vector width: 16 bytes when every row of
// every buffer starts 16-byte aligned (hidden a multiple of it, aligned bases), else one element.
inline dim3 gated_grid(int64_t rows, int64_t chunks) {
  const int64_t x = (chunks + 255) / 256;
  return dim3(static_cast<unsigned>(x < 1024 ? (x > 0 ? x : 1) : 1024),
              static_cast<unsigned>(rows < 65535 ? (rows > 0 ? rows : 1) : 65535));
}

template <typename T>
bool gated_vectorizable(int64_t hidden, std::initializer_list<const at::Tensor*> ts) {
  if (hidden % (16 / static_cast<int64_t>(sizeof(T))) != 0) return false;
  for (const at::Tensor* t : ts)  // (a null entry: an output not asked for)
    if (t != nullptr && reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) return false;
  return true;
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
  const int64_t rows = h.size(0), hidden = h.size(1);
  if (h.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ug.scalar_type(), "aigc_gated_fwd", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    auto stream = at::cuda::getCurrentCUDAStream();
    const bool vec = gated_vectorizable<scalar_t>(hidden, {&ug, &h});
    with_act(static_cast<int>(act), [&](auto a) {
      constexpr int kAct = decltype(a)::value;
      if (vec) {
        gated_fwd_kernel<scalar_t, kVec, kAct><<<gated_grid(rows, hidden / kVec), 256, 0, stream>>>(
            ug.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), rows, hidden);
      } else {
        gated_fwd_kernel<scalar_t, 1, kAct><<<gated_grid(rows, hidden), 256, 0, stream>>>(
            ug.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), rows, hidden);
      }
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void gated_bwd(const at::Tensor& dh, const at::Tensor& ug, at::Tensor& dudg, Act act, at::Tensor* h) {
  const int64_t rows = dh.size(0), hidden = dh.size(1);
  if (dh.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ug.scalar_type(), "aigc_gated_bwd", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    auto stream = at::cuda::getCurrentCUDAStream();
    scalar_t* h_ptr = h ? h->data_ptr<scalar_t>() : nullptr;
    const bool vec = gated_vectorizable<scalar_t>(hidden, {&dh, &ug, &dudg, h});
    with_act(static_cast<int>(act), [&](auto a) {
      constexpr int kAct = decltype(a)::value;
      if (vec) {
        gated_bwd_kernel<scalar_t, kVec, kAct><<<gated_grid(rows, hidden / kVec), 256, 0, stream>>>(
            dh.data_ptr<scalar_t>(), ug.data_ptr<scalar_t>(), dudg.data_ptr<scalar_t>(), h_ptr, rows, hidden);
      } else {
        gated_bwd_kernel<scalar_t, 1, kAct><<<gated_grid(rows, hidden), 256, 0, stream>>>(
            dh.data_ptr<scalar_t>(), ug.data_ptr<scalar_t>(), dudg.data_ptr<scalar_t>(), h_ptr, rows, hidden);
      }
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace gemm
}  // namespace aigc_kernels
