// ringflow._testing: hooks only the test suite uses, kept out of the
// production module _C.  Both modules link the one core library
// (libringflow.so), so these see the same process state _C does.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "ringflow/shared_buffer.h"

namespace py = pybind11;
using namespace ringflow;

PYBIND11_MODULE(_testing, m) {
  m.doc() = "test-only hooks into ringflow's C++ core (not an API)";
  m.def("map_peer_shared",
        [](int pid, uint64_t id, int fd, uint64_t offset, size_t bytes) {
          return reinterpret_cast<uintptr_t>(shm::peerShared(pid, {id, fd, offset}, bytes));
        },
        py::arg("pid"), py::arg("id"), py::arg("fd"), py::arg("offset"), py::arg("nbytes"),
        "Maps SharedBuffer `id` of process `pid` as a peer would; its address, or 0.");
  m.def("shared_place", [](uintptr_t address, size_t bytes) {
    shm::SharedPlace p = shm::findShared(reinterpret_cast<const void*>(address), bytes);
    return py::make_tuple(p.id, p.fd, p.offset);
  }, py::arg("address"), py::arg("nbytes"),
     "(id, fd, offset) of the SharedBuffer holding the range, id 0 if none.");
}
