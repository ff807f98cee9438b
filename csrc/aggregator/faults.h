// A packet fault injector: drops, duplicates or reorders datagrams with the
// given probabilities, so tests and benchmarks can show that aggregation
// stays exact on a lossy network (netem is not available here).  Set with
// RINGFLOW_AGG_FAULTS=drop:0.1,dup:0.1,reorder:0.1; it acts on the
// datagrams a process sends and, for workers, on those it receives.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "udp.h"

namespace ringflow::agg {

struct FaultSpec {
  double drop = 0, dup = 0, reorder = 0;
  bool any() const { return drop > 0 || dup > 0 || reorder > 0; }
};

// "drop:P,dup:P,reorder:P" (any subset, P in [0, 1)); "" is no faults.
// Throws InvalidArgument naming the bad part.
FaultSpec parseFaults(const std::string& spec);
// RINGFLOW_AGG_FAULTS, parsed.
FaultSpec faultsFromEnv();

struct FaultCounts {
  uint64_t dropped = 0, duplicated = 0, reordered = 0;
};

class FaultInjector {
 public:
  enum class Fate { Deliver, Drop, Duplicate, Hold };
  FaultInjector(FaultSpec spec, uint64_t seed);
  bool active() const { return spec_.any(); }
  // Draws one datagram's fate and counts it.
  Fate decide();

  // Outgoing: queues one datagram into `batch` as decide() says; a held one
  // is copied and goes out after the next batch's datagrams.
  void add(SendBatch& batch, const sockaddr_storage* to, socklen_t toLen, const void* a,
           size_t aBytes, const void* b = nullptr, size_t bBytes = 0);
  // Call just before flushing: adds to `batch` what was held back during
  // the previous batch; the copies stay alive until the following call.
  void releaseInto(SendBatch& batch);
  const FaultCounts& counts() const { return counts_; }

 private:
  struct Held {
    sockaddr_storage to;
    socklen_t toLen;
    std::vector<char> bytes;
  };
  FaultSpec spec_;
  uint64_t state_;
  FaultCounts counts_;
  std::vector<Held> held_, waiting_, releasing_;
};

}  // namespace ringflow::agg
