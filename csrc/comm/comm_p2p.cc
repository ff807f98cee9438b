// Point-to-point calls: posted at once, completed by the transport, timed
// out by a watcher thread so that every call has a deadline.
#include <algorithm>

#include "ringflow/comm.h"

namespace ringflow {

WorkPtr Comm::trackP2P(RequestPtr req, const OpDesc& desc, int peer, const char* verb) {
  auto work = std::make_shared<Work>(
      std::string(verb) + " " + desc.str() +
      (peer == kAnySource ? std::string(" from any rank") : " with rank " + std::to_string(peer)));
  work->markStarted();
  {
    std::lock_guard<std::mutex> lock(p2pMu_);
    p2pPending_.push_back(P2P{req, work, Clock::now() + std::chrono::microseconds(
                                                            int64_t(timeoutSec_ * 1e6))});
  }
  p2pCv_.notify_all();
  auto complete = [work](std::exception_ptr error) {
    if (error)
      work->fail(error);
    else
      work->finish();
  };
  if (peer != kAnySource) {
    work->setSource(peer);
    req->onDone(complete);
    return work;
  }
  // The sender is known once the receive took a message (as a global rank).
  req->onDone([work, req, members = members_, complete](std::exception_ptr error) {
    auto it = std::find(members.begin(), members.end(), req->source());
    if (it != members.end()) work->setSource(int(it - members.begin()));
    complete(error);
  });
  return work;
}

namespace {

// Both ends of a point-to-point message describe it alike (its seq is the
// per-(peer, tag) counter, filled in by the caller).
OpDesc p2pDesc(const Buffer& buf) {
  OpDesc desc;
  desc.kind = OpKind::Send;
  desc.dtype = buf.dtype;
  desc.count = buf.count;
  return desc;
}

}  // namespace

OpDesc Comm::describeP2P(int peer, uint64_t tag, const Buffer& buf, bool isSend) {
  if (peer < 0 || peer >= size() || peer == rank_)
    throw InvalidArgument(std::string(isSend ? "send: invalid destination rank "
                                             : "recv: invalid source rank ") +
                          std::to_string(peer));
  OpDesc desc = p2pDesc(buf);
  if (isSend) {
    std::lock_guard<std::mutex> lock(p2pMu_);
    desc.seq = sendCount_[{peer, tag}]++;
  } else {
    std::lock_guard<std::mutex> lock(recvOrder_->mu);
    desc.seq = recvOrder_->next[{peer, tag}]++;
  }
  return desc;
}

WorkPtr Comm::send(int peer, uint64_t tag, const Buffer& buf) {
  OpDesc desc = describeP2P(peer, tag, buf, true);
  MsgKey key{id_, desc.seq, tag, Channel::P2P};
  auto req = transport_->send(members_[peer], key, desc, buf.ptr, buf.bytes());
  return trackP2P(req, desc, peer, "send");
}

WorkPtr Comm::recv(int peer, uint64_t tag, const Buffer& buf) {
  OpDesc desc = describeP2P(peer, tag, buf, false);
  MsgKey key{id_, desc.seq, tag, Channel::P2P};
  auto req = transport_->recv(members_[peer], key, desc, buf.ptr, buf.bytes());
  return trackP2P(req, desc, peer, "recv");
}

WorkPtr Comm::recvAny(uint64_t tag, const Buffer& buf) {
  if (size() < 2) throw InvalidArgument("recv from any source: the group has no other rank");
  OpDesc desc = p2pDesc(buf);
  std::vector<int> peers;
  for (int r = 0; r < size(); ++r)
    if (r != rank_) peers.push_back(members_[r]);
  // The message numbered `seq` from a peer is ours only if it is that peer's
  // next one on this tag: point-to-point order per (peer, tag) is kept.
  ClaimFn claim = [order = recvOrder_, members = members_, tag](int global, uint64_t seq) {
    int peer = int(std::find(members.begin(), members.end(), global) - members.begin());
    std::lock_guard<std::mutex> lock(order->mu);
    uint64_t& next = order->next[{peer, tag}];
    if (next != seq) return false;
    ++next;
    return true;
  };
  MsgKey key{id_, 0, tag, Channel::P2P};
  auto req = transport_->recvAny(peers, key, std::move(claim), desc, buf.ptr, buf.bytes());
  return trackP2P(req, desc, kAnySource, "recv");
}

void Comm::watchP2P() {
  std::unique_lock<std::mutex> lock(p2pMu_);
  while (!stopping_) {
    p2pCv_.wait_for(lock, std::chrono::milliseconds(50));
    auto now = Clock::now();
    for (auto it = p2pPending_.begin(); it != p2pPending_.end();) {
      if (it->req->done()) {
        it = p2pPending_.erase(it);
      } else if (now >= it->deadline) {
        transport_->cancel(it->req);
        it->req->fail(std::make_exception_ptr(
            TimeoutError(it->work->what() + " timed out after " +
                         std::to_string(int(timeoutSec_)) + "s")));
        it = p2pPending_.erase(it);
      } else {
        ++it;
      }
    }
  }
}

}  // namespace ringflow
