// The calls a user makes.  Each checks its arguments on the calling thread
// (a bad argument raises InvalidArgument at once and touches no peer), then
// queues the algorithm on the communicator and returns its Work.  Buffers
// must stay alive until the Work completes.
#pragma once

#include <vector>

#include "ringflow/comm.h"
#include "ringflow/types.h"
#include "ringflow/work.h"

namespace ringflow {

WorkPtr allreduce(Comm& c, Buffer data, ReduceOp op);
WorkPtr broadcast(Comm& c, Buffer data, int root);
// out holds size() blocks of in.count elements, in rank order.
WorkPtr allgather(Comm& c, Buffer in, Buffer out);
// in holds size() blocks of out.count elements; rank r gets block r reduced.
WorkPtr reduceScatter(Comm& c, Buffer in, Buffer out, ReduceOp op);
// In place; only the root's buffer receives the result.
WorkPtr reduce(Comm& c, Buffer data, int root, ReduceOp op);
// out (root only) holds size() blocks of in.count elements.
WorkPtr gather(Comm& c, Buffer in, Buffer out, int root);
// in (root only) holds size() blocks of out.count elements.
WorkPtr scatter(Comm& c, Buffer in, Buffer out, int root);
// inCounts[r] elements go to rank r, outCounts[r] come from it.
WorkPtr alltoall(Comm& c, Buffer in, Buffer out, std::vector<size_t> inCounts,
                 std::vector<size_t> outCounts);
WorkPtr barrier(Comm& c);

}  // namespace ringflow
