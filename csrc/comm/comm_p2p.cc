// Point-to-point calls: posted at once, completed by the transport, timed
// out by a watcher thread so that every call has a deadline.
#include "ringflow/comm.h"

namespace ringflow {

WorkPtr Comm::trackP2P(RequestPtr req, const OpDesc& desc, int peer, const char* verb) {
  auto work = std::make_shared<Work>(std::string(verb) + " " + desc.str() + " with rank " +
                                     std::to_string(peer));
  work->markStarted();
  {
    std::lock_guard<std::mutex> lock(p2pMu_);
    p2pPending_.push_back(P2P{req, work, Clock::now() + std::chrono::microseconds(
                                                            int64_t(timeoutSec_ * 1e6))});
  }
  p2pCv_.notify_all();
  req->onDone([work](std::exception_ptr error) {
    if (error)
      work->fail(error);
    else
      work->finish();
  });
  return work;
}

OpDesc Comm::describeP2P(int peer, uint64_t tag, const Buffer& buf, bool isSend) {
  if (peer < 0 || peer >= size() || peer == rank_)
    throw InvalidArgument(std::string(isSend ? "send: invalid destination rank "
                                             : "recv: invalid source rank ") +
                          std::to_string(peer));
  OpDesc desc;
  desc.kind = OpKind::Send;
  desc.dtype = buf.dtype;
  desc.count = buf.count;
  std::lock_guard<std::mutex> lock(p2pMu_);
  desc.seq = (isSend ? sendCount_ : recvCount_)[{peer, tag}]++;
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
