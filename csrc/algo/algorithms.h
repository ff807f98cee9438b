// Algorithms: functions of (Comm, buffers, options) that run on the Comm's op
// thread and move data with its isend/irecv.  Internal to the library.
#pragma once

#include <vector>

#include "ringflow/comm.h"
#include "ringflow/types.h"

namespace ringflow {
class ShmTransport;
}

namespace ringflow::algo {

// Large messages travel as pieces so that reducing (or forwarding) one piece
// overlaps receiving the next.  RINGFLOW_PIECE_BYTES overrides.
size_t pieceBytes();

// Message slot within a call: which phase, which step, which piece.
inline uint64_t slotOf(uint64_t phase, uint64_t step, uint64_t piece) {
  return (phase << 56) | (step << 32) | piece;
}

// Splits `count` elements into `parts` nearly equal blocks.
struct Blocks {
  Blocks(size_t count, int parts);
  Blocks(std::vector<size_t> counts);
  size_t offset(int b) const { return offsets[b]; }
  size_t count(int b) const { return offsets[b + 1] - offsets[b]; }
  size_t maxCount() const;
  std::vector<size_t> offsets;  // parts + 1 entries
};

// The two halves of the ring, in place on `work` split into c.size()
// blocks: afterwards rank r's block r holds the reduction / every block is
// everywhere (block r being this rank's contribution).
void reduceScatterInPlace(Comm& c, const Buffer& work, const Blocks& blocks, ReduceOp op);
void allgatherInPlace(Comm& c, const Buffer& work, const Blocks& blocks);
// Each reads (and so checks) the RINGFLOW_* settings of its file, so that a
// bad one fails at start-up rather than at the first call that needs it
// (settings.cc).
void readSelectSettings();
void readShmArenaSettings();
void readAggregateSettings();

// The allreduce RINGFLOW_ALGO and the communicator's placement select
// (select.cc): the shared-memory arena, the hierarchical rings or the ring.
void allreduce(Comm& c, Buffer data, ReduceOp op);
// A barrier: one arena step on one host, else the dissemination barrier.
void barrier(Comm& c);
// "aggregate", "shm", "hierarchical" or "ring": what allreduce would run on
// `c` for a message of `bytes` of `dtype` reduced with `op`.
const char* allreduceAlgorithm(Comm& c, size_t bytes, DType dtype = DType::Float32,
                               ReduceOp op = ReduceOp::Sum);
// The shared-memory transport whose arena `c` owns, or null.
ShmTransport* arenaFor(Comm& c);
// Every member of `c` must be on this host and `c` must own shm's arena.
void shmAllreduce(Comm& c, ShmTransport& shm, Buffer data, ReduceOp op);

void ringAllreduce(Comm& c, Buffer data, ReduceOp op);
// Mechanism 3: sum or average of a floating-point tensor through the
// aggregators of RINGFLOW_AGGREGATOR (algo/aggregate.cc).
void aggregateAllreduce(Comm& c, Buffer data, ReduceOp op);
// What aggregateAllreduce can do: sum and avg of floating-point types.
bool aggregateApplies(DType dtype, ReduceOp op);
// Mechanism 1: reduce-scatter in each lower-order group, allreduce each shard
// over the higher-order ring, allgather back down.  Needs c.setGroups().
void hierarchicalAllreduce(Comm& c, Buffer data, ReduceOp op);
// in: size() blocks of out.count; rank r ends with block r reduced.
void ringReduceScatter(Comm& c, Buffer in, Buffer out, ReduceOp op);
// out: size() blocks of in.count, in rank order.
void ringAllgather(Comm& c, Buffer in, Buffer out);

void chainBroadcast(Comm& c, Buffer data, int root);
// Leaves non-root buffers untouched.
void chainReduce(Comm& c, Buffer data, int root, ReduceOp op);
void directGather(Comm& c, Buffer in, Buffer out, int root);
void directScatter(Comm& c, Buffer in, Buffer out, int root);
// Counts in elements, one per rank.
void pairwiseAlltoall(Comm& c, Buffer in, Buffer out, const std::vector<size_t>& inCounts,
                      const std::vector<size_t>& outCounts);
void disseminationBarrier(Comm& c);

// Piece-by-piece send/receive of one contiguous region.
void sendPieces(Comm& c, int peer, uint64_t phase, uint64_t step, const char* data, size_t bytes,
                std::vector<RequestPtr>& out);
void recvPieces(Comm& c, int peer, uint64_t phase, uint64_t step, char* data, size_t bytes,
                std::vector<RequestPtr>& out);

}  // namespace ringflow::algo
