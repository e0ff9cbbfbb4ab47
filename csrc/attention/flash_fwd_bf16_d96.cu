// Flash attention forward, __nv_bfloat16, head dim 96 (one instantiation per file: parallel builds).
#include "flash_fwd.cuh"

namespace aigc_kernels {
namespace flash {

template void run_fwd<__nv_bfloat16, 96>(const Params&, cudaStream_t);

}  // namespace flash
}  // namespace aigc_kernels
