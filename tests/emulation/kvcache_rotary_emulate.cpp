// Runs the CUDA append-with-rotary kernel (kvcache_rotary_kernel, csrc/kvcache/kvcache_kernels.cuh) on the
// CPU through csrc/emulate.h and compares it with a float64 rotation. Driven by tests/test_kernel_emulation.py:
//
//   kvcache_rotary_emulate DTYPE COS INTERLEAVED PAGED CAUSAL HALF SEED
//     DTYPE f32 | f16 | bf16 (q, k, v, caches); COS f32 | same (cos/sin in float32 or the caches' dtype);
//     PAGED 1: caches (num_pages, 8, Hkv, D) through a shuffled block table; CAUSAL 1: query row i at
//     cache_seqlens[b] + i, 0: every query row at cache_seqlens[b]; HALF: rotary pairs (2 * HALF <= D = 64).
//
// k_new rows must land in the cache rotated at cache_seqlens[b] + i, v_new rows copied exactly, every other
// cache slot untouched, q rotated into q_out; the features past 2 * HALF pass through exactly.
// Prints {"err": max |rotated - float64|, "ref": max |float64|, "mismatches": N (exact parts), "checked": M}.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common.h"
#include "kvcache/kvcache_kernels.cuh"

using namespace aigc_kernels;
using emu_test::Err;
using emu_test::from_f;
using emu_test::to_d;

