// What the CPU code was compiled with and what this processor offers, for metaedge.build_info().
#include <string>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "metaedge/ops.h"
#include "simd.h"

namespace metaedge {

std::string simd_level() {
  std::string compiled;
#if defined(__AVX512F__)
  compiled = "avx512f";
#elif defined(__AVX2__)
  compiled = "avx2";
#elif defined(__SSE2__)
  compiled = "sse2";
#elif defined(__ARM_NEON)
  compiled = "neon";
#else
  compiled = "scalar";
#endif
  std::string runtime;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) runtime = "avx512f";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) runtime = "avx2+fma";
  else if (__builtin_cpu_supports("avx")) runtime = "avx";
  else runtime = "sse2";
#elif defined(__aarch64__)
  runtime = "neon";
#endif
  return "baseline " + compiled + (runtime.empty() ? "" : "; cpu offers " + runtime) + "; kernels use " +
         cpu::simd_target_name(cpu::simd_target());
}

int openmp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace metaedge
