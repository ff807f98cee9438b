// The worker side of packet aggregation (mechanism 3): cuts a float tensor
// into chunks, quantises each to fixed point with the exponent all workers
// agreed on, and keeps one packet in flight per slot of every aggregator's
// pool -- a window the results clock: each result frees its slot for the
// worker's next chunk.  Lost packets are retransmitted with backoff until
// the call's deadline.  Protocol: ringflow/packet.h.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "faults.h"
#include "ringflow/packet.h"
#include "ringflow/transport.h"
#include "udp.h"

namespace ringflow::agg {

struct ClientConfig {
  std::vector<Endpoint> aggregators;  // chunk c goes to aggregators[c % size]
  uint32_t job = 0;
  int rank = 0, workers = 1;
  uint32_t slots = kDefaultSlots;           // per aggregator; must not exceed its pool
  uint32_t packetElems = kDefaultPacketElems;
  std::string token;
  FaultSpec faults;
  double initialRtoMs = 50;                 // before any round trip was measured
};

// Process-wide traffic of every client, for stats() and the benchmark.
struct ClientTraffic {
  std::atomic<uint64_t> packetsSent{0}, bytesSent{0}, packetsReceived{0}, bytesReceived{0},
      retransmits{0}, stale{0};
  UdpCalls calls;
};
ClientTraffic& clientTraffic();

class Client {
 public:
  explicit Client(ClientConfig config);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // The destructor says goodbye to every aggregator, so that the job's
  // entry frees once all workers have (packet.h, "Goodbye").

  // data[i] becomes the sum over all workers (dequantised); `call` is the
  // same number on every worker.  `aborted` is asked now and then and stops
  // the call when it returns a reason.  Throws TimeoutError at `deadline`.
  void allreduceSum(float* data, size_t n, uint32_t call, Deadline deadline,
                    const std::function<std::string()>& aborted);

 private:
  void sayGoodbye() noexcept;
  struct Lane;
  struct Call;
  ClientConfig config_;
  PacketAuth auth_;
  std::vector<int> fds_;                   // one connected socket per aggregator
  std::vector<UdpMode> modes_;             // and how each moves datagrams
  std::vector<std::vector<uint32_t>> nextRound_;  // [aggregator][slot]
  std::vector<std::vector<char>> packets_;        // per lane: what was last sent
  std::unique_ptr<RecvBatch> recv_;
  std::vector<FaultInjector> sendFaults_;  // per aggregator: held packets keep their socket
  FaultInjector recvFaults_;
  double srttMs_ = -1, rttvarMs_ = 0;
  friend struct Call;
};

}  // namespace ringflow::agg
