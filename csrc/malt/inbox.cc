// The receiving side: the segment, its heartbeat, and the lockless merge.
//
// Claiming a slot is a Dekker handshake on two seq_cst atomics: the consumer
// sets its bit in Ring::reading, then reads the slot's seq; the producer
// sets kWriting in seq, then reads `reading` (outbox.cc).  Sequential
// consistency puts one of the two stores first, so at least one side sees
// the other and backs off -- never both proceed, and neither waits.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <string>

#include "layout.h"
#include "ringflow/types.h"

namespace ringflow::malt {

namespace {

std::string errnoText(int e) { return std::strerror(e); }

}  // namespace

Inbox::Inbox(int senders, size_t count, int slots, FullPolicy policy) {
  if (senders < 1) throw InvalidArgument("a MALT inbox needs at least one sender ring");
  if (count == 0) throw InvalidArgument("a MALT update needs at least one float");
  if (slots < 2 || slots > kMaxSlots)
    throw InvalidArgument("a MALT ring needs 2.." + std::to_string(kMaxSlots) + " slots, got " +
                          std::to_string(slots));
  if (policy != FullPolicy::DropOldest && policy != FullPolicy::Coalesce)
    throw InvalidArgument("unknown MALT full-queue policy " + std::to_string(uint32_t(policy)));
  bytes_ = segmentBytes(count, senders, slots);
  fd_ = memfd_create("ringflow-malt", MFD_CLOEXEC);
  if (fd_ < 0) throw Error("memfd_create for a MALT inbox failed: " + errnoText(errno));
  // Reserved now, so a shortage fails here rather than as a SIGBUS in a push.
  int err = posix_fallocate(fd_, 0, off_t(bytes_));
  void* p = err ? MAP_FAILED : mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) {
    if (!err) err = errno;
    ::close(fd_);
    throw Error("cannot allocate a MALT inbox of " + std::to_string(bytes_) + " bytes: " +
                errnoText(err));
  }
  base_ = static_cast<char*>(p);
  auto* h = new (base_) SegmentHeader();
  h->count = count;
  h->senders = uint32_t(senders);
  h->slots = uint32_t(slots);
  h->policy = uint32_t(policy);
  h->pid = getpid();
  h->slotStride = slotStride(count);
  h->ringStride = ringStride(count, slots);
  for (int s = 0; s < senders; ++s) {
    Ring& r = *new (&ringAt(base_, *h, s)) Ring();
    for (int i = 0; i < slots; ++i) new (&r.head(*h, i)) SlotHead();
  }
  // Published last: an Outbox checks the magic before it trusts the rest.
  std::atomic_thread_fence(std::memory_order_release);
  h->magic = kMagic;
  beater_ = std::thread([this] { beat(); });
}

Inbox::~Inbox() {
  close();
  // Unmapped here only; the file lives on while a sender maps it, so a
  // push racing this rank's exit writes valid memory.
  munmap(base_, bytes_);
  ::close(fd_);
}

void Inbox::close() {
  auto* h = reinterpret_cast<SegmentHeader*>(base_);
  h->closed.store(1, std::memory_order_release);
  stop_.store(true, std::memory_order_relaxed);
  if (beater_.joinable()) beater_.join();
}

void Inbox::beat() {
  auto* h = reinterpret_cast<SegmentHeader*>(base_);
  while (!stop_.load(std::memory_order_relaxed)) {
    h->heartbeat.fetch_add(1, std::memory_order_relaxed);
    std::this_thread::sleep_for(kBeatEvery);
  }
}

int Inbox::pid() const { return reinterpret_cast<SegmentHeader*>(base_)->pid; }
size_t Inbox::count() const { return reinterpret_cast<SegmentHeader*>(base_)->count; }
int Inbox::senders() const { return int(reinterpret_cast<SegmentHeader*>(base_)->senders); }
int Inbox::slots() const { return int(reinterpret_cast<SegmentHeader*>(base_)->slots); }

Ring& Inbox::ring(int sender) const {
  const auto& h = *reinterpret_cast<SegmentHeader*>(base_);
  if (sender < 0 || sender >= int(h.senders))
    throw InvalidArgument("no MALT ring for sender " + std::to_string(sender) + " (there are " +
                          std::to_string(h.senders) + ")");
  return ringAt(base_, h, sender);
}

