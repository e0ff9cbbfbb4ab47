// LayerNorm / RMSNorm kernels. Included by norm_<dtype>.cu, which instantiate the launchers.
//
// One thread block per row (forward) or per group of rows (backward). Each thread caches at
// most 16 elements of the row in registers (ITEMS vectors of VEC), so rows up to 16384 elements
// (forward, 1024 threads) or 8192 (backward, 512 threads: it also holds w, dw, db, dy) are read
// once and written once with no register spills; wider rows take the looped kernels (three
// reads forward, two backward). Statistics and
// all accumulation are float32. Backward writes one float32 partial row of dw/db per block,
// summed afterwards in a fixed order: deterministic, no atomics.
#pragma once
#include "../launch.h"
#include "../smem.cuh"
#include "../vec.cuh"
#include "norm.h"

namespace aigc_kernels {
namespace norm {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read by the previous call
  if (lane == 0) st_shared(smem + warp, v);
  __syncthreads();
  v = lane < warps ? ld_shared(smem + lane) : 0.f;
  return warp_sum(v);
}

// ---------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------
constexpr int kFwdThreads = 1024;
constexpr int kBwdThreads = 512;
constexpr int kCachedPerThread = 16;  // register-cached elements per thread

template <typename T, typename W, int VEC, int ITEMS>
__global__ void __launch_bounds__(kFwdThreads) norm_fwd_kernel(const FwdParams p) {
  __shared__ float smem[32];
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.stride_x;
  const T* r = p.has_res ? static_cast<const T*>(p.res) + row * p.stride_res : nullptr;
  T* y = static_cast<T*>(p.y) + row * p.stride_y;
  T* s = p.store_s ? static_cast<T*>(p.s) + row * p.stride_s : nullptr;
  const W* w = static_cast<const W*>(p.w);
  const W* b = static_cast<const W*>(p.b);
  const float n = static_cast<float>(p.cols);

  float v[ITEMS][VEC];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.cols) {
      load<T, VEC>(x + c, v[i]);
      if (p.has_res) {
        float rv[VEC];
        load<T, VEC>(r + c, rv);
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[i][j] += rv[j];
      }
      if (p.store_s) store<T, VEC>(s + c, v[i]);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum += v[i][j];
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[i][j] = 0.f;
    }
  }
  const float mean = p.rms ? 0.f : block_sum(sum, smem) / n;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.cols) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) sq += (v[i][j] - mean) * (v[i][j] - mean);
    }
  }
  const float rstd = rsqrtf(block_sum(sq, smem) / n + p.eps);
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.cols) {
      float out[VEC], wv[VEC], bv[VEC];
      if (p.has_w) load<W, VEC>(w + c, wv);
      if (p.has_b) load<W, VEC>(b + c, bv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        out[j] = (v[i][j] - mean) * rstd;
        if (p.has_w) out[j] *= wv[j];
        if (p.has_b) out[j] += bv[j];
      }
      store<T, VEC>(y + c, out);
    }
  }
  if (threadIdx.x == 0) {
    if (!p.rms) st_global(p.mean + row, mean);
    st_global(p.rstd + row, rstd);
  }
}

// Rows too wide for registers: mean, centred sum of squares, then normalize, each a pass over
// the row (x + residual recomputed in float32 each time, never re-read rounded).
template <typename T, typename W, int VEC>
__global__ void __launch_bounds__(kFwdThreads) norm_fwd_looped_kernel(const FwdParams p) {
  __shared__ float smem[32];
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.stride_x;
  const T* r = p.has_res ? static_cast<const T*>(p.res) + row * p.stride_res : nullptr;
  T* y = static_cast<T*>(p.y) + row * p.stride_y;
  T* s = p.store_s ? static_cast<T*>(p.s) + row * p.stride_s : nullptr;
  const W* w = static_cast<const W*>(p.w);
  const W* b = static_cast<const W*>(p.b);
  const float n = static_cast<float>(p.cols);
  auto input = [&](int64_t c, float (&v)[VEC]) {
    load<T, VEC>(x + c, v);
    if (p.has_res) {
      float rv[VEC];
      load<T, VEC>(r + c, rv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] += rv[j];
    }
  };
  const int64_t step = static_cast<int64_t>(blockDim.x) * VEC;
  float acc = 0.f;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < p.cols; c += step) {
    float v[VEC];
    input(c, v);
    if (p.store_s) store<T, VEC>(s + c, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc += v[j];
  }
  const float mean = p.rms ? 0.f : block_sum(acc, smem) / n;
  acc = 0.f;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < p.cols; c += step) {
    float v[VEC];
    input(c, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc += (v[j] - mean) * (v[j] - mean);
  }
  const float rstd = rsqrtf(block_sum(acc, smem) / n + p.eps);
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < p.cols; c += step) {
    float v[VEC], wv[VEC], bv[VEC];
    input(c, v);
    if (p.has_w) load<W, VEC>(w + c, wv);
    if (p.has_b) load<W, VEC>(b + c, bv);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      v[j] = (v[j] - mean) * rstd;
      if (p.has_w) v[j] *= wv[j];
      if (p.has_b) v[j] += bv[j];
    }
    store<T, VEC>(y + c, v);
  }
  if (threadIdx.x == 0) {
    if (!p.rms) st_global(p.mean + row, mean);
    st_global(p.rstd + row, rstd);
  }
}

