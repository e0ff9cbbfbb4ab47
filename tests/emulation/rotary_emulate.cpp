// Runs the CUDA rotary kernel (csrc/rotary/rotary_kernels.cuh) on the CPU through csrc/emulate.h and
// compares it with a float64 rotation. Driven by tests/test_kernel_emulation.py:
//
//   rotary_emulate DTYPE INTERLEAVED VECTOR POSITIONS INPLACE CONJ SEED
//     DTYPE f32 | f16 | bf16 (x; cos/sin in float32); VECTOR 1: 4 pairs a thread, 0: one;
//     POSITIONS 0: rows 0..L-1, 1: int64 (B, L), 2: int32 (1, L); INPLACE 1: out is x; CONJ 1: minus the angle
//
// x is (B, H, L, D) seen through strides of a (B, L, H, D) buffer (the layout of q before its transpose).
// Prints {"err": max |out - float64|, "ref": max |float64|, "rest_mismatches": N}.
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common.h"
#include "rotary/rotary_kernels.cuh"

using aigc_kernels::rotary::Params;
using aigc_kernels::rotary::run;
using emu_test::from_f;
using emu_test::to_d;

template <typename T, typename P>
void dispatch(const Params& p, bool interleaved, bool vector, int max_blocks) {
  if (interleaved && vector) run<T, float, P, true, 4>(p, max_blocks, nullptr);
  if (interleaved && !vector) run<T, float, P, true, 1>(p, max_blocks, nullptr);
  if (!interleaved && vector) run<T, float, P, false, 4>(p, max_blocks, nullptr);
  if (!interleaved && !vector) run<T, float, P, false, 1>(p, max_blocks, nullptr);
}

template <typename T>
int run_case(bool interleaved, bool vector, int positions, bool inplace, bool conj, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t B = 2, H = 3, L = 13, D = 40, half = vector ? 16 : 14, lmax = 50;  // 32 or 28 of 40 rotate
  std::vector<T> x(B * L * H * D), out(x.size());
  for (auto& v : x) v = from_f<T>(normal(rng));
  const std::vector<T> x0 = x;
  std::vector<float> cs(lmax * half), sn(lmax * half);
  for (int64_t p = 0; p < lmax; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double a = p * std::pow(10000.0, -double(i) / half);
      cs[p * half + i] = static_cast<float>(std::cos(a)), sn[p * half + i] = static_cast<float>(std::sin(a));
    }
  std::vector<int64_t> pos64(B * L);
  std::vector<int32_t> pos32(L);
  for (auto& p : pos64) p = static_cast<int64_t>(rng() % lmax);
  for (auto& p : pos32) p = static_cast<int32_t>(rng() % lmax);
  Params p{};
  p.x = x.data();
  p.out = inplace ? x.data() : out.data();
  p.cos = cs.data(), p.sin = sn.data();
  p.pos = positions == 0 ? nullptr : (positions == 1 ? static_cast<const void*>(pos64.data()) : pos32.data());
  p.x_sb = L * H * D, p.x_sh = D, p.x_sl = H * D;  // (B, L, H, D) memory seen as (B, H, L, D)
  p.o_sb = p.x_sb, p.o_sh = p.x_sh, p.o_sl = p.x_sl;
  p.cos_s = half, p.sin_s = half;
  p.pos_sb = positions == 1 ? L : 0, p.pos_sl = 1;
  p.B = B, p.H = H, p.L = L, p.D = D, p.half = half, p.lmax = lmax;
  p.conj = conj;
  p.copy_rest = !inplace;
  const int max_blocks = 5;  // fewer blocks than rows: the row loop wraps
  if (positions == 2) {
    dispatch<T, int32_t>(p, interleaved, vector, max_blocks);
  } else {
    dispatch<T, int64_t>(p, interleaved, vector, max_blocks);
  }
  const std::vector<T>& got = inplace ? x : out;
  emu_test::Err err;
  int64_t rest_bad = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t at = b * p.x_sb + h * p.x_sh + l * p.x_sl;
        const int64_t row = positions == 0 ? l : (positions == 1 ? pos64[b * L + l] : pos32[l]);
        for (int64_t i = 0; i < half; ++i) {
          const int64_t i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + half;
          const double c = cs[row * half + i], s = (conj ? -1 : 1) * double(sn[row * half + i]);
          const double x1 = to_d(x0[at + i1]), x2 = to_d(x0[at + i2]);
          err.add(to_d(got[at + i1]), x1 * c - x2 * s);
          err.add(to_d(got[at + i2]), x1 * s + x2 * c);
        }
        for (int64_t j = 2 * half; j < D; ++j) rest_bad += std::memcmp(&got[at + j], &x0[at + j], sizeof(T)) != 0;
      }
  std::printf("{\"err\": %.6g, \"ref\": %.6g, \"rest_mismatches\": %lld}\n", err.err, err.ref,
              static_cast<long long>(rest_bad));
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s DTYPE INTERLEAVED VECTOR POSITIONS INPLACE CONJ SEED\n", argv[0]);
    return 2;
  }
  const std::string dtype = argv[1];
  const bool interleaved = std::atoi(argv[2]), vector = std::atoi(argv[3]);
  const int positions = std::atoi(argv[4]);
  const bool inplace = std::atoi(argv[5]), conj = std::atoi(argv[6]);
  const unsigned seed = static_cast<unsigned>(std::atoi(argv[7]));
  if (dtype == "f32") return run_case<float>(interleaved, vector, positions, inplace, conj, seed);
  if (dtype == "f16") return run_case<__half>(interleaved, vector, positions, inplace, conj, seed);
  if (dtype == "bf16") return run_case<__nv_bfloat16>(interleaved, vector, positions, inplace, conj, seed);
  std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
  return 2;
}
