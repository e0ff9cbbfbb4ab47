// LayerNorm / RMSNorm over the last dim of (rows, cols) matrices: parameters and launchers.
// Kernels are in norm_kernels.cuh, instantiated per activation dtype in norm_<dtype>.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace aigc_kernels {
namespace norm {

struct FwdParams {
  const void* x;    // (rows, cols), row stride stride_x, unit column stride
  const void* res;  // optional residual, same layout rules
  const void* w;    // optional weight (cols,), dtype W
  const void* b;    // optional bias (cols,), dtype W
  void* y;          // output (rows, cols)
  void* s;          // optional x + residual (rows, cols)
  float* mean;      // (rows,), LayerNorm only
  float* rstd;      // (rows,)
  int64_t stride_x, stride_res, stride_y, stride_s;
  int64_t rows;
  int64_t cols;
  float eps;
  bool rms, has_res, store_s, has_w, has_b;
};

struct BwdParams {
  const void* dy;  // (rows, cols)
  const void* ds;  // optional gradient of s = x + residual
  const void* xs;  // the normalized input (x, or s with a residual)
  const void* w;   // optional weight, dtype W
  const float* mean;
  const float* rstd;
  void* dx;          // (rows, cols)
  float* dw_part;    // (gridDim.x, cols) float32 partial sums, or null
  float* db_part;    // (gridDim.x, cols) float32 partial sums, or null
  int64_t stride_dy, stride_ds, stride_xs, stride_dx;
  int64_t rows;
  int64_t cols;
  bool rms, has_ds, has_w, has_b;
};

template <typename T, typename W>
void launch_fwd(const FwdParams& p, int vec, cudaStream_t stream);

template <typename T, typename W>
void launch_bwd(const BwdParams& p, int vec, int grid, cudaStream_t stream);

}  // namespace norm
}  // namespace aigc_kernels
