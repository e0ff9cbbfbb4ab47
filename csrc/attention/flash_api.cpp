// Host side of the CUDA flash attention ops: every argument check (messages name what was
// expected and what was given), the device guard, the launch configuration, and the dispatch
// to the (dtype x head dim) instantiations. Launches go on the current CUDA stream.
//
//   flash_fwd    dense (B, H, L, D) or packed (total, H, D) with cu_seqlens -> (out, lse)
//   flash_bwd    -> (dq, dk, dv); deterministic (no atomics)
//   flash_decode q (B, Hq, Lq, D) against the first cache_seqlens[b] + lnew rows of the caches,
//                split-K over the cache plus a combine step
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "attention/flash.h"
#include "attention/flash_head_dims.h"  // generated from aigc_kernels/contracts/tables.py

namespace aigc_kernels {
namespace {

using flash::kHeadDims;
using flash::kHeadDimsText;
using flash::kMaxBwdHeadDim;

bool supported_head_dim(int64_t d) { return std::find(std::begin(kHeadDims), std::end(kHeadDims), d) != std::end(kHeadDims); }

// q/k/v/out/dout: one half-precision dtype, one CUDA device, unit stride along the head dim,
// other strides multiples of 8 elements and a 16-byte aligned start (the kernels copy rows in
// 16-byte chunks).
void check_operand(const char* op, const char* name, const at::Tensor& t, const at::Tensor& q, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": expected ", name, " to be ", dim, "-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, ": expected ", name, " of dtype ", q.scalar_type(),
              " (q's), got ", t.scalar_type());
  TORCH_CHECK(t.device() == q.device(), op, ": expected ", name, " on ", q.device(), " (q's device), got ",
              t.device());
  TORCH_CHECK(t.size(-1) == q.size(-1), op, ": expected ", name, " with head dim ", q.size(-1), " (q's), got ",
              t.size(-1));
  TORCH_CHECK(t.stride(-1) == 1, op, ": expected ", name, " with unit stride along the head dim, got strides ",
              t.strides());
  for (int64_t i = 0; i < dim - 1; ++i) {
    TORCH_CHECK(t.stride(i) % 8 == 0, op, ": expected ", name, " strides (but the last) to be multiples of 8 ",
                "elements, got strides ", t.strides(), " (make it contiguous)");
  }
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, ": expected ", name,
              " to start at a 16-byte aligned address (make it contiguous)");
}

void check_common(const char* op, const at::Tensor& q, bool backward) {
  TORCH_CHECK(q.is_cuda(), op, ": expected CUDA tensors, got q on ", q.device());
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, op,
              ": expected q of dtype Half or BFloat16, got ", q.scalar_type());
  const int64_t d = q.size(-1);
  TORCH_CHECK(supported_head_dim(d), op, ": expected a head dim of ", kHeadDimsText, ", got ", d);
  TORCH_CHECK(!backward || flash::has_bwd(static_cast<int>(d)), op, ": the backward supports head dims up to ",
              kMaxBwdHeadDim, ", got ", d);
  const auto* props = at::cuda::getDeviceProperties(q.device().index());
  TORCH_CHECK(props->major >= 8, op, ": expected a GPU of compute capability 8.0 or newer (mma.sync, cp.async), got ",
              props->major, ".", props->minor, " (", props->name, ")");
}

void check_heads(const char* op, int64_t hq, int64_t hkv) {
  TORCH_CHECK(hkv > 0 && hq % hkv == 0, op, ": expected the query heads (", hq,
              ") to be a multiple of the key/value heads (", hkv, ")");
}

void check_window(const char* op, int64_t left, int64_t right) {
  TORCH_CHECK(left >= -1 && right >= -1, op, ": expected window sizes >= -1 (-1 = unbounded), got (", left, ", ",
              right, ")");
}

