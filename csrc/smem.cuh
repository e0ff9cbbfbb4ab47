// Plain shared-memory loads and stores the kernels route through one place: on the device a plain ld/st.shared;
// under csrc/emulate.h (AIGC_EMULATE) each goes through the race detector and the bank counter.
#pragma once
#ifdef AIGC_EMULATE
#include "emulate.h"
#endif

namespace aigc_kernels {

#ifdef AIGC_EMULATE
template <typename T>
__device__ __forceinline__ T ld_shared(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE(),
                                       const char* func = __builtin_FUNCTION()) {
  return ::emu::ld_shared(p, func, file, line);
}
template <typename T>
__device__ __forceinline__ void st_shared(T* p, T v, const char* file = __builtin_FILE(),
                                          int line = __builtin_LINE(), const char* func = __builtin_FUNCTION()) {
  ::emu::st_shared(p, v, func, file, line);
}
#else
template <typename T>
__device__ __forceinline__ T ld_shared(const T* p) {
  return *p;
}
template <typename T>
__device__ __forceinline__ void st_shared(T* p, T v) {
  *p = v;
}
#endif

}  // namespace aigc_kernels
