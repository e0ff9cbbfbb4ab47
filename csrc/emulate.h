// A CPU emulation of the few device features our CUDA kernels use (shared memory, __syncthreads,
// warp shuffles, and for flash attention ldmatrix, mma.sync and wgmma with no-swizzle
// descriptors), so the kernels' own source runs on a machine without a GPU (tests/emulation/*.cpp,
// compiled by a host C++ compiler with AIGC_EMULATE defined; launches written with AIGC_LAUNCH).
//
// Each CUDA thread of a block is a fiber (ucontext) in one OS thread; warp-collective operations
// (ldmatrix, mma.sync, shfl) and __syncthreads are barriers that switch fibers, so the emulated
// block runs deterministically. The collectives follow the PTX ISA fragment layouts:
//   ldmatrix .x4: lanes 8i..8i+7 give the row addresses of matrix i; lane L receives, for each i,
//                 row L/4, columns 2(L%4), 2(L%4)+1 (.trans: the transposed matrix's)
//   mma.m16n8k16: A a0..a3 = (g, 2t), (g+8, 2t), (g, 2t+8), (g+8, 2t+8); B b0, b1 = (k 2t, n g),
//                 (k 2t+8, n g); C c0..c3 = (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1); lane = 4g + t
// This checks the kernels' index arithmetic, masking, pipelining order and reductions against a
// float64 reference; it cannot check the hardware's own semantics (those are what the PTX ISA
// says, which is also what this file encodes).
//
// Hazards and costs it models (the instruments of the "speed visible without a GPU" issue, first part):
//   cp.async: the copy lands only when its thread waits on its group (cp.async.wait_group N applies all
//     but the N newest committed groups, oldest first); from the issue until then the destination's 16
//     bytes read as NaN (0xFF in every dtype the kernels use), so a missing or short wait poisons the
//     result. AIGC_EMU_ASYNC=eager switches this off (copies complete at once: the detector off), and
//     AIGC_EMU_PLANT=skip_wait plants the defect (every wait does nothing), for the tests that show both.
//   ldmatrix banks: each warp-wide ldmatrix .x4 is served in 4 phases of 8 row addresses (16 bytes each);
//     a phase takes as many shared-memory wavefronts as the most distinct 4-byte words any one of the 32
//     banks holds among its rows (ideal 1). Counted per source site ("function file:line" of the ldmatrix
//     wrapper's caller) beside the ideal; report_banks() prints them as JSON.
//   cp.async requests: the k-th cp.async of every lane of a warp since the last barrier is one warp-wide
//     request; its 16-byte shared stores are served 8 lanes (128 bytes) a phase, counted in wavefronts like
//     ldmatrix's (ideal 1 a phase), and its global reads in 32-byte sectors beside the fewest that hold the
//     bytes (a zero-fill reads nothing). Per site; report_copies() prints them as JSON.
//   wgmma: an issued wgmma's accumulators read NaN until the wgmma.wait_group covering its group (values chain
//     through pending ones); a wgmma with no wgmma.fence since the thread's last wait, or reading shared memory
//     that cp.async filled with no fence.proxy.async by its writer before the barrier, aborts naming the hazard.
//     AIGC_EMU_PLANT=skip_wgmma_wait | skip_wgmma_fence | skip_proxy_fence plants each defect;
//     AIGC_EMU_ASYNC=eager turns the model off.
//   wgmma operand banks: each 128-byte core matrix of a wgmma's shared-memory operand counted as one request (the
//     model: a no-swizzle core matrix is contiguous, ideal 1), per wgmma shape and operand.
//   plain ld/st.shared (flash_common.cuh's ld_shared / st_shared): warp-wide requests (the k-th access of each lane
//     at a site since the last barrier), 128 / width lanes a phase, counted in wavefronts per site.
//   races: per 2 bytes of shared memory (dynamic, and static __shared__ arrays accessed through ld_shared /
//     st_shared), the last writer and the current interval's readers (see
//     shadow_read / shadow_write); a conflicting access with no barrier between stops the run naming both sites.
//     Threads of one block waiting at two different __syncthreads stop it too. AIGC_EMU_RACE=off switches the
//     detector off; AIGC_EMU_PLANT=skip_sync:FILE:LINE removes one __syncthreads (the planted defect);
//     AIGC_EMU_ORDER=SEED runs each block's fibers in a permutation drawn afresh every round (the default: thread
//     order), so a result that depends on the interleaving shows as a changed output.
//   plain ld/st.global (smem.cuh's ld_global / st_global; vec.cuh's load / store): warp-wide requests gathered the
//     same way, counted in 32-byte sectors beside the fewest that hold the bytes, with the access width per site;
//     report_global() prints them as JSON.
// Not modelled yet: TMA and mbarriers (no kernel uses them yet).
#pragma once
#ifndef AIGC_EMULATE
#error "emulate.h is for host builds with AIGC_EMULATE"
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace emu {

struct Slot {
  const unsigned char* ptr;
  uint32_t a[4];
  uint32_t b[2];
  float f;
};

// One pending 16-byte cp.async: its destination and the source bytes (global memory does not change under a
// kernel's reads, so they are taken at the issue).
struct AsyncCopy {
  unsigned char* dst;
  std::array<unsigned char, 16> data;
  uint32_t epoch;  // the barrier interval of the issue: the copy may write any time from then to its wait
  int site;
};
struct AsyncState {
  std::vector<AsyncCopy> open;                 // issued, not yet committed
  std::deque<std::vector<AsyncCopy>> groups;  // committed, oldest first
};

// The k-th cp.async of each lane of a warp since the last barrier: one warp-wide request (the kernels' copy
// loops run the same trip count on every lane of a warp but the last partial one).
struct WarpCopy {
  std::string site;
  std::array<const unsigned char*, 32> dst{}, src{};  // src null: zero-fill (no global read)
  std::array<bool, 32> active{};
};

// wgmma's asynchronous protocol, per thread: the accumulators an issued wgmma writes read as NaN until the
// wgmma.wait_group that covers its group (the values chain through the pending ones, as the hardware
// accumulates in order); a wgmma needs a wgmma.fence since the thread's last wait (the registers were touched);
// shared memory that cp.async filled needs fence.proxy.async by its writer before the barrier that orders it
// with wgmma's (async-proxy) reads.
struct PendingAcc {
  float* d;
  std::vector<float> value;
};
struct WgmmaState {
  bool fenced = false;          // wgmma.fence since the last wgmma.wait_group
  bool proxy_unfenced = false;  // cp.async data landed by this thread, no fence.proxy.async since
  std::vector<PendingAcc> open;
  std::deque<std::vector<PendingAcc>> groups;
  std::map<float*, std::vector<float>> latest;  // the newest pending value of each accumulator
};

// The race detector's record of one 2-byte unit of dynamic shared memory (every access the kernels make is a
// multiple of 2 bytes, 2-byte aligned): its last writer, and its readers, in the barrier interval of each.
struct ShadowUnit {
  int32_t writer = -1, reader = -1;   // thread; reader -2: more than one thread this interval
  int32_t reader_warp = -1;           // the readers' warp, -1: more than one warp
  uint32_t w_epoch = 0, r_epoch = 0;  // barrier interval (cta_gen + 1); 0: never
  uint32_t w_wgen = 0, r_wgen = 0;    // the warp's collective generation at the access (the newest read's)
  uint16_t w_site = 0, r_site = 0;
};

// The k-th plain shared-memory access (ld/st.shared through flash_common.cuh's ld_shared / st_shared) of every
// lane of a warp at one site since the last barrier: one warp-wide request.
struct WarpAccess {
  int width = 0;
  std::array<const unsigned char*, 32> addr{};
  std::array<bool, 32> active{};
};

// Per warp, per site: the k-th request of its lanes; per thread, per site: its accesses so far (since the last
// barrier, when the requests are counted and cleared).
struct WarpRequests {
  std::vector<std::map<int, std::vector<WarpAccess>>> warps;
  std::vector<std::map<int, int>> seq;
  void record(const void* p, int width, int site, int t) {
    const int k = seq[t][site]++;
    auto& reqs = warps[t / 32][site];
    if (static_cast<int>(reqs.size()) <= k) reqs.resize(k + 1);
    WarpAccess& a = reqs[k];
    a.width = width;
    a.addr[t % 32] = static_cast<const unsigned char*>(p);
    a.active[t % 32] = true;
  }
  template <typename F>
  void drain(F&& count) {  // count(site, request) for every request gathered, then forget them
    for (auto& sites : warps) {
      for (const auto& [site, reqs] : sites)
        for (const WarpAccess& a : reqs) count(site, a);
      sites.clear();
    }
    for (auto& m : seq) m.clear();
  }
};

struct Block {
  std::vector<ShadowUnit> shadow;  // per 2 bytes of dynamic shared memory
  std::map<uintptr_t, ShadowUnit> static_shadow;  // per 2 bytes of static __shared__ arrays (address / 2)
  WarpRequests plain;   // ld/st.shared through smem.cuh
  WarpRequests global;  // ld/st.global through smem.cuh (and vec.cuh's load / store)
  const char* barrier_file = nullptr;  // where the threads of this barrier generation wait
  int barrier_line = 0;
  std::vector<WgmmaState> wgmma;  // per thread
  bool proxy_hazard = false;      // since the last barrier: some thread's cp.async data not proxy-fenced
  std::vector<AsyncState> async;  // per thread
  std::vector<int> async_seq;     // per thread: cp.async calls since the last barrier
  std::vector<std::vector<WarpCopy>> warp_copies;  // per warp
  std::vector<ucontext_t> ctx;
  std::vector<std::vector<char>> stacks;
  std::vector<char> done;
  ucontext_t sched;
  int cur = 0, nthreads = 0;
  size_t stack_bytes = 0;
  dim3 block_idx, grid_dim;
  std::vector<unsigned char> smem;
  int cta_arrived = 0;
  long cta_gen = 0;
  std::vector<int> warp_arrived;
  std::vector<long> warp_gen;
  std::vector<std::array<Slot, 32>> slots;
  std::function<void()> body;
};

inline Block*& block() {
  static Block* b = nullptr;
  return b;
}

inline void yield() {
  Block* b = block();
  swapcontext(&b->ctx[b->cur], &b->sched);
}

inline int tid() { return block()->cur; }

void flush_copies(Block* b);  // counts the warp-wide requests gathered since the last barrier
inline bool planted_barrier(const char* file, int line);
[[noreturn]] inline void hazard(const char* what);

inline const char* base_name(const char* file) {
  const char* base = std::strrchr(file, '/');
  return base ? base + 1 : file;
}

inline void sync_threads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  if (planted_barrier(file, line)) return;
  Block* b = block();
  const long gen = b->cta_gen;
  if (b->cta_arrived == 0) {
    b->barrier_file = file;
    b->barrier_line = line;
  } else if (b->barrier_line != line || std::strcmp(b->barrier_file, file) != 0) {
    const std::string what = "threads of the block wait at different barriers (" + std::string(base_name(file)) + ":" +
                             std::to_string(line) + " and " + base_name(b->barrier_file) + ":" +
                             std::to_string(b->barrier_line) + ")";
    hazard(what.c_str());
  }
  if (++b->cta_arrived == b->nthreads) {
    b->cta_arrived = 0;
    ++b->cta_gen;
    flush_copies(b);
    b->proxy_hazard = false;
    for (const WgmmaState& w : b->wgmma) b->proxy_hazard = b->proxy_hazard || w.proxy_unfenced;
    return;
  }
  while (b->cta_gen == gen) yield();
}

