// The same-host allreduce arena as a transport primitive: one step of a
// protocol over the shared-memory segments of every rank of a communicator
// that owns the arena (ShmTransport::arenaComm).  algo/shm_allreduce.cc owns
// the schedule (which bytes to copy and reduce, in which order); this owns
// the protocol (announce, wait for peers, reach a peer's memory, publish
// done) and every wait's failure handling.
//
// A step: announce() (waits until the peers finished with this rank's last
// step, then writes the call descriptor and buffer address into this rank's
// header), arrive() (publishes it), checkPeers() (waits for every peer's
// announcement and compares descriptors before any data is touched, so
// mismatched calls raise MismatchError on every rank), then the schedule's
// copies and reductions, finish() and, when peers may still touch this
// rank's buffer, waitPeersFinished().
//
// Every wait spins briefly, then yields, then sleeps on the peer's futex
// bell, and checks the deadline, the communicator's abort state and whether
// the peer's TCP link reported it dead.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "ringflow/op.h"
#include "ringflow/shm.h"

namespace ringflow {

class ShmArenaStep {
 public:
  // Called with (communicator rank, ms) for each wait on a peer: the
  // watchdog's slow-hop evidence.
  using WaitCredit = std::function<void(int, double)>;

  // `members`: the communicator's global ranks; `me`: this rank's index in
  // it; `op`: the running call; `timeoutSec` bounds every wait of the step.
  ShmArenaStep(ShmTransport& shm, uint64_t comm, const std::vector<int>& members, int me,
               const OpDesc& op, double timeoutSec, WaitCredit credit);

  int size() const { return n_; }
  int me() const { return me_; }
  // Rank q's copy-in slot (ShmTransport::Options::slotBytes).
  char* slot(int q) const { return slot_[q]; }

  // Announces this call with `data` (its address, for cross-memory access).
  void announce(const void* data);
  // The same for a buffer peers read and write in place: its SharedBuffer
  // placement (if any) is announced so peers can map it, and a plain buffer
  // is offered for huge pages (huge_pages.h) before peers may touch it.
  void announceBuffer(void* data, size_t bytes);
  void arrive();
  void checkPeers();
  // Rank q's announced buffer mapped here (q announced a SharedBuffer that
  // maps), else nullptr: reach it with readPeer / writePeer.
  char* mappedPeer(int q, size_t bytes);
  // Copies `bytes` at `offset` of rank q's announced buffer into `local`
  // (process_vm_readv), or from `local` into it (process_vm_writev).
  void readPeer(int q, void* local, size_t offset, size_t bytes);
  void writePeer(int q, const void* local, size_t offset, size_t bytes);
  // This rank is done with its peers' memory for this step.
  void finish();
  // Every peer is done with this rank's (so the caller may have its buffer).
  void waitPeersFinished();

 private:
  enum class Mark { Arrive, Done };  // the two counters of a rank's header
  void waitAll(Mark which, uint64_t step);
  void waitFor(int q, Mark which, uint64_t step);
  void publish(Mark which, uint64_t step);
  void accessPeer(int q, void* local, size_t offset, size_t bytes, bool write);
  [[noreturn]] void mismatch(int q, const OpDesc& theirs);
  [[noreturn]] void failedAccess(int q, bool write, int err);

  ShmTransport& shm_;
  const uint64_t comm_;
  const std::vector<int>& members_;
  const int n_, me_;
  const OpDesc& op_;
  const double timeoutSec_;
  WaitCredit credit_;
  // Read before step_ is taken: a bad setting fails the call on every rank
  // before it touches the arena, not midway on whichever rank waits first.
  const std::chrono::microseconds spin_, yield_;
  const uint64_t step_;
  const Deadline deadline_;
  std::vector<shm::Header*> hdr_;
  std::vector<char*> slot_;
};

}  // namespace ringflow
