// Transports, communicators and works.  Buffers cross as (address, count,
// dtype code) so that torch tensors and numpy arrays both fit; the Python
// side keeps them alive until the work completes.  Collectives that take
// `blocking` may run the whole call before returning (collectives.h), so
// they drop the GIL.
#include <pybind11/stl.h>

#include "bind.h"
#include "ringflow/collectives.h"
#include "ringflow/comm.h"
#include "ringflow/tcp.h"

namespace py = pybind11;

namespace ringflow::bind {
namespace {

Buffer buf(uintptr_t ptr, size_t count, int dtype) {
  return Buffer{reinterpret_cast<void*>(ptr), count, dtypeFromInt(dtype)};
}

}  // namespace

void bindComm(py::module_& m) {
  py::class_<Work, std::shared_ptr<Work>>(m, "Work")
      .def("wait", &Work::wait, py::arg("timeout") = -1.0, Release(),
           "Block until done (or `timeout` seconds, returning False); raise the call's error.")
      .def("is_completed", &Work::completed)
      .def_property_readonly("succeeded", &Work::succeeded,
                             "Done without an error (what a blocking call run inline leaves).")
      .def_property_readonly("error", &Work::errorMessage)
      .def_property_readonly("what", &Work::what)
      .def_property_readonly("seconds", &Work::seconds)
      .def_property_readonly("source", &Work::source,
                             "The rank a receive took its message from (-1 before it has one).");

  py::class_<Transport, std::shared_ptr<Transport>>(m, "Transport")
      .def_property_readonly("rank", &Transport::rank)
      .def_property_readonly("size", &Transport::size)
      .def_property_readonly("name", &Transport::name)
      .def("close", &Transport::close, Release());

  py::class_<TcpTransport, Transport, std::shared_ptr<TcpTransport>>(m, "TcpTransport")
      .def(py::init<int, int, const std::string&>(), py::arg("rank"), py::arg("size"),
           py::arg("bind_host") = "0.0.0.0", Release())
      .def_property_readonly("port", &TcpTransport::port)
      .def("connect", &TcpTransport::connect, py::arg("addrs"), py::arg("token"),
           py::arg("timeout"), Release());

  py::class_<Comm, std::shared_ptr<Comm>>(m, "Comm")
      .def(py::init<std::shared_ptr<Transport>, uint64_t, std::vector<int>, double>(),
           py::arg("transport"), py::arg("id"), py::arg("members"), py::arg("timeout"))
      .def_property_readonly("rank", &Comm::rank)
      .def_property_readonly("size", &Comm::size)
      .def_property_readonly("id", &Comm::id)
      .def_property_readonly("timeout", &Comm::timeout)
      .def_property_readonly("members", &Comm::members)
      .def("split", [](Comm& c, int color, int key) { return split(c, color, key); },
           py::arg("color"), py::arg("key"), Release())
      .def("subgroup", &Comm::subgroup, py::arg("ranks"), py::arg("tag"))
      .def("set_groups", &Comm::setGroups, py::arg("group_of"),
           "Hierarchical layout: group_of[r] labels rank r's lower-order group.")
      .def_property_readonly("hierarchical", [](Comm& c) { return c.lower() != nullptr; })
      .def("shutdown", &Comm::shutdown, py::arg("close_transport") = false, Release())
      .def("allreduce", [](Comm& c, uintptr_t p, size_t n, int dt, int op, bool blocking) {
            return allreduce(c, buf(p, n, dt), reduceOpFromInt(op), blocking);
          }, py::arg("ptr"), py::arg("count"), py::arg("dtype"), py::arg("op"),
          py::arg("blocking") = false, Release())
      .def("broadcast", [](Comm& c, uintptr_t p, size_t n, int dt, int root, bool blocking) {
            return broadcast(c, buf(p, n, dt), root, blocking);
          }, py::arg("ptr"), py::arg("count"), py::arg("dtype"), py::arg("root"),
          py::arg("blocking") = false, Release())
      .def("allgather", [](Comm& c, uintptr_t in, size_t n, uintptr_t out, int dt, bool blocking) {
            return allgather(c, buf(in, n, dt), buf(out, n * size_t(c.size()), dt), blocking);
          }, py::arg("inp"), py::arg("count"), py::arg("out"), py::arg("dtype"),
          py::arg("blocking") = false, Release())
      .def("reduce_scatter", [](Comm& c, uintptr_t in, uintptr_t out, size_t n, int dt, int op,
                                bool blocking) {
            return reduceScatter(c, buf(in, n * size_t(c.size()), dt), buf(out, n, dt),
                                 reduceOpFromInt(op), blocking);
          }, py::arg("inp"), py::arg("out"), py::arg("count"), py::arg("dtype"), py::arg("op"),
          py::arg("blocking") = false, Release())
      .def("reduce", [](Comm& c, uintptr_t p, size_t n, int dt, int root, int op, bool blocking) {
            return reduce(c, buf(p, n, dt), root, reduceOpFromInt(op), blocking);
          }, py::arg("ptr"), py::arg("count"), py::arg("dtype"), py::arg("root"), py::arg("op"),
          py::arg("blocking") = false, Release())
      .def("gather", [](Comm& c, uintptr_t in, size_t n, uintptr_t out, int dt, int root,
                        bool blocking) {
            size_t outCount = c.rank() == root ? n * size_t(c.size()) : 0;
            return gather(c, buf(in, n, dt), buf(out, outCount, dt), root, blocking);
          }, py::arg("inp"), py::arg("count"), py::arg("out"), py::arg("dtype"), py::arg("root"),
          py::arg("blocking") = false, Release())
      .def("scatter", [](Comm& c, uintptr_t in, uintptr_t out, size_t n, int dt, int root,
                         bool blocking) {
            size_t inCount = c.rank() == root ? n * size_t(c.size()) : 0;
            return scatter(c, buf(in, inCount, dt), buf(out, n, dt), root, blocking);
          }, py::arg("inp"), py::arg("out"), py::arg("count"), py::arg("dtype"), py::arg("root"),
          py::arg("blocking") = false, Release())
      .def("alltoall", [](Comm& c, uintptr_t in, uintptr_t out, int dt,
                          std::vector<size_t> inCounts, std::vector<size_t> outCounts,
                          bool blocking) {
            size_t ni = 0, no = 0;
            for (size_t v : inCounts) ni += v;
            for (size_t v : outCounts) no += v;
            return alltoall(c, buf(in, ni, dt), buf(out, no, dt), inCounts, outCounts, blocking);
          }, py::arg("inp"), py::arg("out"), py::arg("dtype"), py::arg("in_counts"),
          py::arg("out_counts"), py::arg("blocking") = false, Release())
      .def("barrier", [](Comm& c, bool blocking) { return barrier(c, blocking); },
           py::arg("blocking") = false, Release())
      .def("send", [](Comm& c, uintptr_t p, size_t n, int dt, int peer, uint64_t tag) {
            return c.send(peer, tag, buf(p, n, dt));
          })
      .def("recv", [](Comm& c, uintptr_t p, size_t n, int dt, int peer, uint64_t tag) {
            return c.recv(peer, tag, buf(p, n, dt));
          })
      .def("recv_any", [](Comm& c, uintptr_t p, size_t n, int dt, uint64_t tag) {
            return c.recvAny(tag, buf(p, n, dt));
          });
}

}  // namespace ringflow::bind