inline void sync_warp() {
  Block* b = block();
  const int w = tid() / 32;
  const long gen = b->warp_gen[w];
  if (++b->warp_arrived[w] == 32) {
    b->warp_arrived[w] = 0;
    ++b->warp_gen[w];
    return;
  }
  while (b->warp_gen[w] == gen) yield();
}

inline Slot& my_slot() { return block()->slots[tid() / 32][tid() % 32]; }
inline std::array<Slot, 32>& warp_slots() { return block()->slots[tid() / 32]; }

inline void fiber_entry() {
  Block* b = block();
  b->body();
  b->done[b->cur] = 1;
  // returning switches to uc_link (the scheduler)
}

// Run body() as every thread of one block.
inline void run_block(dim3 block_idx, dim3 grid_dim, int nthreads, size_t smem_bytes, std::function<void()> body) {
  Block b;
  b.nthreads = nthreads;
  b.block_idx = block_idx;
  b.grid_dim = grid_dim;
  b.smem.assign(smem_bytes + 16, 0xAB);  // poisoned: reads of never-written shared memory show up
  b.shadow.assign((smem_bytes + 16) / 2 + 1, ShadowUnit{});
  for (WarpRequests* r : {&b.plain, &b.global}) {
    r->warps.resize((nthreads + 31) / 32);
    r->seq.resize(nthreads);
  }
  b.ctx.resize(nthreads);
  b.stacks.resize(nthreads);
  b.done.assign(nthreads, 0);
  b.async.assign(nthreads, AsyncState{});
  b.wgmma.assign(nthreads, WgmmaState{});
  b.async_seq.assign(nthreads, 0);
  b.warp_copies.resize((nthreads + 31) / 32);
  b.warp_arrived.assign((nthreads + 31) / 32, 0);
  b.warp_gen.assign((nthreads + 31) / 32, 0);
  b.slots.resize((nthreads + 31) / 32);
  b.body = std::move(body);
  block() = &b;
  for (int t = 0; t < nthreads; ++t) {
    b.stacks[t].resize(nthreads > 256 ? 64 * 1024 : 256 * 1024);
    getcontext(&b.ctx[t]);
    b.ctx[t].uc_stack.ss_sp = b.stacks[t].data();
    b.ctx[t].uc_stack.ss_size = b.stacks[t].size();
    b.ctx[t].uc_link = &b.sched;
    makecontext(&b.ctx[t], fiber_entry, 0);
  }
  // The order the fibers run in each round: thread order, or (AIGC_EMU_ORDER=SEED) a permutation drawn afresh
  // every round from SEED and the block, so a result that depends on the interleaving changes with SEED.
  std::vector<int> order(nthreads);
  for (int t = 0; t < nthreads; ++t) order[t] = t;
  const char* seed = std::getenv("AIGC_EMU_ORDER");
  if (seed != nullptr && *seed == '\0') seed = nullptr;
  std::mt19937 rng(seed ? static_cast<unsigned>(std::strtoul(seed, nullptr, 10)) * 2654435761u +
                              (block_idx.z * grid_dim.y + block_idx.y) * grid_dim.x + block_idx.x
                        : 0u);
  for (;;) {
    bool all_done = true;
    if (seed != nullptr) std::shuffle(order.begin(), order.end(), rng);
    for (int t : order) {
      if (b.done[t]) continue;
      all_done = false;
      b.cur = t;
      swapcontext(&b.sched, &b.ctx[t]);
    }
    if (all_done) break;
  }
  flush_copies(&b);
  block() = nullptr;
}

