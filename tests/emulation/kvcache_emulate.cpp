// Runs the CUDA KV-cache append kernel (csrc/kvcache/kvcache_kernels.cuh) on the CPU through
// csrc/emulate.h and compares the caches with the expected copy. Driven by tests/test_kernel_emulation.py:
//
//   kvcache_emulate VECTOR STRIDED_CACHE SEED
//     VECTOR 1: 16-byte words (8 x 16-bit elements), 0: element words;
//     STRIDED_CACHE 1: caches laid out (B, Lmax, H, D) and seen as (B, H, Lmax, D) (element words only);
//       2: paged caches (num_pages, 8, H, D) through a shuffled block table, one of whose entries on an
//       appended row is a bad page id (skipped: nothing written there, nothing outside the cache touched)
//
// Prints {"mismatches": N, "checked": M}.
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "kvcache/kvcache_kernels.cuh"

using namespace aigc_kernels;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s VECTOR STRIDED_CACHE SEED\n", argv[0]);
    return 2;
  }
  const bool vector = std::atoi(argv[1]) != 0;
  const int mode = std::atoi(argv[2]);
  const bool strided = mode == 1, paged = mode == 2;
  std::mt19937 rng(static_cast<unsigned>(std::atoi(argv[3])));
  const int64_t B = 3, H = 2, Lmax = 40, D = 64, Lnew = 5, Page = 8, Width = Lmax / Page;
  const int64_t Pages = B * Width + 2;
  std::vector<int32_t> lens = {0, 17, 35};  // the last batch fills the cache exactly
  // element strides of the caches (B, H, Lmax, D) -- paged: {page, head, slot, 1} -- and of k_new/v_new
  int64_t cs[4] = {H * Lmax * D, Lmax * D, D, 1};
  if (strided) cs[0] = Lmax * H * D, cs[1] = D, cs[2] = H * D, cs[3] = 1;
  if (paged) cs[0] = Page * H * D, cs[1] = D, cs[2] = H * D, cs[3] = 1;
  const int64_t ns[4] = {H * Lnew * D, Lnew * D, D, 1};
  std::vector<int32_t> table(B * Width);
  for (int64_t i = 0; i < B * Width; ++i) table[i] = static_cast<int32_t>(i);
  std::shuffle(table.begin(), table.end(), rng);
  if (paged) table[1 * Width + (17 + 2) / Page] = static_cast<int32_t>(Pages + 5);  // a bad id, batch 1's row 19
  std::vector<uint16_t> kc(paged ? Pages * Page * H * D : B * H * Lmax * D), vc(kc.size()), kn(B * H * Lnew * D),
      vn(kn.size());
  for (auto* t : {&kc, &vc, &kn, &vn})
    for (auto& x : *t) x = static_cast<uint16_t>(rng());
  const std::vector<uint16_t> kc0 = kc, vc0 = vc;

  const int64_t per = vector ? 8 : 1;
  auto strides = [&](const int64_t (&s)[4]) {
    return Strides4{{s[0] / per, s[1] / per, s[2] / per, s[3]}};
  };
  const int64_t rows = B * H * Lnew, words = D / per;
  const int threads = words >= 128 ? 128 : 32 * static_cast<int>((words + 31) / 32);
  const int blocks = static_cast<int>(rows < 7 ? rows : 7);  // fewer blocks than rows: the row loop wraps
  const int32_t* bt = paged ? table.data() : nullptr;
  if (vector) {
    emu::launch(dim3(blocks), threads, 0, [&] {
      kvcache_append_kernel<uint4>(reinterpret_cast<uint4*>(kc.data()), reinterpret_cast<uint4*>(vc.data()),
                                   reinterpret_cast<const uint4*>(kn.data()), reinterpret_cast<const uint4*>(vn.data()),
                                   lens.data(), strides(cs), strides(cs), strides(ns), strides(ns), H, Lnew, Lmax,
                                   words, rows, bt, Width, Page, Pages);
    });
  } else {
    emu::launch(dim3(blocks), threads, 0, [&] {
      kvcache_append_kernel<uint16_t>(kc.data(), vc.data(), kn.data(), vn.data(), lens.data(), strides(cs),
                                      strides(cs), strides(ns), strides(ns), H, Lnew, Lmax, words, rows, bt, Width,
                                      Page, Pages);
    });
  }
  if (paged) {  // every slot of every page: the new row where the table sends it (bad id: nowhere), else as before
    std::vector<int64_t> src_of(kc.size(), -1);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < Lnew; ++i) {
        const int64_t j = lens[b] + i, page = table[b * Width + j / Page];
        if (page < 0 || page >= Pages) continue;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t d = 0; d < D; ++d)
            src_of[page * cs[0] + h * cs[1] + (j % Page) * cs[2] + d] = b * ns[0] + h * ns[1] + i * ns[2] + d;
      }
    int64_t bad = 0;
    for (size_t at = 0; at < kc.size(); ++at) {
      bad += kc[at] != (src_of[at] >= 0 ? kn[src_of[at]] : kc0[at]);
      bad += vc[at] != (src_of[at] >= 0 ? vn[src_of[at]] : vc0[at]);
    }
    std::printf("{\"mismatches\": %lld, \"checked\": %lld}\n", static_cast<long long>(bad),
                static_cast<long long>(2 * kc.size()));
    return 0;
  }
  int64_t bad = 0, checked = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < Lmax; ++j)
        for (int64_t d = 0; d < D; ++d) {
          const int64_t at = b * cs[0] + h * cs[1] + j * cs[2] + d * cs[3];
          const int64_t i = j - lens[b];
          const bool fresh = i >= 0 && i < Lnew;
          const int64_t src = b * ns[0] + h * ns[1] + i * ns[2] + d;
          bad += kc[at] != (fresh ? kn[src] : kc0[at]);
          bad += vc[at] != (fresh ? vn[src] : vc0[at]);
          checked += 2;
        }
  std::printf("{\"mismatches\": %lld, \"checked\": %lld}\n", static_cast<long long>(bad),
              static_cast<long long>(checked));
  return 0;
}
