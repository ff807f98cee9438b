#include "udp.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ringflow/host_port.h"
#include "ringflow/types.h"

namespace ringflow::agg {
namespace {

[[noreturn]] void sysError(const std::string& what) {
  throw Error(what + ": " + std::strerror(errno));
}

}  // namespace

Endpoint parseEndpoint(const std::string& hostPort) {
  std::string host, port;
  if (!splitHostPort(hostPort, &host, &port))
    throw InvalidArgument("aggregator address '" + hostPort + "' is not host:port");
  char* end = nullptr;
  long p = std::strtol(port.c_str(), &end, 10);
  if (*end || p < 0 || p > 65535)
    throw InvalidArgument("aggregator address '" + hostPort + "': bad port '" + port + "'");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.empty() ? "0.0.0.0" : host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0)
    throw InvalidArgument("aggregator address '" + hostPort + "': cannot resolve '" + host +
                          "': " + gai_strerror(rc));
  Endpoint e;
  std::memcpy(&e.addr, res->ai_addr, res->ai_addrlen);
  e.len = res->ai_addrlen;
  e.text = hostPort;
  freeaddrinfo(res);
  return e;
}

std::vector<Endpoint> parseEndpoints(const std::string& list) {
  std::vector<Endpoint> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    std::string item = list.substr(start, comma == std::string::npos ? comma : comma - start);
    if (!item.empty()) out.push_back(parseEndpoint(item));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (out.empty()) throw InvalidArgument("no aggregator address in '" + list + "'");
  return out;
}

bool isLoopback(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET)
    return (ntohl(reinterpret_cast<const sockaddr_in&>(a).sin_addr.s_addr) >> 24) == 127;
  if (a.ss_family == AF_INET6)
    return IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6&>(a).sin6_addr);
  return false;
}

bool sameAddress(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) {
    auto &x = reinterpret_cast<const sockaddr_in&>(a), &y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  auto &x = reinterpret_cast<const sockaddr_in6&>(a), &y = reinterpret_cast<const sockaddr_in6&>(b);
  return x.sin6_port == y.sin6_port && !std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr);
}

std::string addressText(const sockaddr_storage& a) {
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (a.ss_family == AF_INET) {
    auto& s = reinterpret_cast<const sockaddr_in&>(a);
    inet_ntop(AF_INET, &s.sin_addr, host, sizeof host);
    port = ntohs(s.sin_port);
    return std::string(host) + ":" + std::to_string(port);
  }
  auto& s = reinterpret_cast<const sockaddr_in6&>(a);
  inet_ntop(AF_INET6, &s.sin6_addr, host, sizeof host);
  return "[" + std::string(host) + "]:" + std::to_string(ntohs(s.sin6_port));
}

int openUdp(int family, int bufferBytes) {
  int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) sysError("socket(UDP)");
  // Windows of 64 KiB datagrams overflow the default buffers at once; the
  // FORCE variants pass rmem_max/wmem_max where we are allowed to.
  for (auto [force, plain] : {std::pair{SO_RCVBUFFORCE, SO_RCVBUF}, {SO_SNDBUFFORCE, SO_SNDBUF}})
    if (setsockopt(fd, SOL_SOCKET, force, &bufferBytes, sizeof bufferBytes) != 0)
      setsockopt(fd, SOL_SOCKET, plain, &bufferBytes, sizeof bufferBytes);
  return fd;
}

int bindUdp(int fd, const Endpoint& at) {
  if (bind(fd, reinterpret_cast<const sockaddr*>(&at.addr), at.len) != 0)
    sysError("cannot bind UDP " + at.text);
  sockaddr_storage got{};
  socklen_t len = sizeof got;
  getsockname(fd, reinterpret_cast<sockaddr*>(&got), &len);
  return got.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in&>(got).sin_port)
                                  : ntohs(reinterpret_cast<sockaddr_in6&>(got).sin6_port);
}

}  // namespace ringflow::agg
