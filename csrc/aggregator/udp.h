// UDP plumbing shared by the aggregator and its workers: endpoints, socket
// setup, and batched receive/send (recvmmsg/sendmmsg, one system call for
// many datagrams, since per-packet system calls would bound the rate).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <string>
#include <vector>

namespace ringflow::agg {

struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string text;  // as the user wrote it, for messages
};

// "host:port" (or "[v6]:port"); throws InvalidArgument naming the input.
Endpoint parseEndpoint(const std::string& hostPort);
// Comma-separated endpoints, at least one.
std::vector<Endpoint> parseEndpoints(const std::string& list);
bool isLoopback(const sockaddr_storage& a);
bool sameAddress(const sockaddr_storage& a, const sockaddr_storage& b);
std::string addressText(const sockaddr_storage& a);

// A UDP socket of `family`, close-on-exec, with send and receive buffers
// raised towards `bufferBytes` (past rmem_max where we may: as root).
int openUdp(int family, int bufferBytes);
// Binds host:port (port 0 picks one); returns the port bound.
int bindUdp(int fd, const Endpoint& at);

// Owns `capacity` receive buffers of `bytes` each and their headers.
class RecvBatch {
 public:
  RecvBatch(size_t capacity, size_t bytes);
  // Up to capacity datagrams without blocking; 0 when none waits.  Throws
  // on errors other than "nothing to read"; `refused` is set (and 0
  // returned) when an ICMP port-unreachable came back (the peer is gone).
  int receive(int fd, bool* refused = nullptr);
  char* data(int i) { return buffers_.data() + size_t(i) * bytes_; }
  size_t length(int i) const { return msgs_[i].msg_len; }
  bool truncated(int i) const { return msgs_[i].msg_hdr.msg_flags & MSG_TRUNC; }
  const sockaddr_storage& from(int i) const { return addrs_[i]; }
  socklen_t fromLength(int i) const { return msgs_[i].msg_hdr.msg_namelen; }

 private:
  size_t bytes_;
  std::vector<char> buffers_;
  std::vector<iovec> iovs_;
  std::vector<sockaddr_storage> addrs_;
  std::vector<mmsghdr> msgs_;
};

// Datagrams of up to two pieces (header, payload) gathered for one
// sendmmsg; the pieces must stay valid until flush().
class SendBatch {
 public:
  void add(const sockaddr_storage* to, socklen_t toLen, const void* a, size_t aBytes,
           const void* b = nullptr, size_t bBytes = 0);
  size_t size() const { return count_; }
  // Sends everything queued; `to` null means the socket's connected peer.
  // Returns the number of datagrams the kernel refused (peer gone).
  int flush(int fd);
  size_t bytes() const { return bytes_; }

 private:
  struct Item {
    sockaddr_storage to;
    socklen_t toLen;
    iovec iov[2];
  };
  std::vector<Item> items_;
  std::vector<mmsghdr> msgs_;
  size_t count_ = 0, bytes_ = 0;
};

}  // namespace ringflow::agg
