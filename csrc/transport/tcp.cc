// The TCP data path: the caller writes straight to the socket when nothing is
// queued before it; the progress thread drains what the socket would not take
// and reads every arriving frame into the buffer the mailbox chooses.
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "tcp_internal.h"
#include "trace.h"

namespace ringflow {

RequestPtr TcpTransport::send(int peer, const MsgKey& key, const OpDesc& desc, const void* data,
                              size_t bytes) {
  if (peer == rank_ || peer < 0 || peer >= size_)
    throw InvalidArgument("cannot send from rank " + std::to_string(rank_) + " to rank " +
                          std::to_string(peer));
  auto item = std::make_shared<SendItem>();
  item->header = FrameHeader::data(key, desc, bytes);
  item->data = static_cast<const char*>(data);
  item->bytes = bytes;
  if (key.channel == Channel::Collective) {
    std::string why = mailbox_->abortReason(key.comm);
    if (!why.empty()) {
      item->req = std::make_shared<Request>(peer, true);
      item->req->fail(std::make_exception_ptr(PeerError(why)));
      return item->req;
    }
  }
  return enqueue(peer, item);
}

RequestPtr TcpTransport::enqueue(int peer, std::shared_ptr<SendItem> item) {
  if (!item->req) item->req = std::make_shared<Request>(peer, true);
  RequestPtr req = item->req;
  Conn& c = *conns_[peer];
  {
    std::lock_guard<std::mutex> lock(c.sendMu);
    if (c.dead || c.fd < 0) {
      std::string why = mailbox_->peerGoneReason(peer);
      req->fail(std::make_exception_ptr(
          PeerError(why.empty() ? "no connection to rank " + std::to_string(peer) : why)));
      return req;
    }
    if (!c.queue.empty() || !writeSome(c, *item)) {
      c.queue.push_back(item);
      setWantWrite(c, true);
      return req;
    }
  }
  req->complete();
  return req;
}

bool TcpTransport::writeSome(Conn& c, SendItem& item) {
  const size_t hsize = sizeof(FrameHeader);
  const char* payload = item.owned.empty() ? item.data : item.owned.data();
  while (item.sent < hsize + item.bytes) {
    iovec iov[2];
    int n = 0;
    if (item.sent < hsize) {
      iov[n++] = {reinterpret_cast<char*>(&item.header) + item.sent, hsize - item.sent};
      if (item.bytes) iov[n++] = {const_cast<char*>(payload), item.bytes};
    } else {
      size_t off = item.sent - hsize;
      iov[n++] = {const_cast<char*>(payload) + off, item.bytes - off};
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = size_t(n);
    ssize_t put = sendmsg(c.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (put > 0) {
      item.sent += size_t(put);
      continue;
    }
    if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    if (put < 0 && errno == EINTR) continue;
    // The failure is reported by the reader side (EOF) and by connGone.
    c.dead = true;
    return false;
  }
  return true;
}

void TcpTransport::setWantWrite(Conn& c, bool on) {
  if (c.wantWrite == on || c.fd < 0) return;
  c.wantWrite = on;
  epoll_event ev{};
  ev.events = EPOLLIN | (on ? uint32_t(EPOLLOUT) : 0u);
  ev.data.ptr = &c;
  epoll_ctl(epollFd_, EPOLL_CTL_MOD, c.fd, &ev);
}

void TcpTransport::flush(Conn& c) {
  std::vector<RequestPtr> done;
  bool broken = false;
  {
    std::lock_guard<std::mutex> lock(c.sendMu);
    while (!c.queue.empty() && !c.dead) {
      if (!writeSome(c, *c.queue.front())) break;
      done.push_back(c.queue.front()->req);
      c.queue.pop_front();
    }
    if (c.queue.empty()) setWantWrite(c, false);
    broken = c.dead;
  }
  for (auto& r : done) r->complete();
  if (broken) connGone(c, "connection to rank " + std::to_string(c.peer) + " (" +
                              addrs_[c.peer] + ") broke while sending: " + strerror(errno));
}

void TcpTransport::readSome(Conn& c) {
  static thread_local std::vector<char> discard(1 << 16);
  while (c.fd >= 0) {
    ssize_t got;
    if (c.headerGot < sizeof(FrameHeader)) {
      got = ::recv(c.fd, reinterpret_cast<char*>(&c.header) + c.headerGot,
                   sizeof(FrameHeader) - c.headerGot, MSG_DONTWAIT);
      if (got > 0) {
        c.headerGot += size_t(got);
        if (c.headerGot < sizeof(FrameHeader)) continue;
        if (c.header.magic != kFrameMagic) {
          connGone(c, "rank " + std::to_string(c.peer) + " sent a malformed frame");
          return;
        }
        if (c.header.type == FrameType::Data) {
          c.sink = mailbox_->onHeader(c.peer, c.header);
        } else {
          if (c.header.bytes > (1u << 20)) {
            connGone(c, "rank " + std::to_string(c.peer) + " sent an oversized control frame");
            return;
          }
          c.sink = std::make_unique<Mailbox::Sink>();
          c.sink->unexpected.resize(c.header.bytes);
          c.sink->dst = c.sink->unexpected.data();
        }
        c.payloadGot = 0;
        if (c.header.bytes == 0) finishFrame(c);
        continue;
      }
    } else {
      size_t left = c.header.bytes - c.payloadGot;
      // Hold the payload lock while writing into a caller's buffer, so a
      // cancelled receive can wait for this write to end.
      std::unique_lock<std::mutex> lock(mailbox_->payloadMutex(c.peer), std::defer_lock);
      if (c.sink->posted) lock.lock();
      char* dst = c.sink->discard || c.sink->cancelled ? nullptr : c.sink->dst + c.payloadGot;
      if (!dst) left = std::min(left, discard.size());
      got = ::recv(c.fd, dst ? dst : discard.data(), left, MSG_DONTWAIT);
      if (lock.owns_lock()) lock.unlock();
      if (got > 0) {
        c.payloadGot += size_t(got);
        if (c.payloadGot == c.header.bytes) finishFrame(c);
        continue;
      }
    }
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (got < 0 && errno == EINTR) continue;
    std::string peer = "rank " + std::to_string(c.peer) + " (" + addrs_[c.peer] + ")";
    connGone(c, got == 0 ? peer + " closed its connection without shutting down: the process "
                               "died or was killed"
                         : "connection to " + peer + " failed: " + strerror(errno));
    return;
  }
}

void TcpTransport::finishFrame(Conn& c) {
  c.headerGot = 0;
  std::unique_ptr<Mailbox::Sink> sink = std::move(c.sink);
  switch (c.header.type) {
    case FrameType::Data: mailbox_->onPayload(c.peer, std::move(sink)); break;
    case FrameType::Abort:
      trace(rank_, "abort from rank " + std::to_string(c.peer) + ": " +
                       std::string(sink->unexpected.begin(), sink->unexpected.end()));
      mailbox_->onAbortFrame(c.peer, c.header.comm,
                             std::string(sink->unexpected.begin(), sink->unexpected.end()));
      break;
    case FrameType::Bye:
      trace(rank_, "goodbye from rank " + std::to_string(c.peer));
      mailbox_->peerGone(c.peer, "rank " + std::to_string(c.peer) +
                                     " has shut down its communicator (destroyed its process "
                                     "group or exited)");
      break;
  }
}

void TcpTransport::connGone(Conn& c, const std::string& why) {
  trace(rank_, "lost rank " + std::to_string(c.peer) + ": " + why);
  std::deque<std::shared_ptr<SendItem>> lost;
  {
    std::lock_guard<std::mutex> lock(c.sendMu);
    c.dead = true;
    lost.swap(c.queue);
    if (c.fd >= 0) epoll_ctl(epollFd_, EPOLL_CTL_DEL, c.fd, nullptr);
  }
  mailbox_->peerGone(c.peer, why);
  std::string reason = mailbox_->peerGoneReason(c.peer);
  auto error = std::make_exception_ptr(PeerError(reason));
  for (auto& item : lost) item->req->fail(error);
}

void TcpTransport::progressLoop() {
  epoll_event events[64];
  while (!stop_) {
    int n = epoll_wait(epollFd_, events, 64, 200);
    for (int i = 0; i < n; ++i) {
      auto* c = static_cast<Conn*>(events[i].data.ptr);
      if (!c) {
        uint64_t v;
        (void)!read(wakeFd_, &v, sizeof(v));
        continue;
      }
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) readSome(*c);
      if (events[i].events & EPOLLOUT) flush(*c);
    }
  }
}

RequestPtr TcpTransport::recv(int peer, const MsgKey& key, const OpDesc& desc, void* data,
                              size_t bytes) {
  if (peer == rank_ || peer < 0 || peer >= size_)
    throw InvalidArgument("cannot receive on rank " + std::to_string(rank_) + " from rank " +
                          std::to_string(peer));
  return mailbox_->postRecv(peer, key, desc, data, bytes);
}

RequestPtr TcpTransport::recvAny(const std::vector<int>& peers, const MsgKey& key, ClaimFn claim,
                                const OpDesc& desc, void* data, size_t bytes) {
  for (int peer : peers)
    if (peer == rank_ || peer < 0 || peer >= size_)
      throw InvalidArgument("cannot receive on rank " + std::to_string(rank_) + " from rank " +
                            std::to_string(peer));
  return mailbox_->postRecvAny(peers, key, std::move(claim), desc, data, bytes);
}

void TcpTransport::cancel(const RequestPtr& req) {
  // A failed receive may still be the one whose payload is arriving.
  if (!req->isSend()) return mailbox_->cancelRecv(req);
  if (req->done()) return;
  Conn& c = *conns_[req->peer()];
  std::lock_guard<std::mutex> lock(c.sendMu);
  detachQueued(c.queue, req);
}

void TcpTransport::registerComm(uint64_t comm, const std::vector<int>& members,
                                uint64_t parent) {
  mailbox_->registerComm(comm, members, parent);
}
void TcpTransport::beginOp(uint64_t comm, const OpDesc& desc) { mailbox_->beginOp(comm, desc); }
void TcpTransport::endOp(uint64_t comm) { mailbox_->endOp(comm); }
void TcpTransport::abort(uint64_t comm, const std::string& why) {
  trace(rank_, "aborting: " + why);
  mailbox_->abort(comm, why);
  // Wait (briefly) until the Abort frames are in the kernel's hands: a rank
  // that fails often exits next, and frames still queued here would be lost,
  // leaving its peers to blame it instead of the peer that really failed.
  waitQueuesDrained(Clock::now() + std::chrono::seconds(1));
}

void TcpTransport::waitQueuesDrained(Deadline until) {
  for (auto& c : conns_) {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(c->sendMu);
        if (c->queue.empty() || c->dead || c->fd < 0) break;
      }
      if (Clock::now() > until) return;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
}
std::string TcpTransport::abortReason(uint64_t comm) { return mailbox_->abortReason(comm); }

}  // namespace ringflow
