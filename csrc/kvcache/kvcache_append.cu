// Append k_new/v_new into the KV caches at per-batch offsets: a strided row copy.
//
// The copy is dtype-agnostic: rows move as 16-byte vectors when the last dim is contiguous and
// every row start is 16-byte aligned, else element by element through the strides.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/macros/Macros.h>

#include <cstdint>

#include "kvcache.h"
#include "kvcache_kernels.cuh"

namespace aigc_kernels {
namespace {

inline Strides4 strides_of(const at::Tensor& t, int64_t elems_per_word, bool paged = false) {
  // Strides in units of the copied word; callers guarantee divisibility for the vector path. A paged cache
  // (num_pages, page_size, Hkv, D) as {page, head, slot, word}: the kernel's {batch, head, row, word} roles.
  const int64_t h = paged ? 2 : 1, r = paged ? 1 : 2;
  return {{t.stride(0) / elems_per_word, t.stride(h) / elems_per_word, t.stride(r) / elems_per_word,
           t.stride(3)}};
}

bool vectorizable(const at::Tensor& t, int64_t elems_per_vec) {
  const auto ptr = reinterpret_cast<uintptr_t>(t.data_ptr());
  return t.stride(3) == 1 && t.size(3) % elems_per_vec == 0 && t.stride(0) % elems_per_vec == 0 &&
         t.stride(1) % elems_per_vec == 0 && t.stride(2) % elems_per_vec == 0 && ptr % 16 == 0;
}

template <typename Word>
void launch(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
            const at::Tensor& cache_seqlens, int64_t elems_per_word, const at::Tensor* block_table) {
  const bool paged = block_table != nullptr;
  const int64_t heads = k_new.size(1), lnew = k_new.size(2);
  const int64_t lmax = paged ? block_table->size(1) * k_cache.size(1) : k_cache.size(2);
  const int64_t rows = k_new.size(0) * heads * lnew;
  const int64_t words_per_row = k_new.size(3) / elems_per_word;
  const int threads = words_per_row >= 128 ? 128 : 32 * static_cast<int>((words_per_row + 31) / 32);
  const int blocks = static_cast<int>(rows < 65536 ? rows : 65536);
  auto stream = at::cuda::getCurrentCUDAStream();
  kvcache_append_kernel<Word><<<blocks, threads, 0, stream>>>(
      static_cast<Word*>(k_cache.data_ptr()), static_cast<Word*>(v_cache.data_ptr()),
      static_cast<const Word*>(k_new.data_ptr()), static_cast<const Word*>(v_new.data_ptr()),
      cache_seqlens.data_ptr<int32_t>(), strides_of(k_cache, elems_per_word, paged),
      strides_of(v_cache, elems_per_word, paged), strides_of(k_new, elems_per_word), strides_of(v_new, elems_per_word),
      heads, lnew, lmax, words_per_row, rows, paged ? block_table->data_ptr<int32_t>() : nullptr,
      paged ? block_table->stride(0) : 0, paged ? k_cache.size(1) : 1, paged ? k_cache.size(0) : 0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void kvcache_append_launch(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new,
                           const at::Tensor& v_new, const at::Tensor& cache_seqlens, const at::Tensor* block_table) {
  const int64_t esize = k_cache.element_size();
  const int64_t per_vec = 16 / esize;
  const bool vec = 16 % esize == 0 && vectorizable(k_cache, per_vec) && vectorizable(v_cache, per_vec) &&
                   vectorizable(k_new, per_vec) && vectorizable(v_new, per_vec);
  if (vec) {
    launch<uint4>(k_cache, v_cache, k_new, v_new, cache_seqlens, per_vec, block_table);
    return;
  }
  switch (esize) {
    case 1: launch<uint8_t>(k_cache, v_cache, k_new, v_new, cache_seqlens, 1, block_table); break;
    case 2: launch<uint16_t>(k_cache, v_cache, k_new, v_new, cache_seqlens, 1, block_table); break;
    case 4: launch<uint32_t>(k_cache, v_cache, k_new, v_new, cache_seqlens, 1, block_table); break;
    case 8: launch<uint64_t>(k_cache, v_cache, k_new, v_new, cache_seqlens, 1, block_table); break;
    default: TORCH_CHECK(false, "aigc_kernels::kvcache_append: unsupported element size ", esize, " bytes");
  }
}

namespace {

inline Strides4 element_strides(const at::Tensor& t, bool paged = false) { return strides_of(t, 1, paged); }

template <typename T, typename C>
void launch_rotary(const RotaryAppendParams& p, bool interleaved, int blocks, int threads, cudaStream_t stream) {
  if (interleaved) {
    kvcache_rotary_kernel<T, C, true><<<blocks, threads, 0, stream>>>(p);
  } else {
    kvcache_rotary_kernel<T, C, false><<<blocks, threads, 0, stream>>>(p);
  }
}

template <typename T>
void launch_rotary_angles(const RotaryAppendParams& p, bool cos_f32, bool interleaved, int blocks, int threads,
                          cudaStream_t stream) {
  if (cos_f32) {
    launch_rotary<T, float>(p, interleaved, blocks, threads, stream);
  } else {
    launch_rotary<T, T>(p, interleaved, blocks, threads, stream);
  }
}

}  // namespace

void kvcache_rotary_launch(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new,
                           const at::Tensor& v_new, const at::Tensor& cache_seqlens, const at::Tensor* block_table,
                           const at::Tensor& q, at::Tensor& q_out, const at::Tensor& cos, const at::Tensor& sin,
                           bool interleaved, bool causal) {
  const bool paged = block_table != nullptr;
  RotaryAppendParams p{};
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.k_new = k_new.data_ptr();
  p.v_new = v_new.data_ptr();
  p.q = q.data_ptr();
  p.q_out = q_out.data_ptr();
  p.cos = cos.data_ptr();
  p.sin = sin.data_ptr();
  p.cache_seqlens = cache_seqlens.data_ptr<int32_t>();
  p.block_table = paged ? block_table->data_ptr<int32_t>() : nullptr;
  p.kc = element_strides(k_cache, paged);
  p.vc = element_strides(v_cache, paged);
  p.kn = element_strides(k_new);
  p.vn = element_strides(v_new);
  p.qs = element_strides(q);
  p.qo = element_strides(q_out);
  p.cos_stride = cos.stride(0);
  p.sin_stride = sin.stride(0);
  p.bt_stride = paged ? block_table->stride(0) : 0;
  p.page_size = paged ? k_cache.size(1) : 1;
  p.num_pages = paged ? k_cache.size(0) : 0;
  p.batch = k_new.size(0);
  p.heads_kv = k_new.size(1);
  p.heads_q = q.size(1);
  p.lnew = k_new.size(2);
  p.lq = q.size(2);
  p.D = k_new.size(3);
  p.half = cos.size(1);
  p.lmax = paged ? block_table->size(1) * k_cache.size(1) : k_cache.size(2);
  p.lro = cos.size(0);
  p.causal = causal;
  const int64_t rows = p.batch * (p.heads_kv * p.lnew + p.heads_q * p.lq);
  if (rows == 0) return;
  const int threads = p.D >= 128 ? 64 : 32;  // a thread per rotary pair (D / 2 of them) up to 64
  const int blocks = static_cast<int>(rows < 65536 ? rows : 65536);
  const bool cos_f32 = cos.scalar_type() == at::kFloat;
  auto stream = at::cuda::getCurrentCUDAStream();
  switch (k_cache.scalar_type()) {
    case at::kFloat: launch_rotary<float, float>(p, interleaved, blocks, threads, stream); break;
    case at::kHalf: launch_rotary_angles<__half>(p, cos_f32, interleaved, blocks, threads, stream); break;
    case at::kBFloat16: launch_rotary_angles<__nv_bfloat16>(p, cos_f32, interleaved, blocks, threads, stream); break;
    default: TORCH_CHECK(false, "aigc_kernels::kvcache_append_rotary: expected float32, float16 or bfloat16 caches");
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace aigc_kernels
