// Low-bit compression of a communicator's cross-host level (compress.h):
// a process group's option, set from Python between calls.
#include "bind.h"
#include "ringflow/comm.h"
#include "ringflow/compress.h"

namespace py = pybind11;

namespace ringflow::bind {

void bindCompress(py::module_& m) {
  m.def("set_compress", [](Comm& c, const std::string& mode) {
        c.setCompressBits(mode.empty() ? -1 : algo::compressBitsOf(mode));
      }, py::arg("comm"), py::arg("mode"),
      "Compress `comm`'s cross-host level: none, int8, 4bit, 2bit or 1bit; '' follows "
      "RINGFLOW_COMPRESS.  Every member passes the same mode, between calls.");
  m.def("compress_bits", [](Comm& c, int dtype, int op) {
        return algo::compressBitsFor(c, dtypeFromInt(dtype), reduceOpFromInt(op));
      }, py::arg("comm"), py::arg("dtype"), py::arg("op"),
      "Bits an allreduce of this dtype and op on `comm` sends across hosts (0: exact).");
  m.def("compress_mode_bits", &algo::compressBitsOf, py::arg("mode"));
}

}  // namespace ringflow::bind