void check_cu_seqlens(const char* op, const char* name, const at::Tensor& cu, const at::Tensor& q, int64_t batch1) {
  TORCH_CHECK(cu.dim() == 1 && cu.size(0) == batch1 && cu.size(0) >= 1, op, ": expected ", name, " of shape (",
              batch1, ",), got ", cu.sizes());
  TORCH_CHECK(cu.scalar_type() == at::kInt, op, ": expected ", name, " of dtype Int (int32), got ",
              cu.scalar_type());
  TORCH_CHECK(cu.device() == q.device(), op, ": expected ", name, " on ", q.device(), ", got ", cu.device());
  TORCH_CHECK(cu.is_contiguous(), op, ": expected ", name, " contiguous");
}

// Per-sequence key counts (cache_seqlens, seqused_k): contiguous int32 (batch,) on q's device.
void check_lengths(const char* op, const char* name, const at::Tensor& t, int64_t batch, const at::Tensor& q) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch && t.scalar_type() == at::kInt && t.device() == q.device() &&
                  t.is_contiguous(),
              op, ": expected ", name, " contiguous Int of shape (", batch, ",) on ", q.device(), ", got ",
              t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

// A paged cache (num_pages, page_size, Hkv, D) and its block table int32 (batch, max_pages); returns the rows a
// sequence can address (max_pages * page_size).
int64_t check_paged(const char* op, const at::Tensor& bt, int64_t batch, const at::Tensor& k, const at::Tensor& q) {
  TORCH_CHECK(bt.dim() == 2 && bt.size(0) == batch && bt.scalar_type() == at::kInt && bt.device() == q.device() &&
                  bt.stride(1) == 1,
              op, ": expected block_table Int of shape (", batch, ", max_pages) on ", q.device(),
              " with unit stride along the pages, got ", bt.scalar_type(), " ", bt.sizes(), " on ", bt.device());
  TORCH_CHECK(k.size(1) > 0 && k.size(1) <= (int64_t{1} << 30) && k.size(0) < (int64_t{1} << 31), op,
              ": expected a paged cache (num_pages, page_size, Hkv, D) with 1 <= page_size, got ", k.sizes());
  TORCH_CHECK(bt.size(1) * k.size(1) < (int64_t{1} << 31), op, ": a sequence must address fewer than 2^31 rows");
  return bt.size(1) * k.size(1);
}

// k/v read through the block table: batch stride = the page stride, row stride = the slot stride.
void fill_paged(flash::Params& p, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bt) {
  p.k_batch_stride = k.stride(0), p.k_head_stride = k.stride(2), p.k_row_stride = k.stride(1);
  p.v_batch_stride = v.stride(0), p.v_head_stride = v.stride(2), p.v_row_stride = v.stride(1);
  p.block_table = bt.data_ptr<int>();
  p.block_table_batch_stride = bt.stride(0);
  p.page_size = static_cast<int>(k.size(1));
  p.num_pages = static_cast<int>(k.size(0));
}

// The (batch, head, row) strides of a dense (B, H, L, D) or packed (total, H, D) tensor.
void set_strides(const at::Tensor& t, bool packed, int64_t& batch, int64_t& head, int64_t& row) {
  batch = packed ? 0 : t.stride(0);
  head = t.stride(1);
  row = packed ? t.stride(0) : t.stride(2);
}

template <typename Fn>
void dispatch(const char* op, at::ScalarType dtype, int64_t d, Fn&& fn) {
  auto by_dim = [&](auto tag) {
    const bool found = flash::visit_head_dim(d, [&](auto dim) { fn(tag, dim); });
    TORCH_CHECK(found, op, ": no kernel for head dim ", d);
  };
  if (dtype == at::kHalf) by_dim(__half{}); else by_dim(__nv_bfloat16{});
}

void fill_qkv(flash::Params& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
              bool packed) {
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  set_strides(q, packed, p.q_batch_stride, p.q_head_stride, p.q_row_stride);
  set_strides(k, packed, p.k_batch_stride, p.k_head_stride, p.k_row_stride);
  set_strides(v, packed, p.v_batch_stride, p.v_head_stride, p.v_row_stride);
  set_strides(out, packed, p.o_batch_stride, p.o_head_stride, p.o_row_stride);
  p.head_dim = static_cast<int>(q.size(-1));
}

