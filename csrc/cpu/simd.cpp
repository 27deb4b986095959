#include "simd.h"

#include <cstdlib>
#include <cstring>

namespace metaedge::cpu {

namespace {

SimdTarget best_supported() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // libgcc also checks that the OS saves the wide registers (XCR0) before reporting these.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return SimdTarget::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdTarget::kAvx2;
#endif
  return SimdTarget::kBaseline;
}

SimdTarget choose() {
  SimdTarget best = best_supported();
  const char* cap = std::getenv("METAEDGE_CPU_SIMD");
  if (cap == nullptr || *cap == '\0') return best;
  SimdTarget wanted = best;
  if (std::strcmp(cap, "baseline") == 0) wanted = SimdTarget::kBaseline;
  else if (std::strcmp(cap, "avx2") == 0) wanted = SimdTarget::kAvx2;
  else if (std::strcmp(cap, "avx512") == 0) wanted = SimdTarget::kAvx512;
  return static_cast<int>(wanted) < static_cast<int>(best) ? wanted : best;
}

}  // namespace

SimdTarget simd_target() {
  static const SimdTarget chosen = choose();
  return chosen;
}

bool simd_has_avx512_vnni() {
  static const bool has = [] {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    return simd_target() == SimdTarget::kAvx512 && __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
  }();
  return has;
}

const char* simd_target_name(SimdTarget target) {
  switch (target) {
    case SimdTarget::kBaseline:
#if defined(__aarch64__)
      return "neon";
#else
      return "baseline";
#endif
    case SimdTarget::kAvx2: return "avx2";
    case SimdTarget::kAvx512: return "avx512";
  }
  return "unknown";
}

}  // namespace metaedge::cpu
