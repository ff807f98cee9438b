// Moving datagrams through the kernel: recvmmsg/sendmmsg batches, UDP
// segmentation offload and receive coalescing (udp.h, "UdpPath").  With
// 64 KiB datagrams on loopback the kernel's copies dominate and a batch
// saves only the calls; with MTU-sized datagrams, GSO and GRO let one skb
// and one system call carry up to 64 of them.
#include <netinet/udp.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ringflow/packet.h"
#include "ringflow/types.h"
#include "udp.h"

namespace ringflow::agg {
namespace {

constexpr size_t kMaxGsoSegments = 64;  // UDP_MAX_SEGMENTS of older kernels

[[noreturn]] void sysError(const std::string& what) {
  throw Error(what + ": " + std::strerror(errno));
}

bool sameDestination(const sockaddr_storage& a, socklen_t aLen, const sockaddr_storage& b,
                     socklen_t bLen) {
  return aLen == bLen && (aLen == 0 || std::memcmp(&a, &b, aLen) == 0);
}

// Where a message's control buffer holds one int-sized cmsg.
void setControl(msghdr& h, UdpControl& c, int type, const void* value, size_t bytes) {
  h.msg_control = c.bytes;
  h.msg_controllen = CMSG_SPACE(bytes);
  cmsghdr* cm = CMSG_FIRSTHDR(&h);
  cm->cmsg_level = SOL_UDP;
  cm->cmsg_type = type;
  cm->cmsg_len = CMSG_LEN(bytes);
  std::memcpy(CMSG_DATA(cm), value, bytes);
}

}  // namespace

RecvBatch::RecvBatch(size_t capacity, size_t bytes, UdpPath path, UdpCalls* calls)
    : bytes_(bytes), path_(path), calls_(calls), buffers_(capacity * bytes), iovs_(capacity),
      addrs_(capacity), msgs_(capacity), controls_(capacity) {
  for (size_t i = 0; i < capacity; ++i) {
    iovs_[i] = {buffers_.data() + i * bytes, bytes};
    msgs_[i].msg_hdr.msg_iov = &iovs_[i];
    msgs_[i].msg_hdr.msg_iovlen = 1;
    msgs_[i].msg_hdr.msg_name = &addrs_[i];
  }
  views_.reserve(capacity);
}

// One received buffer into its datagrams: several when GRO coalesced them
// (every one of the cmsg's segment size but the last).
void RecvBatch::split(size_t message) {
  msghdr& h = msgs_[message].msg_hdr;
  char* p = buffers_.data() + message * bytes_;
  size_t len = msgs_[message].msg_len;
  bool cut = h.msg_flags & MSG_TRUNC;
  size_t segment = 0;
  if (h.msg_control)
    for (cmsghdr* cm = CMSG_FIRSTHDR(&h); cm; cm = CMSG_NXTHDR(&h, cm))
      if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
        int s;
        std::memcpy(&s, CMSG_DATA(cm), sizeof s);
        segment = size_t(s > 0 ? s : 0);
      }
  if (segment == 0 || len <= segment) return views_.push_back({p, len, cut, message});
  size_t parts = 0;
  for (size_t at = 0; at < len; at += segment, ++parts)
    views_.push_back({p + at, std::min(segment, len - at), cut && at + segment >= len, message});
  calls_->groReceives++;
  calls_->groDatagrams += parts;
}

int RecvBatch::receive(int fd, bool* refused) {
  bool offload = path_ == UdpPath::Offload;
  for (size_t i = 0; i < msgs_.size(); ++i) {
    msghdr& h = msgs_[i].msg_hdr;
    h.msg_namelen = sizeof(sockaddr_storage);
    h.msg_flags = 0;
    h.msg_control = offload ? controls_[i].bytes : nullptr;
    h.msg_controllen = offload ? sizeof controls_[i].bytes : 0;
  }
  views_.clear();
  for (;;) {
    int n;
    if (path_ == UdpPath::Single) {
      ssize_t got = recvmsg(fd, &msgs_[0].msg_hdr, MSG_DONTWAIT);
      if (got >= 0) msgs_[0].msg_len = unsigned(got);
      n = got >= 0 ? 1 : -1;
    } else {
      n = recvmmsg(fd, msgs_.data(), unsigned(msgs_.size()), MSG_DONTWAIT, nullptr);
    }
    if (n >= 0) {
      if (n > 0) calls_->recvCalls++;
      for (int i = 0; i < n; ++i) split(size_t(i));
      return int(views_.size());
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno == ECONNREFUSED && refused) {
      *refused = true;
      return 0;
    }
    sysError(path_ == UdpPath::Single ? "recvmsg" : "recvmmsg");
  }
}

void SendBatch::add(const sockaddr_storage* to, socklen_t toLen, const void* a, size_t aBytes,
                    const void* b, size_t bBytes) {
  Item& it = items_.emplace_back();
  if (to) std::memcpy(&it.to, to, toLen);
  it.toLen = to ? toLen : 0;
  it.iov[0] = {const_cast<void*>(a), aBytes};
  it.iov[1] = {const_cast<void*>(b), bBytes};
  bytes_ += aBytes + bBytes;
}

