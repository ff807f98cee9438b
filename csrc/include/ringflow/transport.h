// Transports move framed, tagged messages between ranks; algorithms see only
// asynchronous send/recv requests.  Every message carries the descriptor of
// the call that sent it (op.h), so a receiver whose own call differs raises a
// MismatchError naming both calls instead of hanging or producing a wrong
// result.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ringflow/op.h"
#include "ringflow/types.h"

namespace ringflow {

class ShmTransport;

// Collective messages are matched by (comm, seq, slot); point-to-point ones
// by (comm, per-peer-and-tag counter, tag) on their own channel.
enum class Channel : uint8_t { Collective = 0, P2P = 1 };

struct MsgKey {
  uint64_t comm = 0;
  uint64_t seq = 0;
  uint64_t slot = 0;
  Channel channel = Channel::Collective;
  bool operator==(const MsgKey& o) const {
    return comm == o.comm && seq == o.seq && slot == o.slot && channel == o.channel;
  }
};
struct MsgKeyHash {
  size_t operator()(const MsgKey& k) const {
    uint64_t h = k.comm * 0x9e3779b97f4a7c15ull ^ (k.seq + 0x632be59bd9b4e019ull);
    h = (h ^ (h >> 29)) * 0xbf58476d1ce4e5b9ull ^ k.slot ^ (uint64_t(k.channel) << 62);
    return size_t(h ^ (h >> 32));
  }
};

constexpr int kAnySource = -1;

// Decides, atomically with the caller's per-peer message counter, whether the
// point-to-point message number `seq` from `peer` is the next one an
// any-source receive may take; takes it (advances the counter) if so.
using ClaimFn = std::function<bool(int peer, uint64_t seq)>;

// One asynchronous send or receive.
class Request {
 public:
  Request(int peer, bool isSend) : peer_(peer), isSend_(isSend), source_(peer) {}
  // kAnySource for a receive from whichever peer sends first.
  int peer() const { return peer_; }
  bool isSend() const { return isSend_; }
  // The peer whose message a receive took (kAnySource until it took one).
  int source() const { return source_.load(std::memory_order_acquire); }
  void setSource(int peer) { source_.store(peer, std::memory_order_release); }

  // Returns true once done, false at `deadline` (the caller words the
  // timeout, so nothing is formatted unless one happens); rethrows the failure.
  bool waitUntil(Deadline deadline);
  bool done();

  void complete();
  void fail(std::exception_ptr error);
  // Runs `cb` with the failure (or null) once done; at once if already done.
  void onDone(std::function<void(std::exception_ptr)> cb);

 private:
  int peer_;
  bool isSend_;
  std::atomic<int> source_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> doneFlag_{false};  // done_, readable without the lock
  std::exception_ptr error_;
  std::function<void(std::exception_ptr)> callback_;
};
using RequestPtr = std::shared_ptr<Request>;

// One way of carrying data frames to some of the peers: tcp, shm, later
// cuda_ipc.  A link only moves bytes; what it receives it delivers into the
// control transport's Mailbox, so message matching, mismatch detection and
// abort live above the links, whichever link a frame took.  RoutedTransport
// asks each link in turn whether it reaches a peer (as NCCL picks
// transports), so a new transport is one Link plus one line there.
class Link {
 public:
  virtual ~Link() = default;
  virtual const char* name() const = 0;
  // Whether data frames to `peer` (a global rank, not this one) can go
  // here; asked once per peer when the route is built.
  virtual bool reaches(int peer) const = 0;
  virtual RequestPtr send(int peer, const MsgKey& key, const OpDesc& desc, const void* data,
                          size_t bytes) = 0;
  // Detaches an unfinished send from the caller's buffer (Transport::cancel).
  virtual void cancelSend(const RequestPtr& req) = 0;
  // A communicator was registered / begins a call (the shm arena's hooks).
  virtual void commRegistered(uint64_t comm, const std::vector<int>& members) {}
  virtual void opBegun(uint64_t comm, const OpDesc& desc) {}
  // Waits, at most `timeoutSec`, until the peers took everything sent here,
  // so that a goodbye on another link cannot overtake it.
  virtual void drain(double timeoutSec) {}
  virtual void close() = 0;
};

// All links of one process to the ranks of one group (global ranks 0..size-1),
// whatever carries them.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* name() const = 0;

  virtual RequestPtr send(int peer, const MsgKey& key, const OpDesc& desc, const void* data,
                          size_t bytes) = 0;
  virtual RequestPtr recv(int peer, const MsgKey& key, const OpDesc& desc, void* data,
                          size_t bytes) = 0;
  // A point-to-point receive on (key.comm, key.slot) from whichever of
  // `peers` sends first; `claim` keeps per-peer ordering.
  virtual RequestPtr recvAny(const std::vector<int>& peers, const MsgKey& key, ClaimFn claim,
                             const OpDesc& desc, void* data, size_t bytes) = 0;

  // Detaches an unfinished request from the caller's buffer: after this
  // returns, nothing reads or writes that buffer on the request's behalf.
  virtual void cancel(const RequestPtr& req) = 0;

  // Communicators on this transport: members are global ranks.  Aborting a
  // communicator aborts those registered with it as `parent` (its sub-rings).
  virtual void registerComm(uint64_t comm, const std::vector<int>& members,
                            uint64_t parent = 0) = 0;
  // Declares that `comm` now runs `desc`; throws if a peer already sent
  // frames for this sequence number with a different descriptor.
  virtual void beginOp(uint64_t comm, const OpDesc& desc) = 0;
  virtual void endOp(uint64_t comm) = 0;
  // Marks `comm` failed here and tells its other members why, so their waits
  // end too.  Later calls on `comm` fail at once with `why`.
  virtual void abort(uint64_t comm, const std::string& why) = 0;
  // Why `comm` was aborted, or "" if it was not.
  virtual std::string abortReason(uint64_t comm) = 0;

  // Says goodbye to every peer and stops the progress thread.
  virtual void close() = 0;

  // The shared-memory transport among this transport's links, whose arena
  // a same-host allreduce may use; null when there is none.
  virtual ShmTransport* sharedMemory() { return nullptr; }
};

}  // namespace ringflow