// ---------------------------------------------------------------------------------------------
// backward: dx = rstd * (g - xhat * mean(g * xhat) - mean(g)), g = dy * w (RMSNorm: no mean(g))
// ---------------------------------------------------------------------------------------------
template <typename T, typename W, int VEC, int ITEMS>
__global__ void __launch_bounds__(kBwdThreads) norm_bwd_kernel(const BwdParams p) {
  __shared__ float smem[32];
  const float n = static_cast<float>(p.cols);
  const W* wp = static_cast<const W*>(p.w);
  float w[ITEMS][VEC], dw[ITEMS][VEC], db[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) w[i][j] = 1.f, dw[i][j] = 0.f, db[i][j] = 0.f;
    if (p.has_w && c < p.cols) load<W, VEC>(wp + c, w[i]);
  }
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* xs = static_cast<const T*>(p.xs) + row * p.stride_xs;
    const T* dyp = static_cast<const T*>(p.dy) + row * p.stride_dy;
    const float rstd = ld_global(p.rstd + row);
    const float mean = p.rms ? 0.f : ld_global(p.mean + row);
    float xhat[ITEMS][VEC], dy[ITEMS][VEC];
    float s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (c < p.cols) {
        load<T, VEC>(xs + c, xhat[i]);
        load<T, VEC>(dyp + c, dy[i]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          xhat[i][j] = (xhat[i][j] - mean) * rstd;
          const float g = dy[i][j] * w[i][j];
          s1 += g * xhat[i][j];
          s2 += g;
        }
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) xhat[i][j] = 0.f, dy[i][j] = 0.f;
      }
    }
    const float c1 = block_sum(s1, smem) / n;
    const float c2 = p.rms ? 0.f : block_sum(s2, smem) / n;
    T* dxp = static_cast<T*>(p.dx) + row * p.stride_dx;
    const T* dsp = p.has_ds ? static_cast<const T*>(p.ds) + row * p.stride_ds : nullptr;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (c < p.cols) {
        float dx[VEC], ds[VEC];
        if (p.has_ds) load<T, VEC>(dsp + c, ds);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          dx[j] = (dy[i][j] * w[i][j] - xhat[i][j] * c1 - c2) * rstd;
          if (p.has_ds) dx[j] += ds[j];
          dw[i][j] += dy[i][j] * xhat[i][j];
          db[i][j] += dy[i][j];
        }
        store<T, VEC>(dxp + c, dx);
      }
    }
  }
  const int64_t part = static_cast<int64_t>(blockIdx.x) * p.cols;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
    if (c < p.cols) {  // the partial rows are float32 and VEC-aligned (fresh buffers, cols % VEC == 0)
      if (p.has_w) store<float, VEC>(p.dw_part + part + c, dw[i]);
      if (p.has_b) store<float, VEC>(p.db_part + part + c, db[i]);
    }
  }
}

