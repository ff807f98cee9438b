#include "trace.h"

#include "ringflow/env.h"
#include "ringflow/settings.h"

namespace ringflow {

bool traceEnabled() {
  static const bool on = envBool("RINGFLOW_TRACE", false);
  return on;
}

namespace {
const SettingsRegistration kSettings(
    {{"RINGFLOW_TRACE",
      "1 (or true/yes/on) prints control events (aborts, goodbyes, lost peers) to stderr"}},
    [] { traceEnabled(); });
}  // namespace

}  // namespace ringflow
