#include "ringflow/settings.h"

#include "algo/algorithms.h"
#include "ringflow/collectives.h"
#include "ringflow/env.h"
#include "ringflow/kernels.h"
#include "ringflow/stats.h"
#include "transport/trace.h"

namespace ringflow {

void checkSettings() {
  algo::readSelectSettings();
  algo::readShmArenaSettings();
  algo::readAggregateSettings();
  kernels::readKernelSettings();
  inlineLimit();
  traceEnabled();
  Stats::global();  // RINGFLOW_WARN_MS
  // Read again by each ShmTransport, on the thread that builds it.
  envMicros("RINGFLOW_SHM_SPIN_US", std::chrono::microseconds(0));
}

}  // namespace ringflow
