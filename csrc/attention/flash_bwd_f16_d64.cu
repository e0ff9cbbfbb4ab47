// Flash attention backward, __half, head dim 64 (one instantiation per file: parallel builds).
#include "flash_bwd.cuh"

namespace aigc_kernels {
namespace flash {

template void run_bwd<__half, 64>(const BwdParams&, cudaStream_t);

}  // namespace flash
}  // namespace aigc_kernels
