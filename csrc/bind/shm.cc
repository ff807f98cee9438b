// The shared-memory transport and the routed transport that pairs it with
// TCP.  rendezvous.py builds them: TCP mesh first, then one segment per local
// rank, attach, a store barrier, unlink.
#include <pybind11/stl.h>

#include "bind.h"
#include "ringflow/algorithms.h"
#include "ringflow/huge_pages.h"
#include "ringflow/routed.h"
#include "ringflow/shared_buffer.h"

namespace py = pybind11;

namespace ringflow::bind {

void bindShm(py::module_& m) {
  py::class_<ShmTransport, std::shared_ptr<ShmTransport>>(m, "ShmTransport")
      .def(py::init([](std::shared_ptr<TcpTransport> tcp, std::vector<int> localRanks,
                       uint64_t token, size_t queueBytes, size_t slotBytes, bool crossMemory) {
             ShmTransport::Options o;
             o.queueBytes = queueBytes;
             o.slotBytes = slotBytes;
             o.crossMemory = crossMemory;
             return std::make_shared<ShmTransport>(tcp->rank(), tcp->size(), localRanks,
                                                   tcp->mailbox(), token, o);
           }),
           py::arg("tcp"), py::arg("local_ranks"), py::arg("token"),
           py::arg("queue_bytes") = size_t(1) << 20, py::arg("slot_bytes") = size_t(1) << 20,
           py::arg("cross_memory") = true)
      .def_property_readonly("segment_name", &ShmTransport::segmentName)
      .def_property_readonly("cross_memory", &ShmTransport::crossMemoryEverywhere,
                             "True when every local rank can read every other's memory")
      .def("attach", &ShmTransport::attach, py::arg("names"), py::arg("timeout"), Release())
      .def("unlink", &ShmTransport::unlink)
      .def("close", &ShmTransport::close, Release());

  py::class_<RoutedTransport, Transport, std::shared_ptr<RoutedTransport>>(m, "RoutedTransport")
      .def(py::init<std::shared_ptr<TcpTransport>, std::shared_ptr<ShmTransport>>(),
           py::arg("tcp"), py::arg("shm"));

  m.def("allreduce_algorithm",
        [](Comm& c, size_t bytes) { return std::string(algo::allreduceAlgorithm(c, bytes)); },
        py::arg("comm"), py::arg("bytes") = size_t(1) << 30,
        "The allreduce a call of `bytes` on `comm` runs: 'shm', 'hierarchical' or 'ring'.");
  m.def("huge_page_stats", [] {
    shm::HugePageCounts c = shm::hugePageCounts();
    py::dict d;
    d["enabled"] = shm::hugePagesEnabled();
    d["collapsed"] = c.collapsed;
    d["collapsed_bytes"] = c.collapsedBytes;
    d["failed"] = c.failed;
    return d;
  }, "RINGFLOW_SHM_HUGEPAGES: this process's buffers collapsed into huge pages.");

  py::class_<shm::SharedBuffer, std::shared_ptr<shm::SharedBuffer>>(
      m, "SharedBuffer", py::buffer_protocol(),
      "Memory same-host peers map directly: allreduces of data inside it skip the kernel copy.")
      .def(py::init<size_t>(), py::arg("nbytes"))
      .def_property_readonly("nbytes", &shm::SharedBuffer::bytes)
      .def_property_readonly("address", [](const shm::SharedBuffer& b) {
        return reinterpret_cast<uintptr_t>(b.data());
      })
      .def_buffer([](shm::SharedBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {py::ssize_t(b.bytes())}, {py::ssize_t(1)}, false);
      });
  m.def("shared_buffer_stats", [] {
    shm::SharedCounts c = shm::sharedCounts();
    py::dict d;
    d["live"] = c.live;
    d["live_bytes"] = c.liveBytes;
    d["peer_maps"] = c.peerMaps;
    d["peer_maps_opened"] = c.peerMapsOpened;
    d["peer_maps_dropped"] = c.peerMapsDropped;
    d["peer_map_failures"] = c.peerMapFailures;
    return d;
  }, "This process's SharedBuffers, and the peers' ones it maps.");
}

}  // namespace ringflow::bind
