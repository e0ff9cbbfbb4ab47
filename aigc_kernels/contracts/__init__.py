"""What both kernel backends share, below them: the tables of what exists (tables), what each kernel
accepts (limits), and the fake implementations and autograd wiring of the norm and GEMM ops
(norm, linear). Kernel modules import from here, never from aigc_kernels.ops or the reference."""
