// Brief spin-then-yield before blocking: a small message completes within a
// few microseconds, far less than a futex sleep and wake-up costs on a busy
// core.  Yielding (not pure spinning) hands the core to the thread being
// waited for when both share it.
#pragma once

#include <sched.h>

#include <atomic>
#include <chrono>

namespace ringflow {

// Returns true as soon as done() holds, false once `budget` has passed.
template <typename Done>
bool spinUntil(Done done, std::chrono::microseconds budget) {
  auto until = std::chrono::steady_clock::now() + budget;
  for (int i = 0;; ++i) {
    if (done()) return true;
    if ((i & 15) == 15) {
      if (std::chrono::steady_clock::now() > until) return false;
      sched_yield();
    }
  }
}

inline bool spinUntil(const std::atomic<bool>& flag, std::chrono::microseconds budget) {
  return spinUntil([&flag] { return flag.load(std::memory_order_acquire); }, budget);
}

}  // namespace ringflow