void fill_lse(flash::Params& p, at::Tensor& lse, bool packed) {
  p.lse = lse.data_ptr<float>();
  p.lse_batch_stride = packed ? 0 : lse.stride(0);
  p.lse_head_stride = packed ? lse.stride(0) : lse.stride(1);
}

void fill_band(flash::Params& p, double scale, bool causal, int64_t window_left, int64_t window_right) {
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.window_left = static_cast<int>(window_left);
  p.window_right = causal ? 0 : static_cast<int>(window_right);  // causal caps the window at the diagonal
}

// AIGC_KERNELS_CUDA_WGMMA=1: the forward runs the sm_90a wgmma kernel (head dims 64 and 128) instead
// of mma.sync. Off by default until a GPU run has verified it; read per call.
bool want_wgmma(int64_t head_dim) {
  const char* env = std::getenv("AIGC_KERNELS_CUDA_WGMMA");
  return env != nullptr && std::string(env) == "1" && (head_dim == 64 || head_dim == 128);
}

void fill_sizes(flash::Params& p, const std::optional<at::Tensor>& cu_seqlens_q,
                const std::optional<at::Tensor>& cu_seqlens_k, int64_t batch, int64_t hq, int64_t hkv, int64_t lq,
                int64_t lk) {
  p.cu_seqlens_q = cu_seqlens_q ? cu_seqlens_q->data_ptr<int>() : nullptr;
  p.cu_seqlens_k = cu_seqlens_k ? cu_seqlens_k->data_ptr<int>() : nullptr;
  p.batch = static_cast<int>(batch);
  p.heads_q = static_cast<int>(hq);
  p.heads_kv = static_cast<int>(hkv);
  p.seqlen_q = static_cast<int>(lq);
  p.seqlen_k = static_cast<int>(lk);
  p.num_splits = 1;
  p.use_wgmma = false;
}

at::Tensor new_lse(const at::Tensor& q, bool packed) {
  auto f32 = q.options().dtype(at::kFloat);
  return packed ? at::empty({q.size(1), q.size(0)}, f32) : at::empty({q.size(0), q.size(1), q.size(2)}, f32);
}

// Shapes of flash_fwd / flash_bwd inputs: (batch, Hq, Hkv) after the checks.
std::tuple<int64_t, int64_t, int64_t> check_attention_args(const char* op, const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const std::optional<at::Tensor>& cu_seqlens_q,
                                                           const std::optional<at::Tensor>& cu_seqlens_k,
                                                           int64_t max_seqlen_q, int64_t max_seqlen_k, bool backward) {
  const bool packed = cu_seqlens_q.has_value();
  TORCH_CHECK(packed == cu_seqlens_k.has_value(), op, ": expected cu_seqlens_q and cu_seqlens_k both given or both ",
              "absent");
  const int64_t dim = packed ? 3 : 4;
  TORCH_CHECK(q.dim() == dim, op, ": expected q of shape ", packed ? "(total_q, Hq, D)" : "(B, Hq, Lq, D)",
              ", got ", q.sizes());
  check_common(op, q, backward);
  check_operand(op, "q", q, q, dim);
  check_operand(op, "k", k, q, dim);
  check_operand(op, "v", v, q, dim);
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": expected v of k's shape ", k.sizes(), ", got ", v.sizes());
  const int64_t hq = q.size(dim - 2), hkv = k.size(dim - 2);
  check_heads(op, hq, hkv);
  int64_t batch;
  if (packed) {
    batch = cu_seqlens_q->size(0) - 1;
    check_cu_seqlens(op, "cu_seqlens_q", *cu_seqlens_q, q, cu_seqlens_q->size(0));
    check_cu_seqlens(op, "cu_seqlens_k", *cu_seqlens_k, q, batch + 1);
    TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0, op, ": expected max_seqlen_q/k >= 0, got ", max_seqlen_q,
                ", ", max_seqlen_k);
    TORCH_CHECK(max_seqlen_q < (1LL << 31) && max_seqlen_k < (1LL << 31), op, ": sequences must be shorter than 2^31");
  } else {
    batch = q.size(0);
    TORCH_CHECK(k.size(0) == batch, op, ": expected k with batch ", batch, " (q's), got ", k.size(0));
    TORCH_CHECK(q.size(2) < (1LL << 31) && k.size(2) < (1LL << 31), op, ": sequences must be shorter than 2^31");
  }
  return {batch, hq, hkv};
}

