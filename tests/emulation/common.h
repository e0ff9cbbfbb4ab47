// Helpers shared by the emulation drivers: dtype conversions through float and error tracking.
#pragma once
#include <algorithm>
#include <cmath>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace emu_test {

template <typename T>
T from_f(float f) {
  if constexpr (std::is_same_v<T, float>) return f;
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(f);
  else return __float2bfloat16_rn(f);
}

template <typename T>
double to_d(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return __bfloat162float(v);
}

// Max |got - want| (NaN counts as huge; equal infinities as 0) and max |want| over finite wants.
struct Err {
  double err = 0, ref = 0;
  void add(double got, double want) {
    if (std::isinf(want) && got == want) return;
    err = std::max(err, std::isnan(got) ? 1e30 : std::fabs(got - want));
    if (!std::isinf(want)) ref = std::max(ref, std::fabs(want));
  }
};

}  // namespace emu_test
