// Flash attention in CUDA C++ (mma.sync m16n8k16 + ldmatrix + cp.async; sm_80 and later).
//
// Parameters shared by the host side (flash_api.cpp, which checks every argument) and the
// kernels (flash_fwd.cuh, flash_bwd.cuh). Instantiations: one .cu per (dtype x head dim) in
// this folder, so nvcc builds them in parallel.
//
// Layout: q/k/v/out rows have unit stride along the head dim. A tensor is addressed as
//   base + batch_offset(b) + head * head_stride + row * row_stride
// where batch_offset is b * batch_stride (dense (B, H, L, D)) or cu_seqlens[b] * row_stride
// (packed (total, H, D)). lse is float32 (B, Hq, Lq) dense or (Hq, total_q) packed, natural log;
// a query row that sees no key has lse = -inf and output 0.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace aigc_kernels {
namespace flash {

struct Params {
  // q (.., Hq, Lq, D), k/v (.., Hkv, Lk, D), out like q.
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  int64_t q_batch_stride, q_head_stride, q_row_stride;
  int64_t k_batch_stride, k_head_stride, k_row_stride;
  int64_t v_batch_stride, v_head_stride, v_row_stride;
  int64_t o_batch_stride, o_head_stride, o_row_stride;
  int64_t lse_batch_stride, lse_head_stride;  // row stride 1

  // Sequences: dense when cu_seqlens_q is null (every batch has seqlen_q x seqlen_k); packed
  // otherwise. seqused_k (optional, int32 (B,)) overrides the key count per batch: the valid
  // cache rows when decoding, FA3's seqused_k for packed q (then cu_seqlens_k may be null with paged k/v).
  const int* cu_seqlens_q;
  const int* cu_seqlens_k;
  const int* seqused_k;
  int seqused_k_add;  // added to seqused_k[b]: the rows appended to the cache by this call

  // Paged k/v (decoding with dense q, or packed q: chunked prefill): when block_table (int32 (B, max_pages)) is set, key row j of batch b is
  // slot j % page_size of page block_table[b * block_table_batch_stride + j / page_size], and k/v's batch
  // stride is the page stride, their row stride the slot stride (caches (num_pages, page_size, Hkv, D)). A page
  // id outside [0, num_pages) is never dereferenced (its rows load as zeros).
  const int* block_table;
  int64_t block_table_batch_stride;
  int page_size, num_pages;
  int batch, heads_q, heads_kv, head_dim;
  int seqlen_q, seqlen_k;  // dense sizes, or the longest packed sequences (they size the grids)

  // Softmax: p = exp(s * scale - lse); scale_log2 = scale * log2(e).
  float scale, scale_log2;
  // Visibility of key j from query i, with off = Lk - Lq (bottom-right alignment):
  //   j <= i + off + window_right  (window_right < 0: unbounded; causal sets it to 0)
  //   j >= i + off - window_left   (window_left < 0: unbounded)
  int window_left, window_right;

  // Split-K (decoding): num_splits > 1 writes partial results, normalized, to out_accum
  // (splits, B, Hq, Lq, D) float32 and lse_accum (splits, B, Hq, Lq) float32 (log2 units);
  // flash_combine merges them into out. Dense layout only.
  int num_splits;
  float* out_accum;
  float* lse_accum;

  // Forward on Hopper: the wgmma kernel (sm_90a image, head dims 64 and 128) instead of mma.sync.
  bool use_wgmma;
};

struct BwdParams : Params {
  const void* dout;
  void* dq;
  void* dk;
  void* dv;
  float* delta;  // rowsum(dout * out), laid out like lse
  int64_t do_batch_stride, do_head_stride, do_row_stride;
  int64_t dq_batch_stride, dq_head_stride, dq_row_stride;
  int64_t dk_batch_stride, dk_head_stride, dk_row_stride;
  int64_t dv_batch_stride, dv_head_stride, dv_row_stride;
  int total_q;  // packed: rows of q; dense: batch * seqlen_q
};

// Query rows per forward CTA (FwdCfg<D>::kBM in flash_fwd.cuh): the host sizes split-K with it.
constexpr int fwd_block_m(int d) { return d == 256 ? 64 : 128; }

// Launchers, defined in flash_<dir>_<dtype>_d<D>.cu. T is __half or __nv_bfloat16 (tag type).
template <typename T, int D>
void run_fwd(const Params& params, cudaStream_t stream);
template <typename T, int D>
void run_bwd(const BwdParams& params, cudaStream_t stream);
// Split-K merge (flash_combine.cu): out (dtype T) from out_accum / lse_accum.
template <typename T>
void run_combine(const Params& params, cudaStream_t stream);
// Backward preprocessing (flash_combine.cu): delta = rowsum(dout * out).
template <typename T>
void run_bwd_delta(const BwdParams& params, cudaStream_t stream);

}  // namespace flash
}  // namespace aigc_kernels
