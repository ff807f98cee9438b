// What one call is: its kind and the descriptor every message of it carries.
// Core vocabulary: transports put it on the wire, communicators number it,
// works and stats describe it.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "ringflow/types.h"

namespace ringflow {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

// Values are part of the wire format: append only.
enum class OpKind : uint8_t {
  None = 0,
  AllReduce,
  Broadcast,
  AllGather,
  ReduceScatter,
  Reduce,
  Gather,
  Scatter,
  AllToAll,
  Barrier,
  Send,
  Split,
};
const char* opKindName(OpKind kind);

// What one call is.  Two ranks in the same collective must agree on all of it.
struct OpDesc {
  uint64_t seq = 0;  // position of the call in its communicator's order
  uint64_t count = 0;
  OpKind kind = OpKind::None;
  DType dtype = DType::UInt8;
  ReduceOp op = ReduceOp::Sum;
  uint32_t root = 0;

  bool operator==(const OpDesc& o) const {
    return seq == o.seq && count == o.count && kind == o.kind && dtype == o.dtype &&
           op == o.op && root == o.root;
  }
  bool operator!=(const OpDesc& o) const { return !(*this == o); }
  std::string str() const;  // e.g. "allreduce #5 (count=100, float32, sum)"
};

}  // namespace ringflow
