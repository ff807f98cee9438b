// ringflow._testing: hooks only the test suite uses, kept out of the
// production module _C.  Both modules link the one core library
// (libringflow.so), so these see the same process state _C does.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "ringflow/aggregator.h"
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
  m.def("udp_floor",
        [](int workers, size_t elements, uint32_t packetElems, uint32_t slots, int calls) {
          agg::UdpFloor f;
          {
            py::gil_scoped_release release;
            f = agg::measureUdpFloor(workers, elements, packetElems, slots, calls);
          }
          py::dict d;
          d["seconds"] = f.seconds, d["relay_cpu"] = f.relayCpu, d["worker_cpu"] = f.workerCpu;
          return d;
        },
        py::arg("workers"), py::arg("elements"), py::arg("packet_elems"), py::arg("slots"),
        py::arg("calls"),
        "An aggregate call's datagrams alone over loopback (ringflow/aggregator.h, measureUdpFloor): "
        "{'seconds': per call, 'relay_cpu', 'worker_cpu': CPU seconds per call}.");
}
