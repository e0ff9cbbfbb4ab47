// Runs the CUDA flash attention kernels' own source on the CPU (csrc/emulate.h) and
// compares them with a float64 reference. Built and driven by tests/test_kernel_emulation.py:
//
//   flash_emulate MODE DTYPE D B HQ HKV LQ LK CAUSAL WL WR PACKED SPLITS SEED [PAGE]
//     MODE fwd | bwd | decode, or fwdw | decodew (the sm_90a wgmma forward, head dims 64 and 128);
//     DTYPE f16 | bf16;  PACKED 1: varlen with per-batch lengths drawn
//     from [0, LQ] x [0, LK] (LQ/LK are then the maxima);  SPLITS: decode's split count;
//     PAGE (decode, or fwd/fwdw with PACKED): > 0 reads the keys as pages of PAGE rows through a shuffled
//     block table (slots no sequence owns hold NaN, table entries past a sequence's pages are garbage: neither
//     may be read); packed queries then get their key counts from seqused_k alone (no cu_seqlens_k), each
//     sequence using a drawn prefix of its keys. PAGE = -1 (fwd with PACKED): seqused_k over the packed
//     contiguous keys, each sequence using a drawn prefix of its cu_seqlens_k rows.
//
// Prints one JSON line: the max abs error of out, lse, dq, dk, dv (the ones computed) and the
// max abs value of each reference, for the test's bounds; and the ldmatrix bank figures per site
// ([requests, wavefronts, ideal wavefronts]) and the cp.async ones ([requests, shared wavefronts, ideal,
// global sectors, ideal]), csrc/emulate.h.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common.h"

#include "attention/flash_bwd.cuh"
#include "attention/flash_combine.cuh"
#include "attention/flash_fwd.cuh"

using namespace aigc_kernels::flash;

using emu_test::Err;