// Run a kernel body over a grid, block after block.
inline void launch(dim3 grid, int nthreads, size_t smem_bytes, const std::function<void()>& body) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) run_block(dim3(x, y, z), grid, nthreads, smem_bytes, body);
}

inline uint3 thread_idx() { return make_uint3(static_cast<unsigned>(tid()), 0, 0); }
inline uint3 block_dim() { return make_uint3(static_cast<unsigned>(block()->nthreads), 1, 1); }
inline uint3 grid_dim() {
  const dim3 g = block()->grid_dim;
  return make_uint3(g.x, g.y, g.z);
}
inline uint3 block_idx() {
  const dim3 b = block()->block_idx;
  return make_uint3(b.x, b.y, b.z);
}
inline unsigned char* dynamic_smem() {
  // 16-byte aligned, like the real thing
  auto p = reinterpret_cast<uintptr_t>(block()->smem.data());
  return reinterpret_cast<unsigned char*>((p + 15) & ~uintptr_t(15));
}

// ---- collectives --------------------------------------------------------------------------
inline float shfl_xor(float v, int mask) {
  my_slot().f = v;
  sync_warp();
  const float r = warp_slots()[(tid() % 32) ^ mask].f;
  sync_warp();
  return r;
}

inline uint16_t load16(const unsigned char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// ---- instruments ----------------------------------------------------------------------------
inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}
inline bool async_eager() {
  static const bool on = env_is("AIGC_EMU_ASYNC", "eager");
  return on;
}
inline bool plant_skip_wait() {
  static const bool on = env_is("AIGC_EMU_PLANT", "skip_wait");
  return on;
}
// AIGC_EMU_PLANT=skip_wgmma_wait | skip_wgmma_fence | skip_proxy_fence: that call does nothing.
inline bool planted(const char* what) { return env_is("AIGC_EMU_PLANT", what); }
[[noreturn]] inline void hazard(const char* what) {
  std::fprintf(stderr, "emulate.h hazard (thread %d of block %u,%u,%u): %s\n", tid(), block()->block_idx.x,
               block()->block_idx.y, block()->block_idx.z, what);
  std::abort();
}

