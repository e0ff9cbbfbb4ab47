// Flash attention forward (FlashAttention-2 schedule) on mma.sync tensor cores.
//
// One CTA of 4 warps owns BM query rows of one (batch, KV head); each warp owns 16 * MT rows.
// GQA is packed: the rows of a CTA are (query head of the group, query) pairs, so one K/V tile
// in shared memory serves every query head of its group (decoding with Lq = 1 still fills the
// MMA rows). K/V tiles stream through a two-stage cp.async pipeline; S = Q K^T stays in
// registers, goes through the online softmax (fp32, exp2 with log2(e) folded into the scale)
// and becomes the A operand of O += P V without touching shared memory.
//
// Split-K (decoding): blockIdx.z takes a contiguous share of the key blocks and writes its
// normalized partial output and lse (log2 units) to float32 buffers; flash_combine.cu merges.
//
// kWgmma (sm_90a, head dims 64 and 128; opt-in, AIGC_KERNELS_CUDA_WGMMA=1): the same schedule with
// two warpgroups of 64 rows; tiles sit in shared memory in wgmma's no-swizzle core-matrix layouts,
// S = Q K^T is one warpgroup MMA over shared memory per 16 head-dim columns, and O += P V takes P
// from registers. Each MMA batch is committed and waited on before the softmax (no overlap yet).
#pragma once
#ifndef AIGC_EMULATE
#include <c10/cuda/CUDAException.h>
#endif

#include <cmath>
#include <type_traits>

#include "flash_common.cuh"
#include "wgmma.cuh"

