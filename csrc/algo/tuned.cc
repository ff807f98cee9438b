// Running calls by a tuned schedule (mechanism 9): the rule for the
// message's size names the allreduce; the ring and recursive doubling run
// in the schedule's ring order (pairs of neighbouring positions swap first),
// the hierarchical rings over its groups.  The other ring collectives
// (reduce-scatter, allgather, the broadcast and reduce chains) follow the
// ring order through ringView.  Deterministic mode runs
// deterministicAllreduce whatever the size.
#include <algorithm>
#include <cstring>

#include "schedule.h"
#include "ringflow/kernels.h"

namespace ringflow::algo {
namespace {

const char* const kAlgorithms[] = {"ring", "hierarchical", "shm", "aggregate",
                                   "recursive_doubling"};

const std::string* ruleFor(const Schedule& s, size_t bytes) {
  const std::string* name = nullptr;
  for (const SizeRule& rule : s.algorithms)
    if (rule.minBytes <= bytes) name = &rule.algorithm;
  return name;
}

// What actually runs: a rule that cannot run here (no arena, no layout, a
// dtype the aggregator does not take) falls back to the ring.
const char* resolve(Comm& c, const Schedule& s, size_t bytes, DType dtype, ReduceOp op) {
  if (s.deterministic) return "deterministic";
  const std::string* name = ruleFor(s, bytes);
  if (!name) return "ring";
  if (*name == "hierarchical" && c.lower()) return "hierarchical";
  if (*name == "shm" && arenaFor(c)) return "shm";
  if (*name == "aggregate" && aggregateApplies(dtype, op)) return "aggregate";
  if (*name == "recursive_doubling") return "recursive_doubling";
  return "ring";
}

OpDesc subCall(const OpDesc& parent, OpKind kind) {
  OpDesc d = parent;
  d.kind = kind;
  d.root = 0;
  return d;
}

// The ring over c.ring(): its blocks follow ring positions, which an
// allreduce may do since every rank ends with every block.
void orderedRingAllreduce(Comm& c, Comm& ring, Buffer data, ReduceOp op) {
  Blocks blocks(data.count, ring.size());
  ring.runInline(subCall(c.op(), OpKind::ReduceScatter), c,
                 [&] { reduceScatterInPlace(ring, data, blocks, op); });
  c.markAggregated();
  if (op == ReduceOp::Avg)
    kernels::divide(data.at(blocks.offset(ring.rank())), blocks.count(ring.rank()), data.dtype,
                    double(ring.size()));
  ring.runInline(subCall(c.op(), OpKind::AllGather), c,
                 [&] { allgatherInPlace(ring, data, blocks); });
}

}  // namespace

void setSchedule(Comm& c, const Schedule& s) {
  for (const SizeRule& rule : s.algorithms) {
    bool known = false;
    for (const char* a : kAlgorithms) known |= rule.algorithm == a;
    if (!known)
      throw InvalidArgument("schedule: unknown allreduce algorithm '" + rule.algorithm +
                            "' (ring, hierarchical, shm or aggregate)");
  }
  c.setSchedule(s);
}

const char* scheduledAlgorithm(Comm& c, size_t bytes, DType dtype, ReduceOp op) {
  const Schedule* s = c.schedule();
  return s ? resolve(c, *s, bytes, dtype, op) : nullptr;
}

bool scheduledAllreduce(Comm& c, Buffer data, ReduceOp op) {
  const Schedule* s = c.schedule();
  if (!s) return false;
  const std::string chosen = resolve(c, *s, data.bytes(), data.dtype, op);
  if (chosen == "deterministic") {
    deterministicAllreduce(c, data, op);
  } else if (chosen == "hierarchical") {
    hierarchicalAllreduce(c, data, op);
  } else if (chosen == "shm") {
    shmAllreduce(c, *arenaFor(c), data, op);
  } else if (chosen == "aggregate") {
    aggregateAllreduce(c, data, op);
  } else if (chosen == "recursive_doubling") {
    ringView(c).run(OpKind::AllReduce, [&](Comm& rc) { recursiveDoublingAllreduce(rc, data, op); });
  } else if (c.ring() && c.size() > 1) {
    orderedRingAllreduce(c, *c.ring(), data, op);
  } else {
    ringAllreduce(c, data, op);
  }
  return true;
}

RingView ringView(Comm& c) { return RingView{c, c.size() > 1 ? c.ring() : nullptr}; }

int RingView::position(int rank) const {
  if (!ring) return rank;
  const std::vector<int>& order = parent.schedule()->ringOrder;
  return int(std::find(order.begin(), order.end(), rank) - order.begin());
}

Blocks RingView::equalBlocks(size_t count) const {
  const size_t n = size_t(parent.size());
  std::vector<size_t> starts(n), counts(n, count);
  for (size_t p = 0; p < n; ++p)
    starts[p] = size_t(ring ? parent.schedule()->ringOrder[p] : int(p)) * count;
  return Blocks(std::move(starts), std::move(counts));
}

void RingView::run(OpKind kind, const std::function<void(Comm&)>& body) const {
  if (ring)
    ring->runInline(subCall(parent.op(), kind), parent, [&] { body(*ring); });
  else
    body(parent);
}

}  // namespace ringflow::algo
