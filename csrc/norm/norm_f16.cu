// LayerNorm / RMSNorm kernels for __half activations (one .cu per dtype: nvcc builds them in parallel).
#include "norm_kernels.cuh"

namespace aigc_kernels {
namespace norm {

template void launch_fwd<__half, __half>(const FwdParams&, int, cudaStream_t);
template void launch_fwd<__half, float>(const FwdParams&, int, cudaStream_t);
template void launch_bwd<__half, __half>(const BwdParams&, int, int, cudaStream_t);
template void launch_bwd<__half, float>(const BwdParams&, int, int, cudaStream_t);

}  // namespace norm
}  // namespace aigc_kernels
