#include "ringflow/collectives.h"

#include "ringflow/algorithms.h"
#include "ringflow/env.h"
#include "ringflow/settings.h"

namespace ringflow {
namespace {

OpDesc describe(OpKind kind, const Buffer& b, ReduceOp op = ReduceOp::Sum, int root = 0) {
  OpDesc d;
  d.kind = kind;
  d.dtype = b.dtype;
  d.count = b.count;
  d.op = op;
  d.root = uint32_t(root);
  return d;
}

void checkBuffer(const char* call, const char* name, const Buffer& b) {
  if (b.count > 0 && b.ptr == nullptr)
    throw InvalidArgument(std::string(call) + ": " + name + " is null but has " +
                          std::to_string(b.count) + " elements");
}

void checkRoot(const char* call, const Comm& c, int root) {
  if (root < 0 || root >= c.size())
    throw InvalidArgument(std::string(call) + ": root " + std::to_string(root) +
                          " is not a rank of a group of size " + std::to_string(c.size()));
}

void checkSameDType(const char* call, const Buffer& a, const Buffer& b) {
  if (a.dtype != b.dtype)
    throw InvalidArgument(std::string(call) + ": input is " + dtypeName(a.dtype) +
                          " but output is " + dtypeName(b.dtype));
}

void checkCount(const char* call, const char* name, size_t got, size_t want) {
  if (got != want)
    throw InvalidArgument(std::string(call) + ": " + name + " has " + std::to_string(got) +
                          " elements, expected " + std::to_string(want));
}

// Whether a call of `bytes` may run on the calling thread (collectives.h).
bool runHere(bool blocking, size_t bytes) {
  const size_t limit = inlineLimit();
  return blocking && bytes <= limit && limit > 0;
}

}  // namespace

size_t inlineLimit() {
  static const size_t limit = envSize("RINGFLOW_INLINE_BYTES", 256 << 10);
  return limit;
}

namespace {
const SettingsRegistration kSettings(
    {{"RINGFLOW_INLINE_BYTES",
      "blocking collectives up to this size run on the calling thread when nothing is queued "
      "(default 262144; 0 = never)"}},
    [] { inlineLimit(); });
}  // namespace

WorkPtr allreduce(Comm& c, Buffer data, ReduceOp op, bool blocking) {
  checkBuffer("allreduce", "tensor", data);
  checkReduceOp(data.dtype, op);
  Comm* cp = &c;
  return c.submit(describe(OpKind::AllReduce, data, op),
                  [cp, data, op] { algo::allreduce(*cp, data, op); },
                  runHere(blocking, data.bytes()));
}

WorkPtr broadcast(Comm& c, Buffer data, int root, bool blocking) {
  checkBuffer("broadcast", "tensor", data);
  checkRoot("broadcast", c, root);
  Comm* cp = &c;
  return c.submit(describe(OpKind::Broadcast, data, ReduceOp::Sum, root),
                  [cp, data, root] { algo::chainBroadcast(*cp, data, root); },
                  runHere(blocking, data.bytes()));
}

WorkPtr allgather(Comm& c, Buffer in, Buffer out, bool blocking) {
  checkBuffer("allgather", "input", in);
  checkBuffer("allgather", "output", out);
  checkSameDType("allgather", in, out);
  checkCount("allgather", "output", out.count, in.count * size_t(c.size()));
  Comm* cp = &c;
  return c.submit(describe(OpKind::AllGather, in),
                  [cp, in, out] { algo::ringAllgather(*cp, in, out); },
                  runHere(blocking, out.bytes()));
}

WorkPtr reduceScatter(Comm& c, Buffer in, Buffer out, ReduceOp op, bool blocking) {
  checkBuffer("reduce_scatter", "input", in);
  checkBuffer("reduce_scatter", "output", out);
  checkSameDType("reduce_scatter", in, out);
  checkReduceOp(in.dtype, op);
  checkCount("reduce_scatter", "input", in.count, out.count * size_t(c.size()));
  Comm* cp = &c;
  return c.submit(describe(OpKind::ReduceScatter, out, op),
                  [cp, in, out, op] { algo::ringReduceScatter(*cp, in, out, op); },
                  runHere(blocking, in.bytes()));
}

WorkPtr reduce(Comm& c, Buffer data, int root, ReduceOp op, bool blocking) {
  checkBuffer("reduce", "tensor", data);
  checkRoot("reduce", c, root);
  checkReduceOp(data.dtype, op);
  Comm* cp = &c;
  return c.submit(describe(OpKind::Reduce, data, op, root),
                  [cp, data, root, op] { algo::chainReduce(*cp, data, root, op); },
                  runHere(blocking, data.bytes()));
}

WorkPtr gather(Comm& c, Buffer in, Buffer out, int root, bool blocking) {
  checkBuffer("gather", "input", in);
  checkRoot("gather", c, root);
  if (c.rank() == root) {
    checkBuffer("gather", "output", out);
    checkSameDType("gather", in, out);
    checkCount("gather", "output", out.count, in.count * size_t(c.size()));
  }
  Comm* cp = &c;
  return c.submit(describe(OpKind::Gather, in, ReduceOp::Sum, root),
                  [cp, in, out, root] { algo::directGather(*cp, in, out, root); },
                  runHere(blocking, in.bytes() * size_t(c.size())));
}

WorkPtr scatter(Comm& c, Buffer in, Buffer out, int root, bool blocking) {
  checkBuffer("scatter", "output", out);
  checkRoot("scatter", c, root);
  if (c.rank() == root) {
    checkBuffer("scatter", "input", in);
    checkSameDType("scatter", in, out);
    checkCount("scatter", "input", in.count, out.count * size_t(c.size()));
  }
  Comm* cp = &c;
  return c.submit(describe(OpKind::Scatter, out, ReduceOp::Sum, root),
                  [cp, in, out, root] { algo::directScatter(*cp, in, out, root); },
                  runHere(blocking, out.bytes() * size_t(c.size())));
}

WorkPtr alltoall(Comm& c, Buffer in, Buffer out, std::vector<size_t> inCounts,
                 std::vector<size_t> outCounts, bool blocking) {
  checkBuffer("alltoall", "input", in);
  checkBuffer("alltoall", "output", out);
  checkSameDType("alltoall", in, out);
  checkCount("alltoall", "input splits", inCounts.size(), size_t(c.size()));
  checkCount("alltoall", "output splits", outCounts.size(), size_t(c.size()));
  size_t inTotal = 0, outTotal = 0;
  for (size_t n : inCounts) inTotal += n;
  for (size_t n : outCounts) outTotal += n;
  checkCount("alltoall", "input (sum of input splits)", in.count, inTotal);
  checkCount("alltoall", "output (sum of output splits)", out.count, outTotal);
  // Ranks may legitimately differ in totals, so the descriptor carries none;
  // each message's length is checked against what its receiver expects.
  OpDesc d = describe(OpKind::AllToAll, in);
  d.count = 0;
  Comm* cp = &c;
  return c.submit(d, [cp, in, out, inCounts, outCounts] {
    algo::pairwiseAlltoall(*cp, in, out, inCounts, outCounts);
  }, runHere(blocking, in.bytes() + out.bytes()));
}

std::shared_ptr<Comm> split(Comm& c, int color, int key) {
  std::vector<int64_t> mine = {color, key};
  std::vector<int64_t> all(2 * size_t(c.size()));
  OpDesc d;
  d.kind = OpKind::Split;
  d.dtype = DType::Int64;
  d.count = 2;
  Buffer in{mine.data(), 2, DType::Int64}, out{all.data(), all.size(), DType::Int64};
  Comm* cp = &c;
  c.submit(d, [cp, in, out] { algo::ringAllgather(*cp, in, out); })->wait();
  return c.splitByColor(all, color);
}

WorkPtr barrier(Comm& c, bool blocking) {
  OpDesc d;
  d.kind = OpKind::Barrier;
  Comm* cp = &c;
  return c.submit(d, [cp] { algo::barrier(*cp); }, runHere(blocking, 0));
}

}  // namespace ringflow
