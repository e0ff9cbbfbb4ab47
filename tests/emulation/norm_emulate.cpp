// Runs the CUDA LayerNorm/RMSNorm kernels and their launchers (csrc/norm) on the CPU through
// csrc/emulate.h and compares them with a float64 reference. Driven by tests/test_kernel_emulation.py:
//
//   norm_emulate DTYPE WDTYPE ROWS COLS RMS RESIDUAL HAS_W HAS_B VEC GRID SEED
//     DTYPE f32 | f16 | bf16;  WDTYPE same | f32;  VEC 1 or 16 / sizeof(dtype) (as csrc/norm/norm_api.cpp
//     picks it for aligned rows);  GRID the backward's blocks (partial rows of dw/db)
//
// Prints one JSON line: {name: [max abs error, max abs reference]} for y, s, mean, rstd, dx, dw, db.
#include <cinttypes>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common.h"

#include "norm/norm_kernels.cuh"

using namespace aigc_kernels::norm;

using emu_test::Err;
using emu_test::from_f;
using emu_test::to_d;

namespace {

template <typename T, typename W>
int run(int64_t rows, int64_t cols, bool rms, bool residual, bool has_w, bool has_b, int vec, int grid,
        unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  const size_t n = static_cast<size_t>(rows * cols);
  emu_test::DeviceVector<T> x(n), r(n), dy(n), ds(n), y(n, from_f<T>(NAN)), s(n, from_f<T>(NAN)), dx(n, from_f<T>(NAN));
  emu_test::DeviceVector<W> w(cols), b(cols);
  for (auto& v : x) v = from_f<T>(normal(rng) * 2.f + 0.5f);
  for (auto& v : r) v = from_f<T>(normal(rng));
  for (auto& v : dy) v = from_f<T>(normal(rng));
  for (auto& v : ds) v = from_f<T>(normal(rng));
  for (auto& v : w) v = from_f<W>(1.f + 0.3f * normal(rng));
  for (auto& v : b) v = from_f<W>(0.3f * normal(rng));
  emu_test::DeviceVector<float> mean(rows, NAN), rstd(rows, NAN);
  const float eps = 1e-5f;

  FwdParams p{};
  p.x = x.data();
  p.res = residual ? r.data() : nullptr;
  p.w = has_w ? w.data() : nullptr;
  p.b = has_b ? b.data() : nullptr;
  p.y = y.data();
  p.s = residual ? s.data() : nullptr;
  p.mean = rms ? nullptr : mean.data();
  p.rstd = rstd.data();
  p.stride_x = p.stride_res = p.stride_y = p.stride_s = cols;
  p.rows = rows;
  p.cols = cols;
  p.eps = eps;
  p.rms = rms;
  p.has_res = p.store_s = residual;
  p.has_w = has_w;
  p.has_b = has_b;
  launch_fwd<T, W>(p, vec, nullptr);

  BwdParams q{};
  emu_test::DeviceVector<float> dw_part(static_cast<size_t>(grid) * cols, 0.f), db_part(dw_part.size(), 0.f);
  q.dy = dy.data();
  q.ds = residual ? ds.data() : nullptr;
  q.xs = residual ? static_cast<const void*>(s.data()) : static_cast<const void*>(x.data());
  q.w = has_w ? w.data() : nullptr;
  q.mean = rms ? nullptr : mean.data();
  q.rstd = rstd.data();
  q.dx = dx.data();
  q.dw_part = has_w ? dw_part.data() : nullptr;
  q.db_part = has_b ? db_part.data() : nullptr;
  q.stride_dy = q.stride_ds = q.stride_xs = q.stride_dx = cols;
  q.rows = rows;
  q.cols = cols;
  q.rms = rms;
  q.has_ds = residual;
  q.has_w = has_w;
  q.has_b = has_b;
  launch_bwd<T, W>(q, vec, grid, nullptr);

  Err ey, es, em, er, edx, edw, edb;
  std::vector<double> rdw(cols, 0), rdb(cols, 0);
  for (int64_t i = 0; i < rows; ++i) {
    std::vector<double> v(cols), xhat(cols), g(cols);
    double mu = 0, var = 0;
    for (int64_t c = 0; c < cols; ++c) {
      v[c] = to_d(x[i * cols + c]) + (residual ? to_d(r[i * cols + c]) : 0.0);
      if (residual) es.add(to_d(s[i * cols + c]), v[c]);
      mu += v[c];
    }
    mu = rms ? 0 : mu / cols;
    for (int64_t c = 0; c < cols; ++c) var += (v[c] - mu) * (v[c] - mu);
    const double rs = 1.0 / std::sqrt(var / cols + eps);
    if (!rms) em.add(mean[i], mu);
    er.add(rstd[i], rs);
    // the backward normalizes the stored s (rounded to T), as the kernel does
    double mu_s = 0, var_s = 0;
    std::vector<double> xs(cols);
    for (int64_t c = 0; c < cols; ++c) xs[c] = residual ? to_d(s[i * cols + c]) : v[c];
    for (int64_t c = 0; c < cols; ++c) mu_s += xs[c];
    mu_s = rms ? 0 : mu_s / cols;
    for (int64_t c = 0; c < cols; ++c) var_s += (xs[c] - mu_s) * (xs[c] - mu_s);
    const double rs_s = 1.0 / std::sqrt(var_s / cols + eps);
    double s1 = 0, s2 = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const double wv = has_w ? to_d(w[c]) : 1.0, bv = has_b ? to_d(b[c]) : 0.0;
      ey.add(to_d(y[i * cols + c]), (v[c] - mu) * rs * wv + bv);
      xhat[c] = (xs[c] - mu_s) * rs_s;
      g[c] = to_d(dy[i * cols + c]) * wv;
      s1 += g[c] * xhat[c];
      s2 += g[c];
      rdw[c] += to_d(dy[i * cols + c]) * xhat[c];
      rdb[c] += to_d(dy[i * cols + c]);
    }
    for (int64_t c = 0; c < cols; ++c) {
      double d = (g[c] - xhat[c] * s1 / cols - (rms ? 0 : s2 / cols)) * rs_s;
      if (residual) d += to_d(ds[i * cols + c]);
      edx.add(to_d(dx[i * cols + c]), d);
    }
  }
  for (int64_t c = 0; c < cols; ++c) {
    double sw = 0, sb = 0;  // csrc/norm/norm_api.cpp: dw_part.sum(0)
    for (int gi = 0; gi < grid; ++gi) sw += dw_part[gi * cols + c], sb += db_part[gi * cols + c];
    if (has_w) edw.add(sw, rdw[c]);
    if (has_b) edb.add(sb, rdb[c]);
  }
  std::printf("{\"y\": [%.6g, %.6g], \"s\": [%.6g, %.6g], \"mean\": [%.6g, %.6g], \"rstd\": [%.6g, %.6g], "
              "\"dx\": [%.6g, %.6g], \"dw\": [%.6g, %.6g], \"db\": [%.6g, %.6g], \"global\": ",
              ey.err, ey.ref, es.err, es.ref, em.err, em.ref, er.err, er.ref, edx.err, edx.ref, edw.err, edw.ref,
              edb.err, edb.ref);
  emu::report_global(stdout);  // ld/st.global per site: [requests, sectors, ideal, width]
  std::printf("}\n");
  return 0;
}

