// Blocking socket helpers used while a TCP mesh is being set up.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "ringflow/host_port.h"
#include "tcp_internal.h"

namespace ringflow::tcp {
namespace {

int msUntil(Deadline d) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d - Clock::now()).count();
  return ms < 0 ? 0 : int(ms > 1000000 ? 1000000 : ms);
}

addrinfo* resolve(const std::string& host, const std::string& port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0)
    throw InvalidArgument("cannot resolve '" + host + "': " + std::string(gai_strerror(rc)));
  return res;
}

}  // namespace

void setNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

void setNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int listenOn(const std::string& host, int* port) {
  addrinfo* res = resolve(host, "0", true);
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
    std::string err = strerror(errno);
    freeaddrinfo(res);
    if (fd >= 0) ::close(fd);
    throw Error("cannot listen on '" + host + "': " + err);
  }
  freeaddrinfo(res);
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  *port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return fd;
}

int connectWithRetry(const std::string& addr, Deadline deadline, const std::string& what) {
  std::string host, port;
  if (!splitHostPort(addr, &host, &port))
    throw InvalidArgument("address '" + addr + "' has no :port");
  std::string lastError = "no attempt made";
  auto backoff = std::chrono::milliseconds(5);
  do {
    addrinfo* res = resolve(host, port, false);
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
      int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) continue;
      setNonBlocking(fd);
      int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
      if (rc != 0 && errno == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        if (poll(&p, 1, msUntil(deadline)) == 1) {
          int err = 0;
          socklen_t len = sizeof(err);
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
          rc = err == 0 ? 0 : -1;
          errno = err;
        } else {
          errno = ETIMEDOUT;
        }
      }
      if (rc == 0) {
        freeaddrinfo(res);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        return fd;
      }
      lastError = strerror(errno);
      ::close(fd);
    }
    freeaddrinfo(res);
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
  } while (Clock::now() < deadline);
  throw TimeoutError("could not connect to " + what + " at " + addr + " before the timeout: " +
                     lastError);
}

void readFull(int fd, void* buf, size_t n, Deadline deadline) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, msUntil(deadline)) != 1) throw TimeoutError("timed out during handshake");
    ssize_t got = ::recv(fd, p, n, 0);
    if (got <= 0) throw PeerError("connection closed during handshake");
    p += got;
    n -= size_t(got);
  }
}

void writeFull(int fd, const void* buf, size_t n, Deadline deadline) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    pollfd pfd{fd, POLLOUT, 0};
    if (poll(&pfd, 1, msUntil(deadline)) != 1) throw TimeoutError("timed out during handshake");
    ssize_t put = ::send(fd, p, n, MSG_NOSIGNAL);
    if (put <= 0) throw PeerError("connection closed during handshake");
    p += put;
    n -= size_t(put);
  }
}

}  // namespace ringflow::tcp
