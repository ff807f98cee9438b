// Deterministic mode: every element is reduced in rank order,
// ((x0 + x1) + x2) + ... + x(n-1), whatever the message size, the bucket it
// travels in, or the ring order -- the ring's order depends on where block
// boundaries fall, so a different bucket size changes its rounding.  Rank r
// receives every rank's part of block r (a direct exchange: the ring's
// reduce-scatter traffic, n-1 messages) and folds them in rank order; the
// allreduce then hands the blocks round by the ring's allgather, the reduce
// sends them to the root, the reduce-scatter keeps them.  The three give the
// same bits for the same inputs.
#include <cstring>

#include "schedule.h"
#include "ringflow/kernels.h"

namespace ringflow::algo {
namespace {
constexpr uint64_t kPhaseGatherBlock = 8;  // step 0: to the block's owner; step 1: to the root

// Block r of `data` on rank r becomes the rank-order fold of every rank's
// block r (not yet divided for Avg); other blocks are only read.
void foldOwnBlock(Comm& c, Buffer data, const Blocks& blocks, ReduceOp op) {
  const int n = c.size(), r = c.rank();
  const size_t es = elementSize(data.dtype);
  const size_t mine = blocks.count(r), mineBytes = mine * es;
  char* block = static_cast<char*>(data.at(blocks.offset(r)));
  std::vector<RequestPtr> reqs;
  // Kept across calls: fresh pages cost far more to touch than to reuse.
  static thread_local std::vector<char> parts;
  if (mine > 0) {
    if (parts.size() < size_t(n) * mineBytes) parts.resize(size_t(n) * mineBytes);
    for (int k = 1; k < n; ++k) {
      int from = (r - k + n) % n;
      recvPieces(c, from, kPhaseGatherBlock, 0, parts.data() + size_t(from) * mineBytes,
                 mineBytes, reqs);
    }
  }
  for (int k = 1; k < n; ++k) {
    int to = (r + k) % n;
    if (blocks.count(to))
      sendPieces(c, to, kPhaseGatherBlock, 0, static_cast<char*>(data.at(blocks.offset(to))),
                 blocks.count(to) * es, reqs);
  }
  if (mine > 0) std::memcpy(parts.data() + size_t(r) * mineBytes, block, mineBytes);
  c.waitAll(reqs);
  if (mine == 0 || n == 1) return;
  std::memcpy(block, parts.data(), mineBytes);
  for (int q = 1; q < n; ++q)
    kernels::reduce(block, block, parts.data() + size_t(q) * mineBytes, mine, data.dtype, op);
}

void divideIfAvg(void* p, size_t count, DType dtype, ReduceOp op, int n) {
  if (op == ReduceOp::Avg && count) kernels::divide(p, count, dtype, double(n));
}

// A copy of `in` kept across calls, for the calls that must not touch it.
Buffer workCopy(Buffer in) {
  static thread_local std::vector<char> work;
  if (work.size() < in.bytes()) work.resize(in.bytes());
  if (in.bytes()) std::memcpy(work.data(), in.ptr, in.bytes());
  return Buffer{work.data(), in.count, in.dtype};
}

}  // namespace

void deterministicAllreduce(Comm& c, Buffer data, ReduceOp op) {
  const int n = c.size(), r = c.rank();
  Blocks blocks(data.count, n);
  foldOwnBlock(c, data, blocks, op);
  c.markAggregated();
  divideIfAvg(data.at(blocks.offset(r)), blocks.count(r), data.dtype, op, n);
  if (n > 1) allgatherInPlace(c, data, blocks);
}

void deterministicReduceScatter(Comm& c, Buffer in, Buffer out, ReduceOp op) {
  const int n = c.size(), r = c.rank();
  Blocks blocks(std::vector<size_t>(size_t(n), out.count));
  Buffer work = workCopy(in);
  foldOwnBlock(c, work, blocks, op);
  c.markAggregated();
  if (out.count) std::memcpy(out.ptr, work.at(blocks.offset(r)), out.bytes());
  divideIfAvg(out.ptr, out.count, out.dtype, op, n);
}

void deterministicReduce(Comm& c, Buffer data, int root, ReduceOp op) {
  const int n = c.size(), r = c.rank();
  const size_t es = elementSize(data.dtype);
  Blocks blocks(data.count, n);
  // Only the root's buffer changes; it ends holding every block.
  Buffer work = r == root ? data : workCopy(data);
  foldOwnBlock(c, work, blocks, op);
  c.markAggregated();
  divideIfAvg(work.at(blocks.offset(r)), blocks.count(r), data.dtype, op, n);
  std::vector<RequestPtr> reqs;
  if (r == root) {
    for (int q = 0; q < n; ++q)
      if (q != root && blocks.count(q))
        recvPieces(c, q, kPhaseGatherBlock, 1, static_cast<char*>(data.at(blocks.offset(q))),
                   blocks.count(q) * es, reqs);
  } else if (blocks.count(r)) {
    sendPieces(c, root, kPhaseGatherBlock, 1, static_cast<char*>(work.at(blocks.offset(r))),
               blocks.count(r) * es, reqs);
  }
  c.waitAll(reqs);
}

}  // namespace ringflow::algo
