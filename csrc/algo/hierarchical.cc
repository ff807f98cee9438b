// Hierarchical ring aggregation.  With G groups (by default
// one per host), each group reduce-scatters over its own lower-order ring so
// that local rank i holds shard i summed over the group; the G ranks holding
// shard i form the higher-order ring and allreduce it; each group then
// allgathers the shards back down.  Only 1/K of the message crosses the
// higher-order (slow, inter-host) links per ring, and the K higher rings run
// side by side.  K is the smallest group's size: in a larger group, local
// ranks K and up get empty blocks (they only add their data in and receive
// the result), so every group cuts the message at the same offsets.
// With compression on (compress.h), floating-point sums cross the higher
// ring as low-bit codes (compressed.cc); the lower rings stay exact.
#include "ringflow/compress.h"
#include "schedule.h"
#include "ringflow/kernels.h"
#include "ringflow/stats.h"

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
  Comm* higher = c.higher();  // null on a rank that holds no shard
  if (!lower)
    throw InvalidArgument("hierarchical allreduce needs a group layout (RINGFLOW_GROUPS or setGroups)");
  Blocks shards(data.count, c.hierarchyShards());
  std::vector<size_t> counts(size_t(lower->size()), 0);
  for (int s = 0; s < c.hierarchyShards(); ++s) counts[size_t(s)] = shards.count(s);
  Blocks blocks(counts);
  const int mine = lower->rank();
  Buffer shard{data.at(blocks.offset(mine)), blocks.count(mine), data.dtype};
  const int bits = compressBitsFor(c, data.dtype, op);
  PhaseClock clock;  // the same-host levels' share of a compressed call

  lower->runInline(subCall(c.op(), OpKind::ReduceScatter, data.count), c, [&] {
    if (lower->size() > 1) reduceScatterInPlace(*lower, data, blocks, op);
  });
  if (bits) clock.lap(CompressPhase::IntraReduce);
  if (higher)
    higher->runInline(subCall(c.op(), OpKind::AllReduce, shard.count), c, [&] {
      if (higher->size() > 1 && bits) {
        compressedAllreduce(*higher, shard, c, data.ptr, data.count, bits);
      } else if (higher->size() > 1) {
        Blocks across(shard.count, higher->size());
        reduceScatterInPlace(*higher, shard, across, op);
        allgatherInPlace(*higher, shard, across);
      }
    });
  c.markAggregated();
  if (op == ReduceOp::Avg && shard.count)
    kernels::divide(shard.ptr, shard.count, shard.dtype, double(c.size()));
  if (bits) clock = PhaseClock();
  lower->runInline(subCall(c.op(), OpKind::AllGather, data.count), c, [&] {
    if (lower->size() > 1) allgatherInPlace(*lower, data, blocks);
  });
  if (bits) clock.lap(CompressPhase::IntraGather);
}

}  // namespace ringflow::algo