// AIGC_EMU_PLANT=skip_sync:FILE:LINE (FILE the base name): that __syncthreads does nothing.
inline bool planted_barrier(const char* file, int line) {
  static const std::string plant = [] {
    const char* v = std::getenv("AIGC_EMU_PLANT");
    return std::string(v != nullptr && std::strncmp(v, "skip_sync:", 10) == 0 ? v + 10 : "");
  }();
  return !plant.empty() && plant == std::string(base_name(file)) + ":" + std::to_string(line);
}

// ---- the race detector ----------------------------------------------------------------------------
// Per 2 bytes of dynamic shared memory: the last writer and the readers of the current barrier interval (a
// __syncthreads generation). A read of bytes another thread wrote in the same interval, a write of bytes another
// thread read or wrote in it, stop the run naming both threads and source sites -- whatever order the fibers ran
// in. Accesses by the lanes of one warp are ordered by a warp collective between them (ldmatrix, mma, shfl: each
// is a sync_warp here). A cp.async writes any time from its issue to its thread's wait_group: it conflicts with
// another thread's access in any interval of that span. wgmma's operand reads are recorded at the issue, as
// the warpgroup's first thread's. Static __shared__ arrays are seen where the kernel reaches them through
// ld_shared / st_shared (smem.cuh); global memory is not. AIGC_EMU_RACE=off switches it off.
inline bool race_off() {
  static const bool off = env_is("AIGC_EMU_RACE", "off");
  return off;
}
inline std::vector<std::string>& site_names() {
  static std::vector<std::string> v{"?"};
  return v;
}
inline int site_id(const std::string& name) {
  static std::map<std::string, int> ids;
  const auto it = ids.find(name);
  if (it != ids.end()) return it->second;
  site_names().push_back(name);
  return ids[name] = static_cast<int>(site_names().size()) - 1;
}
// "function file:line" of a call site, interned
inline int call_site(const char* func, const char* file, int line) {
  static std::map<std::tuple<const char*, const char*, int>, int> ids;
  const auto key = std::make_tuple(func, file, line);
  const auto it = ids.find(key);
  if (it != ids.end()) return it->second;
  return ids[key] = site_id(std::string(func) + " " + base_name(file) + ":" + std::to_string(line));
}
inline uint32_t epoch() { return static_cast<uint32_t>(block()->cta_gen + 1); }
// The record of the 2 bytes at p: dynamic shared memory by offset, a static __shared__ array (one copy per kernel
// here, outside the block's buffer) by address, fresh for every block.
inline bool in_dynamic_smem(const unsigned char* p) {
  const Block* b = block();
  return p >= dynamic_smem() && p < b->smem.data() + b->smem.size();
}
inline ShadowUnit& shadow_at(const unsigned char* p) {
  Block* b = block();
  if (in_dynamic_smem(p)) return b->shadow[static_cast<size_t>(p - dynamic_smem()) / 2];
  return b->static_shadow[reinterpret_cast<uintptr_t>(p) / 2];
}
[[noreturn]] inline void race(const char* kind, const void* p, int other, int other_site, int site) {
  const std::string who = other == -2 ? std::string("several threads") : "thread " + std::to_string(other);
  const unsigned char* at = static_cast<const unsigned char*>(p);
  const std::string where =
      in_dynamic_smem(at) ? "byte " + std::to_string(at - dynamic_smem()) : std::string("a static array");
  const std::string what = std::string("shared-memory race (") + kind + ") at " + where + ": this thread at " +
                           site_names()[site] + ", " + who + " at " + site_names()[other_site] +
                           ", with no barrier between";
  hazard(what.c_str());
}
// Whether an access by `other` (a thread, or -2 with `other_warp` the readers' one warp, or -1 several) at warp
// generation `wgen` in this interval is ordered before this thread's.
inline bool ordered(int other, int other_warp, uint32_t wgen) {
  const int t = tid(), w = t / 32;
  if (other == t) return true;
  return other_warp == w && static_cast<uint32_t>(block()->warp_gen[w]) > wgen;
}
inline void shadow_read(const void* p, int bytes, int site) {
  if (race_off()) return;
  Block* b = block();
  const int t = tid(), w = t / 32;
  const uint32_t e = epoch(), g = static_cast<uint32_t>(b->warp_gen[w]);
  const unsigned char* p0 = static_cast<const unsigned char*>(p);
  for (const unsigned char* at = p0; at < p0 + bytes; at += 2) {
    ShadowUnit& s = shadow_at(at);
    if (s.w_epoch == e && !ordered(s.writer, s.writer / 32, s.w_wgen)) {
      race("a read of another thread's write", at, s.writer, s.w_site, site);
    }
    if (s.r_epoch != e) {
      s.reader = t, s.reader_warp = w, s.r_wgen = g, s.r_epoch = e;
    } else {
      if (s.reader != t) s.reader = -2;
      if (s.reader_warp != w) s.reader_warp = -1;
      s.r_wgen = std::max(s.r_wgen, g);
    }
    s.r_site = static_cast<uint16_t>(site);
  }
}
// A write by this thread that may land any time in the intervals since..now.
inline void shadow_write(const void* p, int bytes, int site, uint32_t since = 0) {
  if (race_off()) return;
  Block* b = block();
  const int t = tid(), w = t / 32;
  const uint32_t e = epoch(), g = static_cast<uint32_t>(b->warp_gen[w]);
  if (since == 0) since = e;
  const unsigned char* p0 = static_cast<const unsigned char*>(p);
  for (const unsigned char* at = p0; at < p0 + bytes; at += 2) {
    ShadowUnit& s = shadow_at(at);
    auto clash = [&](uint32_t at, int other, int other_warp, uint32_t wgen) {
      if (at == 0 || at < since) return false;
      return at < e ? other != t : !ordered(other, other_warp, wgen);
    };
    if (clash(s.r_epoch, s.reader, s.reader_warp, s.r_wgen)) {
      race("a write of bytes another thread read", at, s.reader, s.r_site, site);
    }
    if (clash(s.w_epoch, s.writer, s.writer / 32, s.w_wgen)) {
      race("two threads' writes", at, s.writer, s.w_site, site);
    }
    s.writer = t, s.w_epoch = e, s.w_wgen = g, s.w_site = static_cast<uint16_t>(site);
  }
}

