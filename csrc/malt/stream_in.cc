// The receiving side of the cross-host streams: one thread accepts remote
// senders and deposits each whole update into that sender's ring of the
// Inbox, through an Outbox of its own, as the ring's one producer.  So the
// merge reads remote updates exactly as it reads same-host ones (lockless),
// and a slow sender costs this rank nothing but the bytes.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "ringflow/malt.h"
#include "ringflow/sockets.h"
#include "ringflow/types.h"
#include "stream_wire.h"

namespace ringflow::malt {

struct StreamListener::Conn {
  int fd = -1;
  bool greeted = false;
  Hello hello;
  FrameHead head;
  size_t got = 0;  // bytes of the hello, head or payload read so far
  bool inPayload = false;
  std::vector<float> staging;
  std::unique_ptr<Outbox> into;
};

namespace {

// Reads towards `want` bytes at dst+*got; false once the stream ended or failed.
bool readSome(int fd, void* dst, size_t want, size_t* got) {
  const ssize_t n = recv(fd, static_cast<char*>(dst) + *got, want - *got, MSG_DONTWAIT);
  if (n > 0) {
    *got += size_t(n);
    return true;
  }
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
}

}  // namespace

StreamListener::StreamListener(Inbox& inbox, const std::string& bindHost, uint64_t token,
                               const std::vector<int>& senders)
    : inbox_(inbox), token_(token), senders_(senders) {
  for (int s : senders)
    if (s < 0 || s >= inbox.senders())
      throw InvalidArgument("the MALT inbox has no ring for sender " + std::to_string(s));
  listenFd_ = tcp::listenOn(bindHost, &port_);
  tcp::setNonBlocking(listenFd_);
  wake_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  thread_ = std::thread([this] { loop(); });
}

StreamListener::~StreamListener() {
  close();
  if (wake_ >= 0) ::close(wake_);
}

void StreamListener::close() {
  if (stop_.exchange(true)) return;
  const uint64_t one = 1;
  (void)!write(wake_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

void StreamListener::loop() {
  std::vector<std::unique_ptr<Conn>> conns;
  // One stream per sender: a second (a stray or a stale process) is refused.
  auto taken = [&](uint32_t s) {
    return std::any_of(conns.begin(), conns.end(),
                       [&](auto& c) { return c->greeted && c->hello.sender == s; });
  };
  // False when the stream must end: it closed, failed or broke the protocol.
  auto serve = [&](Conn& c) {
    for (;;) {
      if (!c.greeted) {
        if (!readSome(c.fd, &c.hello, sizeof(Hello), &c.got)) return false;
        if (c.got < sizeof(Hello)) return true;
        const Hello& h = c.hello;
        const bool known = std::find(senders_.begin(), senders_.end(), int(h.sender)) != senders_.end();
        if (h.magic != kStreamMagic || h.token != token_ || h.count != inbox_.count() || !known ||
            taken(h.sender))
          return false;
        c.into = std::make_unique<Outbox>(inbox_.pid(), inbox_.fd(), inbox_.bytes(),
                                          int(h.sender), inbox_.count());
        c.staging.resize(inbox_.count());
        c.greeted = true;
        c.got = 0;
      } else if (!c.inPayload) {
        if (!readSome(c.fd, &c.head, sizeof(FrameHead), &c.got)) return false;
        if (c.got < sizeof(FrameHead)) return true;
        if (c.head.updates == 0) return false;
        c.inPayload = true;
        c.got = 0;
      } else {
        const size_t bytes = c.staging.size() * sizeof(float);
        if (!readSome(c.fd, c.staging.data(), bytes, &c.got)) return false;
        if (c.got < bytes) return true;
        c.into->push(c.staging.data(), c.head.step, c.head.updates);
        c.inPayload = false;
        c.got = 0;
      }
    }
  };
  auto say = [&](char byte) {
    for (auto& c : conns)
      if (c->greeted) (void)!send(c->fd, &byte, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  };
  int64_t nextBeat = nowNs();
  const int64_t every = int64_t(std::chrono::nanoseconds(kBeatEvery).count());
  while (!stop_.load()) {
    std::vector<pollfd> fds{{wake_, POLLIN, 0}, {listenFd_, POLLIN, 0}};
    for (auto& c : conns) fds.push_back({c->fd, POLLIN, 0});
    const int64_t left = std::max<int64_t>(0, nextBeat - nowNs());
    poll(fds.data(), fds.size(), int(left / 1000000) + 1);
    if (fds[1].revents & POLLIN) {
      const int fd = accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd >= 0) {
        conns.push_back(std::make_unique<Conn>());
        conns.back()->fd = fd;
      }
    }
    for (size_t i = 2; i < fds.size(); ++i) {
      Conn& c = *conns[i - 2];
      if (fds[i].revents && !serve(c)) {
        ::close(c.fd);
        c.fd = -1;
      }
    }
    conns.erase(std::remove_if(conns.begin(), conns.end(), [](auto& c) { return c->fd < 0; }),
                conns.end());
    if (nowNs() >= nextBeat) {
      say(kBeat);
      nextBeat = nowNs() + every;
    }
  }
  say(kGoodbye);
  for (auto& c : conns) {
    shutdown(c->fd, SHUT_WR);
    ::close(c->fd);
  }
  ::close(listenFd_);
  listenFd_ = -1;
}

}  // namespace ringflow::malt
