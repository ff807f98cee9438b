// UDP plumbing shared by the aggregator and its workers: endpoints, socket
// setup, and moving datagrams through the kernel in batches (recvmmsg and
// sendmmsg, plus UDP segmentation offload and receive coalescing where the
// kernel has them: udp_batch.cc), since per-datagram system calls would
// bound the rate.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
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

// The sockets' sizes, shared by the client, the service and the floor
// measurement that mimics them (udp_floor.cc).
constexpr int kWorkerSocketBuffer = 16 << 20;
constexpr int kServiceSocketBuffer = 32 << 20;  // room for every worker's window
constexpr size_t kRecvBatch = 8;                // per recvmmsg: 8 x 64 KiB stays in L2
constexpr size_t kRecvBytes = 65536;            // > kMaxDatagram: truncation shows

// A UDP socket of `family`, close-on-exec, with send and receive buffers
// raised towards `bufferBytes` (past rmem_max where we may: as root).
int openUdp(int family, int bufferBytes);
// Binds host:port (port 0 picks one); returns the port bound.
int bindUdp(int fd, const Endpoint& at);

// How datagrams cross the kernel (RINGFLOW_AGG_UDP):
//   Offload  batches, and where the kernel has them, UDP segmentation
//            offload (UDP_SEGMENT: one send carries several same-sized
//            datagrams to one peer) and receive coalescing (UDP_GRO: one
//            receive returns several, with their size in a cmsg);
//   Batch    recvmmsg/sendmmsg, one datagram per message;
//   Single   one datagram per system call (recvmsg/sendmsg).
// The datagrams on the wire are the same on every path.
enum class UdpPath { Single, Batch, Offload };
UdpPath udpPathSetting();  // throws InvalidArgument on a bad value
const char* udpPathName(UdpPath path);

// What one socket uses: its path, and the offloads its kernel accepted.
// A segmented send's datagrams must each fit the link's MTU: a veth or a
// bridge drops a GSO packet whose segments do not, where it would have
// fragmented a plain datagram, so larger datagrams are never segmented.
struct UdpMode {
  UdpPath path = UdpPath::Batch;
  bool gso = false, gro = false;
  size_t gsoMaxSegment = 0;  // largest datagram (UDP payload) a segmented send may carry
};
// Turns on what `path` allows on `fd` (bound or connected already); a
// kernel without UDP_SEGMENT or UDP_GRO (EINVAL, ENOPROTOOPT) leaves that
// offload off.  The MTU is the route's for a connected socket, else
// loopback's for one bound there, else the smallest of the host's other
// interfaces.
UdpMode setupUdpPath(int fd, UdpPath path);

// System calls and offloaded messages, so that tests and benchmarks can see
// how many datagrams each call moved.
// Room for one cmsg of an int (UDP_GRO's segment size; UDP_SEGMENT's u16).
union UdpControl {
  cmsghdr align;
  char bytes[CMSG_SPACE(sizeof(int))];
};

struct UdpCalls {
  std::atomic<uint64_t> sendCalls{0}, recvCalls{0};  // calls that moved datagrams
  std::atomic<uint64_t> gsoSends{0}, gsoDatagrams{0}, gsoBytes{0};  // messages of >1 datagram
  std::atomic<uint64_t> groReceives{0}, groDatagrams{0};  // coalesced buffers, and their datagrams
};

// Owns `capacity` receive buffers of `bytes` each and their headers; with
// GRO one buffer may hold several datagrams, which receive() splits, so
// the datagrams are indexed separately from the buffers.
class RecvBatch {
 public:
  RecvBatch(size_t capacity, size_t bytes, UdpPath path, UdpCalls* calls);
  // The datagrams that were waiting (up to capacity buffers), without
  // blocking; 0 when none waits.  Throws on errors other than "nothing to
  // read"; `refused` is set (and 0 returned) when an ICMP port-unreachable
  // came back (the peer is gone).
  int receive(int fd, bool* refused = nullptr);
  char* data(int i) { return views_[i].data; }
  size_t length(int i) const { return views_[i].length; }
  bool truncated(int i) const { return views_[i].truncated; }
  const sockaddr_storage& from(int i) const { return addrs_[views_[i].message]; }
  socklen_t fromLength(int i) const { return msgs_[views_[i].message].msg_hdr.msg_namelen; }

 private:
  struct View {
    char* data;
    size_t length;
    bool truncated;
    size_t message;
  };
  void split(size_t message);
  size_t bytes_;
  UdpPath path_;
  UdpCalls* calls_;
  std::vector<char> buffers_;
  std::vector<iovec> iovs_;
  std::vector<sockaddr_storage> addrs_;
  std::vector<mmsghdr> msgs_;
  std::vector<UdpControl> controls_;  // per message: its segment size (UDP_GRO)
  std::vector<View> views_;
};

// Datagrams of up to two pieces (header, payload) gathered for one flush;
// the pieces must stay valid until flush().  With GSO, consecutive
// datagrams to one peer of one size (the last may be shorter) leave as one
// message; datagrams to other peers may then leave in another order, as
// they may on any network.
class SendBatch {
 public:
  SendBatch(UdpMode mode, UdpCalls* calls) : mode_(mode), calls_(calls) {}
  void add(const sockaddr_storage* to, socklen_t toLen, const void* a, size_t aBytes,
           const void* b = nullptr, size_t bBytes = 0);
  size_t size() const { return items_.size(); }
  // Sends everything queued; `to` null means the socket's connected peer.
  // Returns the number of messages the kernel refused (peer gone).
  int flush(int fd);
  size_t bytes() const { return bytes_; }
  bool gso() const { return mode_.gso; }

 private:
  struct Item {
    sockaddr_storage to;
    socklen_t toLen;
    iovec iov[2];
  };
  struct Message {  // one msghdr: items first, next_[first], ... (count of them)
    size_t first, last, count, segment, bytes;
    bool closed;  // its last datagram was shorter than the segment: none may join
  };
  // Appends messages for the items order_[from..] (all of them at first;
  // the unsent rest, one per message, once the kernel refused GSO).
  void group(size_t from);
  void layout();
  int sendSingle(int fd);
  UdpMode mode_;
  UdpCalls* calls_;
  std::vector<Item> items_;
  std::vector<Message> messages_;
  std::vector<size_t> next_;       // per item: the next item of its message
  std::vector<size_t> order_;      // item indices, message by message
  std::vector<iovec> iovs_;
  std::vector<UdpControl> controls_;  // per message: its segment size (UDP_SEGMENT)
  std::vector<mmsghdr> msgs_;
  size_t bytes_ = 0;
};

}  // namespace ringflow::agg
