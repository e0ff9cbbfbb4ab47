// Host side of the CUDA ops: argument checks, device guard, then the launchers in kernels.h.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "kernels.h"

namespace aigc_kernels {
namespace {

void kvcache_append_cuda(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k_new,
                         const at::Tensor& v_new, const at::Tensor& cache_seqlens) {
  check_kvcache_append_args(k_cache, v_cache, k_new, v_new, cache_seqlens);
  TORCH_CHECK(k_cache.is_cuda(), "aigc_kernels::kvcache_append: expected CUDA tensors, got ", k_cache.device());
  const c10::cuda::CUDAGuard guard(k_cache.device());
  if (k_new.numel() == 0) return;
  kvcache_append_launch(k_cache, v_cache, k_new, v_new, cache_seqlens);
}

}  // namespace

TORCH_LIBRARY_IMPL(aigc_kernels, CUDA, m) { m.impl("kvcache_append", &kvcache_append_cuda); }

}  // namespace aigc_kernels
