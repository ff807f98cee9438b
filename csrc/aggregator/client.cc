#include "client.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

#include "checksum.h"
#include "ringflow/quantize.h"
#include "ringflow/types.h"

namespace ringflow::agg {
namespace {

constexpr double kMinRtoMs = 20, kMaxRtoMs = 1000;
constexpr int kAbortCheckMs = 50;  // how soon a peer's failure stops our wait
// Rejected notices are unauthenticated, so one alone proves nothing: a call
// fails on them only after kRejectedRun of them from one aggregator, over at
// least kRejectedSpanMs, with no authentic packet from it in between -- a
// call that the aggregator answers at least every kRejectedSpanMs is never
// failed by them, and no notice is ever taken for a result.
constexpr int kRejectedRun = 3;
constexpr double kRejectedSpanMs = 500;
constexpr int kGoodbyeCopies = 3;  // UDP may lose one; nothing answers a goodbye
// From this size on, results go into the tensor with non-temporal stores:
// nothing reads it again within the call, and it outgrows the caches anyway,
// so reading each line before writing it (a plain store's) is wasted.
constexpr size_t kStreamElements = size_t(1) << 20;  // 4 MiB of float32

double msBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// The exponent of a chunk, or kNonFiniteExponent when it holds NaN or inf.
int16_t chunkExponent(const float* x, size_t n) {
  int e;
  return kernels::fixedExponentIfFinite(x, n, &e) ? int16_t(e) : kNonFiniteExponent;
}

}  // namespace

ClientTraffic& clientTraffic() {
  static ClientTraffic t;
  return t;
}

Client::Client(ClientConfig config)
    : config_(std::move(config)), auth_(config_.token),
      recvFaults_(config_.faults, uint64_t(getpid()) * 0x9e3779b97f4a7c15ull + 2) {
  if (config_.aggregators.empty()) throw InvalidArgument("aggregate: no aggregator address");
  UdpPath path = udpPathSetting();
  if (config_.workers < 1 || config_.workers > 64)
    throw InvalidArgument("aggregate: 1..64 workers per job, got " +
                          std::to_string(config_.workers));
  for (auto& e : config_.aggregators) {
    int fd = openUdp(e.addr.ss_family, kWorkerSocketBuffer);
    // Connected: only that aggregator's datagrams reach us, and a dead one
    // shows up as ECONNREFUSED instead of silence.
    if (connect(fd, reinterpret_cast<const sockaddr*>(&e.addr), e.len) != 0) {
      int err = errno;
      close(fd);
      for (int f : fds_) close(f);
      throw Error("aggregate: cannot reach aggregator " + e.text + ": " + std::strerror(err));
    }
    fds_.push_back(fd);
    modes_.push_back(setupUdpPath(fd, path));
    sendFaults_.emplace_back(config_.faults, uint64_t(getpid()) * 0x2545f4914f6cdd1dull + fd);
    nextRound_.emplace_back(config_.slots, 0u);
  }
  packets_.resize(fds_.size() * config_.slots);
  recv_ = std::make_unique<RecvBatch>(kRecvBatch, kRecvBytes, path, &clientTraffic().calls);
}

Client::~Client() {
  sayGoodbye();
  for (int fd : fds_) close(fd);
}

// Lets every aggregator free the job's entry as soon as all workers are
// done, instead of after --job-idle-s of silence.  Best effort: a lost
// goodbye leaves the entry to the idle eviction, as before.
void Client::sayGoodbye() noexcept {
  PacketHeader h{};
  h.magic = kPacketMagic;
  h.version = kPacketVersion;
  h.type = uint8_t(PacketType::Goodbye);
  h.job = config_.job;
  h.sender = uint16_t(config_.rank);
  h.workers = uint16_t(config_.workers);
  h.nextExponent = kNoExponent;
  auth_.sign(h, nullptr, 0);
  for (int fd : fds_)
    for (int i = 0; i < kGoodbyeCopies; ++i) {
      ssize_t ignored = send(fd, &h, sizeof h, MSG_DONTWAIT);
      (void)ignored;
    }
}

// One allreduceSum call: the lanes (aggregator, slot) and their loop.
struct Client::Call {
  struct Lane {
    bool active = false;
    size_t chunk = 0;        // the chunk in flight (or whose exponent is being agreed)
    bool exponentOnly = false;
    uint32_t round = 0;
    size_t bytes = 0;        // of the packet in packets_[lane]
    Clock::time_point sentAt, due;
    double rtoMs = 0;
    int sends = 0;
  };