void SendBatch::group(size_t from) {
  std::vector<size_t> items(order_.begin() + from, order_.end());
  size_t firstNew = messages_.size();
  next_.resize(items_.size());
  for (size_t i : items) {
    const Item& it = items_[i];
    size_t len = it.iov[0].iov_len + it.iov[1].iov_len;
    Message* join = nullptr;
    if (mode_.gso)  // only the newest message to this peer, so its datagrams keep their order
      for (size_t m = messages_.size(); m-- > firstNew;) {
        const Item& head = items_[messages_[m].first];
        if (!sameDestination(head.to, head.toLen, it.to, it.toLen)) continue;
        Message& g = messages_[m];
        if (!g.closed && len <= g.segment && g.segment <= mode_.gsoMaxSegment &&
            g.count < kMaxGsoSegments && g.bytes + len <= kMaxDatagram)
          join = &g;
        break;
      }
    if (join) {
      next_[join->last] = i;
      join->last = i;
      join->count++;
      join->bytes += len;
      join->closed = len < join->segment;
    } else {
      messages_.push_back({i, i, 1, len, len, false});
    }
  }
  order_.resize(from);
  for (size_t m = firstNew; m < messages_.size(); ++m)
    for (size_t i = messages_[m].first, k = 0; k < messages_[m].count; ++k, i = next_[i])
      order_.push_back(i);
}

void SendBatch::layout() {
  iovs_.clear();
  msgs_.assign(messages_.size(), mmsghdr{});
  controls_.resize(messages_.size());
  for (size_t i : order_)
    for (const iovec& v : items_[i].iov)
      if (v.iov_len) iovs_.push_back(v);
  size_t at = 0, item = 0;
  for (size_t m = 0; m < messages_.size(); ++m) {
    const Message& g = messages_[m];
    msghdr& h = msgs_[m].msg_hdr;
    const Item& head = items_[order_[item]];
    h.msg_name = head.toLen ? const_cast<sockaddr_storage*>(&head.to) : nullptr;
    h.msg_namelen = head.toLen;
    h.msg_iov = iovs_.data() + at;
    for (size_t k = 0; k < g.count; ++k, ++item)
      for (const iovec& v : items_[order_[item]].iov) at += v.iov_len ? 1 : 0;
    h.msg_iovlen = size_t(iovs_.data() + at - h.msg_iov);
    if (g.count > 1) {
      uint16_t segment = uint16_t(g.segment);
      setControl(h, controls_[m], UDP_SEGMENT, &segment, sizeof segment);
    }
  }
}

int SendBatch::sendSingle(int fd) {
  int refused = 0;
  for (Item& it : items_) {
    msghdr h{};
    h.msg_name = it.toLen ? &it.to : nullptr;
    h.msg_namelen = it.toLen;
    h.msg_iov = it.iov;
    h.msg_iovlen = it.iov[1].iov_len ? 2 : 1;
    while (sendmsg(fd, &h, 0) < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNREFUSED) ++refused;
      else if (errno != ENOBUFS && errno != EAGAIN && errno != EWOULDBLOCK) sysError("sendmsg");
      break;  // full queues lose the datagram, as the network may
    }
    calls_->sendCalls++;
  }
  return refused;
}

int SendBatch::flush(int fd) {
  struct Reset {  // whatever happens, the batch is empty afterwards
    SendBatch& b;
    ~Reset() { b.items_.clear(), b.bytes_ = 0; }
  } reset{*this};
  if (items_.empty()) return 0;
  if (mode_.path == UdpPath::Single) return sendSingle(fd);
  order_.resize(items_.size());
  for (size_t i = 0; i < items_.size(); ++i) order_[i] = i;
  messages_.clear();
  group(0);
  layout();
  int refused = 0;
  size_t done = 0, item = 0;  // messages sent (or lost), and their items
  while (done < msgs_.size()) {
    int n = sendmmsg(fd, msgs_.data() + done, unsigned(msgs_.size() - done), 0);
    if (n > 0) {
      calls_->sendCalls++;
      for (int k = 0; k < n; ++k, ++done) {
        item += messages_[done].count;
        if (messages_[done].count > 1) {
          calls_->gsoSends++;
          calls_->gsoDatagrams += messages_[done].count;
          calls_->gsoBytes += messages_[done].bytes;
        }
      }
      continue;
    }
    if (errno == EINTR) continue;
    bool offloaded = messages_[done].count > 1;
    if (offloaded && (errno == EIO || errno == EINVAL || errno == EMSGSIZE || errno == EOPNOTSUPP)) {
      // This route cannot segment (no checksum offload, a smaller MTU, an
      // old kernel): send the rest one datagram per message from now on.
      mode_.gso = false;
      messages_.resize(done);
      group(item);
      layout();
      continue;
    }
    // A port-unreachable from an earlier datagram, reported now (the peer
    // is gone), or full queues (ENOBUFS, EAGAIN): the message in hand is
    // lost, as the network may lose it; retransmission recovers it.
    if (errno == ECONNREFUSED) ++refused;
    else if (errno != ENOBUFS && errno != EAGAIN && errno != EWOULDBLOCK) sysError("sendmmsg");
    item += messages_[done++].count;
  }
  return refused;
}

}  // namespace ringflow::agg
