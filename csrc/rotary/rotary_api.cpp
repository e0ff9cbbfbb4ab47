// Host side of the rotary ops: checks, device guard, the launcher (CUDA); and CPU implementations in ATen,
// so the schemas, the fake impls and opcheck run end to end on machines without a GPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "rotary/rotary.h"

namespace aigc_kernels {
namespace rotary {
namespace {

inline void check_args(const char* op, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                       const std::optional<at::Tensor>& positions) {
  TORCH_CHECK(x.dim() == 4, op, ": expected x of shape (B, H, L, D), got ", x.sizes());
  TORCH_CHECK(cos.dim() == 2 && sin.sizes() == cos.sizes(), op,
              ": expected cos and sin of one shape (Lmax, rotary_dim / 2), got ", cos.sizes(), " and ", sin.sizes());
  TORCH_CHECK(cos.size(1) >= 1 && 2 * cos.size(1) <= x.size(3), op, ": expected 2 <= rotary_dim <= D = ",
              x.size(3), ", got rotary_dim = ", 2 * cos.size(1));
  const auto t = x.scalar_type(), c = cos.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": expected x of dtype float32, float16 or bfloat16, got ", t);
  TORCH_CHECK(c == t || c == at::kFloat, op, ": expected cos/sin in x's dtype (", t, ") or float32, got ", c);
  TORCH_CHECK(sin.scalar_type() == c, op, ": expected sin of cos's dtype ", c, ", got ", sin.scalar_type());
  TORCH_CHECK(x.size(3) <= 1 || x.stride(3) == 1, op, ": expected x with a unit last-dim stride, got strides ",
              x.strides());
  TORCH_CHECK(cos.stride(1) == 1 && sin.stride(1) == 1, op, ": expected cos/sin with a unit column stride, got ",
              cos.strides(), " and ", sin.strides());
  for (const at::Tensor* u : {&cos, &sin}) {
    TORCH_CHECK(u->device() == x.device(), op, ": expected cos/sin on x's device ", x.device(), ", got ",
                u->device());
  }
  if (positions.has_value()) {
    const at::Tensor& p = *positions;
    TORCH_CHECK(p.dim() == 2 && p.size(1) == x.size(2) && (p.size(0) == 1 || p.size(0) == x.size(0)), op,
                ": expected positions of shape (", x.size(0), ", ", x.size(2), ") or (1, ", x.size(2), "), got ",
                p.sizes());
    TORCH_CHECK(p.scalar_type() == at::kInt || p.scalar_type() == at::kLong, op,
                ": expected positions of dtype int32 or int64, got ", p.scalar_type());
    TORCH_CHECK(p.device() == x.device(), op, ": expected positions on x's device ", x.device(), ", got ",
                p.device());
  } else {
    TORCH_CHECK(x.size(2) <= cos.size(0), op, ": without positions, expected L = ", x.size(2),
                " <= Lmax = ", cos.size(0));
  }
}

DType dtype_of(at::ScalarType t) {
  return t == at::kFloat ? DType::kF32 : (t == at::kHalf ? DType::kF16 : DType::kBF16);
}

// Every access of a thread one aligned vector: the row starts (and the second half, GPT-NeoX) on
// multiples of the vector, the base pointers aligned to it.
bool aligned(const at::Tensor& t, int64_t elems) {
  const auto ptr = reinterpret_cast<uintptr_t>(t.data_ptr());
  for (int d = 0; d < t.dim() - 1; ++d) {
    if (t.size(d) > 1 && t.stride(d) % elems != 0) return false;
  }
  return ptr % (elems * t.element_size()) == 0;
}

void run_cuda(const at::Tensor& x, const at::Tensor& out, const at::Tensor& cos, const at::Tensor& sin,
              const std::optional<at::Tensor>& positions, bool interleaved, bool conjugate) {
  TORCH_CHECK(x.is_cuda(), "aigc_kernels::rotary: expected CUDA tensors, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) return;
  Params p{};
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.cos = cos.data_ptr();
  p.sin = sin.data_ptr();
  p.pos = positions.has_value() ? positions->data_ptr() : nullptr;
  p.x_sb = x.stride(0), p.x_sh = x.stride(1), p.x_sl = x.stride(2);
  p.o_sb = out.stride(0), p.o_sh = out.stride(1), p.o_sl = out.stride(2);
  p.cos_s = cos.stride(0), p.sin_s = sin.stride(0);
  p.pos_sb = positions.has_value() && positions->size(0) > 1 ? positions->stride(0) : 0;
  p.pos_sl = positions.has_value() ? positions->stride(1) : 0;
  p.B = x.size(0), p.H = x.size(1), p.L = x.size(2), p.D = x.size(3);
  p.half = cos.size(1), p.lmax = cos.size(0);
  p.conj = conjugate;
  p.copy_rest = out.data_ptr() != x.data_ptr() && x.size(3) > 2 * cos.size(1);
  const int64_t per_thread = interleaved ? 8 : 4;  // elements of x a thread reads as one vector
  const bool vectorized = p.half % 4 == 0 && aligned(x, per_thread) && aligned(out, per_thread) &&
                          aligned(cos, 4) && aligned(sin, 4);
  const int max_blocks = at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 16;
  launch(p, dtype_of(x.scalar_type()), dtype_of(cos.scalar_type()),
         positions.has_value() && positions->scalar_type() == at::kLong, interleaved, vectorized, max_blocks,
         at::cuda::getCurrentCUDAStream());
}

at::Tensor rotary_fwd_cuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                           const std::optional<at::Tensor>& positions, bool interleaved, bool conjugate) {
  check_args("aigc_kernels::rotary_fwd", x, cos, sin, positions);
  at::Tensor out = at::empty_like(x);
  run_cuda(x, out, cos, sin, positions, interleaved, conjugate);
  return out;
}

void rotary_inplace_cuda(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                         const std::optional<at::Tensor>& positions, bool interleaved, bool conjugate) {
  check_args("aigc_kernels::rotary_inplace", x, cos, sin, positions);
  run_cuda(x, x, cos, sin, positions, interleaved, conjugate);
}

// The rotated first R features, in x's dtype, computed in float32 (the kernel's math).
at::Tensor rotated_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                       const std::optional<at::Tensor>& positions, bool interleaved, bool conjugate) {
  const int64_t half = cos.size(1), length = x.size(2);
  if (positions.has_value()) {
    const at::Tensor p = positions->to(at::kLong);
    if (p.numel() > 0) {
      const int64_t lo = p.min().item<int64_t>(), hi = p.max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < cos.size(0), "aigc_kernels::rotary: expected positions in [0, Lmax) = [0, ",
                  cos.size(0), "), got values in [", lo, ", ", hi, "]");
    }
  }
  const at::Tensor rows = positions.has_value() ? positions->to(at::kLong)
                                                : at::arange(length, x.options().dtype(at::kLong)).unsqueeze(0);
  const at::Tensor c = cos.index_select(0, rows.reshape(-1)).view({rows.size(0), 1, length, half}).to(at::kFloat);
  at::Tensor s = sin.index_select(0, rows.reshape(-1)).view({rows.size(0), 1, length, half}).to(at::kFloat);
  if (conjugate) s = -s;
  const at::Tensor part = x.narrow(3, 0, 2 * half).to(at::kFloat);
  at::Tensor x1, x2;
  if (interleaved) {
    const at::Tensor pairs = part.unflatten(3, {half, 2});
    x1 = pairs.select(4, 0), x2 = pairs.select(4, 1);
  } else {
    x1 = part.narrow(3, 0, half), x2 = part.narrow(3, half, half);
  }
  const at::Tensor o1 = x1 * c - x2 * s, o2 = x1 * s + x2 * c;
  const at::Tensor rot = interleaved ? at::stack({o1, o2}, 4).flatten(3) : at::cat({o1, o2}, 3);
  return rot.to(x.scalar_type());
}

