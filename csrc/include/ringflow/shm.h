// Links to the ranks on this host through POSIX shared memory.  Each rank
// owns one segment holding a receive queue per local sender (lock-free
// single-producer single-consumer rings) and its part of the allreduce arena.
// Only data frames travel here; the TCP mesh keeps carrying control frames
// (Abort, Bye) and the links to other hosts, and its Mailbox, shared with
// this transport, matches every frame whichever way it came.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ringflow/transport.h"

namespace ringflow {

class Mailbox;
struct SendItem;
namespace shm {
struct Header;
struct QueueCtl;
}  // namespace shm

class ShmTransport : public Link {
 public:
  struct Options {
    size_t queueBytes = 1 << 20;  // per (sender, receiver) queue
    size_t slotBytes = 1 << 20;   // this rank's allreduce slot
    bool crossMemory = true;      // allow process_vm_readv/writev (single-copy) if they work
  };
  // RINGFLOW_SHM_SPIN_US (idleSpin_ below), read afresh: each transport
  // reads it on the thread that builds it, checkSettings() at start-up.
  static std::chrono::microseconds idleSpinSetting();
  // Creates and maps this rank's segment, named from `token` and the rank.
  // `localRanks` are the global ranks on this host, this one included.
  ShmTransport(int rank, int size, std::vector<int> localRanks, std::shared_ptr<Mailbox> mailbox,
               uint64_t token, Options options);
  ~ShmTransport() override;

  const std::string& segmentName() const { return name_; }
  // Maps the peers' segments (`names` in the order of localRanks), checks
  // whether their memory can be read directly, starts the reader thread.
  void attach(const std::vector<std::string>& names, double timeoutSec);
  // Removes this rank's name from /dev/shm; call once every local rank has
  // attached.  The mappings stay, so nothing is left behind at exit or kill.
  void unlink();

  int rank() const { return rank_; }
  const char* name() const override { return "shm"; }
  bool reaches(int peer) const override {
    return peer >= 0 && peer < size_ && peer != rank_ && localOf_[peer] >= 0;
  }
  RequestPtr send(int peer, const MsgKey& key, const OpDesc& desc, const void* data,
                  size_t bytes) override;
  void cancelSend(const RequestPtr& req) override;
  // The arena goes to the first communicator that spans every rank (offerArena).
  void commRegistered(uint64_t comm, const std::vector<int>& members) override {
    offerArena(comm, members);
  }
  void opBegun(uint64_t comm, const OpDesc& desc) override {
    if (comm == arenaComm()) publishCurrent(desc);
  }
  // Waits (at most `timeoutSec`) until the peers have read all we sent, so a
  // goodbye on the TCP link cannot overtake data still in a queue.
  void drain(double timeoutSec) override;
  void close() override;

  // The allreduce arena, used by one communicator: the first one registered
  // that spans every rank of the transport, when they are all on this host.
  void offerArena(uint64_t comm, const std::vector<int>& members);
  uint64_t arenaComm() const { return arenaComm_.load(std::memory_order_acquire); }
  // Publishes the call the arena's communicator begins now (see Header::current).
  void publishCurrent(const OpDesc& desc);
  // The call local rank `local` last began on the arena's communicator;
  // false if it is being written right now.
  bool readCurrent(int local, OpDesc& out);
  int localIndex(int globalRank) const { return localOf_[globalRank]; }
  int globalRank(int local) const { return localRanks_[local]; }
  int localSize() const { return int(localRanks_.size()); }
  size_t slotBytes() const { return options_.slotBytes; }
  // Every local rank can read and write every other's memory
  // (process_vm_readv/writev).
  bool crossMemoryEverywhere();
  Mailbox& mailbox() { return *mailbox_; }

 private:
  // The arena protocol reads and writes the segments' headers and slots.
  friend class ShmArenaStep;

  struct PeerQueues;

  bool writeSome(PeerQueues& l, SendItem& item);
  bool flushOut(PeerQueues& l);
  bool drainIn(PeerQueues& l);
  void finishFrame(PeerQueues& l);
  void failDeadPeers();
  void progressLoop();

  int rank_, size_;
  std::vector<int> localRanks_, localOf_;
  std::shared_ptr<Mailbox> mailbox_;
  Options options_;
  // How long the reader thread keeps polling after its last piece of work
  // before it sleeps on its bell; RINGFLOW_SHM_SPIN_US overrides.  Read
  // here, on the caller's thread: a bad value must not throw on the reader's.
  std::chrono::microseconds idleSpin_;
  std::string name_;
  bool unlinked_ = false;
  size_t mapBytes_ = 0;
  std::vector<char*> maps_;  // per local rank
  std::vector<shm::Header*> headers_;
  std::vector<char*> slots_;
  std::vector<std::unique_ptr<PeerQueues>> peers_;  // per local rank; null for this one
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> closed_{false};
  std::atomic<uint64_t> arenaComm_{0};  // read by every communicator's op thread
  uint64_t arenaStep_ = 0;
  int cmaEverywhere_ = -1;
};

}  // namespace ringflow