  Client& cl;
  float* data;
  size_t n, chunks;
  uint32_t call;
  const size_t aggs, slots, k;
  std::vector<Lane> lanes;
  std::vector<SendBatch> out;
  size_t active = 0;
  struct Rejections {
    int count = 0;  // notices since the aggregator's last authentic packet
    Clock::time_point since;
  };
  std::vector<Rejections> rejections;  // per aggregator
  // Received datagrams the injector held back, with their aggregator.
  std::vector<std::pair<size_t, std::vector<char>>> deferred;

  Call(Client& c, float* d, size_t count, uint32_t callNo)
      : cl(c), data(d), n(count), chunks((count + c.config_.packetElems - 1) / c.config_.packetElems),
        call(callNo), aggs(c.fds_.size()), slots(c.config_.slots), k(c.config_.packetElems),
        lanes(aggs * slots), rejections(aggs) {
    for (const UdpMode& m : c.modes_) out.emplace_back(m, &clientTraffic().calls);
  }

  size_t stride() const { return aggs * slots; }  // chunk c, then c + stride on one lane
  size_t offsetOf(size_t chunk) const { return chunk * k; }
  size_t countOf(size_t chunk) const { return std::min(k, n - chunk * k); }
  int16_t exponentOf(size_t chunk) const {
    return chunk < chunks ? chunkExponent(data + offsetOf(chunk), countOf(chunk)) : kNoExponent;
  }

  PacketHeader headerFor(size_t lane, size_t chunk) {
    PacketHeader h{};
    h.magic = kPacketMagic;
    h.version = kPacketVersion;
    h.type = uint8_t(PacketType::Data);
    h.job = cl.config_.job;
    h.round = cl.nextRound_[lane / slots][lane % slots]++;
    h.slot = slotField(uint32_t(lane % slots), h.round);
    h.call = call;
    h.sender = uint16_t(cl.config_.rank);
    h.workers = uint16_t(cl.config_.workers);
    h.offset = offsetOf(chunk);
    h.total = n;
    return h;
  }

  // Builds the lane's next packet (exponent-only when `exponent` is
  // kNoExponent) and queues it.
  void sendNext(size_t l, size_t chunk, int16_t exponent) {
    Lane& lane = lanes[l];
    PacketHeader h = headerFor(l, chunk);
    std::vector<char>& buf = cl.packets_[l];
    buf.resize(sizeof h + k * sizeof(int32_t));
    auto* payload = reinterpret_cast<int32_t*>(buf.data() + sizeof h);
    lane.chunk = chunk;
    lane.exponentOnly = exponent == kNoExponent;
    if (lane.exponentOnly) {
      h.nextExponent = exponentOf(chunk);
    } else {
      h.exponent = exponent;
      if (exponent != kNonFiniteExponent) h.count = uint32_t(countOf(chunk));
      h.nextExponent = exponentOf(chunk + stride());
    }
    const float* x = data + h.offset;
    auto quantize = [&](size_t i, size_t m) {
      kernels::quantizeFixed(payload + i, x + i, m, exponent, cl.config_.workers);
    };
    if (cl.auth_.keyed()) {
      if (h.count) quantize(0, h.count);
      cl.auth_.sign(h, payload, payloadBytes(h.count));
    } else {
      // The checksum reads each piece of the payload as it is quantised.
      h.flags = uint16_t(h.flags & ~kFlagKeyed);
      Checksum c = headerChecksum(h);
      foldPieces(payload, h.count, c, quantize);
      h.mac = c.finish();
    }
    std::memcpy(buf.data(), &h, sizeof h);
    lane.round = h.round;
    lane.bytes = sizeof h + payloadBytes(h.count);
    lane.sends = 0;
    transmit(l);
  }

