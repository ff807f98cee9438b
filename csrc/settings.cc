#include "ringflow/settings.h"

#include "algo/algorithms.h"
#include "ringflow/collectives.h"
#include "ringflow/kernels.h"
#include "ringflow/shm.h"
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
  ShmTransport::idleSpinSetting();
}

}  // namespace ringflow
