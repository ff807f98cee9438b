// The watchdog's counters and per-call timings, as plain Python data.
#include "bind.h"
#include "ringflow/stats.h"

namespace py = pybind11;

namespace ringflow::bind {

void bindStats(py::module_& m) {
  m.def("stats", [] {
    Stats& s = Stats::global();
    py::dict ops;
    for (auto& [kind, k] : s.byKind()) {
      py::dict d;
      d["count"] = k.count;
      d["total_ms"] = k.totalMs;
      d["max_ms"] = k.maxMs;
      d["aggregation_ms"] = k.aggregationMs;
      d["warnings"] = k.warnings;
      ops[py::str(kind)] = d;
    }
    py::list recent;
    for (auto& r : s.recent()) {
      py::dict d;
      d["op"] = r.op();
      d["rank"] = r.rank;
      d["aggregation_ms"] = r.aggregationMs < 0 ? py::object(py::none()) : py::float_(r.aggregationMs);
      d["total_ms"] = r.totalMs;
      d["slow_peer"] = r.slowPeer < 0 ? py::object(py::none()) : py::int_(r.slowPeer);
      d["slow_wait_ms"] = r.slowWaitMs;
      d["warned"] = r.warned;
      recent.append(d);
    }
    py::dict out;
    out["warn_ms"] = s.warnMs();
    out["warnings"] = s.warnings();
    out["last_warning"] = s.lastWarning();
    out["ops"] = ops;
    out["recent"] = recent;
    out["bytes_sent"] = s.bytesSent();
    out["cross_host_bytes_sent"] = s.crossHostBytesSent();
    py::dict sentTo;  // transport rank -> bytes, the ranks sent to only
    for (int r = 0; r < Stats::kPeersCounted; ++r)
      if (uint64_t b = s.bytesSentTo(r)) sentTo[py::int_(r)] = b;
    out["bytes_sent_to"] = sentTo;
    out["compressed_calls"] = s.compressedCalls();
    py::dict phases;  // compressed allreduces only: where their time went
    for (size_t p = 0; p < size_t(CompressPhase::Count); ++p)
      phases[compressPhaseName(CompressPhase(p))] = double(s.compressPhaseNs(CompressPhase(p))) * 1e-6;
    out["compress_phase_ms"] = phases;
    return out;
  });
  m.def("reset_stats", [] { Stats::global().reset(); });
  m.def("set_warn_ms", [](double ms) { Stats::global().setWarnMs(ms); }, py::arg("ms"));
}

}  // namespace ringflow::bind