template <typename T>
int by_w(const std::string& wd, int64_t rows, int64_t cols, bool rms, bool res, bool hw, bool hb, int vec, int grid,
         unsigned seed) {
  if (wd == "f32") return run<T, float>(rows, cols, rms, res, hw, hb, vec, grid, seed);
  return run<T, T>(rows, cols, rms, res, hw, hb, vec, grid, seed);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 12) {
    std::fprintf(stderr, "usage: %s DTYPE WDTYPE ROWS COLS RMS RESIDUAL HAS_W HAS_B VEC GRID SEED\n", argv[0]);
    return 2;
  }
  const std::string dt = argv[1], wd = argv[2];
  const int64_t rows = std::atoll(argv[3]), cols = std::atoll(argv[4]);
  const bool rms = std::atoi(argv[5]), res = std::atoi(argv[6]), hw = std::atoi(argv[7]), hb = std::atoi(argv[8]);
  const int vec = std::atoi(argv[9]), grid = std::atoi(argv[10]);
  const unsigned seed = static_cast<unsigned>(std::atoi(argv[11]));
  if (dt == "f32") return by_w<float>(wd, rows, cols, rms, res, hw, hb, vec, grid, seed);
  if (dt == "f16") return by_w<__half>(wd, rows, cols, rms, res, hw, hb, vec, grid, seed);
  return by_w<__nv_bfloat16>(wd, rows, cols, rms, res, hw, hb, vec, grid, seed);
}
