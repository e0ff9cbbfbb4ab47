// Runs the CUDA elementwise activation kernels (csrc/gemm/act_kernels.cuh) on the CPU through
// csrc/emulate.h and compares them with float64 formulas. Driven by tests/test_kernel_emulation.py:
//
//   act_emulate DTYPE ACT SEED      DTYPE f32 | f16 | bf16; ACT 0 none, 1 relu, 2 gelu, 3 gelu_tanh, 4 silu
//
// Prints {name: [max abs error, max abs reference]} for act, dact (dy * act'), gated h, du, dg.
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common.h"

#include "gemm/act_kernels.cuh"

using namespace aigc_kernels::gemm;

using emu_test::Err;
using emu_test::from_f;
using emu_test::to_d;

namespace {

double act_ref(double x, int act) {
  switch (act) {
    case 1: return x > 0 ? x : 0;
    case 2: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case 3: return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case 4: return x / (1 + std::exp(-x));
    default: return x;
  }
}

double dact_ref(double x, int act) {  // central differences in float64 away from relu's kink
  if (act == 1) return x > 0 ? 1 : 0;
  if (act == 0) return 1;
  const double h = 1e-5;
  return (act_ref(x + h, act) - act_ref(x - h, act)) / (2 * h);
}

// The gated kernels over an (m, hidden) output with VEC elements a thread, 64 threads x 2 blocks a row and 3 rows of
// blocks: both grid-stride loops wrap. Accumulates into eh (h of the forward and of the backward's second output),
// eu, eg.
template <typename T, int VEC>
void gated(int64_t m, int64_t hidden, int act, std::mt19937& rng, Err& eh, Err& eu, Err& eg) {
  std::normal_distribution<float> normal(0.f, 2.f);
  const int64_t n = m * hidden;
  emu_test::DeviceVector<T> dy(n), ug(2 * n), h(n, from_f<T>(NAN)), h2(n, from_f<T>(NAN));
  emu_test::DeviceVector<T> dudg(2 * n, from_f<T>(NAN));
  for (auto& v : dy) v = from_f<T>(normal(rng));
  for (auto& v : ug) v = from_f<T>(normal(rng));
  const dim3 grid(2, 3);
  with_act(act, [&](auto a) {
    constexpr int kAct = decltype(a)::value;
    emu::launch(grid, 64, 0, [&] { gated_fwd_kernel<T, VEC, kAct>(ug.data(), h.data(), m, hidden); });
    emu::launch(grid, 64, 0,
                [&] { gated_bwd_kernel<T, VEC, kAct>(dy.data(), ug.data(), dudg.data(), h2.data(), m, hidden); });
  });
  for (int64_t i = 0; i < n; ++i) {
    const double d = to_d(dy[i]);
    const int64_t base = (i / hidden) * 2 * hidden + i % hidden;
    const double u = to_d(ug[base]), g = to_d(ug[base + hidden]);
    eh.add(to_d(h[i]), act_ref(g, act) * u);
    eh.add(to_d(h2[i]), act_ref(g, act) * u);
    eu.add(to_d(dudg[base]), d * act_ref(g, act));
    if (act != 1 || std::fabs(g) > 1e-3) eg.add(to_d(dudg[base + hidden]), d * u * dact_ref(g, act));
  }
}

template <typename T>
int run(int act, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 2.f);
  const int64_t m = 7, hidden = 211, n = m * hidden;  // 2 blocks of 256 threads: the grid-stride loops wrap
  std::vector<T> z(n), dy(n), y(n, from_f<T>(NAN)), dz(n, from_f<T>(NAN));
  for (auto& v : z) v = from_f<T>(normal(rng));
  for (auto& v : dy) v = from_f<T>(normal(rng));
  const dim3 grid(2);
  emu::launch(grid, 256, 0, [&] { act_fwd_kernel<T>(z.data(), y.data(), n, act); });
  emu::launch(grid, 256, 0, [&] { act_bwd_kernel<T>(dy.data(), z.data(), dz.data(), n, act); });
  Err ea, ed, eh, eu, eg;
  for (int64_t i = 0; i < n; ++i) {
    const double x = to_d(z[i]), d = to_d(dy[i]);
    ea.add(to_d(y[i]), act_ref(x, act));
    if (act != 1 || std::fabs(x) > 1e-3) ed.add(to_d(dz[i]), d * dact_ref(x, act));
  }
  constexpr int kVec = 16 / sizeof(T);
  gated<T, 1>(m, hidden, act, rng, eh, eu, eg);               // an odd hidden size: one element a thread
  gated<T, kVec>(m, 129 * kVec, act, rng, eh, eu, eg);        // 16-byte accesses, 129 chunks a row
  std::printf("{\"act\": [%.6g, %.6g], \"dact\": [%.6g, %.6g], \"h\": [%.6g, %.6g], \"du\": [%.6g, %.6g], "
              "\"dg\": [%.6g, %.6g], \"global\": ",
              ea.err, ea.ref, ed.err, ed.ref, eh.err, eh.ref, eu.err, eu.ref, eg.err, eg.ref);
  emu::report_global(stdout);  // ld/st.global per site: [requests, sectors, ideal, width]
  std::printf("}\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s DTYPE ACT SEED\n", argv[0]);
    return 2;
  }
  const std::string dt = argv[1];
  const int act = std::atoi(argv[2]);
  const unsigned seed = static_cast<unsigned>(std::atoi(argv[3]));
  if (dt == "f32") return run<float>(act, seed);
  if (dt == "f16") return run<__half>(act, seed);
  return run<__nv_bfloat16>(act, seed);
}
