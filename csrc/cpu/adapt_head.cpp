// PLACEHOLDER (being written): fused cosine-head adaptation.
#include "cpu_kernels.h"
#include "metaedge/checks.h"
namespace metaedge::cpu {
void adapt_head(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, double, double, double,
                double, const Tensor&) {
  throw std::runtime_error("adapt_head: not implemented yet");
}
}  // namespace metaedge::cpu