inline void record_copy(const void* dst, const void* src, bool valid, const char* site) {
  Block* b = block();
  const int t = tid(), k = b->async_seq[t]++;
  auto& reqs = b->warp_copies[t / 32];
  if (static_cast<int>(reqs.size()) <= k) reqs.resize(k + 1);
  WarpCopy& w = reqs[k];
  if (w.site.empty()) w.site = site;
  w.dst[t % 32] = static_cast<const unsigned char*>(dst);
  w.src[t % 32] = valid ? static_cast<const unsigned char*>(src) : nullptr;
  w.active[t % 32] = true;
}

inline void cp_async16(void* dst, const void* src, bool valid, const char* site = "") {
  record_copy(dst, src, valid, site);
  AsyncCopy c;
  c.dst = static_cast<unsigned char*>(dst);
  c.epoch = epoch();
  static std::map<const char*, int> ids;  // the site is a function name (__builtin_FUNCTION)
  const auto it = ids.find(site);
  c.site = it != ids.end() ? it->second : (ids[site] = site_id(std::string("cp.async ") + site));
  if (valid) std::memcpy(c.data.data(), src, 16); else c.data.fill(0);
  shadow_write(c.dst, 16, c.site);  // in flight from now: no other thread may touch these bytes
  if (async_eager()) {
    std::memcpy(c.dst, c.data.data(), 16);
    return;
  }
  std::memset(c.dst, 0xFF, 16);  // in flight: NaN until the wait
  block()->async[tid()].open.push_back(c);
}
inline void cp_async_commit() {
  AsyncState& s = block()->async[tid()];
  s.groups.push_back(std::move(s.open));
  s.open.clear();
}
inline void cp_async_wait(int n) {
  if (plant_skip_wait()) return;
  AsyncState& s = block()->async[tid()];
  while (static_cast<int>(s.groups.size()) > n) {
    for (const AsyncCopy& c : s.groups.front()) {
      shadow_write(c.dst, 16, c.site, c.epoch);  // landed now; it was in flight since its issue
      std::memcpy(c.dst, c.data.data(), 16);
    }
    if (!s.groups.front().empty()) block()->wgmma[tid()].proxy_unfenced = true;  // written by the generic proxy
    s.groups.pop_front();
  }
}

struct BankCount {
  long requests = 0, wavefronts = 0, ideal = 0;
};
inline std::map<std::string, BankCount>& ldmatrix_banks() {
  static std::map<std::string, BankCount> m;
  return m;
}
// Wavefronts of one phase: 8 rows of 16 bytes; per bank, the distinct 4-byte words asked of it.
// One shared-memory phase: the 4-byte words it asks of each of the 32 banks. It takes as many wavefronts as the
// most distinct words one bank holds (a word asked by several lanes is one: a broadcast), 1 at least. Absolute
// addresses serve: the count does not change with where a (4-byte aligned) buffer starts.
struct Phase {
  std::array<std::vector<uintptr_t>, 32> banks;
  bool empty = true;
  void add(const void* p, int bytes) {
    const uintptr_t first = reinterpret_cast<uintptr_t>(p) / 4;
    const uintptr_t last = (reinterpret_cast<uintptr_t>(p) + bytes - 1) / 4;
    for (uintptr_t word = first; word <= last; ++word) {
      auto& bank = banks[word % 32];
      if (std::find(bank.begin(), bank.end(), word) == bank.end()) bank.push_back(word);
    }
    empty = false;
  }
  int wavefronts() const {
    size_t most = 1;
    for (const auto& bank : banks) most = std::max(most, bank.size());
    return static_cast<int>(most);
  }
};
inline int phase_wavefronts(const unsigned char* const (&rows)[8]) {
  Phase phase;
  for (const unsigned char* row : rows) phase.add(row, 16);
  return phase.wavefronts();
}
// The 32-byte global sectors a warp-wide request touches and the distinct bytes it moves (the fewest sectors that
// could hold them: (bytes + 31) / 32).
struct Sectors {
  std::vector<uintptr_t> sectors, bytes;
  void add(const void* p, int width) {
    const uintptr_t first = reinterpret_cast<uintptr_t>(p);
    for (uintptr_t byte = first; byte < first + width; ++byte) {
      if (std::find(bytes.begin(), bytes.end(), byte) == bytes.end()) bytes.push_back(byte);
      if (std::find(sectors.begin(), sectors.end(), byte / 32) == sectors.end()) sectors.push_back(byte / 32);
    }
  }
};
// Per cp.async site: warp-wide requests, shared-memory wavefronts of the 16-byte stores (served 8 lanes = 128
// bytes a phase) and their ideal, global 32-byte sectors read and the fewest that could hold the bytes.
struct CopyCount {
  long requests = 0, wavefronts = 0, wavefronts_ideal = 0, sectors = 0, sectors_ideal = 0;
};
inline std::map<std::string, CopyCount>& copy_counts() {
  static std::map<std::string, CopyCount> m;
  return m;
}

