// LayerNorm / RMSNorm kernels for float activations (one .cu per dtype: nvcc builds them in parallel).
#include "norm_kernels.cuh"

namespace aigc_kernels {
namespace norm {

template void launch_fwd<float, float>(const FwdParams&, int, cudaStream_t);
template void launch_bwd<float, float>(const BwdParams&, int, int, cudaStream_t);

}  // namespace norm
}  // namespace aigc_kernels
