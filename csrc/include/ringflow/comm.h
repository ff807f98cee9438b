// A communicator: a group of ranks over a transport, with its own ordered
// queue of calls run by one op thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <typeindex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ringflow/transport.h"
#include "ringflow/types.h"
#include "ringflow/work.h"

namespace ringflow {

// A tuned schedule (mechanism 9, the schedule tuner in python/ringflow/tune/
// decides it): which allreduce runs from which message size up, over which
// ring order and lower-order groups, in which piece size.  Every rank must
// set the same one; the tuner's rank 0 decides and broadcasts it.
struct SizeRule {
  size_t minBytes = 0;
  std::string algorithm;  // "ring", "hierarchical", "shm" or "aggregate"
};
struct Schedule {
  std::vector<int> ringOrder;       // ring position -> rank; empty: rank order
  std::vector<int> groupOf;         // rank -> lower-order group label; empty: layout unchanged
  std::vector<SizeRule> algorithms; // ascending minBytes; the last rule at or below a size wins
  size_t pieceBytes = 0;            // 0: RINGFLOW_PIECE_BYTES
  // One reduction order per element whatever the message size, bucket or
  // ring order: results do not change when a bucket size does.
  bool deterministic = false;
};

class Comm : public std::enable_shared_from_this<Comm> {
 public:
  // `members[i]` is the transport rank of communicator rank i.
  // `parentId`: the communicator this one was split from (0: none); an
  // abort of the parent reaches this one too.
  Comm(std::shared_ptr<Transport> transport, uint64_t id, std::vector<int> members,
       double timeoutSec, uint64_t parentId = 0);
  ~Comm();

  int rank() const { return rank_; }
  int size() const { return int(members_.size()); }
  uint64_t id() const { return id_; }
  double timeout() const { return timeoutSec_; }
  const std::vector<int>& members() const { return members_; }
  Transport& transport() { return *transport_; }

  // The local half of split (collectives.h): given every rank's (color, key)
  // pair, in rank order, the communicator of the ranks passing `color`,
  // ordered by (key, rank); null for a negative color.
  std::shared_ptr<Comm> splitByColor(const std::vector<int64_t>& colorKeyPairs, int color);
  // Local, no messages: `ranks` of this communicator form a new one.  Every
  // member must pass the same ranks and tag.  Null if this rank is not in it.
  std::shared_ptr<Comm> subgroup(const std::vector<int>& ranks, uint64_t tag);

  // Hierarchical layout: `groupOf[r]` labels the lower-order
  // group of rank r (e.g. its host).  Every rank passes the same labels.
  // Builds the lower ring (my group) and the higher ring (the ranks holding
  // the same shard in every group).  Groups may differ in size: the message
  // is cut into as many shards as the smallest group has ranks, and the
  // first that many ranks of each group hold one each; the other ranks of
  // a larger group hold none and have no higher ring (higher() is null).
  void setGroups(const std::vector<int>& groupOf);
  Comm* lower() const { return lower_.get(); }
  Comm* higher() const { return higher_.get(); }
  // Facts of the layout every rank shares (0 without one).
  int hierarchyGroups() const { return hierarchyGroups_; }
  int hierarchyShards() const { return hierarchyShards_; }
  // With a ring order (positions -> ranks), each lower ring runs its ranks
  // in that order rather than in rank order.
  void setGroupsInOrder(const std::vector<int>& groupOf, const std::vector<int>& ringOrder);

  // A tuned schedule (checked here for shape; algo::setSchedule checks the
  // algorithm names).  Between calls, the same on every rank.  clearSchedule
  // brings back the group layout that was there before the first one.
  void setSchedule(const Schedule& s);
  void clearSchedule();
  const Schedule* schedule() const { return schedule_.get(); }
  // The ranks in the schedule's ring order (null: rank order).
  Comm* ring() const { return ring_.get(); }
  // The schedule's piece size (0: the default), on its sub-rings too.
  size_t pieceBytes() const { return pieceBytes_; }
  // Whether this communicator's links cross hosts: the higher-order ring of
  // a layout of several groups.  Its sends are counted apart in the stats,
  // and it is the level compressed allreduce (algo/compressed.cc) applies to.
  bool crossesHosts() const { return crossesHosts_; }
  // Low-bit compression of this communicator's cross-host level, in bits per
  // element (0: exact); -1 (the default) follows RINGFLOW_COMPRESS.  Every
  // member sets the same value, between calls (a process group's options).
  void setCompressBits(int bits) { compressBits_.store(bits); }
  int compressBits() const { return compressBits_.load(); }

  // Runs `body` as a call of this (private sub-)communicator on the calling
  // thread, inside a call of `parent` whose deadline it shares.  Waits are
  // credited to the parent's watchdog; a failure aborts this communicator
  // too, so its members stop waiting.
  void runInline(OpDesc desc, Comm& parent, const std::function<void()>& body);

  // Queues `body` to run on the op thread after every earlier call, with
  // `desc` (its seq filled in here) announced to the peers' frames.
  // With runHere, when no call is queued or running, it runs on the calling
  // thread instead and returns a completed Work: a blocking caller then
  // skips two thread hand-offs (op-thread wake-up, Work wake-up), which
  // cost more than a small message's whole arena step.  Order is kept: the
  // call takes its seq like any other, and calls submitted meanwhile wait
  // in the queue until it ends.
  WorkPtr submit(OpDesc desc, std::function<void()> body, bool runHere = false);

