// MALT's byte-moving half (mechanism 6): a receive queue per sender, one-sided
// pushes, lockless merges.  Policy (who sends to whom, staleness weights,
// when to merge) is python/ringflow/malt/.
//
// Every rank owns an Inbox: one memfd segment holding one slot ring per
// sender (ring r is rank r's).  Each ring has one producer (a same-host
// sender, which maps the segment through an Outbox, or the StreamListener
// thread writing a remote sender's updates) and one consumer (the owner's
// trainer), so
// the rings need no lock: slots are published with release stores and
// claimed with a Dekker handshake on two seq_cst atomics (inbox.cc).  A push
// never waits: it writes a free slot, or, when every slot holds an update not
// merged yet, applies the ring's FullPolicy.  A merge never waits: it takes
// the slots that are complete now and skips any a producer is writing.
//
// Departure: a thread of the owner bumps a heartbeat in its segment every
// kBeatEvery; close() sets a closed flag.  A sender treats an owner who
// closed, or whose heartbeat has not moved for `departAfter`, as departed.
// The owner never truncates its segment, so a push racing a departure
// writes into memory that stays valid while the sender maps it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace ringflow::malt {

// What a push does when every slot of its ring holds an unmerged update.
enum class FullPolicy : uint32_t {
  DropOldest = 0,  // overwrite the oldest unmerged update (model snapshots: newest wins)
  Coalesce = 1,    // add into the newest unmerged update (gradients, deltas: nothing lost)
};

constexpr std::chrono::milliseconds kBeatEvery{50};

struct SegmentHeader;
struct Ring;

// One unmerged update as a merge may take it.
struct Arrival {
  int sender = -1;      // index of the ring (the sender's place on the host)
  int slot = -1;
  uint64_t seq = 0;     // the sender's push number (per ring, from 1)
  uint64_t step = 0;    // the sender's training step when it pushed
  uint32_t count = 0;   // updates summed into the slot (Coalesce), else 1
};

// One arrival to merge with `weight` (0: discard it unread).
struct Take {
  int sender = -1;
  int slot = -1;
  uint64_t seq = 0;
  double weight = 0;
};

struct MergeResult {
  uint32_t merged = 0;     // slots averaged in
  uint32_t discarded = 0;  // weight-0 takes, marked merged unread
  uint32_t skipped = 0;    // overwritten or being written since they were listed
  double weight = 0;       // sum of weight*count over merged slots
};

struct RingCounts {
  uint64_t pushes = 0, dropped = 0, coalesced = 0, merged = 0;
};

class Inbox {
 public:
  // `senders` rings of `slots` (>= 2) slots of `count` floats each.
  Inbox(int senders, size_t count, int slots, FullPolicy policy);
  ~Inbox();
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;

  // Where a peer finds the segment: /proc/<pid>/fd/<fd>, `bytes` long.
  int pid() const;
  int fd() const { return fd_; }
  size_t bytes() const { return bytes_; }
  size_t count() const;
  int senders() const;
  int slots() const;

  std::vector<Arrival> arrivals() const;
  // dst = (selfWeight*dst + sum w*x) / (selfWeight + sum w*count) over the
  // takes still intact (average), or dst += sum w*x (not average: updates
  // that are deltas); at most slots-1 of one ring are held at once, so its
  // producer always finds a slot.  Never waits.
  MergeResult merge(float* dst, const std::vector<Take>& takes, double selfWeight,
                    bool average = true);
  // Holds one arrival's slot (the merge's handshake), lets `use` read it,
  // and releases it as merged.  False, without calling `use`, when the slot
  // was rewritten since it was listed.  Never waits on the producer.
  bool consume(const Arrival& a, const std::function<void(const float*)>& use);
  RingCounts counts(int sender) const;
  // Marks the segment closed (senders drop this rank at once) and stops the
  // heartbeat; idempotent.
  void close();

 private:
  Ring& ring(int sender) const;
  bool hold(Ring& r, int slot, uint64_t seq);
  void beat();

  char* base_ = nullptr;
  size_t bytes_ = 0;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread beater_;
};

class Outbox {
 public:
  // Maps the Inbox that process `pid` announced and writes into ring `sender`.
  // Throws PeerError if it cannot be mapped, InvalidArgument if it is not a
  // MALT segment of `count` floats or has no ring `sender`.
  Outbox(int pid, int fd, size_t bytes, int sender, size_t count);
  ~Outbox();
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;