at::Tensor rotary_fwd_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                          const std::optional<at::Tensor>& positions, bool interleaved, bool conjugate) {
  check_args("aigc_kernels::rotary_fwd", x, cos, sin, positions);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const int64_t r = 2 * cos.size(1);
  out.narrow(3, 0, r).copy_(rotated_cpu(x, cos, sin, positions, interleaved, conjugate));
  if (x.size(3) > r) out.narrow(3, r, x.size(3) - r).copy_(x.narrow(3, r, x.size(3) - r));
  return out;
}

void rotary_inplace_cpu(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                        const std::optional<at::Tensor>& positions, bool interleaved, bool conjugate) {
  check_args("aigc_kernels::rotary_inplace", x, cos, sin, positions);
  if (x.numel() == 0) return;
  x.narrow(3, 0, 2 * cos.size(1)).copy_(rotated_cpu(x, cos, sin, positions, interleaved, conjugate));
}

}  // namespace
}  // namespace rotary

TORCH_LIBRARY_IMPL(aigc_kernels, CUDA, m) {
  m.impl("rotary_fwd", &rotary::rotary_fwd_cuda);
  m.impl("rotary_inplace", &rotary::rotary_inplace_cuda);
}
TORCH_LIBRARY_IMPL(aigc_kernels, CPU, m) {
  m.impl("rotary_fwd", &rotary::rotary_fwd_cpu);
  m.impl("rotary_inplace", &rotary::rotary_inplace_cpu);
}

}  // namespace aigc_kernels