// Wide rows: two passes per row; the block's partial dw/db rows live in global memory (each block
// owns its partial row, so the read-modify-write is race-free). The partials start zeroed.
template <typename T, typename W, int VEC>
__global__ void __launch_bounds__(kBwdThreads) norm_bwd_looped_kernel(const BwdParams p) {
  __shared__ float smem[32];
  const float n = static_cast<float>(p.cols);
  const W* wp = static_cast<const W*>(p.w);
  const int64_t step = static_cast<int64_t>(blockDim.x) * VEC;
  const int64_t part = static_cast<int64_t>(blockIdx.x) * p.cols;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* xs = static_cast<const T*>(p.xs) + row * p.stride_xs;
    const T* dyp = static_cast<const T*>(p.dy) + row * p.stride_dy;
    const float rstd = ld_global(p.rstd + row);
    const float mean = p.rms ? 0.f : ld_global(p.mean + row);
    float s1 = 0.f, s2 = 0.f;
    for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < p.cols; c += step) {
      float x[VEC], dy[VEC], w[VEC];
      load<T, VEC>(xs + c, x);
      load<T, VEC>(dyp + c, dy);
      if (p.has_w) load<W, VEC>(wp + c, w);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float g = p.has_w ? dy[j] * w[j] : dy[j];
        s1 += g * (x[j] - mean) * rstd;
        s2 += g;
      }
    }
    const float c1 = block_sum(s1, smem) / n;
    const float c2 = p.rms ? 0.f : block_sum(s2, smem) / n;
    T* dxp = static_cast<T*>(p.dx) + row * p.stride_dx;
    const T* dsp = p.has_ds ? static_cast<const T*>(p.ds) + row * p.stride_ds : nullptr;
    for (int64_t c = static_cast<int64_t>(threadIdx.x) * VEC; c < p.cols; c += step) {
      float x[VEC], dy[VEC], w[VEC], ds[VEC], dx[VEC], pw[VEC], pb[VEC];
      load<T, VEC>(xs + c, x);
      load<T, VEC>(dyp + c, dy);
      if (p.has_w) load<W, VEC>(wp + c, w);
      if (p.has_ds) load<T, VEC>(dsp + c, ds);
      if (p.has_w) load<float, VEC>(p.dw_part + part + c, pw);  // this block's partial rows, VEC-aligned
      if (p.has_b) load<float, VEC>(p.db_part + part + c, pb);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float xhat = (x[j] - mean) * rstd;
        const float g = p.has_w ? dy[j] * w[j] : dy[j];
        dx[j] = (g - xhat * c1 - c2) * rstd;
        if (p.has_ds) dx[j] += ds[j];
        pw[j] += dy[j] * xhat;
        pb[j] += dy[j];
      }
      store<T, VEC>(dxp + c, dx);
      if (p.has_w) store<float, VEC>(p.dw_part + part + c, pw);
      if (p.has_b) store<float, VEC>(p.db_part + part + c, pb);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------
// Threads per block and register items for a row of `vectors` VEC-wide vectors; items = 0 means
// the row does not fit the registers and takes the looped kernel.
template <int VEC>
inline void shape_for(int64_t vectors, int max_threads, int& threads, int& items) {
  constexpr int kMaxItems = kCachedPerThread / VEC < 8 ? kCachedPerThread / VEC : 8;
  items = 0;
  for (int it = 1; it <= kMaxItems; it *= 2) {
    if (vectors <= static_cast<int64_t>(max_threads) * it) {
      items = it;
      break;
    }
  }
  const int64_t per = items ? (vectors + items - 1) / items : vectors;
  int64_t t = ((per + 31) / 32) * 32;
  threads = static_cast<int>(t > max_threads ? max_threads : (t < 32 ? 32 : t));
}

template <typename T, typename W, int VEC>
void fwd_vec(const FwdParams& p, cudaStream_t stream) {
  int threads, items;
  shape_for<VEC>(p.cols / VEC, kFwdThreads, threads, items);
  const dim3 grid(static_cast<unsigned>(p.rows));
  if (items == 1) {
    AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_fwd_kernel<T, W, VEC, 1>);
  } else if (items == 2) {
    AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_fwd_kernel<T, W, VEC, 2>);
  } else if constexpr (VEC <= 4) {
    if (items == 4) {
      AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_fwd_kernel<T, W, VEC, 4>);
    } else if (VEC == 1 && items == 8) {
      AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_fwd_kernel<T, W, 1, 8>);
    } else {
      AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_fwd_looped_kernel<T, W, VEC>);
    }
  } else {
    AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_fwd_looped_kernel<T, W, VEC>);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename W, int VEC>
void bwd_vec(const BwdParams& p, int grid, cudaStream_t stream) {
  int threads, items;
  shape_for<VEC>(p.cols / VEC, kBwdThreads, threads, items);
  if (items == 1) {
    AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_bwd_kernel<T, W, VEC, 1>);
  } else if (items == 2) {
    AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_bwd_kernel<T, W, VEC, 2>);
  } else if constexpr (VEC <= 4) {
    if (items == 4) {
      AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_bwd_kernel<T, W, VEC, 4>);
    } else if (VEC == 1 && items == 8) {
      AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_bwd_kernel<T, W, 1, 8>);
    } else {
      AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_bwd_looped_kernel<T, W, VEC>);
    }
  } else {
    AIGC_LAUNCH(grid, threads, 0, stream, (p), norm_bwd_looped_kernel<T, W, VEC>);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename W>
void launch_fwd(const FwdParams& p, int vec, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  if (vec == kVec) {
    fwd_vec<T, W, kVec>(p, stream);
  } else {
    fwd_vec<T, W, 1>(p, stream);
  }
}

template <typename T, typename W>
void launch_bwd(const BwdParams& p, int vec, int grid, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  if (vec == kVec) {
    bwd_vec<T, W, kVec>(p, grid, stream);
  } else {
    bwd_vec<T, W, 1>(p, grid, stream);
  }
}

}  // namespace norm
}  // namespace aigc_kernels
