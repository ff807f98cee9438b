#include <pybind11/stl.h>

#include "bind.h"
#include "ringflow/config.h"
#include "ringflow/env.h"
#include "ringflow/kernels.h"
#include "ringflow/settings.h"
#include "ringflow/types.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "ringflow's C++ core: transports, collectives and kernels";
  m.attr("__version__") = RINGFLOW_VERSION;
  m.def("build_info", [] {
    py::dict d;
    d["version"] = RINGFLOW_VERSION;
    d["cuda"] = bool(RINGFLOW_HAVE_CUDA);
    d["simd"] = ringflow::kernels::simdLevel();
    d["transports"] = std::vector<std::string>{"tcp", "shm", "udp-aggregator"};
    return d;
  });
  m.def("check_settings", &ringflow::checkSettings,
        "Reads every RINGFLOW_* setting of the core; raises ValueError naming a bad one.");
  m.def("settings", [] {
        py::dict d;
        for (const auto& s : ringflow::registeredSettings()) d[s.name] = s.help;
        return d;
      }, "Every RINGFLOW_* setting the core reads, registered by the module that reads it: "
         "{name: what it does}.");
  // The core's parsers, for the few settings Python reads, so both spell
  // and check values alike.
  m.def("env_size", [](const std::string& name, size_t fallback) {
        return ringflow::envSize(name.c_str(), fallback);
      }, py::arg("name"), py::arg("fallback"),
      "A non-negative whole-number setting (fallback when unset); ValueError naming a bad one.");
  m.def("env_bool", [](const std::string& name, bool fallback) {
        return ringflow::envBool(name.c_str(), fallback);
      }, py::arg("name"), py::arg("fallback"),
      "A boolean setting: 1/true/yes/on or 0/false/no/off; ValueError naming a bad one.");
  // The codes of the enums, in code order: python/ringflow/_dtypes.py builds
  // its tables from these, so the two sides cannot drift.
  m.def("dtype_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < ringflow::kNumDTypes; ++i) names.push_back(ringflow::dtypeName(ringflow::DType(i)));
    return names;
  });
  m.def("reduce_op_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < ringflow::kNumReduceOps; ++i)
      names.push_back(ringflow::reduceOpName(ringflow::ReduceOp(i)));
    return names;
  });
  ringflow::bind::bindErrors(m);
  ringflow::bind::bindComm(m);
  ringflow::bind::bindShm(m);
  ringflow::bind::bindKernels(m);
  ringflow::bind::bindStats(m);
  ringflow::bind::bindAggregator(m);
  ringflow::bind::bindSchedule(m);
  ringflow::bind::bindMalt(m);
  ringflow::bind::bindCompress(m);
}
