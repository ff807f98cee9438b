// The sending side: maps a peer's Inbox and pushes into its ring there.
// A push picks a slot with no update waiting (or applies the FullPolicy),
// claims it by setting kWriting, and backs off to another slot if the
// consumer is reading that one (the handshake described in inbox.cc).  The
// consumer holds at most slots-1 slots of a ring, so some slot is always
// claimable: a push finishes in at most `slots` attempts, never waiting.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "layout.h"
#include "ringflow/types.h"

namespace ringflow::malt {

namespace {

// The slots in the order a push tries them: free ones first, then the
// unmerged ones the policy would sacrifice first.
int candidates(Ring& r, const SegmentHeader& h, int* order, bool* free) {
  int n = 0;
  uint64_t seqs[kMaxSlots];
  for (int i = 0; i < int(h.slots); ++i) {
    SlotHead& sh = r.head(h, i);
    seqs[i] = sh.seq.load(std::memory_order_relaxed);  // this thread wrote it
    free[i] = seqs[i] <= sh.taken.load(std::memory_order_acquire);
    if (free[i]) order[n++] = i;
  }
  const bool newestFirst = h.policy == uint32_t(FullPolicy::Coalesce);
  const int firstFull = n;
  for (int i = 0; i < int(h.slots); ++i)
    if (!free[i]) order[n++] = i;
  // Few slots: insertion sort of the unmerged ones by age.
  for (int a = firstFull + 1; a < n; ++a)
    for (int b = a; b > firstFull; --b) {
      const bool swap = newestFirst ? seqs[order[b]] > seqs[order[b - 1]]
                                    : seqs[order[b]] < seqs[order[b - 1]];
      if (!swap) break;
      std::swap(order[b], order[b - 1]);
    }
  return n;
}

void addInto(float* dst, const float* src, size_t n) {
  const float one = 1.0f;
  weightedSum(dst, 1.0f, &src, &one, 1, n);
}

}  // namespace

Outbox::Outbox(int pid, int fd, size_t bytes, int sender, size_t count) : count_(count) {
  const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
  int f = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (f < 0) throw PeerError("cannot open the MALT inbox at " + path + ": " + std::strerror(errno));
  struct stat st;
  if (fstat(f, &st) != 0 || size_t(st.st_size) != bytes || bytes < sizeof(SegmentHeader)) {
    ::close(f);
    throw InvalidArgument("the file at " + path + " is not a MALT inbox of " +
                          std::to_string(bytes) + " bytes");
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
  const int mapErr = errno;
  ::close(f);  // the mapping keeps the file
  if (p == MAP_FAILED) throw PeerError("mmap of the MALT inbox at " + path + ": " + std::strerror(mapErr));
  base_ = static_cast<char*>(p);
  bytes_ = bytes;
  header_ = reinterpret_cast<SegmentHeader*>(base_);
  std::string bad;
  if (header_->magic != kMagic)
    bad = "it is not a MALT inbox";
  else if (header_->count != count)
    bad = "it holds updates of " + std::to_string(header_->count) + " floats, not " +
          std::to_string(count);
  else if (sender < 0 || sender >= int(header_->senders))
    bad = "it has no ring for sender " + std::to_string(sender);
  else if (segmentBytes(count, int(header_->senders), int(header_->slots)) != bytes)
    bad = "its size does not match its header";
  if (!bad.empty()) {
    munmap(base_, bytes_);
    throw InvalidArgument("the file at " + path + ": " + bad);
  }
  std::atomic_thread_fence(std::memory_order_acquire);
  ring_ = &ringAt(base_, *header_, sender);
  lastBeat_ = header_->heartbeat.load(std::memory_order_relaxed);
  lastBeatSeen_ = std::chrono::steady_clock::now();
}

Outbox::~Outbox() { munmap(base_, bytes_); }

int Outbox::claim(uint64_t* oldSeq, bool* coalesce) {
  const SegmentHeader& h = *header_;
  int order[kMaxSlots];
  bool free[kMaxSlots];
  const int n = candidates(*ring_, h, order, free);
  for (int k = 0; k < n; ++k) {
    const int s = order[k];
    SlotHead& sh = ring_->head(h, s);
    const uint64_t old = sh.seq.load(std::memory_order_relaxed);
    sh.seq.store(old | kWriting, std::memory_order_seq_cst);
    if (ring_->reading.load(std::memory_order_seq_cst) & (uint64_t(1) << s)) {
      sh.seq.store(old, std::memory_order_release);  // the consumer has it: try another
      continue;
    }
    // The consumer may have merged the slot since candidates() looked: then
    // it is free now, and adding into it would merge its old update twice.
    // (Holding kWriting with the reading bit clear, `taken` stands still.)
    free[s] = free[s] || old <= sh.taken.load(std::memory_order_acquire);
    *oldSeq = old;
    *coalesce = !free[s] && h.policy == uint32_t(FullPolicy::Coalesce);
    if (!free[s]) (*coalesce ? ring_->coalesced : ring_->dropped).fetch_add(1, std::memory_order_relaxed);
    return s;
  }
  // Unreachable while the consumer keeps to slots-1 held slots.
  throw Error("MALT ring has no claimable slot (consumer holds them all)");
}

uint64_t Outbox::push(const float* src, uint64_t step, uint32_t updates) {
  uint64_t old;
  bool coalesce;
  const int s = claim(&old, &coalesce);
  SlotHead& sh = ring_->head(*header_, s);
  float* dst = ring_->payload(*header_, s);
  if (coalesce) {
    addInto(dst, src, count_);
    sh.count.store(sh.count.load(std::memory_order_relaxed) + updates, std::memory_order_relaxed);
  } else {
    std::memcpy(dst, src, count_ * sizeof(float));
    sh.count.store(updates, std::memory_order_relaxed);
  }
  sh.step.store(step, std::memory_order_relaxed);
  const uint64_t seq = ring_->pushes.load(std::memory_order_relaxed) + 1;
  ring_->pushes.store(seq, std::memory_order_relaxed);
  sh.seq.store(seq, std::memory_order_release);
  return seq;
}

void Outbox::pushHalfForTest(const float* src) {
  uint64_t old;
  bool coalesce;
  const int s = claim(&old, &coalesce);
  std::memcpy(ring_->payload(*header_, s), src, count_ / 2 * sizeof(float));
}

bool Outbox::alive(std::chrono::milliseconds departAfter) {
  if (closed_) return false;
  const auto now = std::chrono::steady_clock::now();
  const uint64_t beat = header_->heartbeat.load(std::memory_order_relaxed);
  if (beat != lastBeat_) {
    lastBeat_ = beat;
    lastBeatSeen_ = now;
  }
  // Closing is for good; a silent heartbeat is not (an owner starved of CPU
  // for a while comes back when its beat moves again).
  closed_ = header_->closed.load(std::memory_order_acquire) != 0;
  return !closed_ && now - lastBeatSeen_ <= departAfter;
}

RingCounts Outbox::counts() const {
  return {ring_->pushes.load(std::memory_order_relaxed), ring_->dropped.load(std::memory_order_relaxed),
          ring_->coalesced.load(std::memory_order_relaxed), ring_->merged.load(std::memory_order_relaxed)};
}

}  // namespace ringflow::malt
