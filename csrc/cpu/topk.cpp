// PLACEHOLDER (being written): blocked, fused top-k over classes.
#include "cpu_kernels.h"
#include "metaedge/checks.h"
namespace metaedge::cpu {
void topk(const Tensor&, const Tensor&, int64_t, Metric, const Tensor&, const Tensor&) {
  throw std::runtime_error("topk: not implemented yet");
}
}  // namespace metaedge::cpu