// flash_fwd with seqused_k and/or block_table (forward only: chunked prefill, decoding): packed q over packed
// k/v (total_k, Hkv, D) whose sequences use their first seqused_k[b] rows, or over paged caches
// (num_pages, page_size, Hkv, D) through block_table, where seqused_k (else cu_seqlens_k's spans) gives the key
// counts. Returns (batch, Hq, Hkv).
std::tuple<int64_t, int64_t, int64_t> check_varlen_paged_args(
    const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k,
    int64_t max_seqlen_q, int64_t max_seqlen_k, const std::optional<at::Tensor>& seqused_k,
    const std::optional<at::Tensor>& block_table) {
  const bool paged = block_table.has_value();
  TORCH_CHECK(cu_seqlens_q.has_value(), op, ": seqused_k and block_table take packed q (cu_seqlens_q), got none");
  TORCH_CHECK(q.dim() == 3, op, ": expected q of shape (total_q, Hq, D), got ", q.sizes());
  check_common(op, q, false);
  check_operand(op, "q", q, q, 3);
  const int64_t kdim = paged ? 4 : 3;
  check_operand(op, "k", k, q, kdim);
  check_operand(op, "v", v, q, kdim);
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": expected v of k's shape ", k.sizes(), ", got ", v.sizes());
  const int64_t hq = q.size(1), hkv = k.size(kdim - 2);
  check_heads(op, hq, hkv);
  const int64_t batch = cu_seqlens_q->size(0) - 1;
  check_cu_seqlens(op, "cu_seqlens_q", *cu_seqlens_q, q, cu_seqlens_q->size(0));
  TORCH_CHECK(cu_seqlens_k.has_value() || (paged && seqused_k.has_value()), op,
              ": expected cu_seqlens_k, or block_table with seqused_k, to give each sequence's keys");
  if (cu_seqlens_k) check_cu_seqlens(op, "cu_seqlens_k", *cu_seqlens_k, q, batch + 1);
  if (seqused_k) check_lengths(op, "seqused_k", *seqused_k, batch, q);
  if (paged) check_paged(op, *block_table, batch, k, q);
  TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0, op, ": expected max_seqlen_q/k >= 0, got ", max_seqlen_q,
              ", ", max_seqlen_k);
  TORCH_CHECK(max_seqlen_q < (1LL << 31) && max_seqlen_k < (1LL << 31), op, ": sequences must be shorter than 2^31");
  return {batch, hq, hkv};
}

