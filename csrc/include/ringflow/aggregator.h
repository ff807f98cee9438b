// The packet-aggregation service: SwitchML's "computing
// interconnect device" in software.  One UDP socket, one thread: receive a
// batch of worker packets (recvmmsg), add each payload into its job's slot
// exactly once, and send every completed slot's sum back to all the job's
// workers (sendmmsg).  Wire format and protocol: ringflow/packet.h.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ringflow/packet.h"

namespace ringflow::agg {

struct AggregatorConfig {
  std::string host = "127.0.0.1";  // beyond loopback only with a token
  int port = 0;                    // 0: any free port (see Aggregator::port)
  int workers = 0;                 // every job's worker count; 0 accepts any (1..64)
  int jobs = 4;                    // jobs served side by side
  uint32_t slots = kDefaultSlots;  // slots per job: each worker's window
  uint32_t packetElems = kDefaultPacketElems;  // largest payload accepted, in int32 values
  std::string token;               // shared secret; packets then carry a keyed MAC
  std::string faults;              // RINGFLOW_AGG_FAULTS syntax, for tests
  double jobIdleSec = 60;          // a job silent this long gives its entry back (one
                                   // whose workers all said goodbye: at once)
};

// Counters, each a running total since start.
struct AggregatorStats {
  uint64_t packetsReceived = 0, bytesReceived = 0, packetsSent = 0, bytesSent = 0;
  uint64_t contributions = 0;   // payloads added into a slot
  uint64_t results = 0;         // rounds completed (sum sent to every worker)
  uint64_t elements = 0;        // elements in completed rounds
  uint64_t duplicates = 0;      // a worker's packet for a round it already joined
  uint64_t shadowAnswers = 0;   // retransmissions answered from the shadow copy
  uint64_t stale = 0;           // packets of a round older (or newer) than the slot's
  uint64_t malformed = 0;       // short, truncated, unknown magic/version/type, bad fields
  uint64_t badMac = 0;          // checksum or MAC wrong, or keyed-ness not ours
  uint64_t refused = 0;         // Error packets sent (job full, wrong workers, ...)
  uint64_t rejectedNotices = 0; // Rejected notices sent (for bad_mac packets, rationed)
  uint64_t jobsOpened = 0, jobsEvicted = 0, jobsActive = 0;
  uint64_t jobsClosed = 0;      // freed because every worker said goodbye
  size_t memoryBytes = 0;       // slot memory held now
  // How datagrams crossed the kernel (udp.h): the path, the offloads the
  // kernel accepted, system calls that moved datagrams, and the messages
  // (sent with GSO, received coalesced by GRO) that carried several.
  std::string udpPath;
  bool gso = false, gro = false;
  size_t gsoMaxSegment = 0;     // largest datagram a segmented send may carry (link MTU)
  uint64_t sendCalls = 0, recvCalls = 0, gsoSends = 0, gsoDatagrams = 0, gsoBytes = 0,
           groReceives = 0, groDatagrams = 0;
};

class JobTable;
struct UdpCalls;
struct UdpMode;

class Aggregator {
 public:
  // Binds the socket at once (so port() is known); throws on a bad config.
  explicit Aggregator(AggregatorConfig config);
  ~Aggregator();
  Aggregator(const Aggregator&) = delete;
  Aggregator& operator=(const Aggregator&) = delete;

  int port() const { return port_; }
  const AggregatorConfig& config() const { return config_; }
  // Serves on a thread of its own until stop().
  void start();
  // Serves on the calling thread until stop() (from another thread or a
  // signal handler: it only writes an eventfd).
  void run();
  void stop();
  AggregatorStats stats() const;

 private:
  AggregatorConfig config_;
  int fd_ = -1, wakeFd_ = -1, port_ = 0;
  std::unique_ptr<JobTable> table_;
  std::unique_ptr<UdpMode> mode_;
  std::unique_ptr<UdpCalls> calls_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// The kernel's share of an aggregate allreduce, measured alone: the same
// datagrams (sizes, count, window, socket buffers and RINGFLOW_AGG_UDP path)
// between `workers` sender threads and one relay thread over loopback, with
// no quantising, adding or checksums.  Each worker keeps `slots` datagrams
// of 64 + 4 * packetElems bytes in flight; the relay sends one datagram
// back to every worker once all of them sent a chunk, as the aggregator
// does with a sum.  What the host needs just to move the bytes bounds what
// any aggregate call can reach on it (bench/aggregate.py's "floor" row).
struct UdpFloor {
  std::vector<double> seconds;  // wall time of each timed call
  double relayCpu = 0;          // CPU seconds per call: the relay thread
  double workerCpu = 0;         // and one worker thread (the mean over workers)
};

// `calls` timed calls after one warm-up; throws Error when a datagram is
// lost (no retransmission here: loopback with these buffers loses none).
UdpFloor measureUdpFloor(int workers, size_t elements, uint32_t packetElems, uint32_t slots,
                         int calls);

}  // namespace ringflow::agg
