// Run-time choice among the SIMD variants of the hot loops (gemm, topk scoring).
//
// The build baseline is plain x86-64 (SSE2) or aarch64 (NEON), so one binary runs everywhere. On x86-64 the hot
// loops are compiled a second and third time under `#pragma GCC target` (AVX2+FMA, AVX-512) and picked here
// once, from what the CPU reports. The loops themselves use GCC vector extensions (simd_vec.h), never
// intrinsics, so the same source serves NEON on Jetson.
#pragma once

namespace metaedge::cpu {

enum class SimdTarget : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The best variant this CPU supports, decided on first use. METAEDGE_CPU_SIMD=baseline|avx2|avx512 caps it
// (for tests of every variant, and to compare them); asking for more than the CPU has falls back to the best.
SimdTarget simd_target();
const char* simd_target_name(SimdTarget target);
// Whether the chosen target is AVX-512 and the CPU has its VNNI extension (the int8 dot-product instruction the
// compact class matrix streams with; Ice Lake and Zen 4 on, not Skylake-X).
bool simd_has_avx512_vnni();

}  // namespace metaedge::cpu