namespace aigc_kernels {
namespace flash {

template <int D, bool kWgmma = false>
struct FwdCfg {
  // Registers bound the tile: per thread, O takes MT * D / 2 floats and S takes MT * BN / 2.
  // mma.sync: D <= 128: 4 warps x 32 rows (FA2's 128 x 64 tile: each K/V fragment read from shared memory by 4
  // warps, not 8); D = 256: 4 warps x 16 rows. wgmma (sm_90a; D = 64, 128): 2 warpgroups x 64 rows.
  static constexpr int kWarps = kWgmma ? 8 : 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMT = kWgmma ? 1 : (D <= 128 ? 2 : 1);  // 16-row MMA tiles per warp
  static constexpr int kBM = 16 * kMT * kWarps;
  static constexpr int kBN = kWgmma ? 64 : (D <= 128 ? 64 : 32);
  static constexpr int kStride = kWgmma ? D : Pad<D>::kStride;   // elements per tile row
  static constexpr int kSmemElems = (kBM + 4 * kBN) * kStride;  // Q + 2 stages of K and V
  static_assert(kBM == fwd_block_m(D), "flash.h's fwd_block_m must match the forward tile");
  static_assert(!kWgmma || D == 64 || D == 128, "the wgmma forward is instantiated for head dims 64 and 128");
  using QKLayout = std::conditional_t<kWgmma, KMajorLayout, PaddedLayout>;
  using VLayout = std::conditional_t<kWgmma, MNMajorLayout, PaddedLayout>;
};

// kPaged: k/v are paged caches read through p.block_table (decoding, or packed queries over pages); a separate
// instantiation, so the dense kernel's code (and registers) carry nothing of it.
template <typename T, int D, bool kWgmma, bool kPaged = false>
__global__ void __launch_bounds__(FwdCfg<D, kWgmma>::kThreads) fwd_kernel(const Params p) {
#if !AIGC_HAS_WGMMA
  if constexpr (kWgmma) {  // built for another arch: the host never launches this
    __trap();
  } else {
#endif
  using C = FwdCfg<D, kWgmma>;
  using QKL = typename C::QKLayout;
  using VL = typename C::VLayout;
  constexpr int kMT = C::kMT, kBM = C::kBM, kBN = C::kBN, kS = C::kStride, kNT = kBN / 8, kDT = D / 8;
  AIGC_DYNAMIC_SMEM(smem_raw);
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBM * kS;
  T* sV = sK + 2 * kBN * kS;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
  const int b = blockIdx.y / p.heads_kv, hk = blockIdx.y % p.heads_kv;
  const int group = p.heads_q / p.heads_kv;
  const Seq seq = sequence(p, b);
  const int rows = group * seq.lq;  // packed (query head in group, query) rows
  const int r0 = blockIdx.x * kBM;
  if (r0 >= rows) return;
  const int r_last = min(r0 + kBM, rows) - 1;
  const Band band{seq.lq, seq.lk, seq.lk - seq.lq, p.window_left, p.window_right};
  // Query range of this CTA (all queries when it spans two heads of the group).
  const bool spans = r0 / seq.lq != r_last / seq.lq;
  const int i_min = spans ? 0 : r0 % seq.lq, i_max = spans ? seq.lq - 1 : r_last % seq.lq;

  int nb_lo = band.key_lo(i_min) / kBN;
  const int key_hi = band.key_hi(i_max);
  int nb_hi = key_hi > nb_lo * kBN ? (key_hi + kBN - 1) / kBN : nb_lo;
  if (p.num_splits > 1) {
    const int per = (nb_hi - nb_lo + p.num_splits - 1) / p.num_splits;
    nb_lo = min(nb_hi, nb_lo + static_cast<int>(blockIdx.z) * per);
    nb_hi = min(nb_hi, nb_lo + per);
  }

  const T* q_base = static_cast<const T*>(p.q) + seq.q_offset(b, p.q_batch_stride, p.q_row_stride);
  // Paged caches: no batch offset (each row's page gives it); k/v's batch stride is the page stride.
  const int* pages = kPaged ? p.block_table + b * p.block_table_batch_stride : nullptr;
  const T* k_base = static_cast<const T*>(p.k) + (pages ? 0 : seq.k_offset(b, p.k_batch_stride, p.k_row_stride)) +
                    static_cast<int64_t>(hk) * p.k_head_stride;
  const T* v_base = static_cast<const T*>(p.v) + (pages ? 0 : seq.k_offset(b, p.v_batch_stride, p.v_row_stride)) +
                    static_cast<int64_t>(hk) * p.v_head_stride;
  auto load_kv = [&](T* tk, T* tv, int row0) {  // the K and V tiles of key rows [row0, row0 + kBN)
    if constexpr (kPaged) {
      load_tile_paged<T, kBN, D, C::kThreads, QKL>(tk, k_base, p.k_row_stride, row0, seq.lk, tid, pages, p.page_size,
                                                   p.num_pages, p.k_batch_stride);
      load_tile_paged<T, kBN, D, C::kThreads, VL>(tv, v_base, p.v_row_stride, row0, seq.lk, tid, pages, p.page_size,
                                                  p.num_pages, p.v_batch_stride);
    } else {
      load_tile<T, kBN, D, C::kThreads, QKL>(tk, k_base, p.k_row_stride, row0, seq.lk, tid);
      load_tile<T, kBN, D, C::kThreads, VL>(tv, v_base, p.v_row_stride, row0, seq.lk, tid);
    }
  };

  // This thread's accumulator rows: tile row wrow + 16 * mt + g + 8 * half.
  const int wrow = warp * 16 * kMT;
  int qi[kMT][2], qh[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = r0 + wrow + mt * 16 + g + half * 8;
      const bool ok = r < rows;
      qh[mt][half] = ok ? hk * group + r / seq.lq : -1;
      qi[mt][half] = ok ? r % seq.lq : seq.lq;  // i = lq: invisible to every key
    }
  }

  float acc[kMT][kDT][4];
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) acc[mt][dt][0] = acc[mt][dt][1] = acc[mt][dt][2] = acc[mt][dt][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }

  if (nb_lo < nb_hi) {
    // Q rows: each packed row has its own (head, query) address.
    constexpr int kChunks = D / 8;
    for (int c = tid; c < kBM * kChunks; c += C::kThreads) {
      const int r = c / kChunks, col = (c % kChunks) * 8, rr = r0 + r;
      const bool ok = rr < rows;
      const T* src = q_base;
      if (ok) {
        const int h = hk * group + rr / seq.lq, i = rr % seq.lq;
        src = q_base + static_cast<int64_t>(h) * p.q_head_stride + static_cast<int64_t>(i) * p.q_row_stride + col;
      }
      cp_async16(sQ + QKL::template at<kBM, D>(r, col), src, ok);
    }
    cp_async_commit();
    load_kv(sK, sV, nb_lo * kBN);
    cp_async_commit();
  }

