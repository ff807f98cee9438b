// Allreduce when every rank of the communicator is on this host, through the
// shared-memory arena instead of a ring of messages.
//
// Every step starts the same way, whatever the size: a rank waits until its
// peers have finished with what it published last time, writes its call
// descriptor (and buffer address) into its header and advances `arrive`;
// then it compares every peer's descriptor with its own before touching any
// data, so mismatched calls raise MismatchError on every rank.
//
// Small messages (one step): each rank copies its input into its slot and
// reduces all N slots straight from shared memory (kernels::reduceN), every
// block in the same fixed order on every rank, so all get bit-identical
// results (the ring's order, so they also match the ring and gloo).
//
// Large messages, single-copy (when process_vm_readv/writev work between
// every pair): rank r owns block r.  Piece by piece (small enough to stay in
// cache) it reads block r of each peer's buffer, reduces it into its own
// buffer (own data first so the output may alias it; float16/bfloat16 in the
// ring's order, rounding per step, on a copy) and writes the reduced piece,
// still in cache, straight back into every peer's buffer, then advances
// `done`.  Only rank r ever touches block r of a peer's buffer, and it
// overwrites a piece only after reading it, so no ordering is needed beyond
// `arrive` and `done`.  Memory sees each input read once and each output
// written once, 2·S per rank, the least any allreduce can move (a copy-in
// design moves ~5.5·S).  A peer whose buffer is a SharedBuffer
// (transport/shared_buffer.h) is mapped here instead: its pieces are reduced
// in place and stored into directly, without the kernel's pinning and bounce
// copy.  Without cross-memory access, large messages go through the slots as
// a sequence of small steps.
//
// Every wait spins briefly, then yields, then sleeps on the peer's futex bell, and checks
// the op deadline, the communicator's abort state and whether the peer's TCP
// link reported it dead.
#include <sys/uio.h>

#include <cstdio>
#include <cstring>

#include <thread>

#include "algorithms.h"
#include "ringflow/env.h"
#include "ringflow/kernels.h"
#include "ringflow/shm.h"
#include "ringflow/spin.h"
#include "transport/huge_pages.h"
#include "transport/mailbox.h"
#include "transport/shared_buffer.h"
#include "transport/shm_layout.h"

namespace ringflow::algo {
namespace {

// In these settings 0 means the default.
size_t envBytes(const char* name, size_t fallback) {
  size_t n = envSize(name, fallback);
  return n > 0 ? n : fallback;
}
std::chrono::microseconds envWait(const char* name, std::chrono::microseconds fallback) {
  auto us = envMicros(name, fallback);
  return us.count() > 0 ? us : fallback;
}

// At or below this size one copy-in step beats the three-phase single-copy
// path.  RINGFLOW_SHM_SMALL_BYTES overrides.
size_t smallBytes() {
  static const size_t b = envBytes("RINGFLOW_SHM_SMALL_BYTES", 256 << 10);
  return b;
}
// Pieces of a block read from a peer at once: small enough to stay in L2
// between the read and the reduction.  RINGFLOW_SHM_PIECE_BYTES overrides.
size_t readPieceBytes() {
  static const size_t b = envBytes("RINGFLOW_SHM_PIECE_BYTES", 256 << 10);
  return b;
}

// The same for peers whose buffers are mapped here (SharedBuffers): with no
// system call per piece, smaller pieces cost nothing and keep the owner's
// piece and every peer's in L2 until the result is stored back over them.
// RINGFLOW_SHM_MAPPED_PIECE_BYTES overrides.
size_t mappedPieceBytes() {
  static const size_t b = envBytes("RINGFLOW_SHM_MAPPED_PIECE_BYTES", 64 << 10);
  return b;
}

// How long a wait spins, then polls between yields, before it sleeps on the
// peer's bell (spin.h: spinThenYield).  A small allreduce's whole step is a
// few microseconds, so a peer that is running arrives well within these;
// one that is not (skewed ranks, a busy host) costs at most this much CPU
// per wait.  RINGFLOW_SHM_ARENA_SPIN_US / RINGFLOW_SHM_ARENA_YIELD_US.
std::chrono::microseconds spinBudget() {
  static const auto us = envWait("RINGFLOW_SHM_ARENA_SPIN_US", std::chrono::microseconds(5));
  return us;
}
std::chrono::microseconds yieldBudget() {
  static const auto us = envWait("RINGFLOW_SHM_ARENA_YIELD_US", std::chrono::microseconds(2000));
  return us;
}

}  // namespace

void readShmArenaSettings() {
  shm::hugePagesEnabled();
  smallBytes();
  readPieceBytes();
  mappedPieceBytes();
  spinBudget();
  yieldBudget();
}

namespace {

class Arena {
 public:
  Arena(Comm& c, ShmTransport& shm)
      : c_(c), shm_(shm), n_(c.size()), me_(c.rank()), step_(shm.nextArenaStep()),
        deadline_(Clock::now() + std::chrono::microseconds(int64_t(c.timeout() * 1e6))) {
    for (int r = 0; r < n_; ++r) {
      int local = shm.localIndex(c.members()[r]);
      hdr_.push_back(&shm.header(local));
      slot_.push_back(shm.slot(local));
    }
  }

