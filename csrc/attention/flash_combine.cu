// Launchers of the head-dim independent kernels (flash_combine.cuh).
#include <c10/cuda/CUDAException.h>

#include "flash_combine.cuh"

namespace aigc_kernels {
namespace flash {
template <typename T>
void run_combine(const Params& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  combine_kernel<T><<<static_cast<unsigned>(blocks), kRowsPerBlock * 32, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void run_bwd_delta(const BwdParams& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.total_q) * p.heads_q;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  delta_kernel<T><<<static_cast<unsigned>(blocks), kRowsPerBlock * 32, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void run_combine<__half>(const Params&, cudaStream_t);
template void run_combine<__nv_bfloat16>(const Params&, cudaStream_t);
template void run_bwd_delta<__half>(const BwdParams&, cudaStream_t);
template void run_bwd_delta<__nv_bfloat16>(const BwdParams&, cudaStream_t);

}  // namespace flash
}  // namespace aigc_kernels
