#include <pybind11/stl.h>

#include "bind.h"
#include "ringflow/config.h"
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
  ringflow::bind::bindErrors(m);
  ringflow::bind::bindComm(m);
  ringflow::bind::bindShm(m);
  ringflow::bind::bindKernels(m);
  ringflow::bind::bindStats(m);
  ringflow::bind::bindAggregator(m);
}
