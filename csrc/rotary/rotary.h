// Rotary position embedding: the parameters of one launch and the CUDA launcher (rotary.cu), which assumes
// checked arguments (rotary_api.cpp) and runs on the given stream. The kernel: rotary_kernels.cuh.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace aigc_kernels {
namespace rotary {

// x/out (B, H, L, D) with a unit last-dim stride; cos/sin (Lmax, half) with a unit column stride;
// positions (B or 1, L) int32/int64 or none (rows 0..L-1). out may be x (in place).
struct Params {
  const void* x;
  void* out;
  const void* cos;
  const void* sin;
  const void* pos;  // nullptr: rows 0..L-1
  int64_t x_sb, x_sh, x_sl, o_sb, o_sh, o_sl;  // element strides
  int64_t cos_s, sin_s, pos_sb, pos_sl;        // cos/sin row strides; positions (pos_sb 0 for (1, L))
  int64_t B, H, L, D, half, lmax;
  bool conj;       // rotate by minus the angle (the backward)
  bool copy_rest;  // write the D - 2 * half pass-through features (out is not x)
  int tpr;         // threads per row (set by run())
};

enum class DType { kF32, kF16, kBF16 };

// vectorized: 4 pairs a thread (every row start and the half offset aligned for it; the caller checks).

void launch(const Params& p, DType x_type, DType cos_type, bool pos_int64, bool interleaved, bool vectorized,
            int max_blocks, cudaStream_t stream);

}  // namespace rotary
}  // namespace aigc_kernels
