// The recent tokens that repetition, presence and frequency penalties look at.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mimo {

// The last `capacity` tokens pushed, oldest first. A token pushed capacity + 1 pushes ago has left
// the window and is no longer penalised. Small (capacity ints) and cheap to copy: it is part of a
// sampler snapshot.
class PenaltyWindow {
 public:
  explicit PenaltyWindow(size_t capacity = 0) : capacity_(capacity) {}

  size_t capacity() const { return capacity_; }
  size_t size() const { return ring_.size(); }
  bool empty() const { return ring_.empty(); }

  // Records a token, dropping the oldest once the window is full. Nothing is kept at capacity 0.
  void push(int32_t token) {
    if (capacity_ == 0) return;
    if (ring_.size() < capacity_) {  // grows to capacity, so a large window costs only what it holds
      ring_.push_back(token);
      return;
    }
    ring_[oldest_] = token;
    oldest_ = (oldest_ + 1) % capacity_;
  }

  void clear() {
    ring_.clear();
    oldest_ = 0;
  }

  // The i-th token, oldest first.
  int32_t operator[](size_t i) const { return ring_[(oldest_ + i) % ring_.size()]; }

  // The tokens, oldest first.
  std::vector<int32_t> tokens() const {
    std::vector<int32_t> out;
    out.reserve(ring_.size());
    for (size_t i = 0; i < ring_.size(); ++i) out.push_back((*this)[i]);
    return out;
  }

  // Appends the tokens in unspecified order (the penalties only count them).
  void copy_to(std::vector<int32_t>& out) const { out.insert(out.end(), ring_.begin(), ring_.end()); }

  // Windows are equal when they hold the same tokens in the same order.
  friend bool operator==(const PenaltyWindow& a, const PenaltyWindow& b) {
    if (a.capacity_ != b.capacity_ || a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] != b[i]) return false;
    }
    return true;
  }

 private:
  size_t capacity_;
  std::vector<int32_t> ring_;  // holds min(pushed, capacity) tokens; ring_[oldest_] is the oldest
  size_t oldest_ = 0;
};

}  // namespace mimo