std::tuple<at::Tensor, at::Tensor> flash_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const std::optional<at::Tensor>& cu_seqlens_q,
                                                  const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                                                  int64_t max_seqlen_k, double scale, bool causal,
                                                  int64_t window_left, int64_t window_right,
                                                  const std::optional<at::Tensor>& seqused_k,
                                                  const std::optional<at::Tensor>& block_table) {
  const char* op = "aigc_kernels::flash_fwd";
  const bool packed = cu_seqlens_q.has_value(), paged = block_table.has_value();
  auto [batch, hq, hkv] =
      paged || seqused_k ? check_varlen_paged_args(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                   max_seqlen_k, seqused_k, block_table)
                         : check_attention_args(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                false);
  check_window(op, window_left, window_right);
  const c10::cuda::CUDAGuard guard(q.device());
  // Packed rows outside every sequence stay 0.
  at::Tensor out = packed ? at::zeros_like(q, at::MemoryFormat::Contiguous) : at::empty_like(q, at::MemoryFormat::Contiguous);
  at::Tensor lse = new_lse(q, packed);
  // lk: the longest sequence's keys, or (paged) the rows a block table addresses, which cap seqused_k
  const int64_t lq = packed ? max_seqlen_q : q.size(2);
  const int64_t lk = paged ? block_table->size(1) * k.size(1) : packed ? max_seqlen_k : k.size(2);
  if (out.numel() == 0 || batch == 0 || lq == 0 || (!packed && lk == 0)) {
    out.zero_();
    lse.fill_(-INFINITY);
    return {out, lse};
  }
  if (packed) lse.fill_(-INFINITY);  // rows outside every sequence
  flash::Params p{};
  fill_qkv(p, q, k, v, out, packed);
  if (paged) fill_paged(p, k, v, *block_table);
  fill_lse(p, lse, packed);
  fill_band(p, scale, causal, window_left, window_right);
  fill_sizes(p, cu_seqlens_q, cu_seqlens_k, batch, hq, hkv, lq, lk);
  p.seqused_k = seqused_k ? seqused_k->data_ptr<int>() : nullptr;
  p.use_wgmma = want_wgmma(q.size(-1));
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch(op, q.scalar_type(), q.size(-1), [&](auto t, auto d) { flash::run_fwd<decltype(t), decltype(d)::value>(p, stream); });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens_q,
    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, double scale,
    bool causal, int64_t window_left, int64_t window_right) {
  const char* op = "aigc_kernels::flash_bwd";
  const bool packed = cu_seqlens_q.has_value();
  auto [batch, hq, hkv] =
      check_attention_args(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, true);
  check_window(op, window_left, window_right);
  const int64_t dim = packed ? 3 : 4;
  check_operand(op, "out", out, q, dim);
  check_operand(op, "dout", dout, q, dim);
  TORCH_CHECK(out.sizes() == q.sizes() && dout.sizes() == q.sizes(), op, ": expected out and dout of q's shape ",
              q.sizes(), ", got ", out.sizes(), " and ", dout.sizes());
  const auto lse_shape = packed ? std::vector<int64_t>{hq, q.size(0)} : std::vector<int64_t>{q.size(0), hq, q.size(2)};
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(lse_shape) && lse.scalar_type() == at::kFloat && lse.is_contiguous() &&
                  lse.device() == q.device(),
              op, ": expected lse contiguous Float of shape ", at::IntArrayRef(lse_shape), " on ", q.device(),
              ", got ", lse.scalar_type(), " ", lse.sizes(), " on ", lse.device());
  const c10::cuda::CUDAGuard guard(q.device());
  auto alloc = [&](const at::Tensor& like) {
    return packed ? at::zeros_like(like, at::MemoryFormat::Contiguous)
                  : at::empty_like(like, at::MemoryFormat::Contiguous);
  };
  at::Tensor dq = alloc(q), dk = alloc(k), dv = alloc(v);
  const int64_t lq = packed ? max_seqlen_q : q.size(2), lk = packed ? max_seqlen_k : k.size(2);
  if (batch == 0 || lq == 0 || lk == 0 || q.numel() == 0 || k.numel() == 0) {
    dq.zero_();
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  at::Tensor delta = at::empty_like(lse);
  flash::BwdParams p{};
  fill_qkv(p, q, k, v, out, packed);
  at::Tensor lse_mut = lse;
  fill_lse(p, lse_mut, packed);
  fill_band(p, scale, causal, window_left, window_right);
  fill_sizes(p, cu_seqlens_q, cu_seqlens_k, batch, hq, hkv, lq, lk);
  p.dout = dout.data_ptr();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.delta = delta.data_ptr<float>();
  set_strides(dout, packed, p.do_batch_stride, p.do_head_stride, p.do_row_stride);
  set_strides(dq, packed, p.dq_batch_stride, p.dq_head_stride, p.dq_row_stride);
  set_strides(dk, packed, p.dk_batch_stride, p.dk_head_stride, p.dk_row_stride);
  set_strides(dv, packed, p.dv_batch_stride, p.dv_head_stride, p.dv_row_stride);
  p.total_q = static_cast<int>(packed ? q.size(0) : batch * lq);
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch(op, q.scalar_type(), q.size(-1), [&](auto t, auto d) {
    if constexpr (flash::has_bwd(decltype(d)::value)) flash::run_bwd<decltype(t), decltype(d)::value>(p, stream);
  });
  return {dq, dk, dv};
}

