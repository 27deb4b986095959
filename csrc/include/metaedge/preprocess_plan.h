// Host-side set-up shared by the CPU and CUDA pre-processing kernels, so both fold the same maths the same way:
// the per-output-channel affine map (colour conversion, inversion, /255, (x - mean)/std) and the choice of the
// kernel instance for (input channels, output channels, colour mode).
#pragma once

#include <cstdint>
#include <type_traits>

#include "metaedge/ops.h"

namespace metaedge {

// out_oc = sum_k m[oc][k] * v_k + bias[oc], v = the interpolated input channels. A plain struct: the CUDA
// kernel takes it by value.
struct PreprocessAffine {
  float m[3][4];  // [output channel][input channel]
  float bias[3];
};

// The luma weights sum to 1, so inverting before or after the gray conversion is the same.
inline PreprocessAffine make_preprocess_affine(int64_t in_channels, int64_t out_channels,
                                               const PreprocessParams& p) {
  static const float kLuma[3] = {0.299f, 0.587f, 0.114f};
  PreprocessAffine f{};
  const float sign = p.invert ? -1.f : 1.f;
  for (int64_t oc = 0; oc < out_channels; ++oc) {
    const double gain = sign / (255.0 * p.std[oc]);
    if (p.color == ColorMode::kToGray && in_channels >= 3) {
      for (int k = 0; k < 3; ++k) f.m[oc][k] = static_cast<float>(kLuma[k] * gain);
    } else if (in_channels == 1) {
      f.m[oc][0] = static_cast<float>(gain);  // gray kept, or replicated into R, G and B
    } else {
      f.m[oc][oc] = static_cast<float>(gain);  // RGB kept; RGBA drops alpha
    }
    f.bias[oc] = static_cast<float>(((p.invert ? 1.0 : 0.0) - p.mean[oc]) / p.std[oc]);
  }
  return f;
}

// Calls run(std::integral_constant<int, kIn>, std::integral_constant<int, kOut>, std::bool_constant<kDiagonal>)
// for the layout the checker accepted (kDiagonal: output channel oc reads input channel oc only).
template <typename Run>
void dispatch_preprocess_layout(int64_t in_channels, int64_t out_channels, ColorMode color, Run&& run) {
  using std::bool_constant;
  using std::integral_constant;
  const bool to_gray = color == ColorMode::kToGray;
  switch (in_channels) {
    case 1:
      if (out_channels == 1) run(integral_constant<int, 1>{}, integral_constant<int, 1>{}, bool_constant<true>{});
      else run(integral_constant<int, 1>{}, integral_constant<int, 3>{}, bool_constant<false>{});
      break;
    case 3:
      if (to_gray) run(integral_constant<int, 3>{}, integral_constant<int, 1>{}, bool_constant<false>{});
      else run(integral_constant<int, 3>{}, integral_constant<int, 3>{}, bool_constant<true>{});
      break;
    case 4:
      if (to_gray) run(integral_constant<int, 4>{}, integral_constant<int, 1>{}, bool_constant<false>{});
      else run(integral_constant<int, 4>{}, integral_constant<int, 3>{}, bool_constant<true>{});
      break;
    default:
      break;  // rejected by the checker
  }
}

}  // namespace metaedge