inline void flush_plain(Block* b);
inline void flush_global(Block* b);
inline void flush_copies(Block* b) {
  for (auto& reqs : b->warp_copies) {
    for (const WarpCopy& w : reqs) {
      CopyCount& c = copy_counts()[w.site];
      ++c.requests;
      for (int l0 = 0; l0 < 32; l0 += 8) {
        Phase phase;
        for (int l = l0; l < l0 + 8; ++l)
          if (w.active[l]) phase.add(w.dst[l], 16);
        if (phase.empty) continue;
        c.wavefronts += phase.wavefronts();
        ++c.wavefronts_ideal;
      }
      Sectors read;
      int reads = 0;
      for (int l = 0; l < 32; ++l) {
        if (!w.active[l] || w.src[l] == nullptr) continue;
        ++reads;
        read.add(w.src[l], 16);
      }
      c.sectors += static_cast<long>(read.sectors.size());
      c.sectors_ideal += (16L * reads + 31) / 32;
    }
    reqs.clear();
  }
  std::fill(b->async_seq.begin(), b->async_seq.end(), 0);
  flush_plain(b);
  flush_global(b);
}

// {"site": [requests, wavefronts, ideal], ...}: ldmatrix's by default
inline void report_banks(std::FILE* f, const std::map<std::string, BankCount>& counts = ldmatrix_banks()) {
  std::fprintf(f, "{");
  bool first = true;
  for (const auto& [site, c] : counts) {
    std::fprintf(f, "%s\"%s\": [%ld, %ld, %ld]", first ? "" : ", ", site.c_str(), c.requests, c.wavefronts, c.ideal);
    first = false;
  }
  std::fprintf(f, "}");
}
// {"site": [requests, smem wavefronts, ideal, global sectors, ideal], ...}
inline void report_copies(std::FILE* f) {
  std::fprintf(f, "{");
  bool first = true;
  for (const auto& [site, c] : copy_counts()) {
    std::fprintf(f, "%s\"%s\": [%ld, %ld, %ld, %ld, %ld]", first ? "" : ", ", site.c_str(), c.requests, c.wavefronts,
                 c.wavefronts_ideal, c.sectors, c.sectors_ideal);
    first = false;
  }
  std::fprintf(f, "}");
}

// ---- plain ld/st.shared (flash_common.cuh's ld_shared / st_shared) ------------------------------------------
// Each access is checked by the race detector and gathered into warp-wide requests (the k-th access of every lane
// at one site since the last barrier); a request of W-byte accesses is served 128 / W lanes a phase, each phase in
// as many wavefronts as the most distinct 4-byte words one bank holds among its lanes (a word many lanes read is
// one: a broadcast). Counted per site beside the ideal (one a phase with an active lane).
inline std::map<std::string, BankCount>& plain_banks() {
  static std::map<std::string, BankCount> m;
  return m;
}
inline void flush_plain(Block* b) {
  b->plain.drain([](int site, const WarpAccess& a) {
    BankCount& c = plain_banks()[site_names()[site]];
    ++c.requests;
    const int lanes = std::max(1, std::min(32, 128 / std::max(1, a.width)));
    for (int l0 = 0; l0 < 32; l0 += lanes) {
      Phase phase;
      for (int l = l0; l < l0 + lanes; ++l)
        if (a.active[l]) phase.add(a.addr[l], a.width);
      if (phase.empty) continue;
      c.wavefronts += phase.wavefronts();
      ++c.ideal;
    }
  });
}

// ---- plain ld/st.global (smem.cuh's ld_global / st_global, vec.cuh's load / store) -------------------------
// Warp-wide requests gathered as the shared ones are; each counted in the 32-byte sectors its active lanes touch
// beside the fewest that hold the distinct bytes they move, with the access width (bytes a lane, the widest seen
// at the site: 16 is a 128-bit vector access).
struct SectorCount {
  long requests = 0, sectors = 0, ideal = 0;
  int width = 0;
};
inline std::map<std::string, SectorCount>& global_sectors() {
  static std::map<std::string, SectorCount> m;
  return m;
}
inline void flush_global(Block* b) {
  b->global.drain([](int site, const WarpAccess& a) {
    SectorCount& c = global_sectors()[site_names()[site]];
    ++c.requests;
    c.width = std::max(c.width, a.width);
    Sectors s;
    for (int l = 0; l < 32; ++l)
      if (a.active[l]) s.add(a.addr[l], a.width);
    c.sectors += static_cast<long>(s.sectors.size());
    c.ideal += static_cast<long>((s.bytes.size() + 31) / 32);
  });
}
// {"site": [requests, sectors, ideal, width], ...}
inline void report_global(std::FILE* f) {
  std::fprintf(f, "{");
  bool first = true;
  for (const auto& [site, c] : global_sectors()) {
    std::fprintf(f, "%s\"%s\": [%ld, %ld, %ld, %d]", first ? "" : ", ", site.c_str(), c.requests, c.sectors, c.ideal,
                 c.width);
    first = false;
  }
  std::fprintf(f, "}");
}
// A site's id under a prefix ("ld.shared ", "st.global ", ...), interned once per (prefix, call site).
inline int prefixed_site(const char* prefix, int site) {
  static std::map<std::pair<const char*, int>, int> ids;
  const auto it = ids.find({prefix, site});
  return it != ids.end() ? it->second : (ids[{prefix, site}] = site_id(prefix + site_names()[site]));
}
template <typename T>
inline T ld_global(const T* p, const char* func, const char* file, int line) {
  block()->global.record(p, sizeof(T), prefixed_site("ld.global ", call_site(func, file, line)), tid());
  return *p;
}
template <typename T>
inline void st_global(T* p, T v, const char* func, const char* file, int line) {
  block()->global.record(p, sizeof(T), prefixed_site("st.global ", call_site(func, file, line)), tid());
  *p = v;
}

