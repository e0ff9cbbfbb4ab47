"""Triton kernels, one module per op family. Importing this package does not import triton:
the kernel modules load when the "triton" backend first runs an op."""