  // One key block: wait for its tiles (prefetching the next block's), S = Q K^T, the online softmax, O += P V.
  // kMasked: the per-element band mask; blocks every row of the CTA sees whole run without it.
  int stage = 0;
  auto step = [&](const int nb, auto masked_tag) {
    constexpr bool kMasked = decltype(masked_tag)::value;
    if (nb + 1 < nb_hi) {
      const int next = stage ^ 1;
      load_kv(sK + next * kBN * kS, sV + next * kBN * kS, (nb + 1) * kBN);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
#if AIGC_HAS_WGMMA
    if constexpr (kWgmma) fence_proxy_async();  // the cp.async data, visible to wgmma's reads
#endif
    __syncthreads();
    const T* kt = sK + stage * kBN * kS;
    const T* vt = sV + stage * kBN * kS;

    // S = Q K^T
    float s[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
    }
    if constexpr (kWgmma) {
#if AIGC_HAS_WGMMA
      // The warpgroup's 64 rows of Q against the K tile, both K-major in shared memory.
      const T* q_wg = sQ + QKL::template at<kBM, D>((warp / 4) * 64, 0);
      constexpr uint32_t kSbo = D / 8 * 128;
      fence_regs(s[0]);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        wgmma_ss<T, kBN>(s[0], smem_desc(q_wg + ks * 128, 128, kSbo), smem_desc(kt + ks * 128, 128, kSbo));
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(s[0]);
#endif
    } else {
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) load_a<T, kS>(a[mt], sQ, wrow + mt * 16, ks * 16, lane);
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t bf[4];
          load_b_nk<T, kS>(bf, kt, np * 16, ks * 16, lane);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma<T>(s[mt][2 * np], a[mt], bf[0], bf[1]);
            mma<T>(s[mt][2 * np + 1], a[mt], bf[2], bf[3]);
          }
        }
      }
    }

    // Online softmax over this key block.
    const int n0 = nb * kBN;
#ifdef AIGC_EMULATE
    if (!kMasked && (spans || !band.all_visible(i_min, i_max, n0, n0 + kBN - 1))) {
      fprintf(stderr, "fwd_kernel: key block %d run unmasked but not visible whole\n", nb);
      abort();
    }
#endif
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float x = s[mt][nt][half * 2 + e] * p.scale_log2;
            if (kMasked && !band.visible(qi[mt][half], n0 + nt * 8 + 2 * t + e)) x = -INFINITY;
            s[mt][nt][half * 2 + e] = x;
            mx = fmaxf(mx, x);
          }
        }
        mx = quad_max(mx);
        const float m_new = fmaxf(row_max[mt][half], mx);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with no visible key yet
        const float alpha = exp2f(row_max[mt][half] - m_use);
        row_max[mt][half] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pr = exp2f(s[mt][nt][half * 2 + e] - m_use);
            s[mt][nt][half * 2 + e] = pr;
            sum += pr;
          }
        }
        row_sum[mt][half] = row_sum[mt][half] * alpha + sum;  // per-lane partial; reduced at the end
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          acc[mt][dt][half * 2] *= alpha;
          acc[mt][dt][half * 2 + 1] *= alpha;
        }
      }
    }

    // O += P V
    if constexpr (kWgmma) {
#if AIGC_HAS_WGMMA
      // P from registers (the mma.sync A layout), V MN-major in shared memory (transposed B).
      uint32_t pa[kBN / 16][4];
#pragma unroll
      for (int ks = 0; ks < kBN / 16; ++ks) acc_to_a<T>(pa[ks], s[0][2 * ks], s[0][2 * ks + 1]);
      constexpr uint32_t kSbo = kBN / 8 * 128;
      fence_regs(pa);
      fence_regs(acc[0]);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kBN / 16; ++ks) wgmma_rs<T, D>(acc[0], pa[ks], smem_desc(vt + ks * 128, 128, kSbo));
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(acc[0]);
      fence_regs(pa);