template <typename T>
inline T ld_shared(const T* p, const char* func, const char* file, int line) {
  const int site = call_site(func, file, line);
  shadow_read(p, sizeof(T), site);
  block()->plain.record(p, sizeof(T), prefixed_site("ld.shared ", site), tid());
  return *p;
}
template <typename T>
inline void st_shared(T* p, T v, const char* func, const char* file, int line) {
  const int site = call_site(func, file, line);
  shadow_write(p, sizeof(T), site);
  block()->plain.record(p, sizeof(T), prefixed_site("st.shared ", site), tid());
  *p = v;
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE(), const char* func = __builtin_FUNCTION()) {
  my_slot().ptr = static_cast<const unsigned char*>(p);
  sync_warp();
  const int lane = tid() % 32, site = call_site(func, file, line);
  shadow_read(p, 16, site);  // this lane's row address
  auto& s = warp_slots();
  if (lane == 0) {
    BankCount& c = ldmatrix_banks()[site_names()[site]];
    ++c.requests;
    c.ideal += 4;
    for (int i = 0; i < 4; ++i) {
      const unsigned char* rows[8];
      for (int j = 0; j < 8; ++j) rows[j] = s[8 * i + j].ptr;
      c.wavefronts += phase_wavefronts(rows);
    }
  }
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const unsigned char* row = s[8 * i + lane / 4].ptr;
      lo = load16(row + 2 * (2 * (lane % 4)));
      hi = load16(row + 2 * (2 * (lane % 4) + 1));
    } else {
      lo = load16(s[8 * i + 2 * (lane % 4)].ptr + 2 * (lane / 4));
      hi = load16(s[8 * i + 2 * (lane % 4) + 1].ptr + 2 * (lane / 4));
    }
    r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  sync_warp();
}

template <typename T>
inline float to_f(uint16_t bits) {
  T v;
  std::memcpy(&v, &bits, 2);
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

template <typename T>
inline void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Slot& me = my_slot();
  std::memcpy(me.a, a, sizeof(me.a));
  me.b[0] = b0;
  me.b[1] = b1;
  sync_warp();
  auto& s = warp_slots();
  auto A = [&](int row, int col) {  // 16 x 16
    const int lane = 4 * (row % 8) + (col % 8) / 2;
    const int reg = (row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0);
    const uint32_t w = s[lane].a[reg];
    return to_f<T>(static_cast<uint16_t>((col % 2) ? (w >> 16) : (w & 0xFFFF)));
  };
  auto B = [&](int k, int n) {  // 16 x 8
    const int lane = 4 * n + (k % 8) / 2;
    const uint32_t w = s[lane].b[k >= 8 ? 1 : 0];
    return to_f<T>(static_cast<uint16_t>((k % 2) ? (w >> 16) : (w & 0xFFFF)));
  };
  const int lane = tid() % 32, g = lane / 4, t = lane % 4;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
    float acc = c[e];
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    out[e] = acc;
  }
  sync_warp();
  for (int e = 0; e < 4; ++e) c[e] = out[e];
}

// ---- Hopper wgmma (warpgroup MMA), no-swizzle descriptors ------------------------------------
// Descriptor: start address, LBO (K-direction core-matrix step), SBO (M/N-direction step), all
// >> 4 (flash_common.cuh: smem_addr is an offset into the dynamic shared memory here). Core matrix:
// 8 rows of 16 contiguous bytes. K-major: a row is 8 K-elements; MN-major: a row is 8 M/N-elements.
struct Desc {
  const unsigned char* start;
  int lbo, sbo;
};
inline Desc decode(uint64_t d) {
  if ((d >> 62) != 0) std::abort();  // only the no-swizzle layout is emulated
  return {dynamic_smem() + ((d & 0x3FFF) << 4), static_cast<int>(((d >> 16) & 0x3FFF) << 4),
          static_cast<int>(((d >> 32) & 0x3FFF) << 4)};
}
// Element (mn, k) of a K-major operand, (k, mn) of an MN-major one.
inline uint16_t kmajor(const Desc& d, int mn, int k) {
  return load16(d.start + (mn / 8) * d.sbo + (k / 8) * d.lbo + (mn % 8) * 16 + (k % 8) * 2);
}
inline uint16_t mnmajor(const Desc& d, int k, int mn) {
  return load16(d.start + (k / 8) * d.lbo + (mn / 8) * d.sbo + (k % 8) * 16 + (mn % 8) * 2);
}

// ---- wgmma's asynchronous protocol (see WgmmaState) -------------------------------------------
inline void wgmma_fence() {
  if (!planted("skip_wgmma_fence")) block()->wgmma[tid()].fenced = true;
}
inline void wgmma_commit() {
  if (async_eager()) return;
  WgmmaState& st = block()->wgmma[tid()];
  st.groups.push_back(std::move(st.open));
  st.open.clear();
}
inline void wgmma_wait(int n) {
  if (planted("skip_wgmma_wait")) return;
  WgmmaState& st = block()->wgmma[tid()];
  st.fenced = false;  // the accumulators are the thread's registers again
  while (static_cast<int>(st.groups.size()) > n) {
    for (const PendingAcc& p : st.groups.front()) std::memcpy(p.d, p.value.data(), p.value.size() * sizeof(float));
    st.groups.pop_front();
  }
  if (st.groups.empty() && st.open.empty()) st.latest.clear();
}
inline void fence_proxy_async() {
  if (!planted("skip_proxy_fence")) block()->wgmma[tid()].proxy_unfenced = false;
}
// Before a wgmma: the checks, and the accumulator it starts from (the newest pending value, else d).
template <int N>
inline void wgmma_begin(float (&acc)[N / 8][4], float (&d)[N / 8][4]) {
  std::memcpy(acc, d, sizeof(acc));
  if (async_eager()) return;
  WgmmaState& st = block()->wgmma[tid()];
  if (!st.fenced) hazard("wgmma.mma_async without a wgmma.fence since the thread's last wgmma.wait_group");
  if (block()->proxy_hazard) {
    hazard("wgmma reads shared memory that cp.async (the generic proxy) wrote, with no fence.proxy.async by its "
           "writer before the barrier");
  }
  const auto it = st.latest.find(&d[0][0]);
  if (it != st.latest.end()) std::memcpy(acc, it->second.data(), sizeof(acc));
}
// After it: d holds NaN until the wait that covers this wgmma's group.
template <int N>
inline void wgmma_end(float (&d)[N / 8][4], const float (&acc)[N / 8][4]) {
  if (async_eager()) {
    std::memcpy(d, acc, sizeof(acc));
    return;
  }
  WgmmaState& st = block()->wgmma[tid()];
  std::vector<float> value(&acc[0][0], &acc[0][0] + N / 2);
  st.latest[&d[0][0]] = value;
  st.open.push_back({&d[0][0], std::move(value)});
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) d[j][e] = NAN;
}

