#include "udp.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/udp.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ringflow/env.h"
#include "ringflow/host_port.h"
#include "ringflow/packet.h"
#include "ringflow/settings.h"
#include "ringflow/types.h"

namespace ringflow::agg {
namespace {

[[noreturn]] void sysError(const std::string& what) {
  throw Error(what + ": " + std::strerror(errno));
}

const SettingsRegistration kSettings(
    {{"RINGFLOW_AGG_UDP",
      "aggregate (workers and aggregator): how datagrams cross the kernel: offload "
      "(default: recvmmsg/sendmmsg plus UDP_SEGMENT/UDP_GRO where the kernel has them), batch "
      "(recvmmsg/sendmmsg only) or single (one datagram per system call)"}},
    [] { udpPathSetting(); });

// The MTU datagrams from `fd` meet first: see UdpMode; 0 when unknown.
size_t linkMtu(int fd) {
  int mtu = 0;
  socklen_t len = sizeof mtu;
  sockaddr_storage self{}, peer{};
  socklen_t selfLen = sizeof self, peerLen = sizeof peer;
  getsockname(fd, reinterpret_cast<sockaddr*>(&self), &selfLen);
  bool v6 = self.ss_family == AF_INET6;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peerLen) == 0)
    return getsockopt(fd, v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_MTU : IP_MTU, &mtu, &len) == 0
               ? size_t(mtu) : 0;
  bool loopback = isLoopback(self);
  ifaddrs* all = nullptr;
  if (getifaddrs(&all) != 0) return 0;
  size_t smallest = 0;
  ifreq req{};
  for (ifaddrs* i = all; i; i = i->ifa_next) {
    if (!(i->ifa_flags & IFF_UP) || bool(i->ifa_flags & IFF_LOOPBACK) != loopback) continue;
    std::strncpy(req.ifr_name, i->ifa_name, IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFMTU, &req) == 0 && req.ifr_mtu > 0 &&
        (smallest == 0 || size_t(req.ifr_mtu) < smallest))
      smallest = size_t(req.ifr_mtu);
  }
  freeifaddrs(all);
  return smallest;
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

UdpPath udpPathSetting() {
  return UdpPath(envChoice("RINGFLOW_AGG_UDP", size_t(UdpPath::Offload),
                           {"single", "batch", "offload"}));
}

const char* udpPathName(UdpPath path) {
  static const char* names[] = {"single", "batch", "offload"};
  return names[int(path)];
}

UdpMode setupUdpPath(int fd, UdpPath path) {
  UdpMode m;
  m.path = path;
  if (path != UdpPath::Offload) return m;
  int on = 1, zero = 0;
  // Any other error than "no such option" is as good a reason to stay plain.
  m.gro = setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof on) == 0;
  // A socket-wide segment size of 0 changes nothing; accepting it says the
  // kernel knows UDP_SEGMENT, which each message then sets in a cmsg.
  m.gso = setsockopt(fd, SOL_UDP, UDP_SEGMENT, &zero, sizeof zero) == 0;
  sockaddr_storage self{};
  socklen_t selfLen = sizeof self;
  getsockname(fd, reinterpret_cast<sockaddr*>(&self), &selfLen);
  size_t headers = self.ss_family == AF_INET6 ? 48 : 28, mtu = linkMtu(fd);
  m.gsoMaxSegment = mtu > headers ? std::min(mtu - headers, kMaxDatagram) : 0;
  return m;
}

}  // namespace ringflow::agg
