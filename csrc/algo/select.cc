// Which allreduce runs a call.
// RINGFLOW_ALGO=auto|ring|shm|hierarchical|aggregate|recursive_doubling:
//   ring          the ring over whatever links the transport has (shared
//                 memory to peers on this host, TCP to others);
//   recursive_doubling  log2(n) rounds of pairwise swaps: the fewest message
//                 latencies, for small messages (never chosen by untuned
//                 auto; a tuned schedule picks it per size bucket);
//   shm           the shared-memory arena (algo/shm_allreduce.cc) wherever
//                 it can run, the ring elsewhere;
//   hierarchical  lower rings per group, higher ring per shard (needs a
//                 group layout: RINGFLOW_GROUPS, or one group per host);
//   auto          (default) the arena wherever it can run; else the
//                 hierarchical rings when a layout of several multi-rank
//                 groups is set and the message is at least
//                 RINGFLOW_HIER_MIN_BYTES (default 64 KiB); else the ring;
//   aggregate     sum and avg of floating-point tensors through the
//                 aggregator services of RINGFLOW_AGGREGATOR (never chosen
//                 by auto: it needs a service running); other calls run as
//                 auto would run them.
// The arena can run for the communicator that owns it: one spanning every
// rank of a transport whose ranks are all on this host (shared memory up).
// Elsewhere (sub-groups, several hosts, no shared memory) every setting
// falls back to the ring.  Every rank decides the same way, from facts all
// ranks share.
// A tuned schedule set on the communicator (algo/tuned.cc) comes first.
#include <vector>

#include "ringflow/compress.h"
#include "ringflow/env.h"
#include "ringflow/settings.h"
#include "ringflow/shm.h"
#include "schedule.h"

namespace ringflow::algo {
namespace {

// RINGFLOW_ALGO's values, in the order of kChoiceNames.
enum class Choice { Auto, Ring, Shm, Hierarchical, Aggregate, RecursiveDoubling };
const std::vector<const char*> kChoiceNames = {"auto",         "ring",     "shm",
                                               "hierarchical", "aggregate", "recursive_doubling"};

Choice fromEnv() {
  static const Choice c = Choice(envChoice("RINGFLOW_ALGO", size_t(Choice::Auto), kChoiceNames));
  return c;
}

size_t hierarchicalMinBytes() {
  static const size_t v = envSize("RINGFLOW_HIER_MIN_BYTES", 64 << 10);
  return v;
}

const SettingsRegistration kSettings(
    {{"RINGFLOW_ALGO",
      "allreduce algorithm: auto (default: shared-memory arena when every rank is on this "
      "host, hierarchical rings for a multi-group layout, ring otherwise), ring, shm, "
      "hierarchical, aggregate, or recursive_doubling (latency-optimal, for small messages)"},
     {"RINGFLOW_HIER_MIN_BYTES", "auto picks hierarchical from this message size up (default 65536)"}},
    [] {
      fromEnv();
      hierarchicalMinBytes();
    });

// From facts every rank shares (a rank outside the higher rings has none).
bool layoutWorthIt(Comm& c) {
  return c.hierarchyGroups() > 1 && c.hierarchyGroups() < c.size();
}

}  // namespace

ShmTransport* arenaFor(Comm& c) {
  ShmTransport* shm = c.transport().sharedMemory();
  return shm && shm->arenaComm() == c.id() ? shm : nullptr;
}

namespace {

// The allreduces a call can run; never Auto.
Choice choose(Comm& c, size_t bytes, DType dtype, ReduceOp op) {
  // RINGFLOW_COMPRESS lives on the hierarchical algorithm's cross-host ring.
  if (compressBitsFor(c, dtype, op)) return Choice::Hierarchical;
  switch (fromEnv()) {
    case Choice::Aggregate:
      if (aggregateApplies(dtype, op)) return Choice::Aggregate;
      break;
    case Choice::Ring: return Choice::Ring;
    case Choice::RecursiveDoubling: return Choice::RecursiveDoubling;
    case Choice::Hierarchical:
      if (!c.lower())
        throw InvalidArgument("RINGFLOW_ALGO=hierarchical needs a group layout (RINGFLOW_GROUPS)");
      return Choice::Hierarchical;
    case Choice::Shm: return arenaFor(c) ? Choice::Shm : Choice::Ring;
    case Choice::Auto: break;
  }
  if (arenaFor(c)) return Choice::Shm;
  if (layoutWorthIt(c) && bytes >= hierarchicalMinBytes()) return Choice::Hierarchical;
  return Choice::Ring;
}

}  // namespace

const char* allreduceAlgorithm(Comm& c, size_t bytes, DType dtype, ReduceOp op) {
  if (const char* tuned = scheduledAlgorithm(c, bytes, dtype, op)) return tuned;  // tuned.cc
  return kChoiceNames[size_t(choose(c, bytes, dtype, op))];
}

void allreduce(Comm& c, Buffer data, ReduceOp op) {
  if (scheduledAllreduce(c, data, op)) return;  // a tuned schedule (tuned.cc)
  switch (choose(c, data.bytes(), data.dtype, op)) {
    case Choice::Aggregate: return aggregateAllreduce(c, data, op);
    case Choice::Shm: return shmAllreduce(c, *arenaFor(c), data, op);
    case Choice::Hierarchical: return hierarchicalAllreduce(c, data, op);
    case Choice::RecursiveDoubling: return recursiveDoublingAllreduce(c, data, op);
    case Choice::Ring:
    case Choice::Auto: break;
  }
  ringAllreduce(c, data, op);
}

void barrier(Comm& c) {
  // Same host: one arena step (a one-element allreduce) wakes each waiter
  // once, on the calling thread, where the dissemination barrier's empty
  // messages pass through the progress thread and then the caller: two
  // wake-ups a round.
  int32_t token = 0;
  Buffer one{&token, 1, DType::Int32};
  if (choose(c, one.bytes(), one.dtype, ReduceOp::Max) == Choice::Shm)
    return shmAllreduce(c, *arenaFor(c), one, ReduceOp::Max);
  disseminationBarrier(c);
}

}  // namespace ringflow::algo
