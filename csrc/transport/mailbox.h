// Matching of arriving messages to posted receives, shared by every
// transport: receives posted before their message arrives get it written
// straight into the caller's buffer; early messages wait in an unexpected
// queue.  The mailbox also holds each communicator's current call, so that a
// frame from a peer in a different call is caught the moment it arrives, and
// the abort state that turns one rank's failure into an error on every rank.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "frame.h"
#include "ringflow/transport.h"

namespace ringflow {

class Mailbox {
 public:
  // `notify(peer, comm, why)` sends an Abort frame; it is called without the
  // mailbox lock held.
  using AbortNotifier = std::function<void(int peer, uint64_t comm, const std::string& why)>;
  Mailbox(int rank, int size, AbortNotifier notify);

  RequestPtr postRecv(int peer, const MsgKey& key, const OpDesc& desc, void* buf, size_t bytes);
  // A point-to-point receive from whichever of `peers` sends first on
  // (key.comm, key.slot): an early message is taken at once, else the first
  // matching one to arrive.  Receives posted for one peer go first.
  RequestPtr postRecvAny(const std::vector<int>& peers, const MsgKey& key, ClaimFn claim,
                         const OpDesc& desc, void* buf, size_t bytes);
  // Stops a receive so nothing writes into its buffer after this returns.
  void cancelRecv(const RequestPtr& req);

  // Where the payload of an arriving frame goes, decided from its header.
  struct Sink {
    FrameHeader header;
    char* dst = nullptr;  // posted buffer or unexpected buffer
    bool discard = false;  // nobody wants this payload: read and drop it
    RequestPtr posted;
    std::vector<char> unexpected;
    std::atomic<bool> cancelled{false};
  };
  std::unique_ptr<Sink> onHeader(int peer, const FrameHeader& header);
  void onPayload(int peer, std::unique_ptr<Sink> sink);
  // A transport holds this while it writes payload into a sink's buffer, so
  // cancelRecv can wait out a write in progress.
  std::mutex& payloadMutex(int peer) { return peers_[peer]->payloadMu; }

  void onAbortFrame(int peer, uint64_t comm, const std::string& why);
  // The link to `peer` is gone: receives from it fail with `why`.
  void peerGone(int peer, const std::string& why);
  std::string peerGoneReason(int peer);

  void registerComm(uint64_t comm, const std::vector<int>& members, uint64_t parent);
  void beginOp(uint64_t comm, const OpDesc& desc);
  void endOp(uint64_t comm);
  void abort(uint64_t comm, const std::string& why, bool mismatch = false);
  std::string abortReason(uint64_t comm);
  // The error `comm`'s calls fail with (same class as on the rank that
  // failed first), or null if it was not aborted.
  std::exception_ptr abortError(uint64_t comm);

 private:
  struct Posted {
    RequestPtr req;
    void* buf;
    size_t bytes;
    OpDesc desc;
  };
  struct AnyPosted {
    std::vector<int> peers;
    MsgKey key;  // comm and slot (tag) to match; seq comes from claim
    ClaimFn claim;
    Posted posted;
  };
  struct Unexpected {
    FrameHeader header;
    std::vector<char> data;
  };
  struct PeerState {
    std::unordered_map<MsgKey, Posted, MsgKeyHash> posted;
    std::unordered_map<MsgKey, Unexpected, MsgKeyHash> unexpected;
    Sink* active = nullptr;  // the sink whose payload is being read now
    std::string gone;
    std::mutex payloadMu;
  };
  struct CommState {
    std::vector<int> members;
    uint64_t parent = 0;
    bool running = false;
    OpDesc current;
    uint64_t nextSeq = 0;  // calls below this one are finished here
    std::string aborted;
    bool mismatch = false;
  };

  // Checks a collective frame against the call `comm` is running; returns
  // the error text when they disagree.  Caller holds mu_.
  std::string checkAgainstCurrent(int peer, const FrameHeader& h);
  void failLocked(uint64_t comm, const std::string& why, bool mismatch,
                  std::vector<RequestPtr>& failed);
  std::exception_ptr commError(const CommState& c) const;
  // Gives a message that arrived before its receive to that receive, once it
  // proves to be the message the call expects.  Called without mu_.
  void handOver(int peer, const Posted& want, const FrameHeader& h, const std::vector<char>& data);
  void stopActiveLocked(PeerState& p, std::vector<RequestPtr>& failed);
  // Returns once no transport is writing a payload into a caller's buffer.
  void waitOutWrites();
  std::vector<int> othersLocked(uint64_t comm);
  // The receive the message `key` from `peer` goes to, removed from the
  // waiting ones: the one posted for that peer, else (point to point) the
  // first any-source receive that may take it; or false.  Caller holds mu_.
  bool takeReceiverLocked(PeerState& p, int peer, const MsgKey& key, Posted& out);
  // An any-source receive that takes the message `key` from `peer`, removed
  // from anyPosted_ with its desc.seq set; or false.  Caller holds mu_.
  bool claimAnyLocked(int peer, const MsgKey& key, Posted& out);
  // Whether every candidate peer of `any` is gone.  Caller holds mu_.
  bool allGoneLocked(const AnyPosted& any) const;

  int rank_;
  AbortNotifier notify_;
  std::mutex mu_;
  std::vector<std::unique_ptr<PeerState>> peers_;
  std::unordered_map<uint64_t, CommState> comms_;
  std::vector<AnyPosted> anyPosted_;  // in posting order
};

}  // namespace ringflow
