// The calls a user makes.  Each checks its arguments on the calling thread
// (a bad argument raises InvalidArgument at once and touches no peer), then
// queues the algorithm on the communicator and returns its Work.  Buffers
// must stay alive until the Work completes.
//
// `blocking`: the caller waits for the Work at once (torch's async_op=False).
// Such a call of at most RINGFLOW_INLINE_BYTES (default 256 KiB; 0: never)
// runs on the calling thread when nothing else is queued or running, and
// returns completed (Comm::submit's runHere); errors still come from wait().
#pragma once

#include <vector>

#include "ringflow/comm.h"
#include "ringflow/types.h"
#include "ringflow/work.h"

namespace ringflow {

// RINGFLOW_INLINE_BYTES, read once.
size_t inlineLimit();

WorkPtr allreduce(Comm& c, Buffer data, ReduceOp op, bool blocking = false);
WorkPtr broadcast(Comm& c, Buffer data, int root, bool blocking = false);
// out holds size() blocks of in.count elements, in rank order.
WorkPtr allgather(Comm& c, Buffer in, Buffer out, bool blocking = false);
// in holds size() blocks of out.count elements; rank r gets block r reduced.
WorkPtr reduceScatter(Comm& c, Buffer in, Buffer out, ReduceOp op, bool blocking = false);
// In place; only the root's buffer receives the result.
WorkPtr reduce(Comm& c, Buffer data, int root, ReduceOp op, bool blocking = false);
// out (root only) holds size() blocks of in.count elements.
WorkPtr gather(Comm& c, Buffer in, Buffer out, int root, bool blocking = false);
// in (root only) holds size() blocks of out.count elements.
WorkPtr scatter(Comm& c, Buffer in, Buffer out, int root, bool blocking = false);
// inCounts[r] elements go to rank r, outCounts[r] come from it.
WorkPtr alltoall(Comm& c, Buffer in, Buffer out, std::vector<size_t> inCounts,
                 std::vector<size_t> outCounts, bool blocking = false);
WorkPtr barrier(Comm& c, bool blocking = false);
// Collective, blocking: ranks passing the same color form a communicator,
// ordered by (key, rank); a negative color opts out (returns null).
std::shared_ptr<Comm> split(Comm& c, int color, int key);

}  // namespace ringflow
