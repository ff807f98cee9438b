#include "ringflow/huge_pages.h"

#include <sys/mman.h>

#include <algorithm>
#include <deque>
#include <mutex>
#include <utility>

#include "ringflow/env.h"
#include "ringflow/settings.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux 6.1; older kernels answer EINVAL
#endif

namespace ringflow::shm {
namespace {

constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
constexpr int kOffersBeforeCollapse = 3;  // a buffer the application keeps
constexpr size_t kRemembered = 64;        // ranges tracked at once (oldest forgotten)

struct Range {
  uintptr_t lo, hi;
  int offers;
  bool settled;  // collapsed, or tried: never again
};

struct State {
  std::mutex mu;
  std::deque<Range> ranges;
  HugePageCounts counts;
};

State& state() {
  static State s;
  return s;
}

// The whole 2 MiB pages inside [p, p + bytes): [lo, hi), empty when hi <= lo.
std::pair<uintptr_t, uintptr_t> wholePages(const void* p, size_t bytes) {
  return {(uintptr_t(p) + kHugePage - 1) & ~(kHugePage - 1),
          (uintptr_t(p) + bytes) & ~(kHugePage - 1)};
}

// Advised first, so the range stays eligible if memory is later faulted in
// again; the collapse copies what is there into huge pages now.
void collapseLocked(State& s, uintptr_t lo, uintptr_t hi) {
  void* at = reinterpret_cast<void*>(lo);
  if (madvise(at, hi - lo, MADV_HUGEPAGE) == 0 && madvise(at, hi - lo, MADV_COLLAPSE) == 0) {
    s.counts.collapsed++;
    s.counts.collapsedBytes += hi - lo;
  } else {
    s.counts.failed++;
  }
}

}  // namespace

namespace {
const SettingsRegistration kSettings(
    {{"RINGFLOW_SHM_HUGEPAGES",
      "collapse a large buffer the shm allreduce sees a third time at the same address into "
      "transparent huge pages, once (peers read it faster; costs a copy of it; default 1, 0 "
      "turns it off)"}},
    [] { hugePagesEnabled(); });
}  // namespace

bool hugePagesEnabled() {
  static const bool on = envBool("RINGFLOW_SHM_HUGEPAGES", true);
  return on;
}

void offerBuffer(const void* p, size_t bytes) {
  if (!hugePagesEnabled()) return;
  const auto [lo, hi] = wholePages(p, bytes);
  if (hi <= lo || hi - lo < 2 * kHugePage) return;  // too small to be worth a collapse
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = std::find_if(s.ranges.begin(), s.ranges.end(),
                         [&](const Range& r) { return r.lo == lo && r.hi == hi; });
  if (it == s.ranges.end()) {
    if (s.ranges.size() == kRemembered) s.ranges.pop_front();
    s.ranges.push_back({lo, hi, 1, false});
    return;
  }
  if (it->settled || ++it->offers < kOffersBeforeCollapse) return;
  it->settled = true;
  collapseLocked(s, lo, hi);
}

void collapseRange(const void* p, size_t bytes) {
  if (!hugePagesEnabled()) return;
  const auto [lo, hi] = wholePages(p, bytes);
  if (hi <= lo) return;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  collapseLocked(s, lo, hi);
}

HugePageCounts hugePageCounts() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.counts;
}

}  // namespace ringflow::shm
