// Brief spin-then-yield before blocking: a small message completes within a
// few microseconds, far less than a futex sleep and wake-up costs on a busy
// core.  Yielding (not pure spinning) hands the core to the thread being
// waited for when both share it.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>

namespace ringflow {

// More runnable threads than CPUs on this host right now (cached ~20 ms).
bool hostOversubscribed();

// Polling between yields on an oversubscribed host: a little longer than a
// small message's step, then the waiter sleeps and leaves the CPU to others.
constexpr std::chrono::microseconds kOversubscribedYield{20};

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

// For waits on another process (a flag in shared memory): first a pure spin
// for `spin` (the peer usually runs on the other core and is microseconds
// away; a pause keeps the spin polite to a hyperthread sibling), then polls
// between sched_yield calls until `yield` more has passed: on an
// oversubscribed host that hands the core to the peer being waited for,
// and on an idle one it still sees the peer at once, where a futex sleep
// would add a wake-up (tens of microseconds in a VM).  When the host has
// more runnable threads than CPUs, polling only steals CPU from the threads
// being waited for (sched_yield barely hands the core over under CFS), so
// the yield phase then ends after kOversubscribedYield.  Never past `limit`
// (the op deadline).  Returns true as soon as done() holds.
template <typename Done>
bool spinThenYield(Done done, std::chrono::microseconds spin, std::chrono::microseconds yield,
                   std::chrono::steady_clock::time_point limit) {
  auto now = std::chrono::steady_clock::now();
  auto spinUntilT = std::min(limit, now + spin);
  for (int i = 0;; ++i) {
    if (done()) return true;
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > spinUntilT) break;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  if (yield > kOversubscribedYield && hostOversubscribed()) yield = kOversubscribedYield;
  auto yieldUntil = std::min(limit, std::chrono::steady_clock::now() + yield);
  for (;;) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() > yieldUntil) return false;
    sched_yield();
  }
}

inline bool spinUntil(const std::atomic<bool>& flag, std::chrono::microseconds budget) {
  return spinUntil([&flag] { return flag.load(std::memory_order_acquire); }, budget);
}

}  // namespace ringflow
