// Kernel launchers, one per op family, called from api.cpp after its argument checks.
// Launchers assume validated arguments and launch on the current CUDA stream.
#pragma once
#include <ATen/core/Tensor.h>

namespace aigc_kernels {

// kvcache/kvcache_append.cu
void kvcache_append_launch(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new,
                           const at::Tensor& v_new, const at::Tensor& cache_seqlens);

}  // namespace aigc_kernels