  // Waits until every peer has advanced `which` to at least `step`.
  void waitAll(shm::Counter shm::Header::*which, uint64_t step) {
    for (int q = 0; q < n_; ++q)
      if (q != me_) waitFor(q, which, step);
  }
  void waitFor(int q, shm::Counter shm::Header::*which, uint64_t step);
  void publish(shm::Counter shm::Header::*which, uint64_t step) {
    (hdr_[me_]->*which).value.store(step, std::memory_order_release);
    shm::ring(hdr_[me_]->arBell);
  }

  // Announces this call and checks every peer announced the same one.
  void announce(const void* data, const shm::SharedPlace& place = {}) {
    waitAll(&shm::Header::done, step_ - 1);  // nobody still reads our last one
    shm::Announce& a = hdr_[me_]->call;
    a.set(c_.op());
    a.dataAddr = reinterpret_cast<uint64_t>(data);
    a.sharedId = place.id;
    a.sharedFd = place.fd;
    a.sharedOffset = place.offset;
  }
  // Rank q's buffer for this call mapped here, if q announced a shared one
  // that maps; else nullptr (reach it through the kernel).
  char* mappedPeer(int q, size_t bytes) {
    const shm::Announce& a = hdr_[q]->call;
    if (a.sharedId == 0) return nullptr;
    return shm::peerShared(hdr_[q]->pid, {a.sharedId, a.sharedFd, a.sharedOffset}, bytes);
  }
  void checkPeers() {
    for (int q = 0; q < n_; ++q) {
      if (q == me_) continue;
      waitFor(q, &shm::Header::arrive, step_);
      OpDesc theirs = hdr_[q]->call.desc();
      if (theirs != c_.op()) mismatch(q, theirs);
    }
  }
  [[noreturn]] void mismatch(int q, const OpDesc& theirs) {
    std::string why = "mismatched calls: rank " + std::to_string(me_) + " called " +
                      c_.op().str() + " but rank " + std::to_string(q) + " called " +
                      theirs.str();
    shm_.mailbox().abort(c_.id(), why, true);
    throw MismatchError(why);
  }

  // Copies `bytes` between `local` and `remote` in rank q's address space:
  // process_vm_readv into `local`, or with `write` process_vm_writev from it.
  void accessPeer(int q, void* local, uint64_t remote, size_t bytes, bool write);
  [[noreturn]] void failedAccess(int q, bool write, int err);

