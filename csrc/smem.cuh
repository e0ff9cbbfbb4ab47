// Plain shared- and global-memory loads and stores the kernels route through one place: on the device a plain
// ld/st; under csrc/emulate.h (AIGC_EMULATE) a shared access goes through the race detector and the bank counter,
// a global one through the sector counter (32-byte sectors per warp-wide request, and the access width).
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
template <typename T>
__device__ __forceinline__ T ld_global(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE(),
                                       const char* func = __builtin_FUNCTION()) {
  return ::emu::ld_global(p, func, file, line);
}
template <typename T>
__device__ __forceinline__ void st_global(T* p, T v, const char* file = __builtin_FILE(),
                                          int line = __builtin_LINE(), const char* func = __builtin_FUNCTION()) {
  ::emu::st_global(p, v, func, file, line);
}
#define AIGC_SITE_PARAMS , const char *file = __builtin_FILE(), int line = __builtin_LINE(), \
                          const char *func = __builtin_FUNCTION()
#define AIGC_SITE_ARGS , file, line, func
#else
#define AIGC_SITE_PARAMS
#define AIGC_SITE_ARGS
template <typename T>
__device__ __forceinline__ T ld_global(const T* p) {
  return *p;
}
template <typename T>
__device__ __forceinline__ void st_global(T* p, T v) {
  *p = v;
}
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

// AIGC_SITE_PARAMS / AIGC_SITE_ARGS: a helper that loads or stores for its caller (vec.cuh's load / store) takes
// the caller's source site under emulation and hands it on, so the counters name the kernel's line, not the helper's.
