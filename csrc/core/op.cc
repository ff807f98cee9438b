#include <cstdio>

#include "ringflow/op.h"

namespace ringflow {

const char* opKindName(OpKind kind) {
  switch (kind) {
    case OpKind::None: return "none";
    case OpKind::AllReduce: return "allreduce";
    case OpKind::Broadcast: return "broadcast";
    case OpKind::AllGather: return "allgather";
    case OpKind::ReduceScatter: return "reduce_scatter";
    case OpKind::Reduce: return "reduce";
    case OpKind::Gather: return "gather";
    case OpKind::Scatter: return "scatter";
    case OpKind::AllToAll: return "alltoall";
    case OpKind::Barrier: return "barrier";
    case OpKind::Send: return "send";
    case OpKind::Split: return "split";
  }
  return "unknown-op";
}

std::string OpDesc::str() const {
  // snprintf rather than a stream: no locale or stream set-up per call.
  char buf[160];
  int n = std::snprintf(buf, sizeof(buf), "%s #%llu (count=%llu, %s", opKindName(kind),
                        (unsigned long long)seq, (unsigned long long)count, dtypeName(dtype));
  if (kind == OpKind::AllReduce || kind == OpKind::Reduce || kind == OpKind::ReduceScatter)
    n += std::snprintf(buf + n, sizeof(buf) - n, ", %s", reduceOpName(op));
  if (kind == OpKind::Broadcast || kind == OpKind::Reduce || kind == OpKind::Gather ||
      kind == OpKind::Scatter)
    n += std::snprintf(buf + n, sizeof(buf) - n, ", root=%u", root);
  std::snprintf(buf + n, sizeof(buf) - n, ")");
  return buf;
}

}  // namespace ringflow
