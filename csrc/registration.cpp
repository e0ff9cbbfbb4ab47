// The aigc_kernels op namespace: every schema is written once, here.
//
// Device implementations register with TORCH_LIBRARY_IMPL in api.cpp (CUDA) and cpu_ops.cpp
// (CPU); fake (meta) implementations and autograd live in aigc_kernels/cuda/<family>.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(aigc_kernels, m) {
  // Decoding: write k_new/v_new (B, Hkv, Lnew, D) into the caches (B, Hkv, Lmax, D) at rows
  // [cache_seqlens[b], cache_seqlens[b] + Lnew) of batch b, in place. With block_table (int32 (B, max_pages))
  // the caches are paged, (num_pages, page_size, Hkv, D): row t of batch b in page block_table[b, t / page_size].
  m.def(
      "kvcache_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, Tensor v_new, "
      "Tensor cache_seqlens, Tensor? block_table=None) -> ()");
  // The same append with the rotary embedding inside (FA2's flash_attn_with_kvcache rotary_cos/sin): k_new
  // rotated at positions cache_seqlens[b] + i as it is written, v_new copied; returns q rotated at
  // cache_seqlens[b] + i (causal) or cache_seqlens[b] (a new tensor). cos/sin (Lro, rotary_dim / 2), GPT-NeoX
  // or interleaved (GPT-J) pairs; features past rotary_dim pass through.
  m.def(
      "kvcache_append_rotary(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, Tensor v_new, "
      "Tensor cache_seqlens, Tensor? block_table, Tensor q, Tensor cos, Tensor sin, bool interleaved, "
      "bool causal) -> Tensor");
  // Rotary embedding: x (B, H, L, D) rotated by rows positions (B or 1, L; none: 0..L-1) of cos/sin
  // (Lmax, R/2), GPT-NeoX or interleaved (GPT-J) pairs, by minus the angle when conjugate (the backward).
  // rotary_fwd returns a new tensor (features past R copied); rotary_inplace writes x's first R features.
  m.def(
      "rotary_fwd(Tensor x, Tensor cos, Tensor sin, Tensor? positions, bool interleaved, bool conjugate) "
      "-> Tensor");
  m.def(
      "rotary_inplace(Tensor(a!) x, Tensor cos, Tensor sin, Tensor? positions, bool interleaved, "
      "bool conjugate) -> ()");
  // LayerNorm (is_rms = false) / RMSNorm over the last dim of x (rows, cols), optionally of
  // s = x + residual. Returns y, s (empty without residual), mean (rows,) float32 (empty for
  // RMSNorm) and rstd (rows,) float32.
  m.def(
      "norm_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, float eps, bool is_rms) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Gradients: dx (rows, cols) (plus ds when given), dw and db (cols,) float32 (empty when absent).
  m.def(
      "norm_bwd(Tensor dy, Tensor? ds, Tensor xs, Tensor? weight, Tensor mean, Tensor rstd, bool has_bias, "
      "bool is_rms) -> (Tensor, Tensor, Tensor)");
  // y = act(x W^T + b) for x (M, K), W (N, K); z = x W^T + b (empty without an activation).
  m.def("linear_fwd(Tensor x, Tensor weight, Tensor? bias, str? activation) -> (Tensor, Tensor)");
  // (dx, dW, db (float32; empty without bias)).
  m.def(
      "linear_bwd(Tensor dy, Tensor x, Tensor weight, Tensor z, str? activation, bool has_bias) "
      "-> (Tensor, Tensor, Tensor)");
  // The FFN block: (out, z, empty) with z the (M, H) pre-activation or, gated, the (M, 2H) [x W_in^T +
  // b_in | x W_gate^T + b_gate] of the one GEMM over the concatenated weights (empty unless save).
  m.def(
      "ffn_fwd(Tensor x, Tensor w_in, Tensor? b_in, Tensor w_out, Tensor? b_out, str activation, Tensor? w_gate, "
      "Tensor? b_gate, bool save) -> (Tensor, Tensor, Tensor)");
  // [dx, dw_in, db_in, dw_out, db_out, dw_gate, db_gate]; bias grads float32, empty when absent.
  m.def(
      "ffn_bwd(Tensor dout, Tensor x, Tensor w_in, Tensor? b_in, Tensor w_out, str activation, Tensor? w_gate, "
      "Tensor? b_gate, Tensor z1, Tensor z2, bool has_b_out) -> Tensor[]");
  // Flash attention (csrc/attention). Dense q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D), or packed
  // (total, H, D) with int32 cu_seqlens (B + 1,). Returns out like q and lse float32 (B, Hq, Lq)
  // or (Hq, total_q), natural log, -inf for a row that sees no key (its output is 0).
  // Packed q only, forward only: seqused_k int32 (B,) limits sequence b to its first seqused_k[b] keys; with
  // block_table int32 (B, max_pages) k/v are paged caches (num_pages, page_size, Hkv, D) and cu_seqlens_k may
  // be None (seqused_k gives the key counts).
  m.def(
      "flash_fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, "
      "int max_seqlen_k, float scale, bool causal, int window_left, int window_right, Tensor? seqused_k=None, "
      "Tensor? block_table=None) -> (Tensor, Tensor)");
  // (dq, dk, dv), deterministic.
  m.def(
      "flash_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? cu_seqlens_q, "
      "Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, float scale, bool causal, int window_left, "
      "int window_right) -> (Tensor, Tensor, Tensor)");
  // Decoding: q (B, Hq, Lq, D) against the first cache_seqlens[b] + lnew rows of the caches
  // (B, Hkv, Lmax, D), or of paged caches (num_pages, page_size, Hkv, D) through block_table (B, max_pages);
  // split-K over the cache (num_splits = 0: chosen from the shapes) + combine; window_left/right (-1 =
  // unbounded) around each query's bottom-right diagonal (causal caps the right at 0).
  m.def(
      "flash_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, int lnew, bool causal, "
      "float scale, int num_splits, Tensor? block_table=None, int window_left=-1, int window_right=-1) -> Tensor");
}

// The module only has to exist for `import aigc_kernels._C` to load the shared library (and so
// run the static registrations above). Build facts are in aigc_kernels/_build_info.py.
static struct PyModuleDef aigc_kernels_C_module = {
    PyModuleDef_HEAD_INIT, "_C", "aigc-kernels CUDA extension (ops under torch.ops.aigc_kernels)", -1,
    nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&aigc_kernels_C_module);
}
