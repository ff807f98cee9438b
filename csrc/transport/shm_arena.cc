// The arena protocol (shm_arena.h) over the segments' headers and slots
// (shm_layout.h): the `arrive` and `done` counters, the announced call, and
// cross-memory access to the peers' buffers.
#include "ringflow/shm_arena.h"

#include <sys/uio.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <thread>

#include "mailbox.h"
#include "ringflow/env.h"
#include "ringflow/huge_pages.h"
#include "ringflow/settings.h"
#include "ringflow/shared_buffer.h"
#include "ringflow/spin.h"
#include "shm_layout.h"

namespace ringflow {
namespace {

std::chrono::microseconds envWait(const char* name, std::chrono::microseconds fallback) {
  auto us = envMicros(name, fallback);
  return us.count() > 0 ? us : fallback;  // 0 means the default
}

// How long a wait spins, then polls between yields, before it sleeps on the
// peer's bell (spin.h: spinThenYield).  A small allreduce's whole step is a
// few microseconds, so a peer that is running arrives well within these;
// one that is not (skewed ranks, a busy host) costs at most this much CPU
// per wait.
std::chrono::microseconds spinBudget() {
  static const auto us = envWait("RINGFLOW_SHM_ARENA_SPIN_US", std::chrono::microseconds(5));
  return us;
}
std::chrono::microseconds yieldBudget() {
  static const auto us = envWait("RINGFLOW_SHM_ARENA_YIELD_US", std::chrono::microseconds(2000));
  return us;
}

const SettingsRegistration kSettings(
    {{"RINGFLOW_SHM_ARENA_SPIN_US",
      "shm allreduce waits: microseconds of pure spinning (default 5; 0 = default)"},
     {"RINGFLOW_SHM_ARENA_YIELD_US",
      "shm allreduce waits: then microseconds of polling between sched_yield calls before "
      "sleeping on the peer's bell (default 2000; 0 = default)"}},
    [] {
      spinBudget();
      yieldBudget();
    });

std::atomic<uint64_t>& counter(shm::Header& h, bool done) {
  return done ? h.done.value : h.arrive.value;
}

}  // namespace

ShmArenaStep::ShmArenaStep(ShmTransport& shm, uint64_t comm, const std::vector<int>& members,
                           int me, const OpDesc& op, double timeoutSec, WaitCredit credit)
    : shm_(shm), comm_(comm), members_(members), n_(int(members.size())), me_(me), op_(op),
      timeoutSec_(timeoutSec), credit_(std::move(credit)), spin_(spinBudget()),
      yield_(yieldBudget()), step_(++shm.arenaStep_),
      deadline_(Clock::now() + std::chrono::microseconds(int64_t(timeoutSec * 1e6))) {
  for (int r = 0; r < n_; ++r) {
    int local = shm.localOf_[members[r]];
    hdr_.push_back(shm.headers_[local]);
    slot_.push_back(shm.slots_[local]);
  }
}

void ShmArenaStep::publish(Mark which, uint64_t step) {
  counter(*hdr_[me_], which == Mark::Done).store(step, std::memory_order_release);
  shm::ring(hdr_[me_]->arBell);
}

void ShmArenaStep::arrive() { publish(Mark::Arrive, step_); }
void ShmArenaStep::finish() { publish(Mark::Done, step_); }
void ShmArenaStep::waitPeersFinished() { waitAll(Mark::Done, step_); }

void ShmArenaStep::waitAll(Mark which, uint64_t step) {
  for (int q = 0; q < n_; ++q)
    if (q != me_) waitFor(q, which, step);
}

void ShmArenaStep::announce(const void* data) {
  waitAll(Mark::Done, step_ - 1);  // nobody still reads our last one
  shm::Announce& a = hdr_[me_]->call;
  a.set(op_);
  a.dataAddr = reinterpret_cast<uint64_t>(data);
  a.sharedId = 0;
  a.sharedFd = -1;
  a.sharedOffset = 0;
}

void ShmArenaStep::announceBuffer(void* data, size_t bytes) {
  const shm::SharedPlace place = shm::findShared(data, bytes);
  if (place.id == 0) shm::offerBuffer(data, bytes);  // before peers may touch it
  announce(data);
  shm::Announce& a = hdr_[me_]->call;
  a.sharedId = place.id;
  a.sharedFd = place.fd;
  a.sharedOffset = place.offset;
}

char* ShmArenaStep::mappedPeer(int q, size_t bytes) {
  const shm::Announce& a = hdr_[q]->call;
  if (a.sharedId == 0) return nullptr;
  return shm::peerShared(hdr_[q]->pid, {a.sharedId, a.sharedFd, a.sharedOffset}, bytes);
}

void ShmArenaStep::checkPeers() {
  for (int q = 0; q < n_; ++q) {
    if (q == me_) continue;
    waitFor(q, Mark::Arrive, step_);
    OpDesc theirs = hdr_[q]->call.desc();
    if (theirs != op_) mismatch(q, theirs);
  }
}

void ShmArenaStep::mismatch(int q, const OpDesc& theirs) {
  std::string why = "mismatched calls: rank " + std::to_string(me_) + " called " + op_.str() +
                    " but rank " + std::to_string(q) + " called " + theirs.str();
  shm_.mailbox().abort(comm_, why, true);
  throw MismatchError(why);
}

void ShmArenaStep::waitFor(int q, Mark which, uint64_t step) {
  std::atomic<uint64_t>& v = counter(*hdr_[q], which == Mark::Done);
  if (v.load(std::memory_order_acquire) >= step) return;
  // Time spent here is the watchdog's evidence of a slow hop.
  struct Credit {
    const WaitCredit& credit;
    int q;
    Clock::time_point t0 = Clock::now();
    ~Credit() { credit(q, std::chrono::duration<double, std::milli>(Clock::now() - t0).count()); }
  } credit{credit_, q};
  // Spin, then yield, before sleeping: the peer usually arrives within
  // microseconds, far less than a futex sleep-and-wake costs.
  if (spinThenYield([&] { return v.load(std::memory_order_acquire) >= step; }, spin_, yield_,
                    deadline_))
    return;
  Mailbox& mb = shm_.mailbox();
  for (;;) {
    uint32_t seen = hdr_[q]->arBell.word.load();
    if (v.load(std::memory_order_acquire) >= step) return;
    if (auto e = mb.abortError(comm_)) std::rethrow_exception(e);
    OpDesc theirs;
    if (shm_.readCurrent(shm_.localIndex(members_[q]), theirs) && theirs.seq == op_.seq &&
        theirs != op_)
      mismatch(q, theirs);  // e.g. a broadcast waiting for us: no frame will tell
    std::string gone = mb.peerGoneReason(members_[q]);
    if (!gone.empty()) throw PeerError(gone);
    if (Clock::now() > deadline_) {
      char secs[32];
      std::snprintf(secs, sizeof(secs), "%.1fs", timeoutSec_);
      throw TimeoutError(op_.str() + " on rank " + std::to_string(me_) + " timed out after " +
                         secs + " waiting for rank " + std::to_string(q));
    }
    shm::sleepOn(hdr_[q]->arBell, seen, std::chrono::milliseconds(2));
  }
}

void ShmArenaStep::readPeer(int q, void* local, size_t offset, size_t bytes) {
  accessPeer(q, local, offset, bytes, false);
}

void ShmArenaStep::writePeer(int q, const void* local, size_t offset, size_t bytes) {
  accessPeer(q, const_cast<void*>(local), offset, bytes, true);
}

void ShmArenaStep::accessPeer(int q, void* local, size_t offset, size_t bytes, bool write) {
  char* here = static_cast<char*>(local);
  uint64_t remote = hdr_[q]->call.dataAddr + offset;
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

void ShmArenaStep::failedAccess(int q, bool write, int err) {
  // The peer exited or gave up on this call.  Its TCP link says which, and
  // why (an Abort frame comes before the goodbye or the EOF): wait briefly
  // for that, so every rank reports the first failure, not its echo.
  Deadline until = std::min(deadline_, Clock::now() + std::chrono::seconds(2));
  Mailbox& mb = shm_.mailbox();
  for (;;) {
    if (auto e = mb.abortError(comm_)) std::rethrow_exception(e);
    std::string gone = mb.peerGoneReason(members_[q]);
    if (!gone.empty()) throw PeerError(gone);
    if (Clock::now() > until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  throw PeerError(std::string(write ? "writing" : "reading") + " rank " + std::to_string(q) +
                  "'s buffer failed: " + std::strerror(err));
}

}  // namespace ringflow