#endif
    } else {
#pragma unroll
      for (int ks = 0; ks < kBN / 16; ++ks) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) acc_to_a<T>(a[mt], s[mt][2 * ks], s[mt][2 * ks + 1]);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bf[4];
          load_b_kn<T, kS>(bf, vt, ks * 16, dp * 16, lane);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma<T>(acc[mt][2 * dp], a[mt], bf[0], bf[1]);
            mma<T>(acc[mt][2 * dp + 1], a[mt], bf[2], bf[3]);
          }
        }
      }
    }
    __syncthreads();  // the next iteration overwrites this stage
    stage ^= 1;
  };
  // The blocks every row of the CTA sees whole run without the mask (Band::whole_key_blocks); a CTA spanning two
  // heads of a GQA group masks every block.
  const Band::Run run = spans ? Band::Run{nb_hi, nb_hi} : band.whole_key_blocks(i_min, i_max, kBN, nb_lo, nb_hi);
  step_in_runs(nb_lo, run, nb_hi, step);

  // Epilogue: normalize, write out and lse (or the split's partials).
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float l = quad_sum(row_sum[mt][half]);
      const int h = qh[mt][half], i = qi[mt][half];
      if (h < 0) continue;
      const bool empty = !(l > 0.f);
      const float inv = empty ? 0.f : 1.f / l;
      const float lse2 = empty ? -INFINITY : row_max[mt][half] + log2f(l);
      if (p.num_splits > 1) {
        const int64_t row = ((static_cast<int64_t>(blockIdx.z) * p.batch + b) * p.heads_q + h) * p.seqlen_q + i;
        float* o = p.out_accum + row * D;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          st_global(reinterpret_cast<float2*>(o + dt * 8 + 2 * t),
                    make_float2(acc[mt][dt][half * 2] * inv, acc[mt][dt][half * 2 + 1] * inv));
        }
        if (t == 0) st_global(p.lse_accum + row, lse2);
      } else {
        T* o = out + seq.q_offset(b, p.o_batch_stride, p.o_row_stride) + static_cast<int64_t>(h) * p.o_head_stride +
               static_cast<int64_t>(i) * p.o_row_stride;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          st_global(reinterpret_cast<uint32_t*>(o + dt * 8 + 2 * t),
                    pack2<T>(acc[mt][dt][half * 2] * inv, acc[mt][dt][half * 2 + 1] * inv));
        }
        if (t == 0) st_global(p.lse + seq.lse_offset(b, h, p.lse_batch_stride, p.lse_head_stride) + i, lse2 * kLn2);
      }
    }
  }
#if !AIGC_HAS_WGMMA
  }
#endif
}

#ifndef AIGC_EMULATE  // the launchers (tests/emulation drives the kernels itself)
template <typename T, int D, bool kWgmma, bool kPaged>
void launch_fwd_kernel(const Params& p, cudaStream_t stream) {
  using C = FwdCfg<D, kWgmma>;
  const int rows = (p.heads_q / p.heads_kv) * p.seqlen_q;
  const dim3 grid((rows + C::kBM - 1) / C::kBM, p.batch * p.heads_kv, p.num_splits);
  const int smem = C::kSmemElems * static_cast<int>(sizeof(T));
  auto kernel = fwd_kernel<T, D, kWgmma, kPaged>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  }
  kernel<<<grid, C::kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D, bool kWgmma>
void launch_fwd(const Params& p, cudaStream_t stream) {
  if (p.block_table != nullptr) {
    launch_fwd_kernel<T, D, kWgmma, true>(p, stream);
  } else {
    launch_fwd_kernel<T, D, kWgmma, false>(p, stream);
  }
}

// Whether this build holds the wgmma forward for the current device: an sm_90a image of it.
template <typename T, int D>
bool wgmma_fwd_available() {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, fwd_kernel<T, D, true>) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.binaryVersion == 90;
}

template <typename T, int D>
void run_fwd(const Params& p, cudaStream_t stream) {
  if constexpr (D == 64 || D == 128) {
    if (p.use_wgmma) {
      const bool available = wgmma_fwd_available<T, D>();
      TORCH_CHECK(available, "aigc_kernels::flash_fwd: the wgmma forward was asked for "
                  "(AIGC_KERNELS_CUDA_WGMMA=1) but this build has no sm_90a image for this GPU "
                  "(build with AIGC_KERNELS_CUDA_ARCHS including 9.0a; it runs on compute capability 9.0)");
      launch_fwd<T, D, true>(p, stream);
    } else {
      launch_fwd<T, D, false>(p, stream);
    }
  } else {
    TORCH_CHECK(!p.use_wgmma, "aigc_kernels::flash_fwd: the wgmma forward covers head dims 64 and 128, got ", D);
    launch_fwd<T, D, false>(p, stream);
  }
  if (p.num_splits > 1) run_combine<T>(p, stream);
}

#endif  // AIGC_EMULATE

}  // namespace flash
}  // namespace aigc_kernels
