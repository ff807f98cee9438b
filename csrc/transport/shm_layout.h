// The layout of one rank's shared-memory segment, and the futex "bells" that
// let a waiter sleep instead of spinning.  Every field here is shared between
// processes: plain data, atomics that are lock-free (so address-free), no
// pointers (each process maps a segment at its own address).
//
//   Header | QueueCtl[localSize] | queue bytes [localSize][queueBytes] | slot
//
// Queue s of rank r's segment carries frames from local rank s to rank r: one
// receive queue per sender, single producer and single consumer, so neither
// side ever takes a lock.  The slot is this rank's part of the allreduce
// arena (see algo/shm_allreduce.cc).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "ringflow/transport.h"

namespace ringflow::shm {

constexpr uint64_t kMagic = 0x324d48535746'4c52ull;  // "RLFWSHM2"
constexpr size_t kLine = 64;

static_assert(std::atomic<uint32_t>::is_always_lock_free, "futex words must be lock-free");
static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared counters must be lock-free");

// A futex word bumped on every event, and how many threads sleep on it, so
// the side that rings makes a system call only when someone is asleep.
struct alignas(kLine) Bell {
  std::atomic<uint32_t> word{0};
  std::atomic<uint32_t> sleepers{0};
};

// Bumps the word and wakes every sleeper.
void ring(Bell& bell);
// Sleeps while the word still reads `seen`, at most `timeout`.  Returns at
// once if it changed already; spurious returns are allowed.
void sleepOn(Bell& bell, uint32_t seen, std::chrono::microseconds timeout);

// A monotonically increasing counter on a cache line of its own.
struct alignas(kLine) Counter {
  std::atomic<uint64_t> value{0};
};

// The call a rank announces before an allreduce step, compared by every
// other rank before it touches the data (mismatch detection).
struct Announce {
  uint64_t seq = 0;
  uint64_t count = 0;
  uint32_t kind = 0;
  uint32_t dtype = 0;
  uint32_t op = 0;
  uint32_t root = 0;
  uint64_t dataAddr = 0;  // the caller's buffer in the owner's address space
  // Where that buffer lies in one of the owner's SharedBuffers (id 0: it
  // does not), so peers can map it instead of copying through the kernel.
  uint64_t sharedId = 0;
  uint64_t sharedOffset = 0;
  int32_t sharedFd = -1;

  void set(const OpDesc& d) {
    seq = d.seq;
    count = d.count;
    kind = uint32_t(d.kind);
    dtype = uint32_t(d.dtype);
    op = uint32_t(d.op);
    root = d.root;
  }
  OpDesc desc() const {
    OpDesc d;
    d.seq = seq;
    d.count = count;
    d.kind = OpKind(kind);
    d.dtype = DType(dtype);
    d.op = ReduceOp(op);
    d.root = root;
    return d;
  }
};

struct alignas(kLine) Header {
  uint64_t magic = 0;
  uint32_t localSize = 0;
  uint32_t localIndex = 0;
  int32_t pid = 0;
  std::atomic<uint32_t> cmaOk{0};  // this rank can read every peer's memory
  uint64_t selfAddr = 0;           // where the owner mapped this header
  uint64_t queueBytes = 0;
  uint64_t slotBytes = 0;

  Bell rxBell;  // rung when a queue into this rank fills, or one out of it drains
  Bell arBell;  // rung when this rank advances an allreduce counter
  Counter arrive;   // last allreduce step announced (desc and slot are written)
  Counter done;     // last step this rank finished with peers' memory for
  alignas(kLine) Announce call;
  // Every call the arena's communicator begins, whatever its algorithm, so a
  // rank waiting in the arena can see a peer that runs a different call (a
  // broadcast that waits on us) instead of timing out.  A seqlock: odd while
  // being written.
  Counter currentVersion;
  Announce current;
};

struct alignas(kLine) QueueCtl {
  std::atomic<uint64_t> head{0};  // bytes ever written by the producer
  char pad0[kLine - 8];
  std::atomic<uint64_t> tail{0};  // bytes ever consumed
  std::atomic<uint32_t> wantSpace{0};  // the producer waits for the consumer
  char pad1[kLine - 12];
};
static_assert(sizeof(QueueCtl) == 2 * kLine, "producer and consumer lines apart");

inline size_t roundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Layout {
  size_t localSize, queueBytes, slotBytes;
  size_t ctlOffset() const { return roundUp(sizeof(Header), 4096); }
  size_t queueOffset(size_t s) const {
    return roundUp(ctlOffset() + localSize * sizeof(QueueCtl), 4096) + s * queueBytes;
  }
  size_t slotOffset() const { return queueOffset(localSize); }
  size_t total() const { return roundUp(slotOffset() + slotBytes, 4096); }
};

}  // namespace ringflow::shm