  // Copies count floats into the ring; never waits.  Returns the push number.
  // `updates`: how many updates src already sums (a coalesced one from afar).
  uint64_t push(const float* src, uint64_t step, uint32_t updates = 1);
  // False once the owner closed (for good) or while its heartbeat has stood
  // still longer than `departAfter`.  Never waits.
  bool alive(std::chrono::milliseconds departAfter);
  RingCounts counts() const;
  // Claims a slot and writes half of it, then returns without publishing:
  // a sender frozen mid-write, for the test that merges never wait on one.
  void pushHalfForTest(const float* src);

 private:
  int claim(uint64_t* oldSeq, bool* coalesce);

  char* base_ = nullptr;
  size_t bytes_ = 0;
  SegmentHeader* header_ = nullptr;
  Ring* ring_ = nullptr;
  size_t count_ = 0;
  bool closed_ = false;
  uint64_t lastBeat_ = 0;
  std::chrono::steady_clock::time_point lastBeatSeen_{};
};

// Cross-host pushes (stream.cc): one TCP stream per (sender, remote peer).
//
// The sender's side is a StreamOutbox: push() copies into a private
// bounded queue -- a one-ring Inbox of this process, so the same
// FullPolicy applies when it is full -- and returns; a background thread
// sends what is queued (only the newest snapshot if asked, else everything
// in order) and never blocks the trainer.  The receiver's side
// is a StreamListener: one thread accepts the streams of remote senders and
// deposits each update into that sender's ring of the receiver's Inbox as
// its single producer, so the merge reads remote and local updates alike,
// lockless.  The listener sends a beat byte down every stream each
// kBeatEvery and a goodbye byte on close(); a sender drops its peer when
// the stream ends (a killed process: at once) or its beats stop (an
// unreachable host: after departAfter).
class StreamOutbox {
 public:
  // Connects to a StreamListener at addr ("host:port") as ring `sender`,
  // retrying until timeoutSec.  Throws TimeoutError if it cannot.
  // newestOnly (DropOldest only): send just the newest queued update and
  // discard the older ones unsent, as a merge of snapshots would.
  StreamOutbox(const std::string& addr, int sender, size_t count, int slots, FullPolicy policy,
               bool newestOnly, uint64_t token, double timeoutSec);
  ~StreamOutbox();
  StreamOutbox(const StreamOutbox&) = delete;
  StreamOutbox& operator=(const StreamOutbox&) = delete;

  // Queues count floats for sending; never waits.  Returns the push number.
  uint64_t push(const float* src, uint64_t step);
  bool alive(std::chrono::milliseconds departAfter);
  // pushes/dropped/coalesced of the queue; merged: updates sent whole.
  RingCounts counts() const;
  // Sends what is queued for at most flushFor, then closes the stream.
  void close(std::chrono::milliseconds flushFor);

 private:
  bool stopping() const;
  void sendLoop();
  bool sendOne();
  bool pump(const char* data, size_t n);  // writes n bytes, reading beats meanwhile
  void readBeats();

  size_t count_;
  bool newestOnly_;
  std::unique_ptr<Inbox> queue_;
  std::unique_ptr<Outbox> into_;
  int fd_ = -1, wake_ = -1;
  std::atomic<bool> dead_{false}, closedByPeer_{false}, flushing_{false};
  std::atomic<int64_t> lastBeatNs_{0}, flushUntilNs_{0};
  std::atomic<uint64_t> sent_{0};
  std::thread thread_;
};

class StreamListener {
 public:
  // Listens on bindHost for the streams of the ranks in `senders` into
  // `inbox` (which must outlive it).  Streams with another token, count or
  // sender are refused.
  StreamListener(Inbox& inbox, const std::string& bindHost, uint64_t token,
                 const std::vector<int>& senders);
  ~StreamListener();
  StreamListener(const StreamListener&) = delete;
  StreamListener& operator=(const StreamListener&) = delete;
  int port() const { return port_; }
  // Says goodbye on every stream and stops; idempotent.
  void close();

 private:
  struct Conn;
  void loop();

  Inbox& inbox_;
  uint64_t token_;
  std::vector<int> senders_;
  int listenFd_ = -1, wake_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// out = a0*out + sum_j a[j]*x[j][...] over n floats (the merge's kernel).
void weightedSum(float* out, float a0, const float* const* x, const float* a, size_t m, size_t n);

}  // namespace ringflow::malt
