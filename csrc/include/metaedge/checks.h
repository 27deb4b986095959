// Argument checking shared by the CPU and CUDA paths of every op. Errors name the argument, what was
// expected and what was got; they surface in Python as ValueError (ArgumentError) or TypeError
// (ArgumentTypeError). Nothing here aborts the process.
#pragma once

#include <initializer_list>
#include <stdexcept>
#include <string>

#include "metaedge/tensor.h"

namespace metaedge {

// -> Python ValueError
class ArgumentError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
// -> Python TypeError
class ArgumentTypeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// -> Python RuntimeError carrying the CUDA error text
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string shape_str(const std::vector<int64_t>& shape);

void check_ndim(const Tensor& t, const char* name, int64_t ndim, const char* layout);
void check_dtype(const Tensor& t, const char* name, std::initializer_list<DType> allowed);
// t.shape[axis] must equal `expected`; `why` explains the link, e.g. "the embedding dim of `queries`".
void check_dim(const Tensor& t, const char* name, int64_t axis, int64_t expected, const char* why);
void check_same_device(const Tensor& a, const char* name_a, const Tensor& b, const char* name_b);
// Rejects NaN/Inf in a float tensor (either device); reports the first offending flat index.
void check_finite(const Tensor& t, const char* name);
// Rejects labels outside [0, num_classes).
void check_labels(const Tensor& labels, const char* name, int64_t num_classes);
void check_positive(double value, const char* name);
void check_non_negative(double value, const char* name);
void check_finite_scalar(double value, const char* name);
// topk's k: 1 <= k <= classes (checked before outputs of k columns are allocated).
void check_topk_k(int64_t k, int64_t classes);
// topk's outputs: scores [b, k] float32 and indices [b, k] int64.
void check_topk_outputs(const Tensor& scores, const Tensor& indices, int64_t b, int64_t k);

// Device dispatch helpers used by the checks above and by ops.
[[noreturn]] void fail_cuda_not_built(const char* op);

}  // namespace metaedge
