// Per-call timings and the ring-relay watchdog's counters:
// every call is timed in its aggregation phase (partial results travelling
// round the ring) and in aggregation plus dispatch (the whole call), and
// the peer this rank waited on longest is remembered as the slow hop.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>

#include "ringflow/op.h"

namespace ringflow {

struct OpRecord {
  OpDesc desc;                 // the call; kept unformatted, as few are ever read
  std::string op() const { return desc.str(); }  // e.g. "allreduce #5 (count=..)"
  int rank = -1;               // this rank in the call's communicator
  double aggregationMs = -1;   // -1: the call has no aggregation phase
  double totalMs = 0;          // aggregation + dispatch
  int slowPeer = -1;           // communicator rank waited on longest
  double slowWaitMs = 0;
  bool warned = false;
};

// Where a compressed hierarchical allreduce spends its time (summed over
// calls, this rank): the exact same-host levels around the compressed
// cross-host level, and the compressed level's own steps (algo/compressed.cc).
enum class CompressPhase {
  IntraReduce,    // same-host reduce-scatter (exact)
  Quantize,       // worker quantisation with error feedback, sends posted
  Exchange,       // waiting for the other ranks' codes
  LutSum,         // LUT weighted sum of the ranks' codes
  Requantize,     // the sum re-quantised (server feedback), own chunk decoded
  ResultWait,     // waiting for the other chunks' re-quantised codes
  Decode,         // the other chunks decoded into the output
  IntraGather,    // same-host allgather (exact)
  Count
};
const char* compressPhaseName(CompressPhase p);

struct OpKindStats {
  uint64_t count = 0;
  double totalMs = 0;
  double maxMs = 0;
  double aggregationMs = 0;  // summed over calls that have the phase
  uint64_t warnings = 0;
};

class Stats {
 public:
  static Stats& global();

  // Threshold in ms from RINGFLOW_WARN_MS (default 10000; 0 turns it off).
  double warnMs() const { return warnMs_; }
  void setWarnMs(double ms);

  // Records a finished call; returns the warning text if it was too slow.
  std::string record(const std::string& kind, OpRecord r);

  // Bytes collective calls hand to their links (the shared-memory arena's
  // steps are not link sends and are not counted): all of them, and those of
  // communicators that cross hosts (Comm::crossesHosts).  Lock-free: every
  // send adds here.
  void addSent(size_t bytes, bool crossHost);
  // Bytes sent to each transport rank below kPeersCounted: which links a
  // schedule's calls used (a tuned ring order sends only to its successor).
  static constexpr int kPeersCounted = 1024;
  void addSentTo(int transportRank, size_t bytes) {
    if (transportRank >= 0 && transportRank < kPeersCounted)
      sentTo_[transportRank].fetch_add(bytes, std::memory_order_relaxed);
  }
  uint64_t bytesSentTo(int transportRank) const {
    return sentTo_[transportRank].load(std::memory_order_relaxed);
  }
  // One allreduce ran its cross-host level compressed (algo/compressed.cc).
  void addCompressedCall() { compressedCalls_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t bytesSent() const { return bytesSent_.load(std::memory_order_relaxed); }
  uint64_t crossHostBytesSent() const { return crossHostBytes_.load(std::memory_order_relaxed); }
  uint64_t compressedCalls() const { return compressedCalls_.load(std::memory_order_relaxed); }
  // Nanoseconds spent in a phase of compressed allreduces (a clock read per
  // phase per call: cheap enough to keep on).
  void addCompressPhase(CompressPhase p, uint64_t ns) {
    compressPhaseNs_[size_t(p)].fetch_add(ns, std::memory_order_relaxed);
  }
  uint64_t compressPhaseNs(CompressPhase p) const {
    return compressPhaseNs_[size_t(p)].load(std::memory_order_relaxed);
  }

  std::map<std::string, OpKindStats> byKind();
  std::deque<OpRecord> recent();
  uint64_t warnings();
  std::string lastWarning();
  void reset();

 private:
  Stats();
  std::mutex mu_;
  double warnMs_;
  std::map<std::string, OpKindStats> kinds_;
  std::deque<OpRecord> recent_;  // the last kRecent calls
  uint64_t warnings_ = 0;
  std::string lastWarning_;
  std::atomic<uint64_t> bytesSent_{0}, crossHostBytes_{0}, compressedCalls_{0};
  std::array<std::atomic<uint64_t>, kPeersCounted> sentTo_{};
  std::atomic<uint64_t> compressPhaseNs_[size_t(CompressPhase::Count)] = {};
};

// Charges the time since the previous lap (or construction) to a phase.
class PhaseClock {
 public:
  void lap(CompressPhase p) {
    auto now = std::chrono::steady_clock::now();
    Stats::global().addCompressPhase(
        p, uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(now - last_).count()));
    last_ = now;
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

}  // namespace ringflow