// Splits of the cache: enough (row block, batch, KV head, split) CTAs for ~2 waves, each split
// at least 256 keys, at most 64 splits.
int decode_splits(int64_t ctas, int64_t lmax, int64_t requested, int sms) {
  if (requested > 0) return static_cast<int>(std::min<int64_t>(requested, std::max<int64_t>(1, (lmax + 63) / 64)));
  if (ctas >= sms) return 1;
  const int64_t want = (2 * sms + ctas - 1) / ctas;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, (lmax + 255) / 256, 64})));
}

at::Tensor flash_decode_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                             const at::Tensor& cache_seqlens, int64_t lnew, bool causal, double scale,
                             int64_t num_splits, const std::optional<at::Tensor>& block_table,
                             int64_t window_left, int64_t window_right) {
  const char* op = "aigc_kernels::flash_decode";
  check_window(op, window_left, window_right);
  TORCH_CHECK(q.dim() == 4, op, ": expected q of shape (B, Hq, Lq, D), got ", q.sizes());
  check_common(op, q, false);
  check_operand(op, "q", q, q, 4);
  check_operand(op, "k_cache", k_cache, q, 4);
  check_operand(op, "v_cache", v_cache, q, 4);
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), op, ": expected v_cache of k_cache's shape ", k_cache.sizes(),
              ", got ", v_cache.sizes());
  const bool paged = block_table.has_value();
  const int64_t batch = q.size(0), hq = q.size(1), lq = q.size(2);
  const int64_t hkv = k_cache.size(paged ? 2 : 1);
  int64_t lmax = k_cache.size(2);
  if (paged) {  // caches (num_pages, page_size, Hkv, D), block_table int32 (B, max_pages)
    lmax = check_paged(op, *block_table, batch, k_cache, q);
  } else {
    TORCH_CHECK(k_cache.size(0) == batch, op, ": expected k_cache with batch ", batch, " (q's), got ",
                k_cache.size(0));
  }
  check_heads(op, hq, hkv);
  check_lengths(op, "cache_seqlens", cache_seqlens, batch, q);
  TORCH_CHECK(lnew >= 0 && lnew <= lmax, op, ": expected 0 <= lnew <= Lmax = ", lmax, ", got ", lnew);
  TORCH_CHECK(num_splits >= 0, op, ": expected num_splits >= 0 (0 = choose), got ", num_splits);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  if (lmax == 0) return out.zero_();

  flash::Params p{};
  fill_qkv(p, q, k_cache, v_cache, out, false);
  if (paged) fill_paged(p, k_cache, v_cache, *block_table);
  at::Tensor lse = new_lse(q, false);
  fill_lse(p, lse, false);
  fill_band(p, scale, causal, window_left, window_right);
  p.seqused_k = cache_seqlens.data_ptr<int>();
  p.seqused_k_add = static_cast<int>(lnew);
  fill_sizes(p, std::nullopt, std::nullopt, batch, hq, hkv, lq, lmax);
  p.use_wgmma = want_wgmma(q.size(-1));
  const int64_t group_rows = (hq / hkv) * lq;
  const int64_t bm = flash::fwd_block_m(static_cast<int>(q.size(-1)));
  const int64_t ctas = (group_rows + bm - 1) / bm * batch * hkv;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  p.num_splits = decode_splits(ctas, lmax, num_splits, sms);
  at::Tensor out_accum, lse_accum;
  if (p.num_splits > 1) {
    auto f32 = q.options().dtype(at::kFloat);
    out_accum = at::empty({p.num_splits, batch, hq, lq, q.size(-1)}, f32);
    lse_accum = at::empty({p.num_splits, batch, hq, lq}, f32);
    p.out_accum = out_accum.data_ptr<float>();
    p.lse_accum = lse_accum.data_ptr<float>();
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch(op, q.scalar_type(), q.size(-1), [&](auto t, auto d) { flash::run_fwd<decltype(t), decltype(d)::value>(p, stream); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(aigc_kernels, CUDA, m) {
  m.impl("flash_fwd", &flash_fwd_cuda);
  m.impl("flash_bwd", &flash_bwd_cuda);
  m.impl("flash_decode", &flash_decode_cuda);
}

}  // namespace aigc_kernels