namespace {

template <typename T>
uint16_t to_bits(float f) {
  T v;
  if constexpr (std::is_same_v<T, __half>) v = __float2half_rn(f); else v = __float2bfloat16_rn(f);
  uint16_t b;
  std::memcpy(&b, &v, 2);
  return b;
}

template <typename T>
float from_bits(uint16_t b) {
  return emu::to_f<T>(b);
}

template <typename T, int D>
int run(const std::string& mode, int B, int HQ, int HKV, int LQ, int LK, bool causal, int wl, int wr, bool packed,
        int splits, unsigned seed, int page) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> uq(0, LQ), uk(0, LK);
  const bool decode = mode == "decode" || mode == "decodew";
  const bool wgmma = mode == "fwdw" || mode == "decodew";
  const int G = HQ / HKV;
  // Sequence lengths and row offsets.
  std::vector<int> lq(B, LQ), lk(B, LK), cu_q(B + 1, 0), cu_k(B + 1, 0), used(B, LK);
  if (packed) {
    for (int b = 0; b < B; ++b) {
      lq[b] = uq(rng);
      lk[b] = uk(rng);
    }
    lq[0] = LQ;  // the maxima are attained
    lk[B - 1] = LK;
  }
  if (decode) {
    for (int b = 0; b < B; ++b) used[b] = lk[b] = uk(rng);
    used[0] = lk[0] = LK;
  }
  const bool seqused = !decode && packed && page != 0;  // fwd over the first used[b] keys of each sequence
  if ((page != 0 && mode == "bwd") || (page != 0 && !decode && !packed) || (page < 0 && decode)) {
    std::fprintf(stderr, "PAGE > 0 takes decode or a packed forward, PAGE = -1 a packed forward\n");
    return 2;
  }
  if (seqused) {
    for (int b = 0; b < B; ++b) used[b] = std::uniform_int_distribution<int>(0, lk[b])(rng);
    used[B - 1] = lk[B - 1];
  } else if (!decode) {
    used = lk;
  }
  for (int b = 0; b < B; ++b) {
    cu_q[b + 1] = cu_q[b] + lq[b];
    cu_k[b + 1] = cu_k[b] + lk[b];
  }
  const int total_q = packed ? cu_q[B] : B * LQ, total_k = packed ? cu_k[B] : B * LK;
  // Index of (b, h, row) in q/out ((B, H, L, D) dense, (total, H, D) packed) and k/v.
  auto qi = [&](int b, int h, int i) -> int64_t {
    return packed ? (static_cast<int64_t>(cu_q[b] + i) * HQ + h) * D : ((static_cast<int64_t>(b) * HQ + h) * LQ + i) * D;
  };
  auto ki = [&](int b, int h, int j) -> int64_t {
    return packed ? (static_cast<int64_t>(cu_k[b] + j) * HKV + h) * D : ((static_cast<int64_t>(b) * HKV + h) * LK + j) * D;
  };
  auto li = [&](int b, int h, int i) -> int64_t {
    return packed ? static_cast<int64_t>(h) * total_q + cu_q[b] + i : (static_cast<int64_t>(b) * HQ + h) * LQ + i;
  };
  using Global = emu_test::DeviceVector<uint16_t>;  // (256-byte aligned, as on a GPU)
  Global q(static_cast<size_t>(total_q) * HQ * D), k(static_cast<size_t>(total_k) * HKV * D), v(k.size()),
      dout(q.size());
  emu_test::DeviceVector<uint16_t> out(q.size(), to_bits<T>(NAN)), dq(q.size(), to_bits<T>(NAN)),
      dk(k.size(), to_bits<T>(NAN)), dv(k.size(), to_bits<T>(NAN));
  for (auto* t : {&q, &k, &v, &dout}) {
    for (auto& x : *t) x = to_bits<T>(normal(rng));
  }
  if (seqused) {  // keys past a sequence's seqused_k hold NaN: read, they would poison its output
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < HKV; ++h)
        for (int j = used[b]; j < lk[b]; ++j)
          for (int d = 0; d < D; ++d) k[ki(b, h, j) + d] = v[ki(b, h, j) + d] = to_bits<T>(NAN);
  }
  emu_test::DeviceVector<float> lse(static_cast<size_t>(total_q) * HQ, NAN), delta(lse.size(), NAN);
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const int right = causal ? 0 : wr;

  // float64 reference
  std::vector<double> ro(q.size(), 0), rlse(lse.size(), -INFINITY), rdq(q.size(), 0), rdk(k.size(), 0),
      rdv(k.size(), 0);
  for (int b = 0; b < B; ++b) {
    const int nk = used[b];  // the keys sequence b sees (lk[b] but with seqused_k)
    const int off = nk - lq[b];
    for (int h = 0; h < HQ; ++h) {
      const int hk = h / G;
      for (int i = 0; i < lq[b]; ++i) {
        std::vector<double> p(nk, 0);
        double m = -INFINITY;
        for (int j = 0; j < nk; ++j) {
          const bool vis = (right < 0 || j <= i + off + right) && (wl < 0 || j >= i + off - wl);
          if (!vis) { p[j] = -INFINITY; continue; }
          double s = 0;
          for (int d = 0; d < D; ++d) s += double(from_bits<T>(q[qi(b, h, i) + d])) * from_bits<T>(k[ki(b, hk, j) + d]);
          p[j] = s * scale;
          m = std::max(m, p[j]);
        }
        if (m == -INFINITY) continue;  // no visible key: out 0, lse -inf, no gradient
        double l = 0;
        for (int j = 0; j < nk; ++j) { p[j] = std::exp(p[j] - m); l += p[j]; }
        for (int j = 0; j < nk; ++j) p[j] /= l;
        rlse[li(b, h, i)] = m + std::log(l);
        for (int d = 0; d < D; ++d) {
          double o = 0;
          for (int j = 0; j < nk; ++j) o += p[j] * from_bits<T>(v[ki(b, hk, j) + d]);
          ro[qi(b, h, i) + d] = o;
        }
        if (mode != "bwd") continue;
        // dP = dO V^T, dS = P (dP - rowsum(dO O)), dQ = dS K scale, dK = dS^T Q scale, dV = P^T dO
        double dl = 0;
        for (int d = 0; d < D; ++d) dl += double(from_bits<T>(dout[qi(b, h, i) + d])) * ro[qi(b, h, i) + d];
        for (int j = 0; j < nk; ++j) {
          if (p[j] == 0) continue;
          double dp = 0;
          for (int d = 0; d < D; ++d) dp += double(from_bits<T>(dout[qi(b, h, i) + d])) * from_bits<T>(v[ki(b, hk, j) + d]);
          const double ds = p[j] * (dp - dl);
          for (int d = 0; d < D; ++d) {
            rdq[qi(b, h, i) + d] += ds * from_bits<T>(k[ki(b, hk, j) + d]) * scale;
            rdk[ki(b, hk, j) + d] += ds * from_bits<T>(q[qi(b, h, i) + d]) * scale;
            rdv[ki(b, hk, j) + d] += p[j] * from_bits<T>(dout[qi(b, h, i) + d]);
          }
        }
      }
    }
  }

  // kernel parameters, as csrc/attention/flash_api.cpp sets them
  BwdParams p{};
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.out = out.data();
  p.lse = lse.data();
  auto strides = [&](int64_t H, int64_t L, int64_t& bs, int64_t& hs, int64_t& rs) {
    if (packed) { bs = 0; hs = D; rs = H * D; } else { bs = H * L * D; hs = L * D; rs = D; }
  };
  strides(HQ, LQ, p.q_batch_stride, p.q_head_stride, p.q_row_stride);
  strides(HKV, LK, p.k_batch_stride, p.k_head_stride, p.k_row_stride);
  strides(HKV, LK, p.v_batch_stride, p.v_head_stride, p.v_row_stride);
  strides(HQ, LQ, p.o_batch_stride, p.o_head_stride, p.o_row_stride);
  p.lse_batch_stride = packed ? 0 : static_cast<int64_t>(HQ) * LQ;
  p.lse_head_stride = packed ? total_q : LQ;
  p.cu_seqlens_q = packed ? cu_q.data() : nullptr;
  p.cu_seqlens_k = packed ? cu_k.data() : nullptr;
  p.seqused_k = decode || seqused ? used.data() : nullptr;
  p.seqused_k_add = 0;
  p.batch = B;
  p.heads_q = HQ;
  p.heads_kv = HKV;
  p.head_dim = D;
  p.seqlen_q = LQ;
  p.seqlen_k = LK;
  p.scale = scale;
  p.scale_log2 = scale * 1.4426950408889634f;
  p.window_left = wl;
  p.window_right = right;
  p.num_splits = decode ? splits : 1;
  Global kp, vp;
  std::vector<int> table;
  if (page > 0) {  // the same keys in shuffled pages (num_pages, page, HKV, D)
    const int width = (LK + page - 1) / page + 1, num_pages = B * width + 3;
    std::vector<int> ids(num_pages);
    for (int i = 0; i < num_pages; ++i) ids[i] = i;
    std::shuffle(ids.begin(), ids.end(), rng);
    table.assign(static_cast<size_t>(B) * width, 1 << 29);  // past each sequence's pages: garbage
    kp.assign(static_cast<size_t>(num_pages) * page * HKV * D, to_bits<T>(NAN));
    vp.assign(kp.size(), to_bits<T>(NAN));
    for (int b = 0; b < B; ++b) {
      for (int j = 0; j < (used[b] + page - 1) / page; ++j) table[b * width + j] = ids[b * width + j];
      for (int h = 0; h < HKV; ++h)
        for (int j = 0; j < used[b]; ++j) {
          const int64_t at = ((static_cast<int64_t>(table[b * width + j / page]) * page + j % page) * HKV + h) * D;
          for (int d = 0; d < D; ++d) {
            kp[at + d] = k[ki(b, h, j) + d];
            vp[at + d] = v[ki(b, h, j) + d];
          }
        }
    }
    p.k = kp.data();
    p.v = vp.data();
    p.k_batch_stride = p.v_batch_stride = static_cast<int64_t>(page) * HKV * D;  // the page stride
    p.k_head_stride = p.v_head_stride = D;
    p.k_row_stride = p.v_row_stride = static_cast<int64_t>(HKV) * D;  // the slot stride
    p.block_table = table.data();
    p.block_table_batch_stride = width;
    p.page_size = page;
    p.num_pages = num_pages;
    if (packed) {  // as the host sets it: no cu_seqlens_k, the rows a block table addresses cap seqused_k
      p.cu_seqlens_k = nullptr;
      p.seqlen_k = width * page;
    }
  }
  emu_test::DeviceVector<float> oacc, lacc;
  if (p.num_splits > 1) {
    oacc.assign(static_cast<size_t>(p.num_splits) * B * HQ * LQ * D, NAN);
    lacc.assign(static_cast<size_t>(p.num_splits) * B * HQ * LQ, NAN);
    p.out_accum = oacc.data();
    p.lse_accum = lacc.data();
  }
  if (packed) {  // rows outside every sequence: zero, as the host allocates them
    std::fill(out.begin(), out.end(), to_bits<T>(0.f));
    std::fill(lse.begin(), lse.end(), -INFINITY);
  }

  auto forward = [&](auto wg_tag) {
    constexpr bool kW = decltype(wg_tag)::value;
    using F = FwdCfg<D, kW>;
    const dim3 fgrid((G * LQ + F::kBM - 1) / F::kBM, B * HKV, p.num_splits);
    if (p.block_table != nullptr) {
      emu::launch(fgrid, F::kThreads, F::kSmemElems * sizeof(T), [&] { fwd_kernel<T, D, kW, true>(p); });
    } else {
      emu::launch(fgrid, F::kThreads, F::kSmemElems * sizeof(T), [&] { fwd_kernel<T, D, kW>(p); });
    }
  };
  if (wgmma) {
    if constexpr (D == 64 || D == 128) {
      forward(std::true_type{});
    } else {
      std::fprintf(stderr, "the wgmma forward covers head dims 64 and 128, got %d\n", D);
      return 2;
    }
  } else {
    forward(std::false_type{});
  }
  if (p.num_splits > 1) {
    const int64_t rows = static_cast<int64_t>(B) * HQ * LQ;
    emu::launch(dim3(static_cast<unsigned>((rows + 3) / 4)), 128, 0, [&] { combine_kernel<T>(p); });
  }

  Err e_out, e_lse, e_dq, e_dk, e_dv;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < HQ; ++h)
      for (int i = 0; i < lq[b]; ++i) {
        for (int d = 0; d < D; ++d) e_out.add(from_bits<T>(out[qi(b, h, i) + d]), ro[qi(b, h, i) + d]);
        if (p.num_splits == 1) e_lse.add(lse[li(b, h, i)], rlse[li(b, h, i)]);
      }

  if (mode == "bwd") {
    if constexpr (D <= 128) {
      if (packed) {
        std::fill(dq.begin(), dq.end(), to_bits<T>(0.f));
        std::fill(dk.begin(), dk.end(), to_bits<T>(0.f));
        std::fill(dv.begin(), dv.end(), to_bits<T>(0.f));
      }
      p.dout = dout.data();
      p.dq = dq.data();
      p.dk = dk.data();
      p.dv = dv.data();
      p.delta = delta.data();
      strides(HQ, LQ, p.do_batch_stride, p.do_head_stride, p.do_row_stride);
      strides(HQ, LQ, p.dq_batch_stride, p.dq_head_stride, p.dq_row_stride);
      strides(HKV, LK, p.dk_batch_stride, p.dk_head_stride, p.dk_row_stride);
      strides(HKV, LK, p.dv_batch_stride, p.dv_head_stride, p.dv_row_stride);
      p.total_q = total_q;
      const int64_t rows = static_cast<int64_t>(total_q) * HQ;
      emu::launch(dim3(static_cast<unsigned>((rows + 3) / 4)), 128, 0, [&] { delta_kernel<T>(p); });
      using C = BwdCfg<D>;
      emu::launch(dim3((LK + C::kBNk - 1) / C::kBNk, B * HKV), C::kThreads,
                  C::kDkdvSmem * sizeof(T) + C::kDkdvSmemFloats * sizeof(float), [&] { dkdv_kernel<T, D>(p); });
      emu::launch(dim3((LQ + C::kBMdq - 1) / C::kBMdq, B * HQ), C::kThreads, C::kDqSmem * sizeof(T),
                  [&] { dq_kernel<T, D>(p); });
      for (int b = 0; b < B; ++b) {
        for (int h = 0; h < HQ; ++h)
          for (int i = 0; i < lq[b]; ++i)
            for (int d = 0; d < D; ++d) e_dq.add(from_bits<T>(dq[qi(b, h, i) + d]), rdq[qi(b, h, i) + d]);
        for (int h = 0; h < HKV; ++h)
          for (int j = 0; j < lk[b]; ++j)
            for (int d = 0; d < D; ++d) {
              e_dk.add(from_bits<T>(dk[ki(b, h, j) + d]), rdk[ki(b, h, j) + d]);
              e_dv.add(from_bits<T>(dv[ki(b, h, j) + d]), rdv[ki(b, h, j) + d]);
            }
      }
    } else {
      std::fprintf(stderr, "no backward for head dim %d\n", D);
      return 2;
    }
  }
  // FNV-1a of every output bit: equal across fiber orders (AIGC_EMU_ORDER) unless the result depends on them
  uint64_t digest = 1469598103934665603ull;
  auto mix = [&](const auto& v) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(v.data());
    for (size_t i = 0; i < v.size() * sizeof(v[0]); ++i) digest = (digest ^ bytes[i]) * 1099511628211ull;
  };
  mix(out), mix(lse), mix(dq), mix(dk), mix(dv);
  std::printf("{\"out\": [%.6g, %.6g], \"lse\": [%.6g, %.6g], \"dq\": [%.6g, %.6g], \"dk\": [%.6g, %.6g], "
              "\"dv\": [%.6g, %.6g], \"digest\": \"%016llx\", \"ldmatrix\": ",
              e_out.err, e_out.ref, e_lse.err, e_lse.ref, e_dq.err, e_dq.ref, e_dk.err, e_dk.ref, e_dv.err,
              e_dv.ref, static_cast<unsigned long long>(digest));
  emu::report_banks(stdout);  // per site: [requests, wavefronts, ideal]
  std::printf(", \"cp.async\": ");
  emu::report_copies(stdout);  // per site: [requests, smem wavefronts, ideal, global sectors, ideal]
  std::printf(", \"shared\": ");
  emu::report_banks(stdout, emu::plain_banks());  // ld/st.shared per site: [requests, wavefronts, ideal]
  std::printf(", \"wgmma\": ");
  emu::report_banks(stdout, emu::wgmma_banks());  // operand core matrices per site: [requests, wavefronts, ideal]
  std::printf(", \"global\": ");
  emu::report_global(stdout);  // ld/st.global per site: [requests, sectors, ideal, width]
  std::printf("}\n");
  return 0;
}