namespace {

template <typename T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <typename T, typename C>
int run_case(bool interleaved, bool paged, bool causal, int64_t half, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t B = 3, Hkv = 2, Hq = 4, Lnew = 3, Lq = 2, D = 64, Lmax = 40, Page = 8, Width = Lmax / Page;
  const int64_t Pages = B * Width + 2, Lro = Lmax;
  const std::vector<int32_t> lens = {0, 17, 37};  // the last batch fills the cache exactly
  std::vector<int32_t> table(B * Width);
  for (int64_t i = 0; i < B * Width; ++i) table[i] = static_cast<int32_t>(i);
  std::shuffle(table.begin(), table.end(), rng);
  // element strides: caches {batch, head, row, 1} or paged {page, head, slot, 1}; k_new/v_new/q contiguous
  const int64_t cs[4] = {paged ? Page * Hkv * D : Hkv * Lmax * D, paged ? D : Lmax * D, paged ? Hkv * D : D, 1};
  std::vector<T> kc((paged ? Pages * Page : B * Lmax) * Hkv * D), vc(kc.size()), kn(B * Hkv * Lnew * D),
      vn(kn.size()), q(B * Hq * Lq * D), qo(q.size(), from_f<T>(NAN));
  for (auto* t : {&kc, &vc, &kn, &vn, &q})
    for (auto& x : *t) x = from_f<T>(normal(rng));
  const std::vector<T> kc0 = kc, vc0 = vc;
  std::vector<C> cos_t(Lro * half), sin_t(Lro * half);
  for (int64_t p = 0; p < Lro; ++p)
    for (int64_t j = 0; j < half; ++j) {
      const double a = p * std::pow(10000.0, -double(j) / half);
      cos_t[p * half + j] = from_f<C>(static_cast<float>(std::cos(a)));
      sin_t[p * half + j] = from_f<C>(static_cast<float>(std::sin(a)));
    }

  RotaryAppendParams p{};
  p.k_cache = kc.data(), p.v_cache = vc.data(), p.k_new = kn.data(), p.v_new = vn.data();
  p.q = q.data(), p.q_out = qo.data(), p.cos = cos_t.data(), p.sin = sin_t.data();
  p.cache_seqlens = lens.data();
  p.block_table = paged ? table.data() : nullptr;
  p.kc = p.vc = Strides4{{cs[0], cs[1], cs[2], cs[3]}};
  p.kn = p.vn = Strides4{{Hkv * Lnew * D, Lnew * D, D, 1}};
  p.qs = p.qo = Strides4{{Hq * Lq * D, Lq * D, D, 1}};
  p.cos_stride = p.sin_stride = half;
  p.bt_stride = Width, p.page_size = paged ? Page : 1, p.num_pages = paged ? Pages : 0;
  p.batch = B, p.heads_kv = Hkv, p.heads_q = Hq, p.lnew = Lnew, p.lq = Lq, p.D = D, p.half = half;
  p.lmax = Lmax, p.lro = Lro, p.causal = causal;
  emu::launch(dim3(7), 32, 0, [&] {  // fewer blocks than rows: the row loop wraps
    if (interleaved) kvcache_rotary_kernel<T, C, true>(p); else kvcache_rotary_kernel<T, C, false>(p);
  });

  // float64 rotation of row x at position pos; exact pass-through past 2 * half
  Err err;
  int64_t bad = 0, checked = 0;
  auto check_row = [&](const T* x, const T* got, int64_t pos) {
    for (int64_t j = 0; j < half; ++j) {
      const int64_t a = interleaved ? 2 * j : j, z = interleaved ? 2 * j + 1 : j + half;
      const double c = to_d(cos_t[pos * half + j]), s = to_d(sin_t[pos * half + j]);
      err.add(to_d(got[a]), to_d(x[a]) * c - to_d(x[z]) * s);
      err.add(to_d(got[z]), to_d(x[a]) * s + to_d(x[z]) * c);
    }
    for (int64_t j = 2 * half; j < D; ++j, ++checked) bad += !same_bits(got[j], x[j]);
  };
  std::vector<char> written(kc.size(), 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t i = 0; i < Lnew; ++i) {
        const int64_t pos = lens[b] + i;
        const int64_t at = (paged ? table[b * Width + pos / Page] * cs[0] + (pos % Page) * cs[2]
                                  : b * cs[0] + pos * cs[2]) + h * cs[1];
        const int64_t src = ((b * Hkv + h) * Lnew + i) * D;
        check_row(&kn[src], &kc[at], pos);
        for (int64_t d = 0; d < D; ++d, ++checked) {
          bad += !same_bits(vc[at + d], vn[src + d]);
          written[at + d] = 1;
        }
      }
  for (size_t at = 0; at < kc.size(); ++at) {
    if (written[at]) continue;
    bad += !same_bits(kc[at], kc0[at]) + !same_bits(vc[at], vc0[at]);
    checked += 2;
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Lq; ++i) {
        const int64_t at = ((b * Hq + h) * Lq + i) * D;
        check_row(&q[at], &qo[at], lens[b] + (causal ? i : 0));
      }
  std::printf("{\"err\": %.6g, \"ref\": %.6g, \"mismatches\": %lld, \"checked\": %lld}\n", err.err, err.ref,
              static_cast<long long>(bad), static_cast<long long>(checked));
  return 0;
}

template <typename T>
int by_cos(bool cos_f32, bool interleaved, bool paged, bool causal, int64_t half, unsigned seed) {
  if (cos_f32) return run_case<T, float>(interleaved, paged, causal, half, seed);
  return run_case<T, T>(interleaved, paged, causal, half, seed);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s DTYPE COS INTERLEAVED PAGED CAUSAL HALF SEED\n", argv[0]);
    return 2;
  }
  const std::string dtype = argv[1], cos = argv[2];
  const bool interleaved = std::atoi(argv[3]) != 0, paged = std::atoi(argv[4]) != 0, causal = std::atoi(argv[5]);
  const int64_t half = std::atoi(argv[6]);
  const unsigned seed = static_cast<unsigned>(std::atoi(argv[7]));
  if (half < 1 || 2 * half > 64) return 2;
  const bool f32 = cos == "f32";
  if (dtype == "f32") return run_case<float, float>(interleaved, paged, causal, half, seed);
  if (dtype == "f16") return by_cos<__half>(f32, interleaved, paged, causal, half, seed);
  return by_cos<__nv_bfloat16>(f32, interleaved, paged, causal, half, seed);
}
