// The sending side of a cross-host stream.  The trainer's push only copies
// into the queue (a private one-ring Inbox, so a full queue drops or
// coalesces exactly as a same-host ring does) and rings an eventfd; this
// file's thread is the queue's consumer and the socket's only user, so a
// slow or dead link never reaches the trainer.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ringflow/malt.h"
#include "ringflow/sockets.h"
#include "ringflow/types.h"
#include "stream_wire.h"

namespace ringflow::malt {

StreamOutbox::StreamOutbox(const std::string& addr, int sender, size_t count, int slots,
                           FullPolicy policy, bool newestOnly, uint64_t token, double timeoutSec)
    : count_(count), newestOnly_(newestOnly && policy == FullPolicy::DropOldest) {
  if (sender < 0) throw InvalidArgument("a MALT sender is a rank, got " + std::to_string(sender));
  if (!(timeoutSec > 0)) throw InvalidArgument("a MALT stream's connect timeout must be positive");
  queue_ = std::make_unique<Inbox>(1, count, slots, policy);
  into_ = std::make_unique<Outbox>(queue_->pid(), queue_->fd(), queue_->bytes(), 0, count);
  const Deadline deadline = Clock::now() + std::chrono::microseconds(int64_t(timeoutSec * 1e6));
  fd_ = tcp::connectWithRetry(addr, deadline, "a MALT inbox");
  Hello hi;
  hi.sender = uint32_t(sender);
  hi.token = token;
  hi.count = count;
  try {
    tcp::writeFull(fd_, &hi, sizeof(hi), deadline);
  } catch (...) {
    ::close(fd_);
    throw;
  }
  tcp::setNonBlocking(fd_);
  tcp::setNoDelay(fd_);  // a small model's update must not wait for the previous one's ack
  wake_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  lastBeatNs_ = nowNs();
  thread_ = std::thread([this] { sendLoop(); });
}

StreamOutbox::~StreamOutbox() {
  close(std::chrono::milliseconds(0));
  if (wake_ >= 0) ::close(wake_);
}

uint64_t StreamOutbox::push(const float* src, uint64_t step) {
  const uint64_t seq = into_->push(src, step);
  const uint64_t one = 1;
  (void)!write(wake_, &one, sizeof(one));
  return seq;
}

bool StreamOutbox::alive(std::chrono::milliseconds departAfter) {
  if (dead_.load() || closedByPeer_.load()) return false;
  return nowNs() - lastBeatNs_.load() <= int64_t(departAfter.count()) * 1000000;
}

RingCounts StreamOutbox::counts() const {
  RingCounts c = queue_->counts(0);
  c.merged = sent_.load(std::memory_order_relaxed);
  return c;
}

void StreamOutbox::close(std::chrono::milliseconds flushFor) {
  if (thread_.joinable()) {
    flushUntilNs_ = nowNs() + int64_t(flushFor.count()) * 1000000;
    flushing_ = true;
    const uint64_t one = 1;
    (void)!write(wake_, &one, sizeof(one));
    thread_.join();
  }
  if (fd_ >= 0) {
    // Beats left unread would turn the close into a reset that can cost
    // the receiver the last update: read them, then end the stream.
    readBeats();
    shutdown(fd_, SHUT_WR);
    ::close(fd_);
    fd_ = -1;
  }
}

bool StreamOutbox::stopping() const {
  return dead_.load() || closedByPeer_.load() ||
         (flushing_.load() && nowNs() > flushUntilNs_.load());
}

void StreamOutbox::sendLoop() {
  while (!stopping()) {
    if (sendOne()) continue;
    if (flushing_.load()) return;  // nothing left to send
    pollfd p[2] = {{fd_, POLLIN, 0}, {wake_, POLLIN, 0}};
    if (poll(p, 2, int(kBeatEvery.count())) <= 0) continue;
    if (p[0].revents) readBeats();
    uint64_t v;
    if (p[1].revents) (void)!read(wake_, &v, sizeof(v));
  }
}

bool StreamOutbox::sendOne() {
  const std::vector<Arrival> queued = queue_->arrivals();
  if (queued.empty()) return false;
  // Snapshots (newestOnly): only the newest is worth the link.  Otherwise
  // (deltas, gradients, a replay's every round): every one, oldest first.
  const bool newest = newestOnly_;
  const Arrival pick = *std::max_element(queued.begin(), queued.end(), [&](auto& a, auto& b) {
    return newest ? a.seq < b.seq : a.seq > b.seq;
  });
  if (newest) {
    std::vector<Take> stale;
    for (const Arrival& a : queued)
      if (a.seq != pick.seq) stale.push_back({a.sender, a.slot, a.seq, 0.0});
    if (!stale.empty()) queue_->merge(nullptr, stale, 1.0);
  }
  bool whole = false;
  // Not held: the trainer overwrote it meanwhile; the next round sends the newer one.
  const bool held = queue_->consume(pick, [&](const float* data) {
    FrameHead f;
    f.step = pick.step;
    f.updates = pick.count;
    whole = pump(reinterpret_cast<const char*>(&f), sizeof(f)) &&
            pump(reinterpret_cast<const char*>(data), count_ * sizeof(float));
  });
  if (!held) return true;
  // A frame cut short leaves the stream unreadable: it is over.
  if (whole)
    sent_.fetch_add(1, std::memory_order_relaxed);
  else
    dead_ = true;
  return true;
}

bool StreamOutbox::pump(const char* data, size_t n) {
  while (n > 0) {
    if (stopping()) return false;
    pollfd p{fd_, POLLIN | POLLOUT, 0};
    if (poll(&p, 1, int(kBeatEvery.count())) <= 0) continue;
    if (p.revents & (POLLIN | POLLERR | POLLHUP)) readBeats();
    if (!(p.revents & POLLOUT)) continue;
    const ssize_t put = ::send(fd_, data, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (put > 0) {
      data += put;
      n -= size_t(put);
    } else if (put < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      dead_ = true;
      return false;
    }
  }
  return true;
}

void StreamOutbox::readBeats() {
  char buf[256];
  for (;;) {
    const ssize_t got = recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
    if (got > 0) {
      lastBeatNs_ = nowNs();
      if (std::memchr(buf, kGoodbye, size_t(got))) closedByPeer_ = true;
      continue;
    }
    if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) dead_ = true;
    return;
  }
}

}  // namespace ringflow::malt
