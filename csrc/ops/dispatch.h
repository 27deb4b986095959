// Picks the CPU or CUDA implementation of an op by the device of its first tensor argument.
#pragma once

#include "../cpu/cpu_kernels.h"
#include "metaedge/checks.h"
#if METAEDGE_WITH_CUDA
#include "../cuda/cuda_kernels.h"
#define METAEDGE_DISPATCH(op, tensor, ...) \
  ((tensor).is_cuda() ? ::metaedge::cuda::op(__VA_ARGS__) : ::metaedge::cpu::op(__VA_ARGS__))
#else
#define METAEDGE_DISPATCH(op, tensor, ...) \
  ((tensor).is_cuda() ? ::metaedge::fail_cuda_not_built(#op) : ::metaedge::cpu::op(__VA_ARGS__))
#endif
