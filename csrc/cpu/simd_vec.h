// Vector types and helpers for one SIMD variant, written with GCC vector extensions (no intrinsics), so the
// same code compiles to SSE2, AVX2, AVX-512 or NEON. Included once per variant, inside that variant's
// namespace and `#pragma GCC target` region (see simd.h), with ME_VEC_BYTES set: no include guard on purpose.
// Expects <cstdint> and <cstring> to be included before the target region.

constexpr int kVecLanes = ME_VEC_BYTES / 4;
typedef float Vec __attribute__((vector_size(ME_VEC_BYTES)));
typedef float VecUnaligned __attribute__((vector_size(ME_VEC_BYTES), aligned(4)));
typedef int32_t IVec __attribute__((vector_size(ME_VEC_BYTES)));

static inline Vec load_unaligned(const float* p) { return *reinterpret_cast<const VecUnaligned*>(p); }
static inline Vec load_aligned(const float* p) { return *reinterpret_cast<const Vec*>(p); }
static inline void store_aligned(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }
static inline void store_unaligned(float* p, Vec v) { *reinterpret_cast<VecUnaligned*>(p) = v; }
static inline Vec splat(float x) { return Vec{} + x; }

// Lane i of the result is lane (i + kShift) mod n of v. The mask is a compile-time constant after unrolling,
// so this is one permute instruction.
template <int kShift>
static inline Vec rotate_lanes(Vec v) {
  IVec mask;
  for (int i = 0; i < kVecLanes; ++i) mask[i] = (i + kShift) % kVecLanes;
  return __builtin_shuffle(v, mask);
}

// Tree sum of the lanes. Always the same order, so equal inputs give bit-identical sums (top-k tie-breaking
// relies on duplicated prototypes getting exactly equal scores).
static inline float horizontal_sum(Vec v) {
  if constexpr (kVecLanes >= 16) v += rotate_lanes<8>(v);
  if constexpr (kVecLanes >= 8) v += rotate_lanes<4>(v);
  v += rotate_lanes<2>(v);
  v += rotate_lanes<1>(v);
  return v[0];
}

// Interleave of the low (kHigh = false) or high halves of a and b: a0 b0 a1 b1 ... across the whole vector.
template <bool kHigh>
static inline Vec interleave(Vec a, Vec b) {
  IVec mask;
  for (int i = 0; i < kVecLanes; ++i) mask[i] = (i % 2 ? kVecLanes : 0) + i / 2 + (kHigh ? kVecLanes / 2 : 0);
  return __builtin_shuffle(a, b, mask);
}

// In-register transpose of a kVecLanes x kVecLanes block: log2(n) rounds of interleaves, each rotating the
// (row, column) index bits by one; after log2(n) rounds rows and columns have swapped.
static inline void transpose_block(Vec (&rows)[kVecLanes]) {
  for (int round = 1; round < kVecLanes; round *= 2) {
    Vec next[kVecLanes];
    for (int i = 0; i < kVecLanes / 2; ++i) {
      next[2 * i] = interleave<false>(rows[i], rows[i + kVecLanes / 2]);
      next[2 * i + 1] = interleave<true>(rows[i], rows[i + kVecLanes / 2]);
    }
    for (int i = 0; i < kVecLanes; ++i) rows[i] = next[i];
  }
}
