// PLACEHOLDER (being written): bilinear resize + normalise + HWC->CHW.
#include "cpu_kernels.h"
#include "metaedge/checks.h"
namespace metaedge::cpu {
void preprocess(const Tensor&, const PreprocessParams&, const Tensor&) {
  throw std::runtime_error("preprocess: not implemented yet");
}
}  // namespace metaedge::cpu
