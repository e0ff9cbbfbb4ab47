// Flash attention backward, __nv_bfloat16, head dim 32 (one instantiation per file: parallel builds).
#include "flash_bwd.cuh"

namespace aigc_kernels {
namespace flash {

template void run_bwd<__nv_bfloat16, 32>(const BwdParams&, cudaStream_t);

}  // namespace flash
}  // namespace aigc_kernels