std::vector<Arrival> Inbox::arrivals() const {
  const auto& h = *reinterpret_cast<SegmentHeader*>(base_);
  std::vector<Arrival> out;
  for (int s = 0; s < int(h.senders); ++s) {
    Ring& r = ringAt(base_, h, s);
    for (int i = 0; i < int(h.slots); ++i) {
      SlotHead& sh = r.head(h, i);
      const uint64_t seq = sh.seq.load(std::memory_order_acquire);
      if ((seq & kWriting) || seq <= sh.taken.load(std::memory_order_relaxed)) continue;
      Arrival a{s, i, seq, sh.step.load(std::memory_order_relaxed),
                sh.count.load(std::memory_order_relaxed)};
      // A seqlock read: step and count belong to `seq` only if it still stands.
      std::atomic_thread_fence(std::memory_order_acquire);
      if (sh.seq.load(std::memory_order_relaxed) == seq) out.push_back(a);
    }
  }
  return out;
}

bool Inbox::hold(Ring& r, int slot, uint64_t seq) {
  const auto& h = *reinterpret_cast<SegmentHeader*>(base_);
  const uint64_t bit = uint64_t(1) << slot;
  r.reading.fetch_or(bit, std::memory_order_seq_cst);
  if (r.head(h, slot).seq.load(std::memory_order_seq_cst) == seq) return true;
  r.reading.fetch_and(~bit, std::memory_order_release);  // rewritten, or being written
  return false;
}

bool Inbox::consume(const Arrival& a, const std::function<void(const float*)>& use) {
  const auto& h = *reinterpret_cast<SegmentHeader*>(base_);
  Ring& r = ring(a.sender);
  if (a.slot < 0 || a.slot >= int(h.slots)) throw InvalidArgument("no MALT slot " + std::to_string(a.slot));
  if (!hold(r, a.slot, a.seq)) return false;
  struct Release {  // also when `use` throws
    SlotHead& sh;
    Ring& r;
    uint64_t seq, bit;
    ~Release() {
      sh.taken.store(seq, std::memory_order_release);
      r.reading.fetch_and(~bit, std::memory_order_release);
      r.merged.fetch_add(1, std::memory_order_relaxed);
    }
  } release{r.head(h, a.slot), r, a.seq, uint64_t(1) << a.slot};
  use(r.payload(h, a.slot));
  return true;
}

MergeResult Inbox::merge(float* dst, const std::vector<Take>& takes, double selfWeight, bool average) {
  const auto& h = *reinterpret_cast<SegmentHeader*>(base_);
  if (!(selfWeight >= 0)) throw InvalidArgument("a merge's own weight must be >= 0");
  struct Held {
    SlotHead* head;
    Ring* ring;
    uint64_t bit, seq;
    const float* data;
    double weight;
  };
  std::vector<Held> held;
  std::vector<int> perRing(h.senders, 0);
  MergeResult res;
  auto release = [](const Held& x) {
    x.head->taken.store(x.seq, std::memory_order_release);
    x.ring->reading.fetch_and(~x.bit, std::memory_order_release);
  };
  for (const Take& t : takes) {
    Ring& r = ring(t.sender);
    if (t.slot < 0 || t.slot >= int(h.slots))
      throw InvalidArgument("no MALT slot " + std::to_string(t.slot));
    if (!(t.weight >= 0)) throw InvalidArgument("a merge weight must be >= 0");
    // One slot of every ring stays free for its producer.
    if (perRing[t.sender] == int(h.slots) - 1) {
      res.skipped++;
      continue;
    }
    if (!hold(r, t.slot, t.seq)) {
      res.skipped++;
      continue;
    }
    SlotHead& sh = r.head(h, t.slot);
    Held x{&sh, &r, uint64_t(1) << t.slot, t.seq, r.payload(h, t.slot), t.weight};
    if (t.weight == 0) {
      release(x);
      res.discarded++;
      continue;
    }
    perRing[t.sender]++;
    res.weight += t.weight * sh.count.load(std::memory_order_relaxed);
    held.push_back(x);
  }
  if (!held.empty()) {
    // Averaging: normalised by the weights.  Adding: the weights as given.
    const double total = average ? selfWeight + res.weight : 1.0;
    std::vector<const float*> xs;
    std::vector<float> as;
    for (const Held& x : held) {
      xs.push_back(x.data);
      as.push_back(float(x.weight / total));
    }
    weightedSum(dst, average ? float(selfWeight / total) : 1.0f, xs.data(), as.data(), xs.size(), h.count);
  }
  for (const Held& x : held) {
    release(x);
    x.ring->merged.fetch_add(1, std::memory_order_relaxed);
  }
  res.merged = uint32_t(held.size());
  return res;
}

RingCounts Inbox::counts(int sender) const {
  Ring& r = ring(sender);
  return {r.pushes.load(std::memory_order_relaxed), r.dropped.load(std::memory_order_relaxed),
          r.coalesced.load(std::memory_order_relaxed), r.merged.load(std::memory_order_relaxed)};
}

}  // namespace ringflow::malt
