// Selection of the k best (score, class index) pairs, shared by topk.cpp and compact.cpp: scores descending,
// ties to the lower class index. Compiled as baseline code (included before any `#pragma GCC target` region).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace metaedge::cpu {

struct Candidate {
  float score;
  int64_t index;
};

inline bool better(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

// The best k candidates of one query among the classes one task visits, in increasing class order.
// Small k (the per-frame case): the k best so far, kept sorted by insertion, so the entry threshold is always
// the exact k-th best and few scores get past it. Larger k: up to 2k entries, shrunk back to the best k when
// full, so a push costs O(1) amortised for any k.
class Selector {
 public:
  // Ready for a new query, keeping the memory it already has (per-frame calls reuse their selectors).
  void reset(int64_t k) {
    k_ = k;
    sorted_ = k <= kSortedMaxK;
    capacity_ = sorted_ ? k + 1 : std::max<int64_t>(2 * k, k + 32);
    threshold_ = -std::numeric_limits<float>::infinity();
    items_.clear();
    items_.reserve(static_cast<size_t>(std::min<int64_t>(capacity_, 256)));
  }
  // Scores at or below this cannot enter: once k better-or-equal ones are kept, an equal score from a later
  // (higher) class index loses the tie.
  float threshold() const { return threshold_; }
  void push(float score, int64_t index) {
    if (sorted_) {
      // Classes arrive in increasing index order, so an equal score goes after the ones already kept.
      size_t pos = items_.size();
      items_.push_back({score, index});
      for (; pos > 0 && items_[pos - 1].score < score; --pos) items_[pos] = items_[pos - 1];
      items_[pos] = {score, index};
      if (static_cast<int64_t>(items_.size()) > k_) items_.pop_back();
      if (static_cast<int64_t>(items_.size()) == k_) threshold_ = items_.back().score;
      return;
    }
    items_.push_back({score, index});
    if (static_cast<int64_t>(items_.size()) >= capacity_) shrink();
  }
  void shrink() {
    if (static_cast<int64_t>(items_.size()) <= k_) return;
    std::nth_element(items_.begin(), items_.begin() + (k_ - 1), items_.end(), better);
    items_.resize(static_cast<size_t>(k_));
    threshold_ = items_.back().score;
  }
  const std::vector<Candidate>& items() const { return items_; }

 private:
  static constexpr int64_t kSortedMaxK = 16;
  int64_t k_ = 1;
  bool sorted_ = true;
  int64_t capacity_ = 2;
  float threshold_ = -std::numeric_limits<float>::infinity();
  std::vector<Candidate> items_;
};

}  // namespace metaedge::cpu
