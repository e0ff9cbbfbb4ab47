// Helpers shared by the emulation drivers: dtype conversions through float and error tracking.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <new>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace emu_test {

// Device allocations are 256-byte aligned; host vectors holding emulated global memory use this, so the
// emulator's 32-byte sector counts see the alignment a GPU would.
template <typename T>
struct DeviceAligned {
  using value_type = T;
  DeviceAligned() = default;
  template <typename U>
  DeviceAligned(const DeviceAligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(256))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(256)); }
  template <typename U>
  bool operator==(const DeviceAligned<U>&) const { return true; }
  template <typename U>
  bool operator!=(const DeviceAligned<U>&) const { return false; }
};

template <typename T>
using DeviceVector = std::vector<T, DeviceAligned<T>>;  // emulated global memory

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

// Max |got - want| (NaN or an unequal infinity counts as huge, 1e30; equal infinities as 0) and max |want|
// over finite wants.
struct Err {
  double err = 0, ref = 0;
  void add(double got, double want) {
    if (std::isinf(want) && got == want) return;
    const double d = std::fabs(got - want);
    err = std::max(err, std::isfinite(d) ? d : 1e30);
    if (!std::isinf(want)) ref = std::max(ref, std::fabs(want));
  }
};

}  // namespace emu_test
