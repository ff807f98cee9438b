#include "job_table.h"

#include <algorithm>
#include <cstring>

#include "checksum.h"
#include "udp.h"

namespace ringflow::agg {

// Whether a packet's checksum or MAC holds, found once.  Unkeyed packets
// may instead be checked while contribute() copies or adds their payload
// (deferred()): one pass over the bytes instead of two; a path that acts on
// a packet any other way asks ok() first.
struct JobTable::PacketCheck {
  const PacketAuth& auth;
  const PacketHeader& h;
  const char* payload;
  size_t bytes;
  const sockaddr_storage& from;  // where a Rejected notice would go
  socklen_t fromLen;
  SteadyClock::time_point now;
  int state = 0;  // 0 not yet known, 1 good, -1 bad

  bool ok() {
    if (state == 0) state = auth.verify(h, payload, bytes) ? 1 : -1;
    return state > 0;
  }
  bool deferred() const { return state == 0 && !auth.keyed(); }
  // The checksum a fused copy or add computed over header and payload.
  bool settle(const Checksum& c) {
    state = !(h.flags & kFlagKeyed) && c.finish() == h.mac ? 1 : -1;
    return state > 0;
  }
};

namespace {

// Payload words as they sit in a receive buffer (any alignment, any type).
typedef uint32_t __attribute__((may_alias, aligned(1))) Word;

// Wrapping unsigned adds: genuine workers never overflow (quantisation
// leaves headroom for N), and a forged payload must not be UB.
void addInto(int32_t* sum, const char* payload, size_t n) {
  auto* s = reinterpret_cast<uint32_t*>(sum);
  auto* p = reinterpret_cast<const Word*>(payload);
  for (size_t i = 0; i < n; ++i) s[i] += p[i];
}

template <class T>
void bump(std::atomic<T>& c, T n = 1) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

constexpr size_t kClosedRemembered = 64;

size_t addressHash(const sockaddr_storage& a, socklen_t len) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  auto* b = reinterpret_cast<const unsigned char*>(&a);
  for (socklen_t i = 0; i < len; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  return size_t(h ^ (h >> 32));
}

}  // namespace

bool NoticeLimiter::allow(const sockaddr_storage& to, socklen_t toLen,
                          SteadyClock::time_point now) {
  const auto second = std::chrono::seconds(1);
  if (now - all_.since >= second) all_.since = now, all_.sent = 0;
  if (all_.sent >= kInAll) return false;
  // The address's own window if it holds one, else the first free one.
  const size_t home = addressHash(to, toLen);
  Window* own = nullptr;
  Window* spare = nullptr;
  for (size_t i = 0; i < kProbes && !own; ++i) {
    Window& w = table_[(home + i) % table_.size()];
    if (w.used && sameAddress(w.addr, to)) own = &w;
    else if (!spare && (!w.used || now - w.since >= second)) spare = &w;
  }
  if (!own) {
    if (!spare) return false;  // every neighbour is another address's second
    *spare = Window{};
    std::memcpy(&spare->addr, &to, toLen);
    spare->since = now, spare->used = true;
    own = spare;
  } else if (now - own->since >= second) {
    own->since = now, own->sent = 0;
  }
  if (own->sent >= kPerAddress) return false;
  ++own->sent, ++all_.sent;
  return true;
}

JobTable::JobTable(const AggregatorConfig& config) : config_(config), auth_(config.token) {
  jobs_.reserve(size_t(config.jobs));
}

void JobTable::countSent(uint64_t packets, uint64_t bytes) {
  bump(counters_.packetsSent, packets);
  bump(counters_.bytesSent, bytes);
}

AggregatorStats JobTable::stats() const {
  auto r = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  const Counters& c = counters_;
  AggregatorStats s;
  s.packetsReceived = r(c.packetsReceived), s.bytesReceived = r(c.bytesReceived);
  s.packetsSent = r(c.packetsSent), s.bytesSent = r(c.bytesSent);
  s.contributions = r(c.contributions), s.results = r(c.results), s.elements = r(c.elements);
  s.duplicates = r(c.duplicates), s.shadowAnswers = r(c.shadowAnswers), s.stale = r(c.stale);
  s.malformed = r(c.malformed), s.badMac = r(c.badMac), s.refused = r(c.refused);
  s.rejectedNotices = r(c.rejectedNotices), s.jobsClosed = r(c.jobsClosed);
  s.jobsOpened = r(c.jobsOpened), s.jobsEvicted = r(c.jobsEvicted);
  s.jobsActive = r(c.jobsActive), s.memoryBytes = size_t(r(c.memoryBytes));
  return s;
}

void JobTable::handle(const char* data, size_t len, bool truncated, const sockaddr_storage& from,
                      socklen_t fromLen, SteadyClock::time_point now, std::vector<Reply>& out) {
  bump(counters_.packetsReceived);
  bump(counters_.bytesReceived, uint64_t(len));
  PacketHeader h;
  if (truncated || len < sizeof h) return bump(counters_.malformed);
  std::memcpy(&h, data, sizeof h);
  const bool goodbye = h.type == uint8_t(PacketType::Goodbye);
  if (h.magic != kPacketMagic || h.version != kPacketVersion ||
      !(h.type == uint8_t(PacketType::Data) || (goodbye && h.count == 0)) ||
      len != sizeof h + payloadBytes(h.count))
    return bump(counters_.malformed);
  const char* payload = data + sizeof h;
  PacketCheck check{auth_, h, payload, payloadBytes(h.count), from, fromLen, now};
  if (!check.deferred() && !check.ok()) return rejected(check, out);
  // Field errors are answered once the packet is known authentic, so the
  // worker can fail with a reason instead of a timeout.
  if (h.workers == 0 || h.workers > 64 || h.sender >= h.workers || h.reserved != 0 ||
      (h.slot & kShadowBit) != (slotField(0, h.round) & kShadowBit))
    return check.ok() ? bump(counters_.malformed) : rejected(check, out);
  if (goodbye) return check.ok() ? farewell(h, now) : rejected(check, out);
  ErrorCode why{};
  Job* job = nullptr;
  if (h.count > config_.packetElems) why = ErrorCode::TooManyElements;
  else if (slotIndex(h) >= config_.slots) why = ErrorCode::SlotOutOfRange;
  else job = findOrOpen(h, now, &why);
  if (!job) {
    if (!check.ok()) return rejected(check, out);
    if (why == ErrorCode{}) return bump(counters_.stale);  // a late packet of a closed job
    return refuse(h, why, from, fromLen, out);
  }
  job->lastSeen = now;
  // The latest address a worker sent from is where its results go.
  std::memcpy(&job->addrs[h.sender], &from, fromLen);
  job->addrLens[h.sender] = fromLen;
  contribute(*job, h, check, out);
}

JobTable::Job* JobTable::findOrOpen(const PacketHeader& h, SteadyClock::time_point now,
                                    ErrorCode* why) {
  for (auto& j : jobs_)
    if (j.id == h.job) {
      if (j.workers == h.workers) return &j;
      *why = ErrorCode::WrongWorkers;
      return nullptr;
    }
  if (std::find(closed_.begin(), closed_.end(), h.job) != closed_.end()) return nullptr;
  if (config_.workers != 0 && h.workers != config_.workers) {
    *why = ErrorCode::WrongWorkers;
    return nullptr;
  }
  if (jobs_.size() >= size_t(config_.jobs)) {
    *why = ErrorCode::TooManyJobs;
    return nullptr;
  }
  Job& j = jobs_.emplace_back();
  j.id = h.job;
  j.workers = h.workers;
  j.slots.resize(config_.slots);
  j.sums.resize(size_t(config_.slots) * 2 * config_.packetElems);
  j.addrs.resize(h.workers);
  j.addrLens.assign(h.workers, 0);
  j.lastSeen = now;
  bump(counters_.jobsOpened);
  bump(counters_.jobsActive);
  bump(counters_.memoryBytes, uint64_t(j.sums.size() * sizeof(int32_t)));
  return &j;
}

void JobTable::contribute(Job& job, const PacketHeader& h, PacketCheck& check,
                          std::vector<Reply>& out) {
  const uint32_t index = slotIndex(h);
  const int v = int(h.round & 1);
  Slot& slot = job.slots[index];
  Set& set = slot.set[v];
  const uint64_t bit = uint64_t(1) << h.sender;
  // A slot's first packet fixes its round.  The next use of a set may
  // overwrite it once the round before is complete (every worker had this
  // set's old result before moving on).  Neither happens unless the packet
  // proves authentic.
  const bool first = !slot.used;
  const bool reuse = !first && h.round == set.round + 2 && slot.set[1 - v].round == h.round - 1 &&
                     slot.set[1 - v].complete && set.complete;
  if (!first && !reuse) {
    if (h.round != set.round) return check.ok() ? bump(counters_.stale) : rejected(check, out);
    if (set.complete) {
      // A complete set takes no more contributions.  A worker it counted
      // lost its result: answer from this set, adding nothing.
      if (!check.ok()) return rejected(check, out);
      if (!(set.seen & bit)) return bump(counters_.stale);
      bump(counters_.shadowAnswers);
      out.push_back({&job.addrs[h.sender], job.addrLens[h.sender], &set.result,
                     sumsOf(job, index, v), payloadBytes(set.result.count)});
      return;
    }
    if (set.seen & bit) return check.ok() ? bump(counters_.duplicates) : rejected(check, out);
  }
  int32_t* sums = sumsOf(job, index, v);
  const char* payload = check.payload;
  bool signedAlready = false;
  if (first || reuse || set.contributed == 0) {
    // The set's old sums belong to a round every worker has finished with,
    // so a copy that turns out forged loses nothing.
    if (check.deferred()) {
      Checksum c = headerChecksum(h);
      copyChecksummed(sums, payload, h.count, c);
      if (!check.settle(c)) return rejected(check, out);
    } else {
      if (!check.ok()) return rejected(check, out);
      std::memcpy(sums, payload, payloadBytes(h.count));
    }
    if (first) {
      slot.used = true;
      // It holds no sum and no worker's bit, so nothing is ever answered from it.
      slot.set[1 - v] = Set{h.round - 1, 0, 0, true, {}};
    }
    set = Set{h.round, 0, 0, false, h};
    set.result.type = uint8_t(PacketType::Result);
    set.result.sender = kNoWorker;
  } else {
    if (h.offset != set.result.offset || h.count != set.result.count ||
        h.exponent != set.result.exponent || h.call != set.result.call ||
        h.total != set.result.total) {
      if (!check.ok()) return rejected(check, out);
      // Every worker hears of it, so none waits for a round that cannot end.
      for (int w = 0; w < job.workers; ++w)
        if (job.addrLens[w]) refuse(h, ErrorCode::Inconsistent, job.addrs[w], job.addrLens[w], out);
      return;
    }
    PacketHeader result = set.result;
    if (h.nextExponent > result.nextExponent) result.nextExponent = h.nextExponent;
    if (check.deferred()) {
      // Check the packet and, when it completes the round, sign the sum, in
      // the pass that adds it; a forged one is subtracted again.
      const bool completes = set.contributed + 1 == job.workers;
      Checksum in = headerChecksum(h), sum;
      if (completes) {
        result.flags = uint16_t(result.flags & ~kFlagKeyed);
        sum = headerChecksum(result);
      }
      addChecksummed(sums, payload, h.count, in, completes ? &sum : nullptr);
      if (!check.settle(in)) {
        subtract(sums, payload, h.count);
        return rejected(check, out);
      }
      if (completes) result.mac = sum.finish(), signedAlready = true;
    } else {
      if (!check.ok()) return rejected(check, out);
      addInto(sums, payload, h.count);
    }
    set.result = result;
  }
  set.seen |= bit;
  bump(counters_.contributions);
  if (++set.contributed < job.workers) return;
  set.complete = true;
  if (!signedAlready) auth_.sign(set.result, sums, payloadBytes(set.result.count));
  bump(counters_.results);
  bump(counters_.elements, uint64_t(set.result.count));
  for (int w = 0; w < job.workers; ++w)
    out.push_back({&job.addrs[w], job.addrLens[w], &set.result, sums,
                   payloadBytes(set.result.count)});
}

void JobTable::refuse(const PacketHeader& h, ErrorCode code, const sockaddr_storage& to,
                      socklen_t toLen, std::vector<Reply>& out) {
  bump(counters_.refused);
  PacketHeader e = h;
  e.type = uint8_t(PacketType::Error);
  e.sender = kNoWorker;
  e.count = uint32_t(code);
  if (code == ErrorCode::TooManyJobs) {
    // So that the worker's message can say when an entry frees, and which
    // flags change that (errorText).
    e.offset = uint64_t(config_.jobs);
    e.total = uint64_t(config_.jobIdleSec * 1000);
  }
  auth_.sign(e, nullptr, 0);
  queue(e, to, toLen, out);
}

void JobTable::rejected(const PacketCheck& check, std::vector<Reply>& out) {
  bump(counters_.badMac);
  if (!notices_.allow(check.from, check.fromLen, check.now)) return;
  bump(counters_.rejectedNotices);
  // The header alone: never longer than the packet (a whole header) that
  // caused it.  Unsigned: the sender's key is not ours.
  PacketHeader n = check.h;
  n.type = uint8_t(PacketType::Rejected);
  n.flags = 0;
  n.sender = kNoWorker;
  n.count = 0;
  n.mac = 0;
  queue(n, check.from, check.fromLen, out);
}

void JobTable::queue(const PacketHeader& h, const sockaddr_storage& to, socklen_t toLen,
                     std::vector<Reply>& out) {
  errors_.emplace_back(h, to);
  auto& [header, addr] = errors_.back();
  out.push_back({&addr, toLen, &header, nullptr, 0});
}

void JobTable::farewell(const PacketHeader& h, SteadyClock::time_point now) {
  for (size_t i = 0; i < jobs_.size(); ++i) {
    Job& j = jobs_[i];
    if (j.id != h.job || j.workers != h.workers) continue;
    j.goodbyes |= uint64_t(1) << h.sender;
    j.lastSeen = now;
    if (j.goodbyes != (j.workers == 64 ? ~uint64_t(0) : (uint64_t(1) << j.workers) - 1)) return;
    // Every worker is done with it: no retransmission can still need a
    // shadow answer, so the entry is free for the next job now.
    bump(counters_.jobsClosed);
    closed_.push_back(j.id);
    if (closed_.size() > kClosedRemembered) closed_.pop_front();
    freeJob(i);
    return;
  }
  bump(counters_.stale);  // a job we do not hold: freed already, or never opened here
}

void JobTable::freeJob(size_t i) {
  counters_.jobsActive.store(counters_.jobsActive.load() - 1);
  counters_.memoryBytes.store(counters_.memoryBytes.load() -
                              uint64_t(jobs_[i].sums.size() * sizeof(int32_t)));
  jobs_.erase(jobs_.begin() + long(i));
}

void JobTable::evictIdle(SteadyClock::time_point now) {
  const auto idle = std::chrono::duration<double>(config_.jobIdleSec);
  for (size_t i = 0; i < jobs_.size();) {
    if (now - jobs_[i].lastSeen < idle) {
      ++i;
      continue;
    }
    bump(counters_.jobsEvicted);
    freeJob(i);
  }
}

}  // namespace ringflow::agg
