// The aggregator's state: a bounded table of jobs, each with a pool of
// slots of two sets (shadow copies), and the exactly-once adding of
// payloads into them.  Single-threaded: only the service loop touches it;
// counters are atomics so stats() can read them from any thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <vector>

#include "faults.h"
#include "ringflow/aggregator.h"
#include "ringflow/packet.h"

namespace ringflow::agg {

using SteadyClock = std::chrono::steady_clock;

// Rejected notices (packet.h) go to whatever address a packet claims to
// come from, so they are rationed: at most kPerAddress a second to one
// address and kInAll a second in all.  Addresses share a fixed table of
// windows; an address may take any of kProbes neighbouring entries, and
// one whose entries other addresses all hold gets no notice until one of
// their seconds is over.  So no address ever gets more than its share,
// the table never grows, and it takes kProbes addresses noticed within
// one second, not one unlucky hash, to silence an address.
class NoticeLimiter {
 public:
  static constexpr int kPerAddress = 4, kInAll = 256, kProbes = 4;
  bool allow(const sockaddr_storage& to, socklen_t toLen, SteadyClock::time_point now);

 private:
  struct Window {
    sockaddr_storage addr{};
    SteadyClock::time_point since{};
    int sent = 0;
    bool used = false;
  };
  std::array<Window, 64> table_{};
  Window all_;
};

// One datagram to send: a header and a payload that stay valid until the
// caller has flushed its batch.
struct Reply {
  const sockaddr_storage* to;
  socklen_t toLen;
  const PacketHeader* header;
  const int32_t* payload;
  size_t payloadBytes;
};

class JobTable {
 public:
  explicit JobTable(const AggregatorConfig& config);
  // Handles one received datagram, appending what must be sent to `out`.
  // Never throws on any input: bad packets are counted and dropped.
  void handle(const char* data, size_t len, bool truncated, const sockaddr_storage& from,
              socklen_t fromLen, SteadyClock::time_point now, std::vector<Reply>& out);
  // Frees jobs silent for config.jobIdleSec (a job every worker said
  // goodbye to is freed at once, in handle()).
  void evictIdle(SteadyClock::time_point now);
  // Call once the replies of a batch are sent: error headers are reused.
  void repliesSent() { errors_.clear(); }
  AggregatorStats stats() const;
  void countSent(uint64_t packets, uint64_t bytes);

 private:
  struct Set {  // one round of one slot
    uint32_t round = 0;
    uint64_t seen = 0;  // bit w: worker w has contributed
    int contributed = 0;
    bool complete = false;
    PacketHeader result{};  // the header of the sum, kept for shadow answers
  };
  struct Slot {
    bool used = false;  // rounds start from the first packet seen
    Set set[2];
  };
  struct Job {
    uint32_t id = 0;
    int workers = 0;
    std::vector<Slot> slots;
    std::vector<int32_t> sums;  // slots x 2 sets x packetElems
    std::vector<sockaddr_storage> addrs;
    std::vector<socklen_t> addrLens;
    SteadyClock::time_point lastSeen;
    uint64_t goodbyes = 0;  // bit w: worker w's communicator shut down
  };

  struct PacketCheck;
  // nullptr with *why left 0 for a job that every worker said goodbye to.
  Job* findOrOpen(const PacketHeader& h, SteadyClock::time_point now, ErrorCode* why);
  void farewell(const PacketHeader& h, SteadyClock::time_point now);
  void freeJob(size_t index);
  // Counts a packet whose checksum or MAC failed and, rationed, tells its
  // sender so (a Rejected notice).
  void rejected(const PacketCheck& check, std::vector<Reply>& out);
  void queue(const PacketHeader& h, const sockaddr_storage& to, socklen_t toLen,
             std::vector<Reply>& out);
  void contribute(Job& job, const PacketHeader& h, PacketCheck& check, std::vector<Reply>& out);
  void refuse(const PacketHeader& h, ErrorCode code, const sockaddr_storage& to,
              socklen_t toLen, std::vector<Reply>& out);
  int32_t* sumsOf(Job& job, uint32_t slot, int set) {
    return job.sums.data() + (size_t(slot) * 2 + size_t(set)) * config_.packetElems;
  }

  AggregatorConfig config_;
  PacketAuth auth_;
  std::vector<Job> jobs_;  // at most config_.jobs, each sized once at open
  std::deque<std::pair<PacketHeader, sockaddr_storage>> errors_;  // stable addresses
  // Ids of jobs every worker said goodbye to, newest last: their late
  // packets must not open the job again and hold an entry for nothing.
  std::deque<uint32_t> closed_;
  NoticeLimiter notices_;

  struct Counters {
    std::atomic<uint64_t> packetsReceived{0}, bytesReceived{0}, packetsSent{0}, bytesSent{0},
        contributions{0}, results{0}, elements{0}, duplicates{0}, shadowAnswers{0}, stale{0},
        malformed{0}, badMac{0}, refused{0}, rejectedNotices{0}, jobsOpened{0}, jobsEvicted{0},
        jobsClosed{0}, jobsActive{0}, memoryBytes{0};
  };
  Counters counters_;
};

}  // namespace ringflow::agg
