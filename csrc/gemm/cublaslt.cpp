// cuBLASLt GEMMs with epilogues, for row-major tensors.
//
// cuBLASLt is column-major: a row-major (R, C) matrix with row stride ld is a column-major (C, R)
// matrix with leading dimension ld. So out (M, N) = A (M, K) @ B (K, N) is computed as the
// column-major product out^T (N, M) = B^T (N, K) @ A^T (K, M): cuBLASLt's "A" is our B and its "B"
// is our A, and its per-row bias vector (length N) is our per-column bias.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>
#include <cublasLt.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "gemm.h"

namespace aigc_kernels {
namespace gemm {

Act parse_act(const std::optional<c10::string_view>& name) {
  if (!name.has_value()) return Act::kNone;
  const std::string_view s(name->data(), name->size());
  for (const auto& entry : kActNames) {
    if (entry.name == s) return entry.act;
  }
  TORCH_CHECK(false, "aigc_kernels: expected activation ", kActNamesText, ", got '", std::string(s), "'");
}

namespace {

#define AIGC_LT_CHECK(expr)                                                                        \
  do {                                                                                             \
    cublasStatus_t _status = (expr);                                                               \
    TORCH_CHECK(_status == CUBLAS_STATUS_SUCCESS, "aigc_kernels cuBLASLt: ", #expr, " failed with status ", \
                static_cast<int>(_status));                                                        \
  } while (0)

cudaDataType_t cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return CUDA_R_32F;
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: TORCH_CHECK(false, "aigc_kernels cuBLASLt: unsupported dtype ", t);
  }
}

// RAII holders for the descriptor handles.
struct Desc {
  cublasLtMatmulDesc_t h = nullptr;
  ~Desc() { if (h) cublasLtMatmulDescDestroy(h); }
};
struct Layout {
  cublasLtMatrixLayout_t h = nullptr;
  ~Layout() { if (h) cublasLtMatrixLayoutDestroy(h); }
};
struct Pref {
  cublasLtMatmulPreference_t h = nullptr;
  ~Pref() { if (h) cublasLtMatmulPreferenceDestroy(h); }
};

// The heuristic's choice per problem: what the descriptors say (types, transposes, sizes, leading dimensions,
// epilogue, accumulate) and what it may assume (each operand's pointer alignment, the workspace size), per device.
// Asked once per key; every later call with that key reuses the algorithm (and an empty entry: "none found").
struct AlgoKey {
  int64_t v[17];
  bool operator==(const AlgoKey& o) const { return std::memcmp(v, o.v, sizeof(v)) == 0; }
};
struct AlgoKeyHash {
  size_t operator()(const AlgoKey& k) const {
    uint64_t h = 1469598103934665603ull;
    for (int64_t x : k.v) h = (h ^ static_cast<uint64_t>(x)) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};
std::mutex algo_mutex;
std::unordered_map<AlgoKey, std::optional<cublasLtMatmulAlgo_t>, AlgoKeyHash> algo_cache;

// The largest power of two (at most 256) that divides a pointer: what cuBLASLt may assume of it.
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

}  // namespace

// A storage tensor with unit column stride for cuBLASLt, and whether it is transposed: a
// column-major operand (stride(0) == 1, e.g. HF Conv1D weights seen through .t()) becomes its
// row-major transpose with the flag flipped; anything else is copied.
static std::pair<at::Tensor, bool> row_major(const at::Tensor& t, bool transposed) {
  if (t.size(1) <= 1 || t.stride(1) == 1) return {t, transposed};
  if (t.size(0) <= 1 || t.stride(0) == 1) return {t.t(), !transposed};
  return {t.contiguous(), transposed};
}

bool lt_matmul(const at::Tensor& a_in, bool a_t_in, const at::Tensor& b_in, bool b_t_in, at::Tensor& out,
               Epilogue epi, const at::Tensor* bias, at::Tensor* aux, at::Tensor* bias_grad, bool accumulate) {
  // Logical sizes: A (M, K), B (K, N), out (M, N). Storage: A is (M, K) or, when a_t, (K, M).
  const auto [a, a_t] = row_major(a_in, a_t_in);
  const auto [b, b_t] = row_major(b_in, b_t_in);
  const int64_t m = out.size(0), n = out.size(1);
  const int64_t k = a_t ? a.size(0) : a.size(1);
  TORCH_CHECK(out.dim() == 2 && (out.size(1) <= 1 || out.stride(1) == 1),
              "aigc_kernels cuBLASLt: expected a row-major output, got strides ", out.strides());
  const cudaDataType_t dt = cuda_type(a.scalar_type());
  const auto ld = [](const at::Tensor& t) { return std::max<int64_t>(t.stride(0), std::max<int64_t>(t.size(1), 1)); };

  Desc desc;
  AIGC_LT_CHECK(cublasLtMatmulDescCreate(&desc.h, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // cuBLASLt "A" = our B: stored row-major (K, N) = column-major (N, K) -> no transpose; (N, K) -> T.
  const cublasOperation_t op_lt_a = b_t ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_lt_b = a_t ? CUBLAS_OP_T : CUBLAS_OP_N;
  AIGC_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_TRANSA, &op_lt_a, sizeof(op_lt_a)));
  AIGC_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_TRANSB, &op_lt_b, sizeof(op_lt_b)));
  cublasLtEpilogue_t lt_epi = CUBLASLT_EPILOGUE_DEFAULT;
  if (epi == Epilogue::kBias) {
    lt_epi = CUBLASLT_EPILOGUE_BIAS;
  } else if (epi == Epilogue::kGeluAux) {
    lt_epi = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  } else if (epi == Epilogue::kRowSumA) {
    lt_epi = CUBLASLT_EPILOGUE_BGRADB;  // our A is cuBLASLt's B; the sum runs over the shared K
  } else if (epi == Epilogue::kDGeluAux) {
    lt_epi = CUBLASLT_EPILOGUE_DGELU;  // out = (A @ B) * gelu'(aux), aux laid out like out
  }
  AIGC_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE, &lt_epi, sizeof(lt_epi)));
  if (bias != nullptr && epi != Epilogue::kRowSumA) {
    const void* ptr = bias->data_ptr();
    const cudaDataType_t bt = cuda_type(bias->scalar_type());
    AIGC_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptr, sizeof(ptr)));
    AIGC_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  if (epi == Epilogue::kRowSumA) {
    TORCH_CHECK(bias_grad != nullptr && bias_grad->scalar_type() == at::kFloat, "lt_matmul: kRowSumA needs a float32 bias_grad");
    void* ptr = bias_grad->data_ptr();
    const cudaDataType_t bt = CUDA_R_32F;
    AIGC_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptr, sizeof(ptr)));
    AIGC_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  if (epi == Epilogue::kGeluAux || epi == Epilogue::kDGeluAux) {
    TORCH_CHECK(aux != nullptr && aux->is_contiguous() && aux->size(0) == m && aux->size(1) == n &&
                    aux->scalar_type() == out.scalar_type(),
                "lt_matmul: the GELU epilogues need a contiguous (M, N) aux in the output's dtype");
    void* ptr = aux->data_ptr();
    const int64_t aux_ld = n;
    AIGC_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &ptr, sizeof(ptr)));
    AIGC_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld)));
  }

  // Column-major layouts: cuBLASLt A = our B storage, B = our A storage, D = out.
  Layout la, lb, ld_out;
  const int64_t b_rows_cm = b_t ? k : n, b_cols_cm = b_t ? n : k;  // column-major view of B's storage
  const int64_t a_rows_cm = a_t ? m : k, a_cols_cm = a_t ? k : m;
  AIGC_LT_CHECK(cublasLtMatrixLayoutCreate(&la.h, dt, b_rows_cm, b_cols_cm, ld(b)));
  AIGC_LT_CHECK(cublasLtMatrixLayoutCreate(&lb.h, dt, a_rows_cm, a_cols_cm, ld(a)));
  AIGC_LT_CHECK(cublasLtMatrixLayoutCreate(&ld_out.h, cuda_type(out.scalar_type()), n, m, ld(out)));

  auto handle = at::cuda::getCurrentCUDABlasLtHandle();
  // torch's own cuBLASLt workspace for this handle and stream (from its caching allocator, kept across calls)
  const size_t ws = at::cuda::getCUDABlasLtWorkspaceSize();
  void* workspace = ws > 0 ? at::cuda::getCUDABlasLtWorkspace() : nullptr;
  const uint32_t align_a = alignment(b.data_ptr()), align_b = alignment(a.data_ptr()),
                 align_d = alignment(out.data_ptr());  // cuBLASLt's A is our B (the file's header)
  const AlgoKey key{{out.get_device(), static_cast<int64_t>(dt), static_cast<int64_t>(cuda_type(out.scalar_type())),
                     static_cast<int64_t>(op_lt_a), static_cast<int64_t>(op_lt_b), m, n, k, ld(b), ld(a), ld(out),
                     static_cast<int64_t>(lt_epi),
                     bias ? static_cast<int64_t>(bias->scalar_type()) : -1, accumulate ? 1 : 0,
                     static_cast<int64_t>(align_a) | (static_cast<int64_t>(align_b) << 16), align_d,
                     static_cast<int64_t>(ws)}};
  std::optional<cublasLtMatmulAlgo_t> algo;
  bool cached = false;
  {
    const std::lock_guard<std::mutex> lock(algo_mutex);
    const auto it = algo_cache.find(key);
    if (it != algo_cache.end()) {
      algo = it->second;
      cached = true;
    }
  }
  if (!cached) {
    Pref pref;
    AIGC_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref.h));
    AIGC_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    // Only algorithms that hold for these pointers (a strided half of a tensor need not be 256-byte aligned).
    AIGC_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                       sizeof(align_a)));
    AIGC_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                       sizeof(align_b)));
    AIGC_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                       sizeof(align_d)));
    AIGC_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                       sizeof(align_d)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, desc.h, la.h, lb.h, ld_out.h, ld_out.h, pref.h,
                                                             1, &result, &found);
    if (st == CUBLAS_STATUS_SUCCESS && found > 0) algo = result.algo;
    const std::lock_guard<std::mutex> lock(algo_mutex);
    algo_cache.emplace(key, algo);
  }
  if (!algo) return false;
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;  // accumulate: out = A @ B + out
  AIGC_LT_CHECK(cublasLtMatmul(handle, desc.h, &alpha, b.data_ptr(), la.h, a.data_ptr(), lb.h, &beta, out.data_ptr(),
                               ld_out.h, out.data_ptr(), ld_out.h, &*algo, workspace, ws,
                               at::cuda::getCurrentCUDAStream()));
  return true;
}

}  // namespace gemm
}  // namespace aigc_kernels