  Comm& c_;
  ShmTransport& shm_;
  const int n_, me_;
  // Read before step_ is taken: a bad setting fails the call on every rank
  // before it touches the arena, not midway on whichever rank waits first.
  const std::chrono::microseconds spin_ = spinBudget(), yield_ = yieldBudget();
  const uint64_t step_;
  const Deadline deadline_;
  std::vector<shm::Header*> hdr_;
  std::vector<char*> slot_;
};

void Arena::waitFor(int q, shm::Counter shm::Header::*which, uint64_t step) {
  std::atomic<uint64_t>& v = (hdr_[q]->*which).value;
  if (v.load(std::memory_order_acquire) >= step) return;
  // Time spent here is the watchdog's evidence of a slow hop.
  struct Credit {
    Comm& c;
    int q;
    Clock::time_point t0 = Clock::now();
    ~Credit() { c.creditWait(q, std::chrono::duration<double, std::milli>(Clock::now() - t0).count()); }
  } credit{c_, q};
  // Spin, then yield, before sleeping: the peer usually arrives within
  // microseconds, far less than a futex sleep-and-wake costs.
  if (spinThenYield([&] { return v.load(std::memory_order_acquire) >= step; }, spin_, yield_,
                    deadline_))
    return;
  for (;;) {
    uint32_t seen = hdr_[q]->arBell.word.load();
    if (v.load(std::memory_order_acquire) >= step) return;
    if (auto e = shm_.mailbox().abortError(c_.id())) std::rethrow_exception(e);
    OpDesc theirs;
    if (shm_.readCurrent(shm_.localIndex(c_.members()[q]), theirs) &&
        theirs.seq == c_.op().seq && theirs != c_.op())
      mismatch(q, theirs);  // e.g. a broadcast waiting for us: no frame will tell
    std::string gone = shm_.mailbox().peerGoneReason(c_.members()[q]);
    if (!gone.empty()) throw PeerError(gone);
    if (Clock::now() > deadline_) {
      char secs[32];
      std::snprintf(secs, sizeof(secs), "%.1fs", c_.timeout());
      throw TimeoutError(c_.op().str() + " on rank " + std::to_string(me_) + " timed out after " +
                         secs + " waiting for rank " + std::to_string(q));
    }
    shm::sleepOn(hdr_[q]->arBell, seen, std::chrono::milliseconds(2));
  }
}

void Arena::accessPeer(int q, void* local, uint64_t remote, size_t bytes, bool write) {
  char* here = static_cast<char*>(local);
  while (bytes > 0) {
    iovec mine{here, bytes};
    iovec far{reinterpret_cast<void*>(remote), bytes};
    ssize_t moved = write ? process_vm_writev(hdr_[q]->pid, &mine, 1, &far, 1, 0)
                          : process_vm_readv(hdr_[q]->pid, &mine, 1, &far, 1, 0);
    if (moved <= 0) {
      if (moved < 0 && errno == EINTR) continue;
      failedAccess(q, write, errno);
    }
    here += moved;
    remote += uint64_t(moved);
    bytes -= size_t(moved);
  }
}

void Arena::failedAccess(int q, bool write, int err) {
  // The peer exited or gave up on this call.  Its TCP link says which, and
  // why (an Abort frame comes before the goodbye or the EOF): wait briefly
  // for that, so every rank reports the first failure, not its echo.
  Deadline until = std::min(deadline_, Clock::now() + std::chrono::seconds(2));
  Mailbox& mb = shm_.mailbox();
  for (;;) {
    if (auto e = mb.abortError(c_.id())) std::rethrow_exception(e);
    std::string gone = mb.peerGoneReason(c_.members()[q]);
    if (!gone.empty()) throw PeerError(gone);
    if (Clock::now() > until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  throw PeerError(std::string(write ? "writing" : "reading") + " rank " + std::to_string(q) +
                  "'s buffer failed: " + std::strerror(err));
}

bool halfPrecision(DType t) { return t == DType::Float16 || t == DType::BFloat16; }

// Reduces block b's sources (indexed by rank) in the ring's order, b+1, b+2,
// ..., b: the order ringAllreduce (and gloo) use, so the arena gives the same
// bits as they do even where rounding depends on order.  float16/bfloat16
// round after every step, as each hop of a ring does; the other types fold
// in one reduceN pass, which rounds identically.  dst must not alias a source.
void foldRingOrder(void* dst, const std::vector<const void*>& byRank, int b, size_t cnt,
                   DType t, ReduceOp op) {
  const int n = int(byRank.size());
  std::vector<const void*> order(n);
  for (int k = 0; k < n; ++k) order[k] = byRank[(b + 1 + k) % n];
  if (!halfPrecision(t))
    return kernels::reduceN(dst, order.data(), order.size(), cnt, t, op);
  kernels::reduce(dst, order[1], order[0], cnt, t, op);
  for (int k = 2; k < n; ++k) kernels::reduce(dst, order[k], dst, cnt, t, op);
}

// One copy-in step: `count` elements at `data`, all ranks reduce all slots.
void slotStep(Arena& a, char* data, size_t count, DType dtype, ReduceOp op) {
  a.announce(data);
  if (count) std::memcpy(a.slot_[a.me_], data, count * elementSize(dtype));
  a.publish(&shm::Header::arrive, a.step_);
  a.checkPeers();
  // Every rank reduces every block, in the same order: identical results.
  Blocks blocks(count, a.n_);
  const size_t es = elementSize(dtype);
  std::vector<const void*> srcs(a.n_);
  for (int b = 0; b < a.n_; ++b) {
    for (int q = 0; q < a.n_; ++q) srcs[q] = a.slot_[q] + blocks.offset(b) * es;
    foldRingOrder(data + blocks.offset(b) * es, srcs, b, blocks.count(b), dtype, op);
  }
  a.publish(&shm::Header::done, a.step_);
}

void singleCopy(Arena& a, Buffer data, ReduceOp op) {
  const size_t es = elementSize(data.dtype);
  // Settings read before the protocol starts: a bad one fails every rank alike.
  const size_t readPiece = readPieceBytes(), mappedPiece = mappedPieceBytes();
  const shm::SharedPlace place = shm::findShared(data.ptr, data.bytes());
  if (place.id == 0) shm::offerBuffer(data.ptr, data.bytes());  // before peers may touch it
  a.announce(data.ptr, place);
  a.publish(&shm::Header::arrive, a.step_);
  a.checkPeers();
  Blocks blocks(data.count, a.n_);
  // Peers whose buffers map here are read and written in place; the others
  // through process_vm_readv/writev and a scratch piece.
  std::vector<char*> mapped(a.n_, nullptr);
  bool allMapped = true;
  for (int q = 0; q < a.n_; ++q)
    if (q != a.me_) allMapped &= (mapped[q] = a.mappedPeer(q, data.bytes())) != nullptr;
  const size_t piece = std::max<size_t>(1, (allMapped ? mappedPiece : readPiece) / es);
  static thread_local std::vector<char> scratch;
  if (scratch.size() < piece * es * size_t(a.n_)) scratch.resize(piece * es * size_t(a.n_));
  std::vector<const void*> srcs(a.n_), order(a.n_);
  for (size_t done = 0; done < blocks.count(a.me_); done += piece) {
    const size_t first = blocks.offset(a.me_) + done;
    const size_t cnt = std::min(piece, blocks.count(a.me_) - done);
    const size_t bytes = cnt * es;
    char* out = data.at(first);
    for (int q = 0; q < a.n_; ++q) {
      char* buf = scratch.data() + size_t(q) * piece * es;
      if (mapped[q]) {
        buf = mapped[q] + first * es;
      } else if (q != a.me_) {
        a.accessPeer(q, buf, a.hdr_[q]->call.dataAddr + first * es, bytes, false);
      } else if (halfPrecision(data.dtype)) {
        std::memcpy(buf, out, bytes);  // the fold must not alias its output
      } else {
        buf = out;
      }
      srcs[q] = buf;
    }
    if (halfPrecision(data.dtype)) {
      foldRingOrder(out, srcs, a.me_, cnt, data.dtype, op);
    } else {
      // Own data first, so the output may alias it (no copy); the order is
      // still fixed, and only this rank computes this block.
      for (int k = 0; k < a.n_; ++k) order[k] = srcs[(a.me_ + k) % a.n_];
      kernels::reduceN(out, order.data(), order.size(), cnt, data.dtype, op);
    }
    if (op == ReduceOp::Avg) kernels::divide(out, cnt, data.dtype, double(a.n_));
    // Staggered, so owners do not all write into the same peer at once.
    for (int k = 1; k < a.n_; ++k) {
      int q = (a.me_ + k) % a.n_;
      if (mapped[q])
        std::memcpy(mapped[q] + first * es, out, bytes);
      else
        a.accessPeer(q, out, a.hdr_[q]->call.dataAddr + first * es, bytes, true);
    }
  }
  a.c_.markAggregated();
  a.publish(&shm::Header::done, a.step_);
  // Peers read and write this buffer until they are done: only then may the
  // caller have it.
  a.waitAll(&shm::Header::done, a.step_);
}

}  // namespace

void shmAllreduce(Comm& c, ShmTransport& shm, Buffer data, ReduceOp op) {
  if (c.size() == 1) return;
  const size_t es = elementSize(data.dtype);
  if (data.bytes() > smallBytes() && shm.crossMemoryEverywhere()) {
    Arena a(c, shm);
    return singleCopy(a, data, op);
  }
  // One slot-sized step at a time; a message that fits takes exactly one.
  const size_t perStep = std::max<size_t>(1, std::min(shm.slotBytes(), smallBytes()) / es);
  size_t done = 0;
  do {
    size_t cnt = std::min(perStep, data.count - done);
    Arena a(c, shm);
    slotStep(a, data.at(done), cnt, data.dtype, op);
    done += cnt;
  } while (done < data.count);
  c.markAggregated();
  if (op == ReduceOp::Avg) kernels::divide(data.ptr, data.count, data.dtype, double(c.size()));
}

}  // namespace ringflow::algo
