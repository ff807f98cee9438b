// RINGFLOW_TRACE=1 prints control events (aborts, goodbyes, lost peers) to
// stderr, for diagnosing a failure that spans ranks.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace ringflow {

inline bool traceEnabled() {
  static const bool on = [] {
    const char* v = std::getenv("RINGFLOW_TRACE");
    return v && *v && *v != '0';
  }();
  return on;
}

inline void trace(int rank, const std::string& what) {
  if (traceEnabled()) std::fprintf(stderr, "[ringflow rank %d] %s\n", rank, what.c_str());
}

}  // namespace ringflow
