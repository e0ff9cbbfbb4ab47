// The rotary launcher: picks the instantiation of rotary_kernel for the dtypes, the positions' index type,
// the layout and the vector width.
#include <c10/cuda/CUDAException.h>

#include "rotary.h"
#include "rotary_kernels.cuh"

namespace aigc_kernels {
namespace rotary {
namespace {

constexpr int kVec = 4;

template <typename T, typename C, typename P>
void run_layout(const Params& p, bool interleaved, bool vectorized, int max_blocks, cudaStream_t stream) {
  if (interleaved) {
    vectorized ? run<T, C, P, true, kVec>(p, max_blocks, stream) : run<T, C, P, true, 1>(p, max_blocks, stream);
  } else {
    vectorized ? run<T, C, P, false, kVec>(p, max_blocks, stream) : run<T, C, P, false, 1>(p, max_blocks, stream);
  }
}

template <typename T, typename C>
void run_index(const Params& p, bool pos_int64, bool interleaved, bool vectorized, int max_blocks,
               cudaStream_t stream) {
  if (pos_int64) {
    run_layout<T, C, int64_t>(p, interleaved, vectorized, max_blocks, stream);
  } else {
    run_layout<T, C, int32_t>(p, interleaved, vectorized, max_blocks, stream);
  }
}

template <typename T>
void run_angles(const Params& p, DType cos_type, bool pos_int64, bool interleaved, bool vectorized, int max_blocks,
                cudaStream_t stream) {
  // cos/sin in x's dtype or float32 (rotary_api.cpp checks)
  if (cos_type == DType::kF32) {
    run_index<T, float>(p, pos_int64, interleaved, vectorized, max_blocks, stream);
  } else {
    run_index<T, T>(p, pos_int64, interleaved, vectorized, max_blocks, stream);
  }
}

}  // namespace

void launch(const Params& p, DType x_type, DType cos_type, bool pos_int64, bool interleaved, bool vectorized,
            int max_blocks, cudaStream_t stream) {
  switch (x_type) {
    case DType::kF32: run_angles<float>(p, cos_type, pos_int64, interleaved, vectorized, max_blocks, stream); break;
    case DType::kF16: run_angles<__half>(p, cos_type, pos_int64, interleaved, vectorized, max_blocks, stream); break;
    case DType::kBF16:
      run_angles<__nv_bfloat16>(p, cos_type, pos_int64, interleaved, vectorized, max_blocks, stream);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace rotary
}  // namespace aigc_kernels
