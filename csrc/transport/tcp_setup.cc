// Building the TCP mesh: listen, connect or accept every peer, say hello.
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "tcp_internal.h"
#include "trace.h"

namespace ringflow {
namespace {

struct Hello {
  uint32_t magic;
  uint32_t rank;
  uint64_t token;
};

}  // namespace

TcpTransport::TcpTransport(int rank, int size, const std::string& bindHost)
    : rank_(rank), size_(size) {
  traceEnabled();  // a bad RINGFLOW_TRACE fails here, not later on the progress thread
  if (size <= 0 || rank < 0 || rank >= size)
    throw InvalidArgument("rank " + std::to_string(rank) + " is outside a group of size " +
                          std::to_string(size));
  listenFd_ = tcp::listenOn(bindHost, &port_);
  for (int i = 0; i < size; ++i) {
    conns_.push_back(std::make_unique<Conn>());
    conns_.back()->peer = i;
  }
  mailbox_ = std::make_shared<Mailbox>(rank, size, [this](int peer, uint64_t comm,
                                                          const std::string& why) {
    trace(rank_, "sending abort to rank " + std::to_string(peer));
    auto item = std::make_shared<SendItem>();
    item->header.type = FrameType::Abort;
    item->header.comm = comm;
    item->owned.assign(why.begin(), why.end());
    item->bytes = item->header.bytes = item->owned.size();
    enqueue(peer, item);
  });
}

TcpTransport::~TcpTransport() {
  close();
  for (auto& c : conns_)
    if (c->fd >= 0) ::close(c->fd);
  if (listenFd_ >= 0) ::close(listenFd_);
  if (epollFd_ >= 0) ::close(epollFd_);
  if (wakeFd_ >= 0) ::close(wakeFd_);
}

void TcpTransport::connect(const std::vector<std::string>& addrs, uint64_t token,
                           double timeoutSec) {
  if (int(addrs.size()) != size_)
    throw InvalidArgument("expected " + std::to_string(size_) + " addresses, got " +
                          std::to_string(addrs.size()));
  addrs_ = addrs;
  Deadline deadline = Clock::now() + std::chrono::microseconds(int64_t(timeoutSec * 1e6));
  Hello mine{kFrameMagic, uint32_t(rank_), token};
  for (int peer = 0; peer < rank_; ++peer) {
    std::string what = "rank " + std::to_string(peer);
    int fd = tcp::connectWithRetry(addrs[peer], deadline, what);
    tcp::writeFull(fd, &mine, sizeof(mine), deadline);
    conns_[peer]->fd = fd;
  }
  int missing = size_ - 1 - rank_;
  while (missing > 0) {
    pollfd p{listenFd_, POLLIN, 0};
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (ms.count() <= 0 || poll(&p, 1, int(ms.count())) != 1) {
      std::string who;
      for (int peer = rank_ + 1; peer < size_; ++peer)
        if (conns_[peer]->fd < 0) who += (who.empty() ? "" : ", ") + std::to_string(peer);
      throw TimeoutError("rank " + std::to_string(rank_) +
                         " timed out waiting for ranks " + who + " to connect");
    }
    int fd = accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    Hello theirs{};
    try {
      tcp::readFull(fd, &theirs, sizeof(theirs), Clock::now() + std::chrono::seconds(5));
    } catch (const Error&) {
      ::close(fd);
      continue;
    }
    // A stranger, a stale process or a duplicate: drop it and keep waiting.
    int peer = int(theirs.rank);
    if (theirs.magic != kFrameMagic || theirs.token != token || peer <= rank_ ||
        peer >= size_ || conns_[peer]->fd >= 0) {
      ::close(fd);
      continue;
    }
    conns_[peer]->fd = fd;
    --missing;
  }
  ::close(listenFd_);
  listenFd_ = -1;

  epollFd_ = epoll_create1(EPOLL_CLOEXEC);
  wakeFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  epoll_ctl(epollFd_, EPOLL_CTL_ADD, wakeFd_, &ev);
  for (auto& c : conns_) {
    if (c->fd < 0) continue;
    tcp::setNonBlocking(c->fd);
    tcp::setNoDelay(c->fd);
    ev.events = EPOLLIN;
    ev.data.ptr = c.get();
    epoll_ctl(epollFd_, EPOLL_CTL_ADD, c->fd, &ev);
  }
  thread_ = std::thread([this] { progressLoop(); });
}

void TcpTransport::close() {
  if (closed_.exchange(true)) return;
  trace(rank_, "closing: saying goodbye to every peer");
  if (thread_.joinable()) {
    // Tell peers this is a clean exit, not a crash, then let the frames drain.
    for (auto& c : conns_) {
      if (c->fd < 0) continue;
      auto bye = std::make_shared<SendItem>();
      bye->header.type = FrameType::Bye;
      enqueue(c->peer, bye);
    }
    waitQueuesDrained(Clock::now() + std::chrono::seconds(2));
    stop_ = true;
    uint64_t one = 1;
    (void)!write(wakeFd_, &one, sizeof(one));
    thread_.join();
  }
  for (auto& c : conns_)
    if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
}

}  // namespace ringflow
