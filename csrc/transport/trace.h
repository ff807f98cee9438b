// RINGFLOW_TRACE=1 prints control events (aborts, goodbyes, lost peers) to
// stderr, for diagnosing a failure that spans ranks.
#pragma once

#include <cstdio>
#include <string>


namespace ringflow {

// Throws on a malformed RINGFLOW_TRACE, so TcpTransport's constructor calls
// it first: trace() also runs on progress threads, where a throw would end
// the process.
bool traceEnabled();

inline void trace(int rank, const std::string& what) {
  if (traceEnabled()) std::fprintf(stderr, "[ringflow rank %d] %s\n", rank, what.c_str());
}

}  // namespace ringflow