  // Jacobson's srtt + 4 rttvar, but never under 1.5 srtt: a full window
  // queued at a shaped link gives every round nearly the same RTT, so
  // rttvar shrinks to almost nothing, and a few milliseconds of scheduling
  // jitter would otherwise fire spurious retransmissions that lengthen the
  // very queue that delayed them.
  double currentRtoMs() const {
    if (cl.srttMs_ < 0) return cl.config_.initialRtoMs;
    double margin = std::max(4 * cl.rttvarMs_, cl.srttMs_ / 2);
    return std::clamp(cl.srttMs_ + margin, kMinRtoMs, kMaxRtoMs);
  }

  void setDue(Lane& lane) {
    lane.due = lane.sentAt + std::chrono::microseconds(int64_t(lane.rtoMs * 1000));
  }

  void transmit(size_t l) {
    Lane& lane = lanes[l];
    lane.sentAt = Clock::now();
    lane.rtoMs = lane.sends == 0 ? currentRtoMs() : std::min(lane.rtoMs * 2, kMaxRtoMs);  // backoff
    setDue(lane);
    if (lane.sends++) clientTraffic().retransmits++;
    cl.sendFaults_[l / slots].add(out[l / slots], nullptr, 0, cl.packets_[l].data(), lane.bytes);
  }

  void flush() {
    for (size_t a = 0; a < aggs; ++a) {
      cl.sendFaults_[a].releaseInto(out[a]);
      if (!out[a].size()) continue;
      clientTraffic().packetsSent += out[a].size();
      clientTraffic().bytesSent += out[a].bytes();
      if (out[a].flush(cl.fds_[a])) unreachable(a);
      cl.modes_[a].gso = out[a].gso();  // off for good once the kernel refused a segmented send
    }
  }

  [[noreturn]] void unreachable(size_t a) {
    throw PeerError("aggregate: aggregator " + cl.config_.aggregators[a].text +
                    " refused our packets (connection refused: it is not running there)");
  }

  // Karn: only rounds sent once say anything about the round-trip time.
  // Exponent-only rounds are 64-byte packets that skip the queue full
  // chunks wait in, so they would teach an RTT far below a chunk's.
  void sampleRtt(const Lane& lane) {
    if (lane.sends != 1 || lane.exponentOnly) return;
    double r = msBetween(lane.sentAt, Clock::now());
    if (cl.srttMs_ < 0) {
      cl.srttMs_ = r;
      cl.rttvarMs_ = r / 2;
    } else {
      cl.rttvarMs_ = 0.75 * cl.rttvarMs_ + 0.25 * std::fabs(cl.srttMs_ - r);
      cl.srttMs_ = 0.875 * cl.srttMs_ + 0.125 * r;
    }
  }

  // The lane whose current round `h` answers, or null (not any more, not yet).
  Lane* laneAwaiting(size_t a, const PacketHeader& h) {
    if (slotIndex(h) >= slots) return nullptr;
    Lane& lane = lanes[a * slots + slotIndex(h)];
    if (!lane.active || h.round != lane.round || h.offset != offsetOf(lane.chunk) || h.call != call)
      return nullptr;
    return &lane;
  }

  void dequantizeInto(float* dst, const int32_t* q, size_t m, int exponent) {
    if (n >= kStreamElements)
      kernels::dequantizeFixedStreaming(dst, q, m, exponent, cl.config_.workers);
    else
      kernels::dequantizeFixed(dst, q, m, exponent, cl.config_.workers);
  }

  // Dequantises an unkeyed result into its chunk, checking its checksum in
  // the same pass; false when the checksum fails.
  bool dequantizeChecked(const PacketHeader& h, const char* d) {
    if (h.flags & kFlagKeyed) return false;
    // The receive buffer holds the payload 64 bytes in: int32-aligned.
    auto* q = reinterpret_cast<const int32_t*>(d + sizeof h);
    float* dst = data + h.offset;
    Checksum c = headerChecksum(h);
    foldPieces(q, h.count, c, [&](size_t i, size_t m) { dequantizeInto(dst + i, q + i, m, h.exponent); });
    return c.finish() == h.mac;
  }

