// The header in front of every message on a byte-stream transport.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "ringflow/transport.h"

namespace ringflow {

constexpr uint32_t kFrameMagic = 0x574c4652;  // "RFLW"

enum class FrameType : uint8_t {
  Data = 1,
  Abort = 2,  // payload: why the sender aborted `comm`
  Bye = 3,    // the sender is shutting down cleanly
};

#pragma pack(push, 1)
struct FrameHeader {
  uint32_t magic = kFrameMagic;
  FrameType type = FrameType::Data;
  Channel channel = Channel::Collective;
  OpKind kind = OpKind::None;
  DType dtype = DType::UInt8;
  ReduceOp op = ReduceOp::Sum;
  uint8_t reserved[3] = {0, 0, 0};
  uint32_t root = 0;
  uint64_t comm = 0;
  uint64_t seq = 0;
  uint64_t slot = 0;
  uint64_t count = 0;
  uint64_t bytes = 0;  // payload length that follows

  MsgKey key() const { return MsgKey{comm, seq, slot, channel}; }
  OpDesc desc() const {
    OpDesc d;
    d.seq = seq;
    d.count = count;
    d.kind = kind;
    d.dtype = dtype;
    d.op = op;
    d.root = root;
    return d;
  }
  static FrameHeader data(const MsgKey& k, const OpDesc& d, uint64_t bytes) {
    FrameHeader h;
    h.channel = k.channel;
    h.comm = k.comm;
    h.seq = k.seq;
    h.slot = k.slot;
    h.kind = d.kind;
    h.dtype = d.dtype;
    h.op = d.op;
    h.root = d.root;
    h.count = d.count;
    h.bytes = bytes;
    return h;
  }
};
#pragma pack(pop)
static_assert(sizeof(FrameHeader) == 56, "frame header layout is part of the wire format");

// One queued frame of a byte-stream link (tcp, shm): its header, then
// `bytes` of payload at `data`, of which `sent` (header included) are out.
struct SendItem {
  FrameHeader header;
  const char* data = nullptr;
  size_t bytes = 0;
  size_t sent = 0;          // header and payload bytes already written
  std::vector<char> owned;  // payload we own (control frames, cancelled sends)
  RequestPtr req;
};

// Detaches the queued frame of send `req` from its caller's buffer: a frame
// not yet started is dropped; a half-written one keeps its own copy of the
// payload, because the peer expects the rest of it.  Caller holds the
// queue's lock.
inline void detachQueued(std::deque<std::shared_ptr<SendItem>>& queue, const RequestPtr& req) {
  for (auto it = queue.begin(); it != queue.end(); ++it) {
    SendItem& item = **it;
    if (item.req != req) continue;
    if (item.sent == 0)
      queue.erase(it);
    else if (item.owned.empty())
      item.owned.assign(item.data, item.data + item.bytes);
    return;
  }
}

}  // namespace ringflow
