// The algorithms' entry points: functions of (Comm, buffers, options) that
// run as a call of the Comm (on its op thread, or inline on the caller's)
// and move data with its isend/irecv.  The collectives layer dispatches to
// them; their building blocks are private to csrc/algo (schedule.h).
#pragma once

#include <vector>

#include "ringflow/comm.h"
#include "ringflow/types.h"

namespace ringflow {
class ShmTransport;
}

namespace ringflow::algo {

// The allreduce RINGFLOW_ALGO and the communicator's placement select
// (select.cc): the shared-memory arena, the hierarchical rings or the ring.
void allreduce(Comm& c, Buffer data, ReduceOp op);
// A barrier: one arena step on one host, else the dissemination barrier.
void barrier(Comm& c);
// "aggregate", "shm", "hierarchical", "recursive_doubling", "ring" (or, under
// a tuned schedule, "deterministic"): what allreduce would run on
// `c` for a message of `bytes` of `dtype` reduced with `op`.
const char* allreduceAlgorithm(Comm& c, size_t bytes, DType dtype = DType::Float32,
                               ReduceOp op = ReduceOp::Sum);
// The shared-memory transport whose arena `c` owns, or null.
ShmTransport* arenaFor(Comm& c);
// Every member of `c` must be on this host and `c` must own shm's arena.
void shmAllreduce(Comm& c, ShmTransport& shm, Buffer data, ReduceOp op);

void ringAllreduce(Comm& c, Buffer data, ReduceOp op);
// Every element reduced in rank order, x0 + x1 + ... + x(n-1), whatever the
// message size or ring order (algo/deterministic.cc).
void deterministicAllreduce(Comm& c, Buffer data, ReduceOp op);
// The same rank-order fold for reduce-scatter and reduce: the bits
// deterministicAllreduce gives, block by block / at the root.
void deterministicReduceScatter(Comm& c, Buffer in, Buffer out, ReduceOp op);
void deterministicReduce(Comm& c, Buffer data, int root, ReduceOp op);
// log2(n) rounds of pairwise swaps (algo/recursive_doubling.cc): the
// latency-optimal allreduce for small messages.
void recursiveDoublingAllreduce(Comm& c, Buffer data, ReduceOp op);

// A tuned schedule (algo/tuned.cc): setSchedule checks its algorithm names
// and sets it on `c`; scheduledAllreduce runs a call by it and returns
// false where `c` has none; scheduledAlgorithm names what it would run
// (null: no schedule).
void setSchedule(Comm& c, const Schedule& s);
bool scheduledAllreduce(Comm& c, Buffer data, ReduceOp op);
const char* scheduledAlgorithm(Comm& c, size_t bytes, DType dtype, ReduceOp op);
// Sum or average of a floating-point tensor through the aggregator services
// of RINGFLOW_AGGREGATOR (algo/aggregate.cc).
void aggregateAllreduce(Comm& c, Buffer data, ReduceOp op);
// What aggregateAllreduce can do: sum and avg of floating-point types.
bool aggregateApplies(DType dtype, ReduceOp op);
// Hierarchical allreduce: reduce-scatter in each lower-order group,
// allreduce each shard over the higher-order ring, allgather back down.
// Needs c.setGroups().
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

}  // namespace ringflow::algo