  void onDatagram(size_t a, const char* d, size_t len) {
    clientTraffic().packetsReceived++;
    clientTraffic().bytesReceived += len;
    PacketHeader h;
    if (len < sizeof h) return void(clientTraffic().stale++);
    std::memcpy(&h, d, sizeof h);
    if (h.magic != kPacketMagic || h.version != kPacketVersion || h.job != cl.config_.job)
      return void(clientTraffic().stale++);
    if (h.type == uint8_t(PacketType::Rejected)) {
      // Unauthenticated: only counted (see kRejectedRun), never acted on alone.
      if (len == sizeof h && rejections[a].count++ == 0) rejections[a].since = Clock::now();
      return void(clientTraffic().stale++);
    }
    bool isError = h.type == uint8_t(PacketType::Error);
    size_t pbytes = isError ? 0 : payloadBytes(h.count);
    if ((!isError && h.type != uint8_t(PacketType::Result)) || len != sizeof h + pbytes)
      return void(clientTraffic().stale++);
    Lane* lane = isError ? nullptr : laneAwaiting(a, h);
    // An unkeyed result that a lane awaits is checked in the pass that
    // dequantises it into the tensor: a forged or corrupt one writes its
    // chunk there, but the lane keeps waiting, and the genuine result (a
    // retransmission's answer) overwrites it before the call returns.
    const bool fused = lane && !lane->exponentOnly && !cl.auth_.keyed() &&
                       h.exponent != kNonFiniteExponent && h.count == countOf(lane->chunk);
    if (fused ? !dequantizeChecked(h, d) : !cl.auth_.verify(h, d + sizeof h, pbytes))
      return void(clientTraffic().stale++);
    rejections[a].count = 0;  // it knows our key
    if (isError) {
      auto code = ErrorCode(h.count);
      std::string why = "aggregate: aggregator " + cl.config_.aggregators[a].text +
                        " refused call " + std::to_string(h.call) + " (slot " +
                        std::to_string(slotIndex(h)) + "): " + errorText(h);
      if (code == ErrorCode::Inconsistent) throw MismatchError(why);
      throw PeerError(why);  // the aggregator is the call's other party
    }
    if (!lane) return void(clientTraffic().stale++);
    sampleRtt(*lane);
    size_t next = lane->chunk;
    if (!lane->exponentOnly) {
      float* dst = data + h.offset;
      size_t cnt = countOf(lane->chunk);
      if (h.exponent == kNonFiniteExponent)
        std::fill(dst, dst + cnt, std::numeric_limits<float>::quiet_NaN());
      else if (h.count != cnt)
        throw Error("aggregate: aggregator " + cl.config_.aggregators[a].text + " returned " +
                    std::to_string(h.count) + " elements for a chunk of " + std::to_string(cnt));
      else if (!fused)  // a fused check has dequantised it already
        dequantizeInto(dst, reinterpret_cast<const int32_t*>(d + sizeof h), cnt, h.exponent);
      next += stride();
    }
    if (next >= chunks) {
      lane->active = false;
      --active;
      return;
    }
    if (h.nextExponent == kNoExponent)  // every worker sends the same chunks, so never
      throw MismatchError("aggregate: no exponent agreed for the chunk at element " +
                          std::to_string(offsetOf(next)) + " (workers disagree on the tensor?)");
    sendNext(size_t(lane - lanes.data()), next, h.nextExponent);
  }