  // Point-to-point calls are posted at once, outside the queue, so a receive
  // never holds up a send queued after it.  Matched by (peer, tag, order).
  WorkPtr send(int peer, uint64_t tag, const Buffer& buf);
  WorkPtr recv(int peer, uint64_t tag, const Buffer& buf);
  // A receive from whichever rank sends first; its Work's source() names it.
  WorkPtr recvAny(uint64_t tag, const Buffer& buf);

  // For algorithms, on the thread running `body` (the op thread, or the
  // caller's for a call run inline), while it runs.
  const OpDesc& op() const { return op_; }
  Deadline deadline() const { return deadline_; }
  // State an algorithm keeps with this communicator across calls, one per
  // type (the aggregate algorithm's client: its sockets and slot rounds
  // outlive a call), made by that algorithm on first use.  Calls only.
  template <class T>
  std::shared_ptr<T>& attachment() {
    auto& slot = attachments_[std::type_index(typeid(T))];
    if (!slot) slot = std::make_shared<std::shared_ptr<T>>();
    return *static_cast<std::shared_ptr<T>*>(slot.get());
  }
  RequestPtr isend(int to, uint64_t slot, const void* data, size_t bytes);
  RequestPtr irecv(int from, uint64_t slot, void* data, size_t bytes);
  void wait(const RequestPtr& req);
  void waitAll(std::vector<RequestPtr>& reqs);
  // Records that the running call waited `ms` on communicator rank `peer`
  // (for algorithms that wait on something other than a request, such as
  // a flag in shared memory): the watchdog's slow-hop evidence.
  void creditWait(int peer, double ms);
  // Ends the aggregation phase of the running call (the watchdog times it
  // apart from the dispatch that follows).
  void markAggregated();

  // Fails queued calls and stops the op thread; with closeTransport, also
  // says goodbye to the peers.
  void shutdown(bool closeTransport);

 private:
  struct Task {
    OpDesc desc;
    std::function<void()> body;
    WorkPtr work;
  };
  void opLoop();
  // Runs a task's body; returns its failure (null on success) without
  // completing its Work, so the caller can mark the communicator idle first.
  std::exception_ptr runTask(Task& task);
  void complete(Task& task, std::exception_ptr failure);
  void release();  // an inline call ends: idle again, wake the op thread if needed
  void watchP2P();
  WorkPtr trackP2P(RequestPtr req, const OpDesc& desc, int peer, const char* verb);
  // Checks `peer` and numbers the call in its (peer, tag) order.
  OpDesc describeP2P(int peer, uint64_t tag, const Buffer& buf, bool isSend);

  std::shared_ptr<Transport> transport_;
  std::shared_ptr<Comm> lower_, higher_;
  int hierarchyGroups_ = 0, hierarchyShards_ = 0;
  std::shared_ptr<const Schedule> schedule_;
  std::shared_ptr<Comm> ring_;
  size_t pieceBytes_ = 0;
  int layouts_ = 0, schedules_ = 0;  // how many set so far: fresh sub-ring ids
  // The layout before the first schedule, for clearSchedule.
  struct Layout {
    std::shared_ptr<Comm> lower, higher;
    int groups = 0, shards = 0;
  };
  std::unique_ptr<Layout> untunedLayout_;
  void setPieceBytes(size_t bytes);
  bool crossesHosts_ = false;
  std::atomic<int> compressBits_{-1};
  std::unordered_map<std::type_index, std::shared_ptr<void>> attachments_;
  Comm* creditWaitsTo_ = nullptr;  // parent of a call run inline
  uint64_t id_;
  std::vector<int> members_;
  int rank_ = -1;
  double timeoutSec_;
  uint64_t splits_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  bool busy_ = false;  // a call runs (on the op thread or inline); under mu_
  uint64_t nextSeq_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;

  // State of the running call (busy_ keeps it to one thread at a time).
  OpDesc op_;
  Deadline deadline_;
  std::vector<RequestPtr> inflight_;
  Clock::time_point opStart_;
  std::vector<double> waitMs_;  // per peer, this call
  double aggregationMs_ = -1;
  int aggregationSlowPeer_ = -1;
  double aggregationSlowMs_ = 0;
  void recordTimings();

  // Point-to-point: per (peer, tag) counters, and pending calls to time out.
  struct P2P {
    RequestPtr req;
    WorkPtr work;
    Deadline deadline;
  };
  std::mutex p2pMu_;
  std::condition_variable p2pCv_;
  std::map<std::pair<int, uint64_t>, uint64_t> sendCount_;
  // Receive counters sit behind their own lock, taken last: the mailbox
  // advances them (under its lock) when an any-source receive takes a message.
  struct RecvOrder {
    std::mutex mu;
    std::map<std::pair<int, uint64_t>, uint64_t> next;
  };
  std::shared_ptr<RecvOrder> recvOrder_ = std::make_shared<RecvOrder>();
  std::vector<P2P> p2pPending_;
  std::thread p2pThread_;
};

}  // namespace ringflow