template <typename T>
int by_dim(int D, const std::string& mode, int B, int HQ, int HKV, int LQ, int LK, bool causal, int wl, int wr,
           bool packed, int splits, unsigned seed, int page) {
  switch (D) {
    case 32: return run<T, 32>(mode, B, HQ, HKV, LQ, LK, causal, wl, wr, packed, splits, seed, page);
    case 64: return run<T, 64>(mode, B, HQ, HKV, LQ, LK, causal, wl, wr, packed, splits, seed, page);
    case 96: return run<T, 96>(mode, B, HQ, HKV, LQ, LK, causal, wl, wr, packed, splits, seed, page);
    case 128: return run<T, 128>(mode, B, HQ, HKV, LQ, LK, causal, wl, wr, packed, splits, seed, page);
    case 256: return run<T, 256>(mode, B, HQ, HKV, LQ, LK, causal, wl, wr, packed, splits, seed, page);
    default: std::fprintf(stderr, "head dim %d\n", D); return 2;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 15 && argc != 16) {
    std::fprintf(stderr, "usage: %s MODE DTYPE D B HQ HKV LQ LK CAUSAL WL WR PACKED SPLITS SEED [PAGE]\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1], dtype = argv[2];
  const int D = std::atoi(argv[3]), B = std::atoi(argv[4]), HQ = std::atoi(argv[5]), HKV = std::atoi(argv[6]),
            LQ = std::atoi(argv[7]), LK = std::atoi(argv[8]);
  const bool causal = std::atoi(argv[9]) != 0;
  const int wl = std::atoi(argv[10]), wr = std::atoi(argv[11]);
  const bool packed = std::atoi(argv[12]) != 0;
  const int splits = std::atoi(argv[13]);
  const unsigned seed = static_cast<unsigned>(std::atoi(argv[14]));
  const int page = argc == 16 ? std::atoi(argv[15]) : 0;
  if (dtype == "f16") return by_dim<__half>(D, mode, B, HQ, HKV, LQ, LK, causal, wl, wr, packed, splits, seed, page);
  return by_dim<__nv_bfloat16>(D, mode, B, HQ, HKV, LQ, LK, causal, wl, wr, packed, splits, seed, page);
}
