// LayerNorm / RMSNorm kernels for __nv_bfloat16 activations (one .cu per dtype: nvcc builds them in parallel).
#include "norm_kernels.cuh"

namespace aigc_kernels {
namespace norm {

template void launch_fwd<__nv_bfloat16, __nv_bfloat16>(const FwdParams&, int, cudaStream_t);
template void launch_fwd<__nv_bfloat16, float>(const FwdParams&, int, cudaStream_t);
template void launch_bwd<__nv_bfloat16, __nv_bfloat16>(const BwdParams&, int, int, cudaStream_t);
template void launch_bwd<__nv_bfloat16, float>(const BwdParams&, int, int, cudaStream_t);

}  // namespace norm
}  // namespace aigc_kernels
