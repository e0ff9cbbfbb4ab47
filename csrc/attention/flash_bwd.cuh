// Flash attention backward on mma.sync tensor cores, deterministic (no atomics).
//
//   delta = rowsum(dO * O)                      (flash_combine.cu)
//   P  = exp(S * scale - lse),  S = Q K^T      (recomputed from the saved lse)
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dK = dS^T Q * scale,  dQ = dS K * scale
//
// Two kernels, so that every gradient element has exactly one writer:
//   dkdv: a CTA owns 64 keys of one (batch, KV head), 16 per warp, and loops over the query
//         heads of its group (GQA) and their query blocks; it computes the transposed tiles
//         S^T = K Q^T and dP^T = V dO^T, so P^T and dS^T are A operands straight from registers.
//   dq:   a CTA owns 64 query rows of one (batch, query head), 16 per warp, and loops over keys.
// Q/dO (dkdv) and K/V (dq) tiles stream through two-stage cp.async pipelines.
#pragma once
#ifndef AIGC_EMULATE
#include <c10/cuda/CUDAException.h>
#endif

#include <cmath>
#include <type_traits>

#include "flash_common.cuh"

namespace aigc_kernels {
namespace flash {

template <int D>
struct BwdCfg {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStride = Pad<D>::kStride;
  // dkdv: 64 keys per CTA; query blocks of kBMq rows
  static constexpr int kBNk = 16 * kWarps;
  static constexpr int kBMq = D <= 64 ? 64 : 32;
  static constexpr int kDkdvSmem = (2 * kBNk + 4 * kBMq) * kStride;  // K, V + 2 stages of Q, dO (elements)
  static constexpr int kDkdvSmemFloats = 4 * kBMq;                    // 2 stages of lse2, delta
  // dq: 64 query rows per CTA; key blocks of kBN
  static constexpr int kBMdq = 16 * kWarps;
  static constexpr int kBNdq = D <= 64 ? 64 : 32;
  static constexpr int kDqSmem = (2 * kBMdq + 4 * kBNdq) * kStride;  // Q, dO + 2 stages of K, V
};

template <typename T>
__device__ __forceinline__ void store_pair(T* dst, float a, float b AIGC_SITE_PARAMS) {
  st_global(reinterpret_cast<uint32_t*>(dst), pack2<T>(a, b) AIGC_SITE_ARGS);
}

template <typename T, int D>
__global__ void __launch_bounds__(BwdCfg<D>::kThreads) dkdv_kernel(const BwdParams p) {
  using C = BwdCfg<D>;
  constexpr int kS = C::kStride, kBN = C::kBNk, kBM = C::kBMq, kQT = kBM / 8, kDT = D / 8;
  AIGC_DYNAMIC_SMEM(smem_raw);
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kBN * kS;
  T* sQ = sV + kBN * kS;          // [2][kBM][kS]
  T* sdO = sQ + 2 * kBM * kS;     // [2][kBM][kS]
  float* sL = reinterpret_cast<float*>(sdO + 2 * kBM * kS);  // [2][kBM] lse in log2 units (+inf: p = 0)
  float* sDelta = sL + 2 * kBM;                              // [2][kBM]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
  const int b = blockIdx.y / p.heads_kv, hk = blockIdx.y % p.heads_kv;
  const int group = p.heads_q / p.heads_kv;
  const Seq seq = sequence(p, b);
  const int n0 = blockIdx.x * kBN;
  if (n0 >= seq.lk) return;
  const int n_last = min(n0 + kBN, seq.lk) - 1;
  const Band band{seq.lq, seq.lk, seq.lk - seq.lq, p.window_left, p.window_right};
  const int q_lo = band.query_lo(n0), q_hi = band.query_hi(n_last);
  const int mb_lo = q_lo / kBM;
  const int mb_hi = q_hi > mb_lo * kBM ? (q_hi + kBM - 1) / kBM : mb_lo;
  const int per_head = mb_hi - mb_lo, steps = group * per_head;

  const int64_t k_off = seq.k_offset(b, p.k_batch_stride, p.k_row_stride) + static_cast<int64_t>(hk) * p.k_head_stride;
  const int64_t v_off = seq.k_offset(b, p.v_batch_stride, p.v_row_stride) + static_cast<int64_t>(hk) * p.v_head_stride;
  const T* q_seq = static_cast<const T*>(p.q) + seq.q_offset(b, p.q_batch_stride, p.q_row_stride);
  const T* do_seq = static_cast<const T*>(p.dout) + seq.q_offset(b, p.do_batch_stride, p.do_row_stride);

  // Stage `st` <- (query head hk * group + step / per_head, query block mb_lo + step % per_head).
  auto load_step = [&](int step, int st) {
    const int h = hk * group + step / per_head, i0 = (mb_lo + step % per_head) * kBM;
    load_tile<T, kBM, D, C::kThreads>(sQ + st * kBM * kS, q_seq + static_cast<int64_t>(h) * p.q_head_stride,
                                      p.q_row_stride, i0, seq.lq, tid);
    load_tile<T, kBM, D, C::kThreads>(sdO + st * kBM * kS, do_seq + static_cast<int64_t>(h) * p.do_head_stride,
                                      p.do_row_stride, i0, seq.lq, tid);
    const int64_t l_off = seq.lse_offset(b, h, p.lse_batch_stride, p.lse_head_stride);
    for (int r = tid; r < kBM; r += C::kThreads) {
      const int i = i0 + r;
      float l2 = INFINITY, dl = 0.f;
      if (i < seq.lq) {
        const float l = ld_global(p.lse + l_off + i);
        l2 = l == -INFINITY ? INFINITY : l * kLog2e;
        dl = ld_global(p.delta + l_off + i);
      }
      st_shared(sL + st * kBM + r, l2);
      st_shared(sDelta + st * kBM + r, dl);
    }
  };

  float dk[kDT][4], dv[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) {
    dk[dt][0] = dk[dt][1] = dk[dt][2] = dk[dt][3] = 0.f;
    dv[dt][0] = dv[dt][1] = dv[dt][2] = dv[dt][3] = 0.f;
  }

  if (steps > 0) {
    load_tile<T, kBN, D, C::kThreads>(sK, static_cast<const T*>(p.k) + k_off, p.k_row_stride, n0, seq.lk, tid);
    load_tile<T, kBN, D, C::kThreads>(sV, static_cast<const T*>(p.v) + v_off, p.v_row_stride, n0, seq.lk, tid);
    load_step(0, 0);
    cp_async_commit();
  }
  const int wkey = warp * 16;  // this warp's keys: n0 + wkey + g (+8)
  // One step (a query block of one head of the group); kMasked: the per-element band mask.
  int stage = 0;
  auto step_fn = [&](const int step, auto masked_tag) {
    constexpr bool kMasked = decltype(masked_tag)::value;
    if (step + 1 < steps) {
      load_step(step + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* qt = sQ + stage * kBM * kS;
    const T* dot = sdO + stage * kBM * kS;
    const float* lt = sL + stage * kBM;
    const float* deltat = sDelta + stage * kBM;
    const int i0 = (mb_lo + step % per_head) * kBM;

    // S^T = K Q^T and dP^T = V dO^T (rows: this warp's 16 keys; columns: kBM queries)
    float st_[kQT][4], dpt[kQT][4];
#pragma unroll
    for (int nt = 0; nt < kQT; ++nt) {
      st_[nt][0] = st_[nt][1] = st_[nt][2] = st_[nt][3] = 0.f;
      dpt[nt][0] = dpt[nt][1] = dpt[nt][2] = dpt[nt][3] = 0.f;
    }
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t ak[4], av[4];
      load_a<T, kS>(ak, sK, wkey, ks * 16, lane);
      load_a<T, kS>(av, sV, wkey, ks * 16, lane);
#pragma unroll
      for (int np = 0; np < kQT / 2; ++np) {
        uint32_t bq[4], bdo[4];
        load_b_nk<T, kS>(bq, qt, np * 16, ks * 16, lane);
        load_b_nk<T, kS>(bdo, dot, np * 16, ks * 16, lane);
        mma<T>(st_[2 * np], ak, bq[0], bq[1]);
        mma<T>(st_[2 * np + 1], ak, bq[2], bq[3]);
        mma<T>(dpt[2 * np], av, bdo[0], bdo[1]);
        mma<T>(dpt[2 * np + 1], av, bdo[2], bdo[3]);
      }
    }

    // P^T and dS^T (in place of S^T and dP^T)
#ifdef AIGC_EMULATE
    if (!kMasked && !band.all_visible(i0, i0 + kBM - 1, n0, n0 + kBN - 1)) {
      fprintf(stderr, "dkdv_kernel: query block at %d run unmasked but not visible whole\n", i0);
      abort();
    }
#endif
#pragma unroll
    for (int nt = 0; nt < kQT; ++nt) {
#pragma unroll
      for (int e4 = 0; e4 < 4; ++e4) {
        const int col = nt * 8 + 2 * t + (e4 & 1);
        const int j = n0 + wkey + g + (e4 >> 1) * 8;
        float pr = exp2f(st_[nt][e4] * p.scale_log2 - ld_shared(lt + col));
        if (kMasked && !band.visible(i0 + col, j)) pr = 0.f;
        st_[nt][e4] = pr;
        dpt[nt][e4] = pr * (dpt[nt][e4] - ld_shared(deltat + col));
      }
    }

    // dV += P^T dO,  dK += dS^T Q
#pragma unroll
    for (int ks = 0; ks < kBM / 16; ++ks) {
      uint32_t ap[4], ads[4];
      acc_to_a<T>(ap, st_[2 * ks], st_[2 * ks + 1]);
      acc_to_a<T>(ads, dpt[2 * ks], dpt[2 * ks + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bdo[4], bq[4];
        load_b_kn<T, kS>(bdo, dot, ks * 16, dp * 16, lane);
        load_b_kn<T, kS>(bq, qt, ks * 16, dp * 16, lane);
        mma<T>(dv[2 * dp], ap, bdo[0], bdo[1]);
        mma<T>(dv[2 * dp + 1], ap, bdo[2], bdo[3]);
        mma<T>(dk[2 * dp], ads, bq[0], bq[1]);
        mma<T>(dk[2 * dp + 1], ads, bq[2], bq[3]);
      }
    }
    __syncthreads();
    stage ^= 1;
  };
  // The query blocks that see this CTA's keys whole run without the mask (Band::whole_query_blocks), in each head
  // of the group.
  const Band::Run run = band.whole_query_blocks(n0, n0 + kBN - 1, kBM, mb_lo, mb_hi);
  for (int head = 0; head < group && per_head > 0; ++head) {
    const int first = head * per_head - mb_lo;  // the step of query block mb of this head: first + mb
    step_in_runs(first + mb_lo, Band::Run{first + run.first, first + run.last}, first + mb_hi, step_fn);
  }

  T* dk_seq = static_cast<T*>(p.dk) + seq.k_offset(b, p.dk_batch_stride, p.dk_row_stride) +
              static_cast<int64_t>(hk) * p.dk_head_stride;
  T* dv_seq = static_cast<T*>(p.dv) + seq.k_offset(b, p.dv_batch_stride, p.dv_row_stride) +
              static_cast<int64_t>(hk) * p.dv_head_stride;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int j = n0 + wkey + g + half * 8;
    if (j >= seq.lk) continue;
    T* dkr = dk_seq + static_cast<int64_t>(j) * p.dk_row_stride;
    T* dvr = dv_seq + static_cast<int64_t>(j) * p.dv_row_stride;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      store_pair<T>(dkr + dt * 8 + 2 * t, dk[dt][half * 2] * p.scale, dk[dt][half * 2 + 1] * p.scale);
      store_pair<T>(dvr + dt * 8 + 2 * t, dv[dt][half * 2], dv[dt][half * 2 + 1]);
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(BwdCfg<D>::kThreads) dq_kernel(const BwdParams p) {
  using C = BwdCfg<D>;
  constexpr int kS = C::kStride, kBM = C::kBMdq, kBN = C::kBNdq, kNT = kBN / 8, kDT = D / 8;
  AIGC_DYNAMIC_SMEM(smem_raw);
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + kBM * kS;
  T* sK = sdO + kBM * kS;  // [2][kBN][kS]
  T* sV = sK + 2 * kBN * kS;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
  const int b = blockIdx.y / p.heads_q, h = blockIdx.y % p.heads_q;
  const int hk = h / (p.heads_q / p.heads_kv);
  const Seq seq = sequence(p, b);
  const int m0 = blockIdx.x * kBM;
  if (m0 >= seq.lq) return;
  const int m_last = min(m0 + kBM, seq.lq) - 1;
  const Band band{seq.lq, seq.lk, seq.lk - seq.lq, p.window_left, p.window_right};
  const int nb_lo = band.key_lo(m0) / kBN;
  const int key_hi = band.key_hi(m_last);
  const int nb_hi = key_hi > nb_lo * kBN ? (key_hi + kBN - 1) / kBN : nb_lo;

  const T* q_head = static_cast<const T*>(p.q) + seq.q_offset(b, p.q_batch_stride, p.q_row_stride) +
                    static_cast<int64_t>(h) * p.q_head_stride;
  const T* do_head = static_cast<const T*>(p.dout) + seq.q_offset(b, p.do_batch_stride, p.do_row_stride) +
                     static_cast<int64_t>(h) * p.do_head_stride;
  const T* k_head = static_cast<const T*>(p.k) + seq.k_offset(b, p.k_batch_stride, p.k_row_stride) +
                    static_cast<int64_t>(hk) * p.k_head_stride;
  const T* v_head = static_cast<const T*>(p.v) + seq.k_offset(b, p.v_batch_stride, p.v_row_stride) +
                    static_cast<int64_t>(hk) * p.v_head_stride;
  const int64_t l_off = seq.lse_offset(b, h, p.lse_batch_stride, p.lse_head_stride);

  const int wrow = warp * 16;
  int qi[2];
  float l2[2], dl[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = m0 + wrow + g + half * 8;
    qi[half] = min(i, seq.lq);  // lq: invisible to every key
    l2[half] = INFINITY;
    dl[half] = 0.f;
    if (i < seq.lq) {
      const float l = ld_global(p.lse + l_off + i);
      l2[half] = l == -INFINITY ? INFINITY : l * kLog2e;
      dl[half] = ld_global(p.delta + l_off + i);
    }
  }

  float dq[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) dq[dt][0] = dq[dt][1] = dq[dt][2] = dq[dt][3] = 0.f;

  if (nb_lo < nb_hi) {
    load_tile<T, kBM, D, C::kThreads>(sQ, q_head, p.q_row_stride, m0, seq.lq, tid);
    load_tile<T, kBM, D, C::kThreads>(sdO, do_head, p.do_row_stride, m0, seq.lq, tid);
    load_tile<T, kBN, D, C::kThreads>(sK, k_head, p.k_row_stride, nb_lo * kBN, seq.lk, tid);
    load_tile<T, kBN, D, C::kThreads>(sV, v_head, p.v_row_stride, nb_lo * kBN, seq.lk, tid);
    cp_async_commit();
  }
  // One key block; kMasked: the per-element band mask.
  int stage = 0;
  auto step = [&](const int nb, auto masked_tag) {
    constexpr bool kMasked = decltype(masked_tag)::value;
    if (nb + 1 < nb_hi) {
      const int next = stage ^ 1;
      load_tile<T, kBN, D, C::kThreads>(sK + next * kBN * kS, k_head, p.k_row_stride, (nb + 1) * kBN, seq.lk, tid);
      load_tile<T, kBN, D, C::kThreads>(sV + next * kBN * kS, v_head, p.v_row_stride, (nb + 1) * kBN, seq.lk, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* kt = sK + stage * kBN * kS;
    const T* vt = sV + stage * kBN * kS;

    // S = Q K^T, dP = dO V^T
    float s[kNT][4], dpm[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
      dpm[nt][0] = dpm[nt][1] = dpm[nt][2] = dpm[nt][3] = 0.f;
    }
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t aq[4], ado[4];
      load_a<T, kS>(aq, sQ, wrow, ks * 16, lane);
      load_a<T, kS>(ado, sdO, wrow, ks * 16, lane);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t bk[4], bv[4];
        load_b_nk<T, kS>(bk, kt, np * 16, ks * 16, lane);
        load_b_nk<T, kS>(bv, vt, np * 16, ks * 16, lane);
        mma<T>(s[2 * np], aq, bk[0], bk[1]);
        mma<T>(s[2 * np + 1], aq, bk[2], bk[3]);
        mma<T>(dpm[2 * np], ado, bv[0], bv[1]);
        mma<T>(dpm[2 * np + 1], ado, bv[2], bv[3]);
      }
    }

    // dS = P * (dP - delta) (in place of dP)
    const int n0 = nb * kBN;
#ifdef AIGC_EMULATE
    if (!kMasked && !band.all_visible(m0, m0 + kBM - 1, n0, n0 + kBN - 1)) {
      fprintf(stderr, "dq_kernel: key block %d run unmasked but not visible whole\n", nb);
      abort();
    }
#endif
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e4 = 0; e4 < 4; ++e4) {
        const int half = e4 >> 1;
        float pr = exp2f(s[nt][e4] * p.scale_log2 - l2[half]);
        if (kMasked && !band.visible(qi[half], n0 + nt * 8 + 2 * t + (e4 & 1))) pr = 0.f;
        dpm[nt][e4] = pr * (dpm[nt][e4] - dl[half]);
      }
    }

    // dQ += dS K
#pragma unroll
    for (int ks = 0; ks < kBN / 16; ++ks) {
      uint32_t ads[4];
      acc_to_a<T>(ads, dpm[2 * ks], dpm[2 * ks + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bk[4];
        load_b_kn<T, kS>(bk, kt, ks * 16, dp * 16, lane);
        mma<T>(dq[2 * dp], ads, bk[0], bk[1]);
        mma<T>(dq[2 * dp + 1], ads, bk[2], bk[3]);
      }
    }
    __syncthreads();
    stage ^= 1;
  };
  // The key blocks every query row of the CTA sees whole run without the mask, as in the forward.
  step_in_runs(nb_lo, band.whole_key_blocks(m0, m0 + kBM - 1, kBN, nb_lo, nb_hi), nb_hi, step);

  T* dq_head = static_cast<T*>(p.dq) + seq.q_offset(b, p.dq_batch_stride, p.dq_row_stride) +
               static_cast<int64_t>(h) * p.dq_head_stride;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = m0 + wrow + g + half * 8;
    if (i >= seq.lq) continue;
    T* dqr = dq_head + static_cast<int64_t>(i) * p.dq_row_stride;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      store_pair<T>(dqr + dt * 8 + 2 * t, dq[dt][half * 2] * p.scale, dq[dt][half * 2 + 1] * p.scale);
    }
  }
}

#ifndef AIGC_EMULATE  // the launcher (tests/emulation drives the kernels itself)
template <typename T, int D>
void run_bwd(const BwdParams& p, cudaStream_t stream) {
  using C = BwdCfg<D>;
  run_bwd_delta<T>(p, stream);

  const int smem_kv = C::kDkdvSmem * static_cast<int>(sizeof(T)) + C::kDkdvSmemFloats * static_cast<int>(sizeof(float));
  auto kv_kernel = dkdv_kernel<T, D>;
  if (smem_kv > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_kv));
  }
  const dim3 grid_kv((p.seqlen_k + C::kBNk - 1) / C::kBNk, p.batch * p.heads_kv);
  kv_kernel<<<grid_kv, C::kThreads, smem_kv, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int smem_q = C::kDqSmem * static_cast<int>(sizeof(T));
  auto q_kernel = dq_kernel<T, D>;
  if (smem_q > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(q_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_q));
  }
  const dim3 grid_q((p.seqlen_q + C::kBMdq - 1) / C::kBMdq, p.batch * p.heads_q);
  q_kernel<<<grid_q, C::kThreads, smem_q, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#endif  // AIGC_EMULATE

}  // namespace flash
}  // namespace aigc_kernels
