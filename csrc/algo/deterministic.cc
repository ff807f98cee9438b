// Deterministic allreduce: every element is reduced in rank order,
// ((x0 + x1) + x2) + ... + x(n-1), whatever the message size, the bucket it
// travels in, or the ring order -- the ring's order depends on where block
// boundaries fall, so a different bucket size changes its rounding.  Rank r
// receives every rank's part of block r (a direct exchange: the ring's
// reduce-scatter traffic, n-1 messages), folds them in rank order, and the
// ring's allgather hands the blocks round.
#include <cstring>

#include "schedule.h"
#include "ringflow/kernels.h"

namespace ringflow::algo {
namespace {
constexpr uint64_t kPhaseGatherBlock = 8;
}  // namespace

void deterministicAllreduce(Comm& c, Buffer data, ReduceOp op) {
  const int n = c.size(), r = c.rank();
  const size_t es = elementSize(data.dtype);
  Blocks blocks(data.count, n);
  const size_t mine = blocks.count(r), mineBytes = mine * es;
  char* block = static_cast<char*>(data.at(blocks.offset(r)));
  if (n > 1 && mine > 0) {
    // Kept across calls: fresh pages cost far more to touch than to reuse.
    static thread_local std::vector<char> parts;
    if (parts.size() < size_t(n) * mineBytes) parts.resize(size_t(n) * mineBytes);
    std::vector<RequestPtr> reqs;
    for (int k = 1; k < n; ++k) {
      int from = (r - k + n) % n;
      recvPieces(c, from, kPhaseGatherBlock, 0, parts.data() + size_t(from) * mineBytes, mineBytes,
                 reqs);
    }
    for (int k = 1; k < n; ++k) {
      int to = (r + k) % n;
      if (blocks.count(to))
        sendPieces(c, to, kPhaseGatherBlock, 0, static_cast<char*>(data.at(blocks.offset(to))),
                   blocks.count(to) * es, reqs);
    }
    std::memcpy(parts.data() + size_t(r) * mineBytes, block, mineBytes);
    c.waitAll(reqs);
    std::memcpy(block, parts.data(), mineBytes);
    for (int q = 1; q < n; ++q)
      kernels::reduce(block, block, parts.data() + size_t(q) * mineBytes, mine, data.dtype, op);
  } else if (n > 1) {
    std::vector<RequestPtr> sends;
    for (int k = 1; k < n; ++k) {
      int to = (r + k) % n;
      if (blocks.count(to))
        sendPieces(c, to, kPhaseGatherBlock, 0, static_cast<char*>(data.at(blocks.offset(to))),
                   blocks.count(to) * es, sends);
    }
    c.waitAll(sends);
  }
  c.markAggregated();
  if (op == ReduceOp::Avg && mine)
    kernels::divide(block, mine, data.dtype, double(n));
  if (n > 1) allgatherInPlace(c, data, blocks);
}

}  // namespace ringflow::algo
