// AIGC_LAUNCH(grid, threads, smem, stream, (args...), kernel<...>): a kernel launch that the CPU
// emulation (csrc/emulate.h, AIGC_EMULATE) can run too. The kernel comes last so template
// arguments may contain commas.
#pragma once
#ifdef AIGC_EMULATE
#include "emulate.h"
#else
#include <c10/cuda/CUDAException.h>
#define AIGC_LAUNCH(grid, threads, smem, stream, args, ...) __VA_ARGS__<<<grid, threads, smem, stream>>> args
#endif
