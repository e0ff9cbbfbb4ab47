// Flash attention forward, __half, head dim 32 (one instantiation per file: parallel builds).
#include "flash_fwd.cuh"

namespace aigc_kernels {
namespace flash {

template void run_fwd<__half, 32>(const Params&, cudaStream_t);

}  // namespace flash
}  // namespace aigc_kernels
