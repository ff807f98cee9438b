// Which allreduce runs a call.  RINGFLOW_ALGO=auto|ring|shm:
//   ring  the ring over whatever links the transport has (shared memory to
//         peers on this host, TCP to others);
//   shm   the shared-memory arena (algo/shm_allreduce.cc) wherever it can run;
//   auto  (default) the same as shm: the arena wherever it can run, the ring
//         elsewhere.
// The arena can run for the communicator that owns it: one spanning every
// rank of a transport whose ranks are all on this host (shared memory up).
// Elsewhere (sub-groups, several hosts, no shared memory) every setting
// falls back to the ring.  Every rank decides the same way, from facts all
// ranks share.
#include <cstdlib>
#include <cstring>

#include "algorithms.h"
#include "ringflow/routed.h"

namespace ringflow::algo {
namespace {

enum class Choice { Auto, Ring, Shm };

Choice fromEnv() {
  static const Choice c = [] {
    const char* v = std::getenv("RINGFLOW_ALGO");
    if (!v || !*v || !std::strcmp(v, "auto")) return Choice::Auto;
    if (!std::strcmp(v, "ring")) return Choice::Ring;
    if (!std::strcmp(v, "shm")) return Choice::Shm;
    throw InvalidArgument(std::string("RINGFLOW_ALGO=") + v + ": expected auto, ring or shm");
  }();
  return c;
}

}  // namespace

ShmTransport* arenaFor(Comm& c) {
  auto* routed = dynamic_cast<RoutedTransport*>(&c.transport());
  if (!routed || routed->shm().arenaComm() != c.id()) return nullptr;
  return &routed->shm();
}

const char* allreduceAlgorithm(Comm& c) {
  return fromEnv() != Choice::Ring && arenaFor(c) ? "shm" : "ring";
}

void allreduce(Comm& c, Buffer data, ReduceOp op) {
  ShmTransport* shm = fromEnv() != Choice::Ring ? arenaFor(c) : nullptr;
  if (shm) return shmAllreduce(c, *shm, data, op);
  ringAllreduce(c, data, op);
}

}  // namespace ringflow::algo
