// Planted defects for the emulator's instruments (csrc/emulate.h), driven by tests/test_kernel_emulation.py:
//
//   hazard_emulate wait    64 threads copy a row each into shared memory by cp.async, commit, wait, sync,
//                          then read a neighbour's row: {"mismatches": N, "nan": K} against the source
//   hazard_emulate nowait  the same with the wait_group removed (the planted defect)
//   hazard_emulate banks STRIDE
//                          one warp loads a 16 x 16 A fragment by ldmatrix .x4 (flash_common.cuh's load_a)
//                          from a tile whose rows are STRIDE half elements apart: {"requests", "wavefronts",
//                          "ideal"} (STRIDE 64: 128-byte rows, every row of a phase in the same 4 banks)
//   hazard_emulate copies SRC_STRIDE DST_STRIDE
//                          one warp's cp.async of 16 bytes a lane, lane * SRC_STRIDE bytes into global memory,
//                          lane * DST_STRIDE bytes into shared: {"requests", "wavefronts", "wavefronts_ideal",
//                          "sectors", "sectors_ideal"}
//   hazard_emulate race KIND
//                          64 threads share floats through ld/st.shared (flash_common.cuh's ld_shared / st_shared):
//                          raw (a neighbour's write read with no barrier), waw (two threads write one float), war
//                          (a float written that a neighbour read), cp_async (a neighbour's cp.async data read with
//                          no barrier after the wait), barriers (threads wait at two different __syncthreads);
//                          synced (the same as raw with the barrier) and warp (a lane of the same warp, after a warp
//                          collective) are race-free: {"ok": 1}, else the emulator stops naming the race
//   hazard_emulate plain ld|st WIDTH STRIDE
//                          one warp's ld/st.shared of WIDTH bytes a lane, lane * STRIDE bytes apart:
//                          {"requests", "wavefronts", "ideal"}
//   hazard_emulate global ld|st WIDTH STRIDE
//                          one warp's ld/st.global (smem.cuh's ld_global / st_global) of WIDTH bytes a lane,
//                          lane * STRIDE bytes apart: {"requests", "sectors", "ideal", "width"} (STRIDE = WIDTH is
//                          coalesced; a column of a row-major matrix is the planted uncoalesced access)
//   hazard_emulate plain ld|st WIDTH STRIDE
//                          one warp's WIDTH-byte ld/st.shared (4, 8, 16), lane * STRIDE bytes apart:
//                          {"requests", "wavefronts", "ideal"}
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "attention/flash_common.cuh"

using namespace aigc_kernels;
using namespace aigc_kernels::flash;

