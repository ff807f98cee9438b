// Whether this host has more runnable threads than CPUs, read from the
// kernel's instantaneous count in /proc/loadavg ("R/T", the fourth field).
// Waiters use it to stop polling early: on an oversubscribed host a poller
// steals the CPU that the peer it waits for needs.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>

#include "ringflow/spin.h"

namespace ringflow {
namespace {

int runnableTasks() {
  int fd = ::open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[128];
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  // "0.50 0.40 0.30 3/250 12345": skip three fields, read the 3.
  char* p = buf;
  for (int field = 0; field < 3 && p; ++field) {
    while (*p && *p != ' ') ++p;
    while (*p == ' ') ++p;
  }
  return *p ? int(std::strtol(p, nullptr, 10)) : -1;
}

}  // namespace

bool hostOversubscribed() {
  // Refreshed at most every 20 ms: a read costs microseconds, a wait may be
  // shorter than that.
  static std::atomic<int64_t> checkedAtUs{-1};
  static std::atomic<bool> over{false};
  static const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::steady_clock::now().time_since_epoch())
                    .count();
  int64_t last = checkedAtUs.load(std::memory_order_relaxed);
  if (last >= 0 && now - last < 20000) return over.load(std::memory_order_relaxed);
  if (checkedAtUs.compare_exchange_strong(last, now, std::memory_order_relaxed)) {
    int runnable = runnableTasks();
    over.store(cpus > 0 && runnable > cpus, std::memory_order_relaxed);
  }
  return over.load(std::memory_order_relaxed);
}

}  // namespace ringflow