  void receiveAll(std::vector<pollfd>& fds) {
    for (size_t a = 0; a < aggs; ++a) {
      if (!(fds[a].revents & (POLLIN | POLLERR))) continue;
      bool refused = false;
      int got;
      while ((got = cl.recv_->receive(cl.fds_[a], &refused)) > 0) {
        for (int i = 0; i < got; ++i) {
          const char* d = cl.recv_->data(i);
          size_t len = cl.recv_->length(i);
          switch (cl.recvFaults_.decide()) {
            case FaultInjector::Fate::Drop: break;
            case FaultInjector::Fate::Hold: deferred.push_back({a, {d, d + len}}); break;
            case FaultInjector::Fate::Duplicate: onDatagram(a, d, len); [[fallthrough]];
            case FaultInjector::Fate::Deliver: onDatagram(a, d, len); break;
          }
        }
        flush();
      }
      if (refused) unreachable(a);
    }
  }

  void run(Deadline deadline, const std::function<std::string()>& aborted) {
    for (size_t l = 0; l < lanes.size(); ++l) {
      size_t first = (l % slots) * aggs + l / slots;  // lane (a, s) starts at chunk s*A + a
      if (first >= chunks) continue;
      lanes[l].active = true;
      ++active;
      sendNext(l, first, kNoExponent);
    }
    flush();
    std::vector<pollfd> fds(aggs);
    for (size_t a = 0; a < aggs; ++a) fds[a] = {cl.fds_[a], POLLIN, 0};
    while (active) {
      auto now = Clock::now();
      auto wake = std::min(deadline, now + std::chrono::milliseconds(kAbortCheckMs));
      for (auto& lane : lanes)
        if (lane.active) wake = std::min(wake, lane.due);
      int ms = int(std::max(0.0, std::ceil(msBetween(now, wake))));
      if (poll(fds.data(), fds.size(), ms) < 0 && errno != EINTR)
        throw Error(std::string("aggregate: poll: ") + std::strerror(errno));
      receiveAll(fds);
      // What the injector held back arrives after what came in since.
      auto held = std::move(deferred);
      deferred.clear();
      for (auto& [a, d] : held)
        if (active) onDatagram(a, d.data(), d.size());
      now = Clock::now();
      for (size_t l = 0; l < lanes.size(); ++l) {
        Lane& lane = lanes[l];
        if (!lane.active || lane.due > now) continue;
        if (lane.sends == 1) {  // sent before the RTT estimate grew? judge by today's
          lane.rtoMs = std::max(lane.rtoMs, currentRtoMs());
          setDue(lane);
          if (lane.due > now) continue;
        }
        transmit(l);
      }
      flush();
      if (!active) break;
      checkRejections(now);
      if (std::string why = aborted(); !why.empty()) throw PeerError(why);
      if (now >= deadline) timedOut();
    }
  }

  void checkRejections(Clock::time_point now) {
    for (size_t a = 0; a < aggs; ++a) {
      const Rejections& r = rejections[a];
      if (r.count < kRejectedRun || msBetween(r.since, now) < kRejectedSpanMs) continue;
      throw PeerError(
          "aggregate: the aggregator rejects our packets' MACs: is RINGFLOW_AGG_TOKEN the same "
          "everywhere? (aggregator " + cl.config_.aggregators[a].text + " sent " +
          std::to_string(r.count) + " rejection notices in " +
          std::to_string(int(msBetween(r.since, now))) + " ms and no result; this worker " +
          (cl.auth_.keyed() ? "has a token" : "has no token") +
          ", and the aggregator needs the one it was started with; without tokens, check that "
          "the aggregator and the workers run the same ringflow version)");
    }
  }

  [[noreturn]] void timedOut() {
    for (size_t l = 0; l < lanes.size(); ++l)
      if (lanes[l].active)
        throw TimeoutError("aggregate: no result from aggregator " +
                           cl.config_.aggregators[l / slots].text + " for slot " +
                           std::to_string(l % slots) + " (chunk at element " +
                           std::to_string(offsetOf(lanes[l].chunk)) + ", sent " +
                           std::to_string(lanes[l].sends) + " times) before the timeout");
    throw TimeoutError("aggregate: timed out");
  }
};

void Client::allreduceSum(float* data, size_t n, uint32_t call, Deadline deadline,
                          const std::function<std::string()>& aborted) {
  if (n == 0) return;
  Call(*this, data, n, call).run(deadline, aborted);
}

}  // namespace ringflow::agg
