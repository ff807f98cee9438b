// Hierarchical ring aggregation (mechanism 1).  With G groups of L ranks
// (by default one group per host), each group reduce-scatters over its own
// lower-order ring, so local rank i holds block i summed over the group; the
// G ranks holding block i form the higher-order ring and allreduce it; each
// group then allgathers the blocks back down.  Only 1/L of the message
// crosses the higher-order (slow, inter-host) links, and the L higher rings
// run side by side.
#include "algorithms.h"
#include "ringflow/kernels.h"

namespace ringflow::algo {
namespace {

OpDesc subCall(const OpDesc& parent, OpKind kind, size_t count) {
  OpDesc d = parent;
  d.kind = kind;
  d.count = count;
  d.root = 0;
  return d;
}

}  // namespace

void hierarchicalAllreduce(Comm& c, Buffer data, ReduceOp op) {
  Comm* lower = c.lower();
  Comm* higher = c.higher();
  if (!lower || !higher)
    throw InvalidArgument("hierarchical allreduce needs a group layout (RINGFLOW_GROUPS or setGroups)");
  Blocks blocks(data.count, lower->size());
  const int mine = lower->rank();
  Buffer shard{data.at(blocks.offset(mine)), blocks.count(mine), data.dtype, data.device};

  lower->runInline(subCall(c.op(), OpKind::ReduceScatter, data.count), c, [&] {
    if (lower->size() > 1) reduceScatterInPlace(*lower, data, blocks, op);
  });
  higher->runInline(subCall(c.op(), OpKind::AllReduce, shard.count), c, [&] {
    if (higher->size() > 1) {
      Blocks across(shard.count, higher->size());
      reduceScatterInPlace(*higher, shard, across, op);
      allgatherInPlace(*higher, shard, across);
    }
  });
  c.markAggregated();
  if (op == ReduceOp::Avg) kernels::divide(shard.ptr, shard.count, shard.dtype, double(c.size()));
  lower->runInline(subCall(c.op(), OpKind::AllGather, data.count), c, [&] {
    if (lower->size() > 1) allgatherInPlace(*lower, data, blocks);
  });
}

}  // namespace ringflow::algo

