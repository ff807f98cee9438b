#include "ringflow/settings.h"

#include "algo/algorithms.h"
#include "ringflow/collectives.h"
#include "ringflow/env.h"
#include "ringflow/kernels.h"
#include "transport/trace.h"

namespace ringflow {

void checkSettings() {
  algo::readSelectSettings();
  algo::readShmArenaSettings();
  algo::readAggregateSettings();
  kernels::readKernelSettings();
  inlineLimit();
  traceEnabled();
  // Read again where they are used (each object keeps its own copy).
  envDouble("RINGFLOW_WARN_MS", 0);
  envMicros("RINGFLOW_SHM_SPIN_US", std::chrono::microseconds(0));
}

}  // namespace ringflow
