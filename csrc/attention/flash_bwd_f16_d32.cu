// Flash attention backward, __half, head dim 32 (one instantiation per file: parallel builds).
#include "flash_bwd.cuh"

namespace aigc_kernels {
namespace flash {

template void run_bwd<__half, 32>(const BwdParams&, cudaStream_t);

}  // namespace flash
}  // namespace aigc_kernels