namespace {

int copy_case(bool wait) {
  constexpr int kThreads = 64, kRow = 8;  // 8 halves = 16 bytes a thread
  std::vector<__half> src(kThreads * kRow), out(src.size());
  for (size_t i = 0; i < src.size(); ++i) src[i] = emu_test::from_f<__half>(static_cast<float>(i % 97) - 40.f);
  emu::launch(dim3(1), kThreads, kThreads * kRow * sizeof(__half), [&] {
    AIGC_DYNAMIC_SMEM(smem);
    __half* tile = reinterpret_cast<__half*>(smem);
    const int t = threadIdx.x;
    cp_async16(tile + t * kRow, src.data() + t * kRow, true);
    cp_async_commit();
    if (wait) cp_async_wait<0>();
    __syncthreads();
    const int from = (t + 1) % kThreads;  // another thread's copy
    for (int j = 0; j < kRow; ++j) out[t * kRow + j] = tile[from * kRow + j];
  });
  int mismatches = 0, nan = 0;
  for (int t = 0; t < kThreads; ++t)
    for (int j = 0; j < kRow; ++j) {
      const float got = emu_test::to_d(out[t * kRow + j]), want = emu_test::to_d(src[((t + 1) % kThreads) * kRow + j]);
      nan += std::isnan(got);
      mismatches += !(got == want);
    }
  std::printf("{\"mismatches\": %d, \"nan\": %d}\n", mismatches, nan);
  return 0;
}

template <int STRIDE>
int bank_case() {
  std::vector<__half> host(16 * STRIDE);
  emu::launch(dim3(1), 32, host.size() * sizeof(__half), [&] {
    AIGC_DYNAMIC_SMEM(smem);
    __half* tile = reinterpret_cast<__half*>(smem);
    const int lane = threadIdx.x;
    for (int i = lane; i < 16 * STRIDE; i += 32) tile[i] = emu_test::from_f<__half>(1.f);
    __syncthreads();
    uint32_t a[4];
    load_a<__half, STRIDE>(a, tile, 0, 0, lane);
  });
  long requests = 0, wavefronts = 0, ideal = 0;
  for (const auto& [site, c] : emu::ldmatrix_banks()) {
    requests += c.requests, wavefronts += c.wavefronts, ideal += c.ideal;
  }
  std::printf("{\"requests\": %ld, \"wavefronts\": %ld, \"ideal\": %ld}\n", requests, wavefronts, ideal);
  return 0;
}

// One warp copies 16 bytes a lane by cp.async from global offsets lane * SRC_STRIDE bytes into shared offsets
// lane * DST_STRIDE bytes: the emulator's per-request sectors and wavefronts.
int copy_counts(int src_stride, int dst_stride) {
  std::vector<unsigned char, emu_test::DeviceAligned<unsigned char>> src(32 * src_stride + 16, 1);
  emu::launch(dim3(1), 32, 32 * dst_stride + 16, [&] {
    AIGC_DYNAMIC_SMEM(smem);
    const int lane = threadIdx.x;
    cp_async16(smem + lane * dst_stride, src.data() + lane * src_stride, true);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  });
  emu::CopyCount total;
  for (const auto& [site, c] : emu::copy_counts()) {
    total.requests += c.requests, total.wavefronts += c.wavefronts, total.wavefronts_ideal += c.wavefronts_ideal;
    total.sectors += c.sectors, total.sectors_ideal += c.sectors_ideal;
  }
  std::printf("{\"requests\": %ld, \"wavefronts\": %ld, \"wavefronts_ideal\": %ld, \"sectors\": %ld, "
              "\"sectors_ideal\": %ld}\n", total.requests, total.wavefronts, total.wavefronts_ideal, total.sectors,
              total.sectors_ideal);
  return 0;
}

int race_case(const std::string& kind) {
  constexpr int kThreads = 64;
  std::vector<__half> src(kThreads * 8, __float2half(1.f));
  emu::launch(dim3(1), kThreads, kThreads * 16 + 64 * sizeof(float), [&] {
    AIGC_DYNAMIC_SMEM(smem);
    float* f = reinterpret_cast<float*>(smem + kThreads * 16);
    const int t = threadIdx.x;
    float x = 0.f;
    if (kind == "raw" || kind == "synced") {
      st_shared(f + t, 1.f);
      if (kind == "synced") __syncthreads();
      x = ld_shared(f + (t + 1) % kThreads);
    } else if (kind == "warp") {
      st_shared(f + t, 1.f);
      x = __shfl_xor_sync(0xffffffffu, x, 1);  // a warp collective orders the lanes' accesses
      x += ld_shared(f + (t ^ 1));
    } else if (kind == "waw") {
      st_shared(f + t / 2, 1.f);
    } else if (kind == "war") {
      x = ld_shared(f + (t + 1) % kThreads);
      st_shared(f + t, x);
    } else if (kind == "cp_async") {
      cp_async16(smem + t * 16, src.data() + t * 8, true);
      cp_async_commit();
      cp_async_wait<0>();
      const __half* h = reinterpret_cast<const __half*>(smem);
      x = __half2float(ld_shared(h + ((t + 1) % kThreads) * 8));
    } else if (kind == "barriers") {
      if (t < 32) {
        __syncthreads();
      } else {
        __syncthreads();
      }
    }
    (void)x;
  });
  std::printf("{\"ok\": 1}\n");
  return 0;
}

template <typename V>
int plain_case(bool store, int stride) {
  emu::launch(dim3(1), 32, 32 * stride + 64, [&] {
    AIGC_DYNAMIC_SMEM(smem);
    V* p = reinterpret_cast<V*>(smem + threadIdx.x * stride);
    if (store) st_shared(p, V{}); else (void)ld_shared(static_cast<const V*>(p));
  });
  emu::BankCount total;
  for (const auto& [site, c] : emu::plain_banks()) total.requests += c.requests, total.wavefronts += c.wavefronts,
                                                    total.ideal += c.ideal;
  std::printf("{\"requests\": %ld, \"wavefronts\": %ld, \"ideal\": %ld}\n", total.requests, total.wavefronts,
              total.ideal);
  return 0;
}

template <typename V>
int global_case(bool store, int stride) {
  std::vector<unsigned char> buf(32 * static_cast<size_t>(stride) + 64);
  unsigned char* base = buf.data() + (32 - reinterpret_cast<uintptr_t>(buf.data()) % 32) % 32;  // sector-aligned
  emu::launch(dim3(1), 32, 0, [&] {
    V* p = reinterpret_cast<V*>(base + threadIdx.x * stride);
    if (store) st_global(p, V{}); else (void)ld_global(static_cast<const V*>(p));
  });
  emu::SectorCount total;
  for (const auto& [site, c] : emu::global_sectors())
    total.requests += c.requests, total.sectors += c.sectors, total.ideal += c.ideal,
        total.width = std::max(total.width, c.width);
  std::printf("{\"requests\": %ld, \"sectors\": %ld, \"ideal\": %ld, \"width\": %d}\n", total.requests, total.sectors,
              total.ideal, total.width);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "wait" || mode == "nowait") return copy_case(mode == "wait");
  if (mode == "banks" && argc == 3) {
    const int stride = std::atoi(argv[2]);
    if (stride == 64) return bank_case<64>();
    if (stride == 72) return bank_case<72>();
    if (stride == 80) return bank_case<80>();
  }
  if (mode == "copies" && argc == 4) return copy_counts(std::atoi(argv[2]), std::atoi(argv[3]));
  if (mode == "race" && argc == 3) return race_case(argv[2]);
  if (mode == "plain" && argc == 5) {
    const bool store = std::string(argv[2]) == "st";
    const int width = std::atoi(argv[3]), stride = std::atoi(argv[4]);
    if (width == 4) return plain_case<float>(store, stride);
    if (width == 8) return plain_case<float2>(store, stride);
    if (width == 16) return plain_case<float4>(store, stride);
  }
  if (mode == "global" && argc == 5) {
    const bool store = std::string(argv[2]) == "st";
    const int width = std::atoi(argv[3]), stride = std::atoi(argv[4]);
    if (width == 2) return global_case<__half>(store, stride);
    if (width == 4) return global_case<float>(store, stride);
    if (width == 16) return global_case<float4>(store, stride);
  }
  std::fprintf(stderr, "usage: %s wait | nowait | banks 64|72|80 | copies SRC_STRIDE DST_STRIDE | race KIND | "
               "plain ld|st 4|8|16 STRIDE | global ld|st 2|4|16 STRIDE\n", argv[0]);
  return 2;
}