// A wgmma's shared-memory operand of MN rows x 16 K: its core matrices (8 rows of 16 contiguous bytes at
// start + (mn / 8) * SBO + (k / 8) * LBO, either major-ness), each modelled as one request served in as many
// wavefronts as the most distinct words a bank holds among its 128 bytes (ideal 1: a no-swizzle core matrix is
// contiguous). Read by the warpgroup's first thread for the race detector, at the issue. Per site (the wgmma's
// shape, and "A" or "B": each shape is issued from one place in the forward).
inline std::map<std::string, BankCount>& wgmma_banks() {
  static std::map<std::string, BankCount> m;
  return m;
}
inline void wgmma_operand(const Desc& d, int mn, int site, const char* which) {
  if (tid() % 128 != 0) return;
  static std::map<std::pair<int, const char*>, int> ids;
  const auto key = std::make_pair(site, which);
  const auto it = ids.find(key);
  const int s = it != ids.end() ? it->second : (ids[key] = site_id(site_names()[site] + " " + which));
  BankCount& c = wgmma_banks()[site_names()[s]];
  ++c.requests;
  for (int m8 = 0; m8 < mn / 8; ++m8)
    for (int k8 = 0; k8 < 2; ++k8) {
      const unsigned char* rows[8];
      for (int r = 0; r < 8; ++r) rows[r] = d.start + m8 * d.sbo + k8 * d.lbo + r * 16;
      c.wavefronts += phase_wavefronts(rows);
      ++c.ideal;
      for (const unsigned char* row : rows) shadow_read(row, 16, s);
    }
}

// D (64 x N, this thread's fragment) += A (64 x 16, K-major smem) B (16 x N, K-major smem).
template <typename T, int N>
inline void wgmma_ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b) {
  static const int site = site_id("wgmma_ss m64n" + std::to_string(N) + "k16");
  float acc[N / 8][4];
  wgmma_begin<N>(acc, d);
  const Desc a = decode(desc_a), b = decode(desc_b);
  wgmma_operand(a, 64, site, "A");
  wgmma_operand(b, N, site, "B");
  const int w = (tid() / 32) % 4, lane = tid() % 32, g = lane / 4, t = lane % 4;
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * w + g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * t + (e & 1);
      float x = acc[j][e];
      for (int k = 0; k < 16; ++k) x += to_f<T>(kmajor(a, row, k)) * to_f<T>(kmajor(b, col, k));
      acc[j][e] = x;
    }
  wgmma_end<N>(d, acc);
}

// D += A (this warp's 16 rows from registers, the mma.sync A layout) B (16 x N, MN-major smem).
template <typename T, int N>
inline void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  static const int site = site_id("wgmma_rs m64n" + std::to_string(N) + "k16");
  float start[N / 8][4];
  wgmma_begin<N>(start, d);
  std::memcpy(my_slot().a, a, sizeof(my_slot().a));
  sync_warp();
  auto& s = warp_slots();
  auto A = [&](int row, int col) {
    const uint32_t wd = s[4 * (row % 8) + (col % 8) / 2].a[(row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0)];
    return to_f<T>(static_cast<uint16_t>((col % 2) ? (wd >> 16) : (wd & 0xFFFF)));
  };
  const Desc b = decode(desc_b);
  wgmma_operand(b, N, site, "B");
  const int lane = tid() % 32, g = lane / 4, t = lane % 4;
  float out[N / 8][4];
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * t + (e & 1);
      float acc = start[j][e];
      for (int k = 0; k < 16; ++k) acc += A(row, k) * to_f<T>(mnmajor(b, k, col));
      out[j][e] = acc;
    }
  sync_warp();
  wgmma_end<N>(d, out);
}

}  // namespace emu

// The CUDA spellings the kernels use.
#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#undef __shared__
#define __shared__ static  // one copy per kernel instantiation, shared by the block's fibers
#define rsqrtf(x) (1.f / std::sqrt(x))
#define __expf(x) std::exp(x)
#define CUDA_KERNEL_ASSERT(cond) \
  do {                           \
    if (!(cond)) std::abort();   \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() (void)0
// AIGC_LAUNCH(grid, threads, smem, stream, (args...), kernel<...>): runs the kernel on the CPU.
#define AIGC_LAUNCH(grid, threads, smem, stream, args, ...) \
  ::emu::launch(dim3(grid), static_cast<int>(threads), static_cast<size_t>(smem), [&] { __VA_ARGS__ args; })
#define __syncthreads() ::emu::sync_threads()
#undef __launch_bounds__
#define __launch_bounds__(...)
#define __trap() std::abort()
inline float __shfl_xor_sync(unsigned, float v, int mask) { return ::emu::shfl_xor(v, mask); }
using std::max;
using std::min;
