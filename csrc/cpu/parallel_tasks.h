// Independent tasks over OpenMP threads, with exceptions carried out: shared by topk and compact_topk.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>

namespace metaedge::cpu {

// Calls task(i) for every i in [0, n): in a plain loop for one thread (a one-thread OpenMP team still costs
// about a microsecond per call), otherwise over `threads` OpenMP threads, one task at a time (dynamic). The
// first exception a task throws is rethrown here once every task has ended; `stop` is set when one throws, so
// that the others can end early (tasks may set it themselves too).
template <typename Task>
void run_tasks(int64_t n, int threads, std::atomic<bool>& stop, Task&& task) {
  std::exception_ptr error;
  auto guarded = [&](int64_t i) {
    try {
      task(i);
    } catch (...) {
#pragma omp critical(metaedge_run_tasks_error)
      if (!error) error = std::current_exception();
      stop.store(true, std::memory_order_relaxed);
    }
  };
  if (threads > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) guarded(i);
  } else {
    for (int64_t i = 0; i < n; ++i) guarded(i);
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace metaedge::cpu
